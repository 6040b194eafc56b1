package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// joinPort binds a UDP socket of this test's process (root) in tp's A to
// port (the wildcard of family's; SO_REUSEADDR, and SO_REUSEPORT with
// reuseport), with a receive timeout of wait: the program that joins a port
// another program's flow was decided for. Closed at the test's end.
func joinPort(t *testing.T, tp *topo, v6 bool, port int, reuseport bool, wait time.Duration) int {
	t.Helper()
	var fd int
	if err := inNS(tp.a, func() error {
		family := unix.AF_INET
		var local unix.Sockaddr = &unix.SockaddrInet4{Port: port}
		if v6 {
			family, local = unix.AF_INET6, &unix.SockaddrInet6{Port: port}
		}
		var err error
		if fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		opt := unix.SO_REUSEADDR
		if reuseport {
			opt = unix.SO_REUSEPORT
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 1); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(wait.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, local)
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// recvOne reads one datagram from fd: its payload, or "" once the receive
// timeout passed.
func recvOne(fd int) string {
	buf := make([]byte, 256)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// TestUDPInboundLateJoinDecided: with --inbound and the socket pin, a
// program that joins the local port of an inbound UDP flow decided for
// another program (SO_REUSEADDR; the kernel now delivers the flow's
// datagrams to it, the last bound) does not receive the peer's datagrams
// unasked (TestUDPInboundSharedPortLateJoin): the receive check drops the
// first and reports it, and the peer's next datagram is held and decided
// for the program that joined, as for any other program: allowed, it
// receives it; denied (LATCH_TEST_DENY_UID=0: the joiner is root), it
// receives nothing. IPv4 and IPv6.
func TestUDPInboundLateJoinDecided(t *testing.T) {
	for i, c := range []struct {
		v6, deny  bool
		forgotten bool // the daemon forgot the flow before the join (LATCH_TEST_MAX_FLOWS=1)
	}{{false, false, false}, {false, true, false}, {true, false, false}, {true, true, false}, {false, false, true}} {
		name := fmt.Sprintf("v6=%t/deny=%t/forgotten=%t", c.v6, c.deny, c.forgotten)
		t.Run(name, func(t *testing.T) {
			tp := newTopo(t)
			a, b := addrA, addrB
			if c.v6 {
				addV6(t, tp)
				a, b = addrA6, addrB6
			}
			env := []string{"LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=1"}
			if c.deny {
				env = append(env, "LATCH_TEST_DENY_UID=0")
			}
			if c.forgotten {
				env = append(env, "LATCH_TEST_MAX_FLOWS=1")
			}
			d := startReceiveChecked(t, tp, env...)
			defer d.stop()
			port := 40400 + i
			// The allowed program: bound first, as nobody.
			ch := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=8s",
				"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+net.JoinHostPort(b, "9040"))
			l, ok := ch.waitLine("pid ", 10*time.Second)
			if !ok {
				t.Fatalf("the allowed program did not start; stderr:\n%s", ch.errors())
			}
			allowed := strings.TrimPrefix(l, "pid ")
			if _, ok := ch.waitLine("bound", 5*time.Second); !ok {
				t.Fatalf("the allowed program did not bind; stderr:\n%s", ch.errors())
			}
			defer ch.waitLine("done", 12*time.Second)
			peerAddr := netip.AddrPortFrom(netip.MustParseAddr(b), 6100)
			local := netip.AddrPortFrom(netip.MustParseAddr(a), uint16(port))
			var peer *net.UDPConn
			if err := inNS(tp.b, func() error {
				var err error
				peer, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(peerAddr), net.UDPAddrFromAddrPort(local))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			d.drain()
			if _, err := peer.Write([]byte("latch-in-1")); err != nil {
				t.Fatal(err)
			}
			l, ok = d.waitLine(fmt.Sprintf("held in udp %s %s ", local, peerAddr), 3*time.Second)
			if !ok || !strings.Contains(l, " pid="+allowed+" ") {
				t.Fatalf("the peer's first datagram was held as %q, want the allowed program's (pid %s)", l, allowed)
			}
			time.Sleep(200 * time.Millisecond) // its verdict in
			if c.forgotten {
				// Another flow allowed: the daemon's table of one forgets
				// the first (its conntrack entry keeps the allow).
				if err := inNS(tp.b, func() error {
					other, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(peerAddr.Addr(), 6101)), net.UDPAddrFromAddrPort(local))
					if err != nil {
						return err
					}
					defer other.Close()
					_, err = other.Write([]byte("latch-in-other"))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				if _, ok := d.waitLine(fmt.Sprintf("held in udp %s %s:6101 ", local, b), 3*time.Second); !ok {
					t.Fatal("the other flow's datagram was not held")
				}
				time.Sleep(200 * time.Millisecond)
			}
			fd := joinPort(t, tp, c.v6, port, false, time.Second)
			d.drain()
			if _, err := peer.Write([]byte("latch-in-2")); err != nil {
				t.Fatal(err)
			}
			if got := recvOne(fd); got != "" {
				t.Fatalf("the program that joined the port received the peer's datagram %q of a flow decided only for the allowed program (pid %s)", got, allowed)
			}
			if _, ok := d.waitLine(fmt.Sprintf("pin-moved 17 %s %s ", local, peerAddr), 2*time.Second); !ok {
				t.Fatalf("the receive check did not report the datagram it dropped")
			}
			// The peer's next datagram: decided for the program that joined.
			if _, err := peer.Write([]byte("latch-in-3")); err != nil {
				t.Fatal(err)
			}
			me := strconv.Itoa(os.Getpid())
			l, ok = d.waitLine(fmt.Sprintf("held in udp %s %s ", local, peerAddr), 3*time.Second)
			if !ok || !strings.Contains(l, " pid="+me+" ") {
				t.Fatalf("the peer's datagram after the join was held as %q, want the joined program's (pid %s); %s", l, me, d.errors())
			}
			got := recvOne(fd)
			switch {
			case c.deny && got != "":
				t.Errorf("the program that joined the port, denied, received the peer's datagram %q", got)
			case !c.deny && got != "latch-in-3":
				t.Errorf("the program that joined the port, allowed, received %q, want the peer's next datagram", got)
			}
			if !c.deny {
				// Allowed for it: the peer's later datagrams reach it unheld.
				if _, err := peer.Write([]byte("latch-in-4")); err != nil {
					t.Fatal(err)
				}
				if got := recvOne(fd); got != "latch-in-4" {
					t.Errorf("after its allow, the program that joined received %q, want the peer's datagram", got)
				}
			}
		})
	}
}

// udpEcho serves a UDP echo on addr in tp's B (each datagram sent back to
// its sender) until the test ends.
func udpEcho(t *testing.T, tp *topo, addr netip.AddrPort) {
	t.Helper()
	var c *net.UDPConn
	if err := inNS(tp.b, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 256)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// TestUDPReplyLateJoinDropped: the receive check's neighbour on flows this
// host opens (no --inbound). A program's UDP flow, allowed and pinned to its
// socket, shares its local port (SO_REUSEADDR) with a socket that joins
// after: the kernel gives the peer's answers to the joiner (the last bound),
// which the firewall never allowed the flow for. The receive check drops
// them (the flow stays its sender's: nothing is decided again); before it,
// the joiner received them. IPv4 and IPv6.
func TestUDPReplyLateJoinDropped(t *testing.T) {
	for i, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%t", v6), func(t *testing.T) {
			tp := newTopo(t)
			b := addrB
			if v6 {
				addV6(t, tp)
				b = addrB6
			}
			d := startReceiveChecked(t, tp, "LATCH_TEST_ATTRIBUTE=1")
			defer d.stop()
			echo := netip.AddrPortFrom(netip.MustParseAddr(b), uint16(9050+i))
			udpEcho(t, tp, echo)
			port := 40410 + i
			// The allowed program's socket (this process's too: the
			// receive check compares sockets, not programs).
			fd := joinPort(t, tp, v6, port, false, time.Second)
			var to unix.Sockaddr = &unix.SockaddrInet6{Port: int(echo.Port()), Addr: echo.Addr().As16()}
			if !v6 {
				to = &unix.SockaddrInet4{Port: int(echo.Port()), Addr: echo.Addr().As4()}
			}
			if err := unix.Sendto(fd, []byte("latch-out-1"), 0, to); err != nil {
				t.Fatal(err)
			}
			if got := recvOne(fd); got != "latch-out-1" {
				t.Fatalf("the allowed socket got %q back, want its echo", got)
			}
			joiner := joinPort(t, tp, v6, port, false, time.Second)
			if err := unix.Sendto(fd, []byte("latch-out-2"), 0, to); err != nil {
				t.Fatal(err)
			}
			if got := recvOne(joiner); got != "" {
				t.Errorf("the socket that joined the port received the answer %q on a flow allowed for another socket", got)
			}
		})
	}
}

// TestUDPInboundMulticastSharedPort: the receive check leaves multicast
// alone. Two programs share UDP port 5353 (SO_REUSEADDR, mDNS's avahi and a
// browser) in a group; with --inbound and the socket pin a peer's datagram
// to the group is decided once, for one of them, and the kernel gives each
// socket its copy: both still receive it (and the peer's next one), none
// is dropped as another socket's.
func TestUDPInboundMulticastSharedPort(t *testing.T) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=1")
	defer d.stop()
	group := netip.MustParseAddr("224.0.0.251")
	var fds []int
	for range 2 {
		fd := joinPort(t, tp, false, 5353, false, time.Second)
		if err := inNS(tp.a, func() error {
			ifi, err := net.InterfaceByName(tp.vethA)
			if err != nil {
				return err
			}
			return unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP,
				&unix.IPMreqn{Multiaddr: group.As4(), Ifindex: int32(ifi.Index)})
		}); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	var peer int
	if err := inNS(tp.b, func() error {
		var err error
		if peer, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(tp.vethB)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptIPMreqn(peer, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, &unix.IPMreqn{Ifindex: int32(ifi.Index)}); err != nil {
			return err
		}
		return unix.Bind(peer, &unix.SockaddrInet4{Port: 5353, Addr: netip.MustParseAddr(addrB).As4()})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(peer)
	d.drain()
	for i := 1; i <= 2; i++ {
		msg := fmt.Sprintf("latch-mdns-%d", i)
		if err := unix.Sendto(peer, []byte(msg), 0, &unix.SockaddrInet4{Port: 5353, Addr: group.As4()}); err != nil {
			t.Fatal(err)
		}
		for j, fd := range fds {
			if got := recvOne(fd); got != msg {
				t.Errorf("socket %d of the two on port 5353 received %q, want the peer's datagram %q to the group", j, got, msg)
			}
		}
	}
	if held := d.linesFor(200 * time.Millisecond); !strings.Contains(strings.Join(held, "\n"), "pin-moved") {
		t.Logf("daemon: %q", held)
	} else {
		t.Errorf("the receive check reported a datagram to the group as delivered to the wrong socket: %q", held)
	}
}

// startReceiveChecked starts the daemon (policy *=allow) with the socket pin
// and its receive check, and fails the test unless the ruleset runs the pin
// and the check is attached. LATCH_TEST_RECEIVE_CHECK_OFF=1 in the test's
// environment starts it without the check (to see the test fail).
func startReceiveChecked(t *testing.T, tp *topo, env ...string) *daemon {
	t.Helper()
	want := "receive-check true "
	if os.Getenv("LATCH_TEST_RECEIVE_CHECK_OFF") != "" {
		env, want = append(env, "LATCH_TEST_RECEIVE_CHECK=off"), "receive-check false test: off"
	}
	d := startPinned(t, tp, 5*time.Second, env...)
	if l, ok := d.waitLine("receive-check ", 5*time.Second); !ok || l != want {
		d.stop()
		t.Fatalf("the socket pin's receive check: %q, want %q; stderr:\n%s", l, want, d.errors())
	}
	return d
}

// TestPingReplyLateJoinDropped: the receive check's neighbour on ICMP echo.
// Ping sockets share an echo identifier with SO_REUSEADDR; the kernel gives
// an echo reply to the last bound. A ping socket that joins the identifier
// of an allowed, pinned echo flow gets none of the replies to the other's
// requests (before the check, it received them).
func TestPingReplyLateJoinDropped(t *testing.T) {
	tp := newTopo(t)
	allowPingSockets(t, tp.a)
	d := startReceiveChecked(t, tp)
	defer d.stop()
	const ident = 40420
	ping := func() int {
		var fd int
		if err := inNS(tp.a, func() error {
			var err error
			if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP); err != nil {
				return err
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
			tv := unix.NsecToTimeval(int64(time.Second))
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
			return unix.Bind(fd, &unix.SockaddrInet4{Port: ident})
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	allowed := ping()
	if err := unix.Sendto(allowed, icmpMsg(8, 0, 0, []byte("latch-ping-1"), true), 0, sockaddr(addrB)); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(allowed); !strings.Contains(got, "latch-ping-1") {
		t.Fatalf("the allowed ping socket got %q, want the reply to its echo request", got)
	}
	joiner := ping()
	if err := unix.Sendto(allowed, icmpMsg(8, 0, 0, []byte("latch-ping-2"), true), 0, sockaddr(addrB)); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(joiner); got != "" {
		t.Errorf("the ping socket that joined the echo identifier received %q, the reply to another socket's allowed echo request", got)
	}
}

// TestUDPServerRestartWithoutInbound: without --inbound nothing decides what
// a peer sends first, and the socket pin pins a flow the peer opened to the
// socket whose answer was allowed. A server restarted on its port (the
// pinned socket closed, a new one bound) must still get the datagrams of a
// peer that keeps sending on the same flow (whose conntrack entry never
// expires): the receive check drops the first, and the daemon forgets the
// flow's pin (PinMoved), so the next reaches the new socket, and its answer
// is held and decided. Without that, the new server never received the
// peer again.
func TestUDPServerRestartWithoutInbound(t *testing.T) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_ATTRIBUTE=1")
	defer d.stop()
	const port = 40430
	old := joinPort(t, tp, false, port, false, time.Second)
	local := netip.AddrPortFrom(netip.MustParseAddr(addrA), port)
	peerAddr := netip.AddrPortFrom(netip.MustParseAddr(addrB), 6110)
	var peer *net.UDPConn
	if err := inNS(tp.b, func() error {
		var err error
		peer, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(peerAddr), net.UDPAddrFromAddrPort(local))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := peer.Write([]byte("latch-srv-1")); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(old); got != "latch-srv-1" {
		t.Fatalf("the server got %q, want the peer's datagram", got)
	}
	// The server answers: held, allowed, pinned to its socket.
	if err := unix.Sendto(old, []byte("answer-1"), 0, &unix.SockaddrInet4{Port: int(peerAddr.Port()), Addr: peerAddr.Addr().As4()}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := peer.Read(buf); err != nil || string(buf[:n]) != "answer-1" {
		t.Fatalf("the peer got %q (%v), want the server's answer", buf[:n], err)
	}
	// The server restarts.
	unix.Close(old)
	srv := joinPort(t, tp, false, port, false, 500*time.Millisecond)
	got := ""
	for i := range 4 {
		if _, err := peer.Write([]byte(fmt.Sprintf("latch-srv-again-%d", i))); err != nil {
			t.Fatal(err)
		}
		if got = recvOne(srv); got != "" {
			break
		}
	}
	if got == "" {
		t.Fatalf("the restarted server received none of 4 datagrams of the peer that kept sending on its flow")
	}
}
