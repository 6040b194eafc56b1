package linux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockMark reads fd's SO_MARK.
func sockMark(c syscall.Conn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var m int
	var serr error
	if err := rc.Control(func(fd uintptr) { m, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		return 0, err
	}
	return uint32(m), serr
}

// disconnect is connect(AF_UNSPEC) on c's socket.
func disconnect(c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		var sa [16]byte // sa_family 0: AF_UNSPEC
		_, _, e := unix.Syscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
		if e != 0 {
			serr = e
		}
	})
	return errors.Join(err, serr)
}

// reconnect connects c's socket again, to addr:port, and waits up to wait
// for the connect to end: nil once established. It returns the socket's local
// address.
func reconnect(c syscall.Conn, addr string, port int, wait time.Duration) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var local netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		ip := netip.MustParseAddr(addr)
		if ip.Is4() {
			sa = &unix.SockaddrInet4{Port: port, Addr: ip.As4()}
		} else {
			sa = &unix.SockaddrInet6{Port: port, Addr: ip.As16()}
		}
		if e := unix.Connect(int(fd), sa); e != nil && e != unix.EINPROGRESS {
			serr = fmt.Errorf("connect %s: %w", net.JoinHostPort(addr, strconv.Itoa(port)), e)
			return
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, e := unix.Poll(pfd, int(wait/time.Millisecond))
		if e != nil {
			serr = e
			return
		}
		if n == 0 {
			serr = fmt.Errorf("connect %s: no answer within %v", net.JoinHostPort(addr, strconv.Itoa(port)), wait)
			return
		}
		if v, e := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); e != nil {
			serr = e
			return
		} else if v != 0 {
			serr = fmt.Errorf("connect %s: %w", net.JoinHostPort(addr, strconv.Itoa(port)), syscall.Errno(v))
			return
		}
		ls, e := unix.Getsockname(int(fd))
		if e != nil {
			serr = e
			return
		}
		switch ls := ls.(type) {
		case *unix.SockaddrInet4:
			local = netip.AddrPortFrom(netip.AddrFrom4(ls.Addr), uint16(ls.Port))
		case *unix.SockaddrInet6:
			local = netip.AddrPortFrom(netip.AddrFrom16(ls.Addr), uint16(ls.Port))
		}
	})
	return local, errors.Join(err, serr)
}

// dialCtl is fastHits.dial with ctl run on the socket before its connect.
func (h *fastHits) dialCtl(t *testing.T, tp *topo, addr string, port int, ctl func(fd int) error) (net.Conn, error) {
	t.Helper()
	own, err := h.ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	if err := moveTo(h.dir); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	err = inNS(tp.a, func() error {
		d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = ctl(int(fd)) })
			return errors.Join(err, serr)
		}}
		var err error
		c, err = d.Dial("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		return err
	})
	if merr := moveTo(own); merr != nil {
		t.Fatal(merr)
	}
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// ctHasSport reports whether conntrack in ns has a TCP entry from local port
// sport (IPv4 or IPv6).
func ctHasSport(t *testing.T, ns string, v6 bool, sport uint16) bool {
	t.Helper()
	fam := "ipv4"
	if v6 {
		fam = "ipv6"
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L", "-f", fam, "-p", "tcp", "--sport", strconv.Itoa(int(sport))).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "0 flow entries") {
		t.Fatalf("conntrack -L in %s: %v: %s", ns, err, out)
	}
	return strings.Contains(string(out), "sport="+strconv.Itoa(int(sport))+" ")
}

