package linux

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/fastpath"
	"golang.org/x/sys/unix"
)

// unprivilegedUDP is the child side of TestUDPFlowOutlivesItsSocket: as
// nobody, it sends each word of LATCH_TEST_UDP_MSGS as a datagram from local
// port LATCH_TEST_UDP_PORT to LATCH_TEST_UDP_TO.
func unprivilegedUDP() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	// LATCH_TEST_UDP_KEEP_UID: another program of the same user (root here).
	if os.Getenv("LATCH_TEST_UDP_KEEP_UID") == "" {
		if err := syscall.Setgroups(nil); err != nil {
			return fail(err)
		}
		if err := syscall.Setresgid(65534, 65534, 65534); err != nil {
			return fail(err)
		}
		if err := syscall.Setresuid(65534, 65534, 65534); err != nil {
			return fail(err)
		}
	}
	fmt.Println("pid", os.Getpid())
	port, err := strconv.Atoi(os.Getenv("LATCH_TEST_UDP_PORT"))
	if err != nil {
		return fail(err)
	}
	to, err := net.ResolveUDPAddr("udp", os.Getenv("LATCH_TEST_UDP_TO"))
	if err != nil {
		return fail(err)
	}
	// An IPv6 destination: an IPv6 socket (UDP only).
	family := unix.AF_INET
	if to.IP.To4() == nil {
		family = unix.AF_INET6
	}
	// LATCH_TEST_UDP_PROTO=icmp: a ping socket, bound to the echo
	// identifier LATCH_TEST_UDP_PORT, sending echo requests.
	icmp := os.Getenv("LATCH_TEST_UDP_PROTO") == "icmp"
	proto := 0
	if icmp {
		proto = unix.IPPROTO_ICMP
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM, proto)
	if err != nil {
		return fail(err)
	}
	if os.Getenv("LATCH_TEST_UDP_REUSE") != "" {
		// Shares the port with a live socket that set it too (any user's:
		// SO_REUSEPORT would want the same one).
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail(err)
		}
	}
	var local, sa unix.Sockaddr = &unix.SockaddrInet4{Port: port}, nil
	// LATCH_TEST_UDP_BIND: the local address to bind (IPv6 only; else the
	// wildcard).
	bindAddr := netip.IPv6Unspecified()
	if a := os.Getenv("LATCH_TEST_UDP_BIND"); a != "" {
		if bindAddr, err = netip.ParseAddr(a); err != nil {
			return fail(err)
		}
	}
	if family == unix.AF_INET6 {
		local = &unix.SockaddrInet6{Port: port, Addr: bindAddr.As16()}
		sa6 := &unix.SockaddrInet6{Port: to.Port}
		copy(sa6.Addr[:], to.IP.To16())
		sa = sa6
	} else {
		sa4 := &unix.SockaddrInet4{Port: to.Port}
		copy(sa4.Addr[:], to.IP.To4())
		sa = sa4
	}
	if err := unix.Bind(fd, local); err != nil {
		return fail(fmt.Errorf("bind port %d: %w", port, err))
	}
	fmt.Println("bound")
	// LATCH_TEST_UDP_CONNECT (IPv6): connect the socket there, and still
	// send to LATCH_TEST_UDP_TO (sendto on a connected UDP socket).
	if c := os.Getenv("LATCH_TEST_UDP_CONNECT"); c != "" {
		ap, err := netip.ParseAddrPort(c)
		if err != nil {
			return fail(err)
		}
		if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
			return fail(fmt.Errorf("connect to %v: %w", ap, err))
		}
	}
	// LATCH_TEST_UDP_SRC (IPv6): send from this source address
	// (IPV6_PKTINFO), whatever address the socket is bound to.
	var oob []byte
	if a := os.Getenv("LATCH_TEST_UDP_SRC"); a != "" {
		src, err := netip.ParseAddr(a)
		if err != nil {
			return fail(err)
		}
		oob = make([]byte, unix.CmsgSpace(unix.SizeofInet6Pktinfo))
		binary.NativeEndian.PutUint64(oob[0:], uint64(unix.CmsgLen(unix.SizeofInet6Pktinfo)))
		binary.NativeEndian.PutUint32(oob[8:], unix.IPPROTO_IPV6)
		binary.NativeEndian.PutUint32(oob[12:], unix.IPV6_PKTINFO)
		a16 := src.As16()
		copy(oob[unix.CmsgLen(0):], a16[:])
	}
	if d, err := time.ParseDuration(os.Getenv("LATCH_TEST_UDP_DELAY")); err == nil {
		time.Sleep(d)
	}
	for _, m := range strings.Fields(os.Getenv("LATCH_TEST_UDP_MSGS")) {
		msg := []byte(m)
		if icmp {
			msg = icmpMsg(8, 0, 0, msg, true)
		}
		var err error
		if oob != nil {
			_, err = unix.SendmsgN(fd, msg, oob, sa, 0)
		} else {
			err = unix.Sendto(fd, msg, 0, sa)
		}
		fmt.Println("sent", m, err)
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Println("done")
	// LATCH_TEST_UDP_LINGER: stay (the socket open) this long after the
	// last datagram, so that the daemon finds its sender alive however late
	// it reads the datagram (the test kills this child at its end).
	if d, err := time.ParseDuration(os.Getenv("LATCH_TEST_UDP_LINGER")); err == nil {
		time.Sleep(d)
	}
	return 0
}

