package linux

import (
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// endLine is a socket end as the test daemon prints it (LATCH_TEST_PRINT_ENDS).
type endLine struct {
	local, remote                            string
	counted                                  bool
	bytesOut, bytesIn, packetsOut, packetsIn uint64
}

var endLineRE = regexp.MustCompile(`^end (\S+) (\S+) counted=(true|false) bytes_out=(\d+) bytes_in=(\d+) packets_out=(\d+) packets_in=(\d+)$`)

// waitEndLine waits for the daemon's line of the end of the socket local → remote.
func waitEndLine(t *testing.T, d *daemon, local, remote string, timeout time.Duration) endLine {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l, ok := d.waitLine("end ", time.Until(deadline))
		if !ok {
			t.Fatalf("no socket end of %s -> %s within %v; stderr:\n%s", local, remote, timeout, d.errors())
		}
		m := endLineRE.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("end line %q", l)
		}
		if m[1] != local || m[2] != remote {
			continue
		}
		n := func(s string) uint64 { v, _ := strconv.ParseUint(s, 10, 64); return v }
		return endLine{local: m[1], remote: m[2], counted: m[3] == "true", bytesOut: n(m[4]), bytesIn: n(m[5]), packetsOut: n(m[6]), packetsIn: n(m[7])}
	}
}

// ctCounters are a conntrack entry's counters, original and reply direction.
type ctCounters struct {
	state                                          string
	origPackets, origBytes, replPackets, replBytes uint64
}

var ctLineRE = regexp.MustCompile(`packets=(\d+) bytes=(\d+) .*packets=(\d+) bytes=(\d+)`)

// ctEntry reads, with the conntrack tool, the TCP entry in ns whose original
// direction is src → dst.
func ctEntry(t *testing.T, ns string, src, dst ctAddr) ctCounters {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp",
		"--orig-src", src.addr, "--orig-dst", dst.addr, "--sport", src.port, "--dport", dst.port).CombinedOutput()
	if err != nil {
		t.Fatalf("conntrack -L in %s: %v: %s", ns, err, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "tcp ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("conntrack entries of %v -> %v: %q, want one", src, dst, out)
	}
	m := ctLineRE.FindStringSubmatch(lines[0])
	if m == nil {
		t.Fatalf("conntrack entry without counters: %q", lines[0])
	}
	n := func(s string) uint64 { v, _ := strconv.ParseUint(s, 10, 64); return v }
	return ctCounters{state: strings.Fields(lines[0])[3], origPackets: n(m[1]), origBytes: n(m[2]), replPackets: n(m[3]), replBytes: n(m[4])}
}

// ctAddr is an address and a port as the conntrack tool takes them.
type ctAddr struct{ addr, port string }

func splitAddr(t *testing.T, s string) ctAddr {
	t.Helper()
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ctAddr{h, p}
}

// serveTCP listens in ns on addr (IPv4 or IPv6) until the test ends, and handles each
// connection in a goroutine of its own with handle, which must close it.
func serveTCP(t testing.TB, ns, addr string, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	if err := inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

// echoTCP listens in ns on addr:port; for each connection it reads in bytes,
// writes back out bytes, reads to the end and closes.
func echoTCP(t *testing.T, ns, addr string, port, in, out int) {
	t.Helper()
	serveTCP(t, ns, fmt.Sprintf("%s:%d", addr, port), func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, in)); err != nil {
			return
		}
		if _, err := c.Write(make([]byte, out)); err != nil {
			return
		}
		io.Copy(io.Discard, c)
	})
}

// exchange connects from ns to addr:port, sends in bytes, reads out bytes back and
// closes first (its socket goes through FIN_WAIT and TIME_WAIT to its end), and
// waits for the peer's close; with rst, it closes with a reset instead. It
// returns the local and remote address.
func exchange(t *testing.T, ns, addr string, port, in, out int, rst bool) (local, remote string) {
	t.Helper()
	var c net.Conn
	if err := inNS(ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", addr, port), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s:%d: %v", addr, port, err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if n, err := c.Write(make([]byte, in)); err != nil || n != in {
		t.Fatalf("write: %d, %v", n, err)
	}
	if _, err := io.ReadFull(c, make([]byte, out)); err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	local, remote = c.LocalAddr().String(), c.RemoteAddr().String()
	if rst {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		return local, remote
	}
	c.(*net.TCPConn).CloseWrite()
	// The peer closes once it read our FIN: EOF here.
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		t.Fatalf("read to the peer's close: %d, %v", n, err)
	}
	c.Close()
	return local, remote
}