// TestKeptFlowMarkGoesAtNextConnect (review17): a fast socket whose connect
// followed shutdown(2) (SEND_SHUTDOWN, set with ENOTCONN, which the connect
// keeps) looks, at connect(AF_UNSPEC) once established, like one closed with
// a reset (closing_with_reset), and fast_closed kept MarkFastFlow on it; the
// socket lives on. Its next connect, which the queue decides (allowed here),
// then carried MarkFastFlow: the whole connection went untracked, out of
// conntrack (no entry: nothing for the flow table, the byte accountant or a
// rule change's conntrack walk to find), passed by the mark. The mark now goes
// at that connect: the connection is tracked, its socket has no fast mark. A
// connect to a denied port is refused either way. The same with the peer's
// reset in place of connect(AF_UNSPEC) (then connect(AF_UNSPEC) to connect
// again). And a fast socket shut down for writing once established, then
// reset by the peer, loses its mark (closing_with_reset does not take it). IPv4
// and IPv6.
func TestKeptFlowMarkGoesAtNextConnect(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("needs conntrack: %v", err)
	}
	tp := newTopo(t)
	addV6(t, tp)
	for _, addr := range []string{addrB, addrB6} {
		for _, p := range []int{9101, 9102} {
			serveTCP(t, tp.b, net.JoinHostPort(addr, strconv.Itoa(p)), func(c net.Conn) {
				c.Write([]byte("hi"))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
				c.Close()
			})
		}
		// 9103: resets the connection at once; 9104: once the client's
		// FIN came.
		serveTCP(t, tp.b, net.JoinHostPort(addr, "9103"), func(c net.Conn) {
			time.Sleep(50 * time.Millisecond)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
		serveTCP(t, tp.b, net.JoinHostPort(addr, "9104"), func(c net.Conn) {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
	}
	var remotes []string
	for _, p := range []string{"9101", "9103", "9104"} {
		remotes = append(remotes, net.JoinHostPort(addrB, p), net.JoinHostPort(addrB6, p))
	}
	h := newFastHits(t, remotes...)
	d := startDaemon(t, tp, "9101=allow,9103=allow,9104=allow,*=deny", append([]string{"LATCH_TEST_FIREWALL=" + FirewallIptablesNft, "LATCH_TEST_NOTRACK=on"}, h.env...)...)
	if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
		t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
	}
	for _, tc := range []struct {
		addr string
		port int // 9103: the peer resets; else connect(AF_UNSPEC)
	}{{addrB, 9101}, {addrB6, 9101}, {addrB, 9103}, {addrB6, 9103}} {
		addr := tc.addr
		var shut error
		c, err := h.dialCtl(t, tp, addr, tc.port, func(fd int) error {
			shut = unix.Shutdown(fd, unix.SHUT_WR)
			return nil
		})
		if err != nil {
			t.Fatalf("%s: a fast connect: %v", addr, err)
		}
		if !errors.Is(shut, unix.ENOTCONN) {
			t.Fatalf("%s: shutdown before connect: %v, want ENOTCONN", addr, shut)
		}
		if hits := hitFor(d.linesFor(300*time.Millisecond), c); hits != 1 {
			t.Fatalf("%s: the fast path decided %v %d times, want 1", addr, c.LocalAddr(), hits)
		}
		if m, err := sockMark(c.(syscall.Conn)); err != nil || m&MarkMask != MarkFastFlow {
			t.Fatalf("%s: established: mark %#x (%v), want MarkFastFlow", addr, m, err)
		}
		if tc.port == 9103 {
			// TCP_CLOSE from ESTABLISHED by the peer's reset, with
			// SEND_SHUTDOWN set: kept as well.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.Copy(io.Discard, c); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("%s: read until the peer's reset: %v", addr, err)
			}
		}
		if err := disconnect(c.(syscall.Conn)); err != nil {
			t.Fatalf("%s: connect(AF_UNSPEC): %v", addr, err)
		}
		local, err := reconnect(c.(syscall.Conn), addr, 9101, 3*time.Second)
		if err != nil {
			t.Fatalf("%s: connect again to the allowed port: %v", addr, err)
		}
		if m, err := sockMark(c.(syscall.Conn)); err != nil || m&MarkMask == MarkFastFlow {
			t.Errorf("%s: connected again (decided by the queue): mark %#x (%v), want no MarkFastFlow", addr, m, err)
		}
		if !ctHasSport(t, tp.a, addr == addrB6, local.Port()) {
			t.Errorf("%s: the connection the queue allowed from %v has no conntrack entry (untracked)", addr, local)
		}
		if err := disconnect(c.(syscall.Conn)); err != nil {
			t.Fatalf("%s: connect(AF_UNSPEC): %v", addr, err)
		}
		if _, err := reconnect(c.(syscall.Conn), addr, 9102, 3*time.Second); err == nil {
			t.Errorf("%s: a connect to the denied port succeeded", addr)
		}

	}
}

// TestKeptFlowMarkDeadDaemon (review17): the contrived socket of
// TestKeptFlowMarkGoesAtNextConnect, disconnected (connect(AF_UNSPEC)) with
// MarkFastFlow kept, when the daemon dies (SIGKILL) before its next connect:
// no program takes the mark off then, and that connect's SYN, with
// MarkFastFlow, must still not pass by the mark (fail-closed: the queue has no
// reader), even to a port the daemon allowed; a SYN of a socket without a fast
// mark is held the same. IPv4 and IPv6.
func TestKeptFlowMarkDeadDaemon(t *testing.T) {
	tp := newTopo(t)
	addV6(t, tp)
	for _, addr := range []string{addrB, addrB6} {
		serveTCP(t, tp.b, net.JoinHostPort(addr, "9101"), func(c net.Conn) {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c)
			c.Close()
		})
	}
	h := newFastHits(t, addrB+":9101", "["+addrB6+"]:9101")
	d := startDaemon(t, tp, "9101=allow,*=deny", append([]string{"LATCH_TEST_FIREWALL=" + FirewallIptablesNft, "LATCH_TEST_NOTRACK=on"}, h.env...)...)
	if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
		t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
	}
	var conns []net.Conn
	for _, addr := range []string{addrB, addrB6} {
		c, err := h.dialCtl(t, tp, addr, 9101, func(fd int) error { unix.Shutdown(fd, unix.SHUT_WR); return nil })
		if err != nil {
			t.Fatalf("%s: a fast connect: %v", addr, err)
		}
		if err := disconnect(c.(syscall.Conn)); err != nil {
			t.Fatalf("%s: connect(AF_UNSPEC): %v", addr, err)
		}
		if m, err := sockMark(c.(syscall.Conn)); err != nil || m&MarkMask != MarkFastFlow {
			t.Fatalf("%s: disconnected: mark %#x (%v), want MarkFastFlow kept", addr, m, err)
		}
		conns = append(conns, c)
	}
	d.cmd.Process.Kill()
	<-d.exited
	for i, addr := range []string{addrB, addrB6} {
		if _, err := reconnect(conns[i].(syscall.Conn), addr, 9101, 3*time.Second); err == nil {
			t.Errorf("%s: with the daemon dead, the socket that kept MarkFastFlow connected (its SYN passed by the mark)", addr)
		}
	}
}