// heldCount counts the daemon's "held out" lines (outbound requests) in
// lines that name remote.
func heldCount(lines []string, remote string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "held out ") && strings.Contains(l, " "+remote+" ") {
			n++
		}
	}
	return n
}

// TestUDPFlowOutlivesItsSocket (review7): a UDP flow is decided once, for
// the socket that sent its first datagram, and its conntrack entry (with the
// allow mark) lives on for 30 s after that socket closes, renewed by every
// datagram. Another program, no rule allows (here: user nobody, whom the
// test's decider denies), binds the freed local port (any port over 1023;
// /proc/net/udp shows everyone's connected sockets) and sends to the same
// destination: the same 5-tuple, which the allowed flow's RETURN passed
// without a question, recorded as the first program's (it reached F on
// 2a1af5a). With the socket pin (Config.FastSocketPin) the flow passes only
// from the socket its allow was for: nobody's datagrams are held and denied.
// Control: nobody's datagram from a port of its own is held and denied. Then:
// the allowed program's datagrams pass with one question for the flow, and
// the allowed program binding its port again after the close is asked once
// and allowed (not dropped for ever).
func TestUDPFlowOutlivesItsSocket(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			atF := openRaw(t, tp.b, false, unix.IPPROTO_UDP, "").capture()
			d := startPinned(t, tp, 5*time.Second, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_DENY_UID=65534")
			defer d.stop()
			to := net.JoinHostPort(addrB, "9002")
			nobody := func(port int, msgs string) {
				t.Helper()
				sendAsNobody(t, tp, "LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+to, "LATCH_TEST_UDP_MSGS="+msgs)
			}
			// Control: nobody's own flow is held and denied.
			nobody(40301, "latch-nobody-own")
			if atF.waitSaw("latch-nobody-own", time.Second) {
				t.Fatal("nobody's datagram from a port of its own reached F: the test's decider does not deny nobody")
			}
			// The allowed program (root) sends ten datagrams and closes.
			root := func(prefix string) {
				t.Helper()
				if err := inNS(tp.a, func() error {
					// Not connected: F's port unreachable would fail the
					// next write.
					c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 40300})
					if err != nil {
						return err
					}
					defer c.Close()
					for i := range 10 {
						if _, err := c.WriteToUDP([]byte(fmt.Sprintf("%s-%d", prefix, i)), &net.UDPAddr{IP: net.ParseIP(addrB), Port: 9002}); err != nil {
							return err
						}
						if i == 0 {
							// The rest after the first's verdict (a loaded
							// machine may take longer than the 5 ms below):
							// they are the flow's, passed by its mark and pin.
							atF.waitSaw(prefix+"-0", 2*time.Second)
						}
						time.Sleep(5 * time.Millisecond)
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				for i := range 10 {
					if !atF.waitSaw(fmt.Sprintf("%s-%d", prefix, i), 2*time.Second) {
						t.Fatalf("the allowed program's datagram %s-%d did not reach F", prefix, i)
					}
				}
			}
			d.drain()
			root("latch-root")
			if n := heldCount(d.linesFor(200*time.Millisecond), to); n != 1 {
				t.Errorf("the allowed program's flow of 10 datagrams was held %d times; want 1 (its first datagram)", n)
			}
			nobody(40300, "latch-piggyback-0 latch-piggyback-1 latch-piggyback-2")
			if atF.waitSaw("latch-piggyback", time.Second) {
				t.Errorf("a program no rule allows (nobody) reached F:9002 on the port a closed allowed socket left, without a question")
			}
			lines := d.linesFor(200 * time.Millisecond)
			if n := heldCount(lines, to); n != 3 {
				t.Errorf("nobody's 3 datagrams on the allowed flow were held %d times; want 3 (each decided for nobody, and denied)", n)
			}
			for _, l := range lines {
				t.Logf("daemon: %s", l)
			}
			// The allowed program binds its port again: a new socket, asked
			// once (its first datagram), allowed.
			root("latch-again")
			if n := heldCount(d.linesFor(200*time.Millisecond), to); n != 1 {
				t.Errorf("the allowed program's new socket on its old flow was held %d times for 10 datagrams; want 1", n)
			}
		})
	}
}