// TestSocketEndBytesMatchConntrack: a TCP connection opened from the daemon's
// namespace that sends and receives known payloads ends with the counts its
// socket made in the kernel (cgroup_skb programs, socket storage), and they are
// exactly conntrack's counters of that flow, read right after the close (the
// entry lingers in TIME_WAIT), in both directions, bytes and packets; the byte
// accountant ends the flow with them without reading conntrack (no GET) and
// reports them. A connection closed with a reset differs by the reset alone: the
// kernel sends it after the socket's move to TCP_CLOSE, where the end is
// reported (tcp_disconnect), so conntrack has one packet more out, of a bare
// TCP header with at most its timestamps (40 to 52 bytes).
func TestSocketEndBytesMatchConntrack(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("needs the conntrack tool: %v", err)
	}
	tp := newTopo(t)
	const port, in, out = 9001, 300_000, 120_000
	echoTCP(t, tp.b, addrB, port, in, out)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=10s", "LATCH_TEST_SOCKET_ENDS=on", "LATCH_TEST_PRINT_ENDS=1")
	defer d.stop()
	for i, rst := range []bool{false, false, false, true} {
		t.Run(fmt.Sprint(i, map[bool]string{true: " rst"}[rst]), func(t *testing.T) {
			local, remote := exchange(t, tp.a, addrB, port, in, out, rst)
			e := waitEndLine(t, d, local, remote, 2*time.Second)
			ct := ctEntry(t, tp.a, splitAddr(t, local), splitAddr(t, remote))
			t.Logf("socket: %+v; conntrack: %+v", e, ct)
			if !e.counted {
				t.Fatalf("the end of %s -> %s (an active open) carries no counters", local, remote)
			}
			if rst {
				if ct.state != "CLOSE" {
					t.Errorf("conntrack state %s, want CLOSE", ct.state)
				}
				if rstBytes := ct.origBytes - e.bytesOut; ct.origPackets != e.packetsOut+1 || rstBytes < 40 || rstBytes > 52 || e.bytesIn != ct.replBytes || e.packetsIn != ct.replPackets {
					t.Errorf("socket counted %d bytes in %d packets out, %d in %d in; conntrack %d in %d original, %d in %d reply: want conntrack's original to have the reset more",
						e.bytesOut, e.packetsOut, e.bytesIn, e.packetsIn, ct.origBytes, ct.origPackets, ct.replBytes, ct.replPackets)
				}
			} else if ct.state != "TIME_WAIT" {
				t.Errorf("conntrack state %s, want TIME_WAIT", ct.state)
			} else if e.bytesOut != ct.origBytes || e.packetsOut != ct.origPackets || e.bytesIn != ct.replBytes || e.packetsIn != ct.replPackets {
				t.Errorf("socket counted %d bytes in %d packets out, %d in %d in; conntrack %d in %d original, %d in %d reply",
					e.bytesOut, e.packetsOut, e.bytesIn, e.packetsIn, ct.origBytes, ct.origPackets, ct.replBytes, ct.replPackets)
			}
			if e.bytesOut < in || e.bytesIn < out {
				t.Errorf("socket counted %d bytes out, %d in; want at least the payloads %d and %d", e.bytesOut, e.bytesIn, in, out)
			}
			tl, ok := waitTraffic(t, d, local, 2*time.Second)
			if !ok || !tl.ended || tl.out != e.bytesOut || tl.in != e.bytesIn {
				t.Errorf("traffic report %+v (%v), want ended with the socket's %d bytes out and %d in", tl, ok, e.bytesOut, e.bytesIn)
			}
		})
	}
	st := d.stop()
	if n := st.Extra["traffic_conntrack_gets"]; n != 0 {
		t.Errorf("the accountant read %d conntrack entries, want none (the ends carried the counts)", n)
	}
	if n := st.Extra["traffic_socket_ends"]; n < 4 {
		t.Errorf("%d socket ends taken, want at least 4", n)
	}
}

// TestSocketEndBytesOffReadsConntrack: the same connection with the daemon
// ignoring the ends' counts (as where the kernel has none) is accounted by
// reading conntrack (a GET per end), with the same bytes: the counter of GETs
// counts, and the previous test's 0 means something.
func TestSocketEndBytesOffReadsConntrack(t *testing.T) {
	tp := newTopo(t)
	const port, in, out = 9001, 300_000, 120_000
	echoTCP(t, tp.b, addrB, port, in, out)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=10s", "LATCH_TEST_SOCKET_ENDS=on", "LATCH_TEST_PRINT_ENDS=1", "LATCH_TEST_END_BYTES=off")
	defer d.stop()
	local, remote := exchange(t, tp.a, addrB, port, in, out, false)
	e := waitEndLine(t, d, local, remote, 2*time.Second)
	tl, ok := waitTraffic(t, d, local, 2*time.Second)
	if !ok || !tl.ended || tl.out != e.bytesOut || tl.in != e.bytesIn {
		t.Errorf("traffic report %+v (%v), want ended with conntrack's bytes, which are the socket's %d out and %d in", tl, ok, e.bytesOut, e.bytesIn)
	}
	if n := d.stop().Extra["traffic_conntrack_gets"]; n != 1 {
		t.Errorf("the accountant read %d conntrack entries, want 1", n)
	}
}

// TestPassiveSocketEndReadsConntrack: an accepted connection's socket has no
// counters (its handshake, which conntrack counted, came before it existed): its
// end carries none, and the accountant reads the flow's counters from conntrack
// and reports them with its end.
func TestPassiveSocketEndReadsConntrack(t *testing.T) {
	tp := newTopo(t)
	const port, in, out = 9002, 200_000, 50_000
	echoTCP(t, tp.a, addrA, port, in, out)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_INBOUND=1", "LATCH_TEST_TRAFFIC_INTERVAL=10s", "LATCH_TEST_SOCKET_ENDS=on", "LATCH_TEST_PRINT_ENDS=1")
	defer d.stop()
	remote, local := exchange(t, tp.b, addrA, port, in, out, false)
	e := waitEndLine(t, d, local, remote, 2*time.Second)
	if e.counted || e.bytesOut != 0 || e.bytesIn != 0 {
		t.Fatalf("the end of the accepted socket %s <- %s carries counters: %+v", local, remote, e)
	}
	ct := ctEntry(t, tp.a, splitAddr(t, remote), splitAddr(t, local))
	// The report names the request's local end (the server's) as its local.
	tl, ok := waitTraffic(t, d, local, 2*time.Second)
	if !ok || !tl.ended || tl.in != ct.origBytes || tl.out != ct.replBytes {
		t.Errorf("traffic report %+v (%v), want ended with conntrack's %d bytes in and %d out", tl, ok, ct.origBytes, ct.replBytes)
	}
	if n := d.stop().Extra["traffic_conntrack_gets"]; n != 1 {
		t.Errorf("the accountant read %d conntrack entries, want 1 (the accepted flow's)", n)
	}
}
