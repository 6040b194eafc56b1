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

// sendThenClose binds socks UDP sockets with SO_REUSEADDR to port in tp's
// A (as this test's process), sends msg n times to to from each in turn
// (all bound), and closes them at once (keep: at the test's end): the
// program that shares another's port and is gone before the daemon looks at
// the sockets on it.
func sendThenClose(t *testing.T, tp *topo, port int, to netip.AddrPort, msg string, n, socks int, keep bool) {
	t.Helper()
	if err := inNS(tp.a, func() error {
		family := unix.AF_INET6
		var local, sa unix.Sockaddr = &unix.SockaddrInet6{Port: port}, &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
		if to.Addr().Is4() {
			family = unix.AF_INET
			local, sa = &unix.SockaddrInet4{Port: port}, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
		}
		var fds []int
		defer func() {
			for _, fd := range fds {
				if keep {
					t.Cleanup(func() { unix.Close(fd) })
				} else {
					unix.Close(fd)
				}
			}
		}()
		for range socks {
			fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
			if err := unix.Bind(fd, local); err != nil {
				return err
			}
		}
		for _, fd := range fds {
			for range n {
				if err := unix.Sendto(fd, []byte(msg), 0, sa); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestUDPSharedPortSendThenClose (review12): a program no rule allows
// shares an allowed program's UDP port (same user, SO_REUSEADDR), sends a
// few identical datagrams at once and closes its socket. Over IPv6 (no IPv4
// id) identical datagrams of one socket share a sender stash key: the first
// takes its one record, the rest find none; and by the time the daemon lists
// the sockets on the port only the allowed program's is left. Attributing a
// datagram with no record to the one socket bound "now" credits the allowed
// program with the attacker's datagrams. Each datagram must be held as no
// program's (or the sender's), never as the program that did not send it.
// (IPv4: each datagram has its own id, so its own record: a control.) With
// two sockets of the attacker sending alike, the records are ambiguous (0)
// and the same holds.
func TestUDPSharedPortSendThenClose(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		for i, c := range []struct {
			dst   string
			socks int
		}{{addrB, 1}, {addrB6, 1}, {addrB6, 2}} {
			dst, socks := c.dst, c.socks
			t.Run(fmt.Sprintf("%s/%s/%d-sockets", fw, dst, socks), func(t *testing.T) {
				needFirewall(t, fw)
				tp := newTopo(t)
				addV6(t, tp)
				d, stash := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_POLICY=*=allow@1s")
				defer d.stop()
				if stash == 0 {
					t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
				}
				port := 40380 + i
				to := netip.MustParseAddrPort(net.JoinHostPort(dst, strconv.Itoa(9026+i)))
				// The allowed program: bound first, stays bound, sends
				// nothing to the attacker's destination.
				c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_KEEP_UID=1", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=4s",
					"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+net.JoinHostPort(dst, "9030"))
				l, ok := c.waitLine("pid ", 10*time.Second)
				if !ok {
					t.Fatalf("the allowed program did not start; stderr:\n%s", c.errors())
				}
				allowed := strings.TrimPrefix(l, "pid ")
				if _, ok := c.waitLine("bound", 5*time.Second); !ok {
					t.Fatalf("the allowed program did not bind; stderr:\n%s", c.errors())
				}
				defer c.waitLine("done", 10*time.Second)
				d.drain()
				const n = 8
				sendThenClose(t, tp, port, to, "latch-send-then-close", n/socks, socks, false)
				var held []string
				for _, l := range d.linesFor(1500 * time.Millisecond) {
					if strings.HasPrefix(l, "held out udp ") && strings.Contains(l, " "+to.String()+" ") {
						held = append(held, l)
					}
				}
				if len(held) < 2 {
					t.Fatalf("%d of the %d datagrams held (want them all queued while the first is decided): %q", len(held), n, held)
				}
				me := strconv.Itoa(os.Getpid())
				bad := 0
				for _, h := range held {
					if strings.Contains(h, " pid="+allowed+" ") {
						bad++
					}
				}
				if bad > 0 {
					t.Errorf("%d of the attacker's (pid %s) %d datagrams held were held as the allowed program's (pid %s): %q", bad, me, len(held), allowed, held)
				}
			})
		}
	}
}

// TestUDPIdenticalDatagramsAttributed (review12), the control of
// TestUDPSharedPortSendThenClose: identical datagrams of one socket, alone on
// its port and still open, share one stash record; those that find it taken
// are still the socket's (the only one that ever sent from the port), not no
// program's.
func TestUDPIdenticalDatagramsAttributed(t *testing.T) {
	fw := FirewallIptablesNft
	needFirewall(t, fw)
	tp := newTopo(t)
	addV6(t, tp)
	d, stash := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_POLICY=*=allow@1s")
	defer d.stop()
	if stash == 0 {
		t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
	}
	to := netip.MustParseAddrPort(net.JoinHostPort(addrB6, "9031"))
	d.drain()
	const n = 8
	sendThenClose(t, tp, 40385, to, "latch-identical", n, 1, true)
	var held []string
	for _, l := range d.linesFor(1500 * time.Millisecond) {
		if strings.HasPrefix(l, "held out udp ") && strings.Contains(l, " "+to.String()+" ") {
			held = append(held, l)
		}
	}
	if len(held) < 2 {
		t.Fatalf("%d of the %d datagrams held (want them all queued while the first is decided): %q", len(held), n, held)
	}
	for _, h := range held {
		if !strings.Contains(h, fmt.Sprintf(" pid=%d ", os.Getpid())) {
			t.Errorf("a datagram of this test's socket, alone on its port, held as %q, not as the test's (pid %d)", h, os.Getpid())
		}
	}
}

// TestUDPInboundSharedPortLateJoin (review12): an inbound UDP
// flow is decided for the program whose socket the lookup of its tuple finds
// on the local port (here the only one bound, the allowed program's). A
// program that binds the same port after (SO_REUSEADDR, any user's where the
// allowed program set it too; SO_REUSEPORT, the same user's) then receives
// the peer's later datagrams of the flow, which conntrack passes as allowed
// without asking anyone: the firewall never decided the flow for it. (The
// same with SO_REUSEPORT and a reuseport BPF program steering to the
// attacker, with no later join: the lookup, without the packet, selects by
// hash.) Nothing at the queue can tell the receiving socket: the socket
// pin's receive check (cgroup_skb ingress, see internal/fastpath) drops it
// (TestUDPInboundLateJoinDecided: and the flow is decided again for the
// joiner). LATCH_TEST_RECEIVE_CHECK_OFF=1 shows the hole.
func TestUDPInboundSharedPortLateJoin(t *testing.T) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=1")
	defer d.stop()
	const port = 40390
	// The allowed program: bound first, as nobody.
	c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=6s",
		"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+net.JoinHostPort(addrB, "9040"))
	l, ok := c.waitLine("pid ", 10*time.Second)
	if !ok {
		t.Fatalf("the allowed program did not start; stderr:\n%s", c.errors())
	}
	allowed := strings.TrimPrefix(l, "pid ")
	if _, ok := c.waitLine("bound", 5*time.Second); !ok {
		t.Fatalf("the allowed program did not bind; stderr:\n%s", c.errors())
	}
	defer c.waitLine("done", 10*time.Second)
	var peer *net.UDPConn
	if err := inNS(tp.b, func() error {
		var err error
		peer, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(addrB), Port: 6100}, &net.UDPAddr{IP: net.ParseIP(addrA), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	d.drain()
	if _, err := peer.Write([]byte("latch-in-1")); err != nil {
		t.Fatal(err)
	}
	l, ok = d.waitLine(fmt.Sprintf("held in udp %s:%d %s:6100 ", addrA, port, addrB), 3*time.Second)
	if !ok || !strings.Contains(l, " pid="+allowed+" ") {
		t.Fatalf("the peer's first datagram was held as %q, want the allowed program's (pid %s)", l, allowed)
	}
	time.Sleep(200 * time.Millisecond) // its verdict in
	// The attacker (this test's process, root) joins the port.
	var fd int
	if err := inNS(tp.a, func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet4{Port: port})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := peer.Write([]byte("latch-in-2")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	var heldMine []string
	for _, l := range d.linesFor(300 * time.Millisecond) {
		if strings.HasPrefix(l, "held in udp ") && strings.Contains(l, fmt.Sprintf(" pid=%d ", os.Getpid())) {
			heldMine = append(heldMine, l)
		}
	}
	if err == nil && len(heldMine) == 0 {
		t.Errorf("the program that joined the port received the peer's datagram %q of a flow decided only for the allowed program (pid %s)", buf[:n], allowed)
	}
}