// TestUDPFlowOutlivesItsSocketNft: TestUDPFlowOutlivesItsSocket's hole with
// the native nftables ruleset, on kernels without nft_queue (as
// nftAllowFirst: the queue statements drop, and the flow's first datagram
// to B gets an allow verdict's mark): the socket pin's rules (added over
// netlink) record the allowed socket and pass its datagrams; another user's
// socket bound to the port the allowed socket freed sends on the flow's
// conntrack entry and is held (dropped here), not passed.
func TestUDPFlowOutlivesItsSocketNft(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skipf("needs nft: %v", err)
	}
	tp := newTopo(t)
	atF := openRaw(t, tp.b, false, unix.IPPROTO_UDP, "").capture()
	sp, err := fastpath.OpenSocketPin(filepath.Join(t.TempDir(), "bpf"))
	if err != nil {
		t.Skipf("cannot load the socket pin: %v", err)
	}
	defer sp.Close()
	// The ruleset with its queue statements as drops, and before it a chain
	// that gives root's first datagrams to B an allow verdict's mark (an
	// unreplied UDP flow's datagrams are all conntrack NEW: nobody's too,
	// which the daemon would deny).
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, exemptLoopback: true, sockPin: sp.Path()}.nftRules(), "drop")
	rules += "add table inet latchverdict\n"
	rules += "add chain inet latchverdict output { type filter hook output priority filter - 2; }\n"
	rules += fmt.Sprintf("add rule inet latchverdict output meta skuid 0 ct state new ip daddr %s meta mark set %#x\n", addrB, MarkAllow)
	cmd := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	if err := inNS(tp.a, func() error {
		if err := addNftBPFMatch(nftTable, nftSockPin, nftSockPinPass, sp.Path()); err != nil {
			return err
		}
		return addNftBPFMatch(nftTable, nftSockPinRec, nftSockPinRecDone, sp.Path())
	}); err != nil {
		t.Fatal(err)
	}
	to := &net.UDPAddr{IP: net.ParseIP(addrB), Port: 9002}
	if err := inNS(tp.a, func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 40300})
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range 5 {
			if _, err := c.WriteToUDP([]byte(fmt.Sprintf("latch-root-%d", i)), to); err != nil {
				return err
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if !atF.waitSaw(fmt.Sprintf("latch-root-%d", i), 2*time.Second) {
			t.Fatalf("the allowed socket's datagram latch-root-%d did not reach F (the pin does not pass its own socket)", i)
		}
	}
	sendAsNobody(t, tp, "LATCH_TEST_UDP_PORT=40300", "LATCH_TEST_UDP_TO="+to.String(), "LATCH_TEST_UDP_MSGS=latch-piggyback-0 latch-piggyback-1")
	if atF.waitSaw("latch-piggyback", time.Second) {
		t.Errorf("another user's socket on the port a closed allowed socket left reached F:9002 on the allowed flow's conntrack entry")
	}
}

