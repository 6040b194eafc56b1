package linux

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ctEventGroups returns the multicast groups (bind(2) bits) of every
// NETLINK_NETFILTER socket in network namespace ns, from /proc/net/netlink.
func ctEventGroups(t *testing.T, ns string) []uint32 {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/netlink").Output()
	if err != nil {
		t.Fatalf("read /proc/net/netlink in %s: %v", ns, err)
	}
	var groups []uint32
	for _, l := range strings.Split(string(out), "\n")[1:] {
		f := strings.Fields(l)
		// sk Eth Pid Groups ...
		if len(f) < 4 || f[1] != strconv.Itoa(12 /* NETLINK_NETFILTER */) {
			continue
		}
		g, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil {
			t.Fatalf("/proc/net/netlink line %q: %v", l, err)
		}
		groups = append(groups, uint32(g))
	}
	return groups
}

// subscribed reports whether one of the sockets whose groups are given listens to
// group (a bind(2) bit).
func subscribed(groups []uint32, group uint32) bool {
	for _, g := range groups {
		if g&group != 0 {
			return true
		}
	}
	return false
}

// TestFlowEndsFromSocketEnds: with the kernel fast path reporting the end of every
// TCP socket, byte accounting listens to conntrack's destroy events only (no
// update events: the kernel builds none for this namespace), and a queued,
// allowed flow that closes with FIN or with a reset is reported, with its bytes
// and its end, within 2 s of the close (the table is read every 10 s; a FIN's
// entry is destroyed 2 minutes after TIME_WAIT).
func TestFlowEndsFromSocketEnds(t *testing.T) {
	tp := newTopo(t)
	got := sinkTCP(t, tp, 9001)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=10s", "LATCH_TEST_SOCKET_ENDS=on")
	defer d.stop()
	groups := ctEventGroups(t, tp.a)
	if !subscribed(groups, nfnlGroupCtDestroy) || subscribed(groups, nfnlGroupCtUpdate) {
		t.Fatalf("conntrack sockets in the daemon's namespace have groups %x: want destroys (%x) and no updates (%x)", groups, nfnlGroupCtDestroy, nfnlGroupCtUpdate)
	}
	for _, rst := range []bool{false, true} {
		t.Run(map[bool]string{false: "fin", true: "rst"}[rst], func(t *testing.T) {
			closeAndReport(t, tp, d, got, 200_000, rst)
		})
	}
}

// TestFlowEndsWithoutSocketEnds: with the fast path asked not to report socket
// ends (as with --forward, or without a sock_ops program), byte accounting listens
// to conntrack's update events as before, and a flow's end is reported all the
// same.
func TestFlowEndsWithoutSocketEnds(t *testing.T) {
	tp := newTopo(t)
	got := sinkTCP(t, tp, 9001)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=10s", "LATCH_TEST_SOCKET_ENDS=off")
	defer d.stop()
	if groups := ctEventGroups(t, tp.a); !subscribed(groups, nfnlGroupCtDestroy) || !subscribed(groups, nfnlGroupCtUpdate) {
		t.Fatalf("conntrack sockets in the daemon's namespace have groups %x: want destroys (%x) and updates (%x)", groups, nfnlGroupCtDestroy, nfnlGroupCtUpdate)
	}
	closeAndReport(t, tp, d, got, 200_000, false)
}

// closeAndReport sends size bytes from A to the sink on B, closes (with a reset if
// rst, once the sink read it all), waits for the flow's final report within 2 s
// of the close and checks it (ended, its bytes out, its remote).
func closeAndReport(t *testing.T, tp *topo, d *daemon, got chan int64, size int, rst bool) trafficLine {
	t.Helper()
	c := dialFromA(t, tp, 9001)
	local := c.LocalAddr().String()
	if n, err := c.Write(make([]byte, size)); err != nil || n != size {
		t.Fatalf("write: %d, %v", n, err)
	}
	if rst {
		// Delivered and acknowledged before the reset discards nothing.
		time.Sleep(300 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
	}
	c.Close()
	closed := time.Now()
	select {
	case n := <-got:
		if n != int64(size) {
			t.Fatalf("server read %d bytes, want %d", n, size)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not read the transfer")
	}
	tl, ok := waitTraffic(t, d, local, 2*time.Second-time.Since(closed))
	if !ok {
		t.Fatalf("no traffic report for %s within 2 s of the close; stderr:\n%s", local, d.errors())
	}
	t.Logf("reported %v after the close: %+v", time.Since(closed), tl)
	if !tl.ended {
		t.Errorf("report %+v: want ended", tl)
	}
	if tl.out < uint64(size) {
		t.Errorf("bytes out %d, want >= %d", tl.out, size)
	}
	if tl.remote != fmt.Sprintf("%s:9001", addrB) {
		t.Errorf("report names remote %s", tl.remote)
	}
	return tl
}

// TestReusedTupleKeepsBothFlows: a connection reset and opened again at once from
// the same local port (the same 4-tuple) is two flows, each reported ended with
// its own bytes: the first socket's end, read from the ring buffer after the
// second connection was allowed, and the destroy of the first conntrack entry
// (the second SYN replaces it), do not end the second flow early with the first
// one's bytes or its SYN's (which lost the second flow's bytes).
func TestReusedTupleKeepsBothFlows(t *testing.T) {
	tp := newTopo(t)
	got := sinkTCP(t, tp, 9001)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=10s", "LATCH_TEST_SOCKET_ENDS=on")
	defer d.stop()
	dial := func(local *net.TCPAddr) *net.TCPConn {
		t.Helper()
		var c net.Conn
		if err := inNS(tp.a, func() (err error) {
			dl := net.Dialer{LocalAddr: local, Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}); err != nil {
					return err
				}
				return serr
			}}
			c, err = dl.Dial("tcp4", fmt.Sprintf("%s:9001", addrB))
			return err
		}); err != nil {
			t.Fatalf("dial from %v: %v", local, err)
		}
		return c.(*net.TCPConn)
	}
	send := func(c *net.TCPConn, size int) {
		t.Helper()
		if n, err := c.Write(make([]byte, size)); err != nil || n != size {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	read := func(size int) {
		t.Helper()
		select {
		case n := <-got:
			if n != int64(size) {
				t.Fatalf("server read %d bytes, want %d", n, size)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("server did not read the transfer")
		}
	}
	const first, second = 100_000, 300_000
	c := dial(nil)
	local := c.LocalAddr().(*net.TCPAddr)
	send(c, first)
	// Delivered and acknowledged before the reset discards nothing.
	time.Sleep(300 * time.Millisecond)
	c.SetLinger(0)
	c.Close()
	c = dial(local)
	send(c, second)
	c.CloseWrite() // the server reads to the end, then closes
	read(first)
	read(second)
	c.Close()
	closed := time.Now()
	// Both flows' ends, each with its bytes, within 2 s of the second close.
	var ends []trafficLine
	for len(ends) < 2 {
		tl, ok := waitTraffic(t, d, local.String(), 2*time.Second-time.Since(closed))
		if !ok {
			break
		}
		if tl.ended {
			ends = append(ends, tl)
		}
	}
	sawFirst, sawSecond := false, false
	for _, tl := range ends {
		switch {
		case tl.out >= first && tl.out < second:
			sawFirst = true
		case tl.out >= second && tl.out < second+first:
			sawSecond = true
		}
	}
	if !sawFirst || !sawSecond || len(ends) != 2 {
		t.Fatalf("ended reports for %v: %+v; want one with the first connection's %d bytes out and one with the second's %d; stderr:\n%s", local, ends, first, second, d.errors())
	}
}