// TestUDPServerReplyOutlivesItsSocket: the reply direction of the hole in
// TestUDPFlowOutlivesItsSocket. With Config.Inbound a peer's datagram to a
// local UDP server is decided on the way in, and its allow marks the flow:
// the server's answers pass (asked nothing more: the first local socket to
// answer claims the flow's pin). Once the server's socket closes, another
// program no rule allows (nobody) that binds the server's port and sends to
// the peer on the same flow is held and denied, not passed by the flow's
// mark.
func TestUDPServerReplyOutlivesItsSocket(t *testing.T) {
	// Without a Resolver the pin's rule records a wildcard the first socket
	// to answer claims; with one, the daemon records the socket it found
	// (see TestUDPServerUnansweredClaimedByAnother).
	for _, c := range []struct{ fw, attr string }{
		{FirewallIptablesNft, ""}, {FirewallIptablesLegacy, ""}, {FirewallIptablesNft, "1"}, {FirewallIptablesLegacy, "1"},
	} {
		fw := c.fw
		name := fw
		if c.attr != "" {
			name += "/resolver"
		}
		t.Run(name, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			d := startPinned(t, tp, 5*time.Second, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_DENY_UID=65534", "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE="+c.attr)
			defer d.stop()
			peer := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9003"))
			srvAddr := netip.MustParseAddrPort(addrA + ":40310")
			srv := listenUDPIn(t, tp.a, srvAddr)
			d.drain()
			peer.send(t, srvAddr, "latch-question")
			if !srv.receives("latch-question", 2*time.Second) {
				t.Fatal("the peer's datagram did not reach the server (inbound allow)")
			}
			for i := range 5 {
				srv.send(t, netip.MustParseAddrPort(addrB+":9003"), fmt.Sprintf("latch-answer-%d", i))
				if !peer.receives(fmt.Sprintf("latch-answer-%d", i), 2*time.Second) {
					t.Fatalf("the server's answer %d did not reach the peer", i)
				}
			}
			lines := d.linesFor(200 * time.Millisecond)
			for _, l := range lines {
				t.Logf("daemon: %s", l)
			}
			if n := heldCount(lines, addrB+":9003"); n != 0 {
				t.Errorf("the server's answers on its allowed inbound flow were held %d times; want 0", n)
			}
			srv.c.Close()
			sendAsNobody(t, tp, "LATCH_TEST_UDP_PORT=40310", "LATCH_TEST_UDP_TO="+addrB+":9003", "LATCH_TEST_UDP_MSGS=latch-piggyback-0 latch-piggyback-1")
			if peer.receives("latch-piggyback-0", time.Second) || peer.receives("latch-piggyback-1", 100*time.Millisecond) {
				t.Errorf("a program no rule allows (nobody) reached the peer on the port a closed server socket left, on its allowed inbound flow")
			}
			if n := heldCount(d.linesFor(200*time.Millisecond), addrB+":9003"); n != 2 {
				t.Errorf("nobody's 2 datagrams were held %d times; want 2", n)
			}
		})
	}
}

// TestPingFlowOutlivesItsSocket: TestUDPFlowOutlivesItsSocket's hole with
// ICMP echo: a ping socket's allowed flow (its echo identifier in place of
// ports) keeps its allow conntrack mark after the socket closes; another
// user's ping socket bound to the same identifier sends echo requests to the
// same host. With the socket pin they are held (and denied), not passed.
func TestPingFlowOutlivesItsSocket(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			allowPingSockets(t, tp.a)
			atB := openRaw(t, tp.b, false, unix.IPPROTO_ICMP, "").capture()
			d := startPinned(t, tp, 5*time.Second, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_DENY_UID=65534")
			defer d.stop()
			d.drain()
			if err := inNS(tp.a, func() error {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)
				if err != nil {
					return err
				}
				defer unix.Close(fd)
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 40320}); err != nil {
					return err
				}
				for i := range 5 {
					if err := unix.Sendto(fd, icmpMsg(8, 0, 0, []byte(fmt.Sprintf("latch-ping-root-%d", i)), true), 0, sockaddr(addrB)); err != nil {
						return err
					}
					if i == 0 {
						atB.waitSaw("latch-ping-root-0", 2*time.Second) // the rest after its verdict
					}
					time.Sleep(5 * time.Millisecond)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				if !atB.waitSaw(fmt.Sprintf("latch-ping-root-%d", i), 2*time.Second) {
					t.Fatalf("the allowed ping socket's echo request %d did not reach B", i)
				}
			}
			held := func() int {
				n := 0
				for _, l := range d.linesFor(200 * time.Millisecond) {
					if strings.HasPrefix(l, "held out icmp ") {
						n++
					}
				}
				return n
			}
			if n := held(); n != 1 {
				t.Errorf("the allowed ping socket's 5 echo requests were held %d times; want 1", n)
			}
			sendAsNobody(t, tp, "LATCH_TEST_UDP_PROTO=icmp", "LATCH_TEST_UDP_PORT=40320", "LATCH_TEST_UDP_TO="+addrB+":0", "LATCH_TEST_UDP_MSGS=latch-ping-nobody-0 latch-ping-nobody-1")
			if atB.waitSaw("latch-ping-nobody", time.Second) {
				t.Errorf("nobody's ping socket, bound to the echo identifier of a closed allowed one, reached B unasked")
			}
			if n := held(); n != 2 {
				t.Errorf("nobody's 2 echo requests were held %d times; want 2", n)
			}
		})
	}
}

// TestUDPFlowSharedPort: the live-socket form of TestUDPFlowOutlivesItsSocket.
// An allowed program's UDP socket set SO_REUSEADDR; another user's socket with
// it too binds the same port while the first is open (UDP checks no owner
// for SO_REUSEADDR) and sends to the same destination: the allowed flow's
// tuple. With the socket pin its datagrams are held (and denied), and the
// allowed socket's next datagrams still pass unasked.
func TestUDPFlowSharedPort(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			atF := openRaw(t, tp.b, false, unix.IPPROTO_UDP, "").capture()
			d := startPinned(t, tp, 5*time.Second, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_DENY_UID=65534")
			defer d.stop()
			to := net.JoinHostPort(addrB, "9004")
			var fd int
			if err := inNS(tp.a, func() error {
				var err error
				if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0); err != nil {
					return err
				}
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
					return err
				}
				return unix.Bind(fd, &unix.SockaddrInet4{Port: 40340})
			}); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			rootSends := func(prefix string) {
				t.Helper()
				for i := range 3 {
					if err := unix.Sendto(fd, []byte(fmt.Sprintf("%s-%d", prefix, i)), 0, &unix.SockaddrInet4{Port: 9004, Addr: netip.MustParseAddr(addrB).As4()}); err != nil {
						t.Fatal(err)
					}
					if !atF.waitSaw(fmt.Sprintf("%s-%d", prefix, i), 2*time.Second) {
						t.Fatalf("the allowed socket's datagram %s-%d did not reach F", prefix, i)
					}
				}
			}
			d.drain()
			rootSends("latch-root")
			if n := heldCount(d.linesFor(200*time.Millisecond), to); n != 1 {
				t.Errorf("the allowed socket's 3 datagrams were held %d times; want 1", n)
			}
			c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_PORT=40340", "LATCH_TEST_UDP_TO="+to, "LATCH_TEST_UDP_MSGS=latch-shared-0 latch-shared-1")
			if l, ok := c.waitLine("sent latch-shared-0", 10*time.Second); !ok || l != "sent latch-shared-0 <nil>" {
				t.Fatalf("nobody could not share the port: %q; stderr:\n%s", l, c.errors())
			}
			if _, ok := c.waitLine("done", 10*time.Second); !ok {
				t.Fatalf("the unprivileged sender did not finish; stderr:\n%s", c.errors())
			}
			if atF.waitSaw("latch-shared", time.Second) {
				t.Errorf("nobody's socket sharing the allowed socket's port (SO_REUSEADDR) reached F:9004 unasked")
			}
			if n := heldCount(d.linesFor(200*time.Millisecond), to); n != 2 {
				t.Errorf("nobody's 2 datagrams were held %d times; want 2", n)
			}
			rootSends("latch-root-again")
			if n := heldCount(d.linesFor(200*time.Millisecond), to); n != 0 {
				t.Errorf("the allowed socket's datagrams after nobody's were held %d times; want 0", n)
			}
		})
	}
}

// TestUDPFlowSocketReusedFast: with the kernel fast path's UDP match, a new
// socket on the tuple of an allowed flow conntrack still remembers (the
// local port of a closed socket, as a program that opens a socket per
// exchange soon gets) is decided by the UDP match for its own socket, as a
// new flow would be, and passes unqueued; the socket pin then passes its
// later datagrams.
func TestUDPFlowSocketReusedFast(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			srv := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9105"))
			path := pinPortMatch(t, 9105)
			d := startPinned(t, tp, 10*time.Second, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_FAST_UDP="+path)
			defer d.stop()
			for s := range 3 {
				if err := inNS(tp.a, func() error {
					c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 40350})
					if err != nil {
						return err
					}
					defer c.Close()
					for i := range 3 {
						if _, err := c.WriteToUDP([]byte(fmt.Sprintf("latch-sock%d-%d", s, i)), &net.UDPAddr{IP: net.ParseIP(addrB), Port: 9105}); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					if !srv.receives(fmt.Sprintf("latch-sock%d-%d", s, i), 2*time.Second) {
						t.Fatalf("socket %d's datagram %d did not arrive", s, i)
					}
				}
			}
			if n := heldCount(d.linesFor(300*time.Millisecond), addrB+":9105"); n != 0 {
				t.Errorf("3 sockets in turn on one tuple the UDP match allows were held %d times; want 0", n)
			}
		})
	}
}

// TestUDPServerUnansweredClaimedByAnother (review10): the wildcard claim of
// TestUDPServerReplyOutlivesItsSocket went to whichever local socket sent
// first on the reversed tuple, not to the socket the inbound verdict was
// for. A peer (the attacker's own host) sends one datagram to a local UDP
// server whose program a rule allows inbound; the server does not answer it
// (an invalid request, a one-shot receiver) and its socket closes. Another
// program no rule allows (nobody) binds the freed port and sends to the
// peer: the flow's mark says allowed and the pin was a wildcard nobody's
// socket claimed, so its datagrams reached the peer without a question.
// Now the daemon records, before its allow, the socket its Resolver found
// for the inbound datagram (pinInbound), which the pin's rule in LATCH-IN
// leaves in place: nobody's datagrams are held and denied.
func TestUDPServerUnansweredClaimedByAnother(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			d := startPinned(t, tp, 5*time.Second, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_DENY_UID=65534", "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=1")
			defer d.stop()
			peer := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9013"))
			srvAddr := netip.MustParseAddrPort(addrA + ":40311")
			srv := listenUDPIn(t, tp.a, srvAddr)
			d.drain()
			peer.send(t, srvAddr, "latch-question")
			if !srv.receives("latch-question", 2*time.Second) {
				t.Fatal("the peer's datagram did not reach the server (inbound allow)")
			}
			srv.c.Close() // unanswered
			// Control: nobody from a port of its own is held and denied.
			sendAsNobody(t, tp, "LATCH_TEST_UDP_PORT=40312", "LATCH_TEST_UDP_TO="+addrB+":9013", "LATCH_TEST_UDP_MSGS=latch-own-0")
			if peer.receives("latch-own-0", time.Second) {
				t.Fatal("nobody's datagram from a port of its own reached the peer: the test's decider does not deny nobody")
			}
			sendAsNobody(t, tp, "LATCH_TEST_UDP_PORT=40311", "LATCH_TEST_UDP_TO="+addrB+":9013", "LATCH_TEST_UDP_MSGS=latch-claim-0 latch-claim-1")
			if peer.receives("latch-claim-0", time.Second) || peer.receives("latch-claim-1", 100*time.Millisecond) {
				t.Errorf("a program no rule allows (nobody) claimed an unanswered inbound flow's pin on the port its server freed and reached the peer unasked")
			}
			if n := heldCount(d.linesFor(200*time.Millisecond), addrB+":9013"); n != 3 {
				t.Errorf("nobody's 3 datagrams (1 from its own port, 2 on the freed one) were held %d times; want 3", n)
			}
		})
	}
}

// startPinned starts the test daemon allowing everything its decider allows
// ("*=allow", env as startDaemon's) with the socket pin, and waits up to wait
// for its ruleset to run the pin.
func startPinned(t *testing.T, tp *topo, wait time.Duration, env ...string) *daemon {
	t.Helper()
	d := startDaemon(t, tp, "*=allow", append(env, "LATCH_TEST_SOCKET_PIN=on")...)
	if l, ok := d.waitLine("socket-pin ", wait); !ok || l != "socket-pin <nil>" {
		d.stop()
		t.Fatalf("the ruleset does not run the socket pin: %q; stderr:\n%s", l, d.errors())
	}
	return d
}

// sendAsNobody runs the unprivileged sender (unprivilegedUDP, configured by
// env) in A and waits for it to finish.
func sendAsNobody(t *testing.T, tp *topo, env ...string) {
	t.Helper()
	c := spawnChild(t, tp, "unpriv-udp", "", env...)
	if _, ok := c.waitLine("done", 10*time.Second); !ok {
		t.Fatalf("the unprivileged sender did not finish; stderr:\n%s", c.errors())
	}
}
