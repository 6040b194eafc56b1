package linux

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUDPReplyLateJoinL2Multicast (review19): the receive check's skip of
// multicast and broadcast went by the packet's link-layer type (pkt_type)
// too, which the peer chooses: a datagram to this host's unicast address in
// a frame to a multicast or broadcast MAC is delivered like any unicast
// datagram (to one socket, the kernel's choice; net.ipv4/ipv6.conf.*.
// drop_unicast_in_l2_multicast is 0 by default), and the check passed it.
// A peer on the link (here: a static neighbour entry in B) then reached a
// socket that joined the port of a flow pinned to another (SO_REUSEADDR,
// the last bound gets it) as if there were no check. The flow is one this
// host opened (TestUDPReplyLateJoinDropped's setup); the answer in a frame
// to a multicast MAC must not reach the joiner.
func TestUDPReplyLateJoinL2Multicast(t *testing.T) {
	for i, c := range []struct {
		v6  bool
		mac string
	}{
		{false, "01:00:5e:00:00:01"},
		{true, "33:33:00:00:00:01"},
		{true, "ff:ff:ff:ff:ff:ff"},
		// IPv4's subnet broadcasts come in frames to ff:ff:ff:ff:ff:ff
		// (every socket on the port gets its copy): the check knows them
		// by the local routing table's broadcast routes, not the frame.
		{false, "ff:ff:ff:ff:ff:ff"},
	} {
		t.Run(fmt.Sprintf("v6=%t/mac=%s", c.v6, c.mac), func(t *testing.T) {
			tp := newTopo(t)
			a, b := addrA, addrB
			if c.v6 {
				addV6(t, tp)
				a, b = addrA6, addrB6
			}
			d := startReceiveChecked(t, tp, "LATCH_TEST_ATTRIBUTE=1")
			defer d.stop()
			echo := netip.AddrPortFrom(netip.MustParseAddr(b), uint16(9060+i))
			udpEcho(t, tp, echo)
			port := 40440 + i
			fd := joinPort(t, tp, c.v6, port, false, time.Second)
			var to unix.Sockaddr = &unix.SockaddrInet6{Port: int(echo.Port()), Addr: echo.Addr().As16()}
			if !c.v6 {
				to = &unix.SockaddrInet4{Port: int(echo.Port()), Addr: echo.Addr().As4()}
			}
			if err := unix.Sendto(fd, []byte("latch-out-1"), 0, to); err != nil {
				t.Fatal(err)
			}
			if got := recvOne(fd); got != "latch-out-1" {
				t.Fatalf("the allowed socket got %q back, want its echo", got)
			}
			// The peer now frames what it sends to A for a multicast
			// (broadcast) MAC.
			if out, err := exec.Command("ip", "-n", tp.b, "neigh", "replace", a, "lladdr", c.mac, "dev", tp.vethB, "nud", "permanent").CombinedOutput(); err != nil {
				t.Fatalf("ip neigh replace: %v: %s", err, out)
			}
			if err := unix.Sendto(fd, []byte("latch-out-2"), 0, to); err != nil {
				t.Fatal(err)
			}
			if got := recvOne(fd); got != "latch-out-2" {
				t.Fatalf("the allowed socket got %q back in a frame to %s, want its echo (the kernel delivers it)", got, c.mac)
			}
			joiner := joinPort(t, tp, c.v6, port, false, time.Second)
			if err := unix.Sendto(fd, []byte("latch-out-3"), 0, to); err != nil {
				t.Fatal(err)
			}
			if got := recvOne(joiner); got != "" {
				t.Errorf("the socket that joined the port received the answer %q (in a frame to %s) on a flow allowed for another socket", got, c.mac)
			}
		})
	}
}

// TestUDPInboundSubnetBroadcastSharedPort: the receive check leaves an IPv4
// subnet's broadcast alone (TestUDPInboundMulticastSharedPort's neighbour;
// the check's skip of broadcast frames is by the destination address now,
// review19, and a subnet's broadcast address looks unicast). Two programs
// share a UDP port (SO_REUSEADDR, NetBIOS's nmbd and another); with
// --inbound and the socket pin a peer's datagram to 198.18.0.255 is
// decided once, and the kernel gives each socket its copy: both receive it
// (and the peer's next one), none is dropped as another socket's. Also on
// a subnet added after the daemon started (198.19.0.0/24: the check learns
// its broadcast address from the route the kernel adds).
func TestUDPInboundSubnetBroadcastSharedPort(t *testing.T) {
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("late=%t", late), func(t *testing.T) { subnetBroadcastSharedPort(t, late, false) })
	}
	// 255.255.255.255 (review20: the check tells it by the address, no
	// longer with all of 240.0.0.0/4).
	t.Run("limited", func(t *testing.T) { subnetBroadcastSharedPort(t, false, true) })
}

func subnetBroadcastSharedPort(t *testing.T, late, limited bool) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=1")
	defer d.stop()
	const port = 40450
	bcast, from := netip.MustParseAddr("198.18.0.255"), addrB
	if limited {
		bcast = netip.MustParseAddr("255.255.255.255")
	}
	if late {
		bcast, from = netip.MustParseAddr("198.19.0.255"), "198.19.0.2"
		for _, args := range [][]string{
			{"-n", tp.a, "addr", "add", "198.19.0.1/24", "dev", tp.vethA},
			{"-n", tp.b, "addr", "add", from + "/24", "dev", tp.vethB},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	fds := []int{joinPort(t, tp, false, port, false, time.Second), joinPort(t, tp, false, port, false, time.Second)}
	var peer int
	if err := inNS(tp.b, func() error {
		var err error
		if peer, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(peer, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
			return err
		}
		return unix.Bind(peer, &unix.SockaddrInet4{Port: port, Addr: netip.MustParseAddr(from).As4()})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(peer)
	d.drain()
	for i := 1; i <= 2; i++ {
		msg := fmt.Sprintf("latch-bcast-%d", i)
		if err := unix.Sendto(peer, []byte(msg), 0, &unix.SockaddrInet4{Port: port, Addr: bcast.As4()}); err != nil {
			t.Fatal(err)
		}
		for j, fd := range fds {
			if got := recvOne(fd); got != msg {
				t.Errorf("socket %d of the two on port %d received %q, want the peer's datagram %q to the subnet's broadcast", j, port, got, msg)
			}
		}
	}
	if held := d.linesFor(200 * time.Millisecond); strings.Contains(strings.Join(held, "\n"), "pin-moved") {
		t.Errorf("the receive check reported a datagram to the subnet's broadcast as delivered to the wrong socket: %q", held)
	}
}

// TestUDPInboundJoinerDenyOutlivesIt (review19): with --inbound a program
// that joins the local port of an inbound UDP flow allowed for another
// (SO_REUSEADDR; any user's where the server set it too) gets the peer's
// datagrams from the kernel while it is bound; the receive check drops the
// first and the daemon decides the flow again for it. Denied (here: user
// nobody, LATCH_TEST_DENY_UID=65534), the flow must not stay denied once the
// joiner is gone: the kernel delivers the peer's datagrams to the server
// again, the socket the flow was allowed for. Before the receive check it
// got them; a deny for the joiner that stays on the flow's conntrack entry
// (renewed by every datagram of a peer that keeps sending) would let any
// local user cut an allowed server's flow for good by binding its port for
// a moment.
func TestUDPInboundJoinerDenyOutlivesIt(t *testing.T) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=1", "LATCH_TEST_DENY_UID=65534")
	defer d.stop()
	const port = 40460
	server := joinPort(t, tp, false, port, false, time.Second)
	peerAddr := netip.AddrPortFrom(netip.MustParseAddr(addrB), 6110)
	local := netip.AddrPortFrom(netip.MustParseAddr(addrA), port)
	var peer *net.UDPConn
	if err := inNS(tp.b, func() error {
		var err error
		peer, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(peerAddr), net.UDPAddrFromAddrPort(local))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	send := func(m string) {
		t.Helper()
		if _, err := peer.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	send("latch-in-1")
	if got := recvOne(server); got != "latch-in-1" {
		t.Fatalf("the server received %q, want the peer's first datagram (allowed); %s", got, d.errors())
	}
	// The joiner: nobody's socket on the port for 3 s.
	ch := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=3s",
		"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+net.JoinHostPort(addrB, "9040"))
	if _, ok := ch.waitLine("bound", 10*time.Second); !ok {
		t.Fatalf("the joiner did not bind; stderr:\n%s", ch.errors())
	}
	d.drain()
	send("latch-in-2")
	if _, ok := d.waitLine(fmt.Sprintf("pin-moved 17 %s %s ", local, peerAddr), 2*time.Second); !ok {
		t.Fatalf("the receive check did not report the datagram the kernel gave the joiner")
	}
	time.Sleep(200 * time.Millisecond) // the flow marked to be decided again
	send("latch-in-3")
	if l, ok := d.waitLine(fmt.Sprintf("held in udp %s %s ", local, peerAddr), 3*time.Second); !ok || !strings.Contains(l, " uid=65534 ") {
		t.Fatalf("the peer's datagram after the join was held as %q, want the joiner's (nobody)", l)
	}
	if _, ok := ch.waitLine("done", 10*time.Second); !ok {
		t.Fatalf("the joiner did not end; stderr:\n%s", ch.errors())
	}
	time.Sleep(200 * time.Millisecond) // its socket closed
	// The joiner is gone: the peer's datagrams are the server's again.
	got := ""
	for i := 4; i < 7 && got == ""; i++ {
		send(fmt.Sprintf("latch-in-%d", i))
		got = recvOne(server)
	}
	t.Logf("server got %q; daemon: %q", got, d.linesFor(200*time.Millisecond))
	if got == "" {
		t.Errorf("after the joiner (denied) left the port, the server the flow was allowed for received none of the peer's 3 datagrams; daemon: %q", d.linesFor(200*time.Millisecond))
	}
}

// sendUDP6Exts sends, from a raw socket in ns, a UDP datagram src -> dst
// with payload after n destination options headers (8 bytes each, padding
// only; with big 1016 bytes each), IPv6 header included.
func sendUDP6Exts(t *testing.T, ns string, src, dst netip.AddrPort, n int, big bool, payload []byte) {
	t.Helper()
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	s, d := src.Addr().As16(), dst.Addr().As16()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, 0, byte(len(udp)>>8), byte(len(udp)), 0, 0, 0, unix.IPPROTO_UDP)
	var sum uint32
	for _, b := range [][]byte{pseudo, udp} {
		for i := 0; i < len(b); i += 2 {
			w := uint32(b[i]) << 8
			if i+1 < len(b) {
				w |= uint32(b[i+1])
			}
			sum += w
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	cs := ^uint16(sum)
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], cs)
	hl := 8
	if big {
		hl = 1016
	}
	pkt := make([]byte, 40, 40+hl*n+len(udp))
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:], uint16(hl*n+len(udp)))
	pkt[6], pkt[7] = unix.IPPROTO_UDP, 64
	if n > 0 {
		pkt[6] = unix.IPPROTO_DSTOPTS
	}
	copy(pkt[8:], s[:])
	copy(pkt[24:], d[:])
	for i := range n {
		next := byte(unix.IPPROTO_DSTOPTS)
		if i == n-1 {
			next = unix.IPPROTO_UDP
		}
		if !big {
			pkt = append(pkt, next, 0, 1, 4, 0, 0, 0, 0) // PadN, 4 bytes
			continue
		}
		// 1016 bytes: 4 options of 250 bytes the kernel skips (type 0x1e,
		// unknown, action bits 00), PadN.
		pkt = append(pkt, next, 126)
		for range 4 {
			pkt = append(pkt, 0x1e, 250)
			pkt = append(pkt, make([]byte, 250)...)
		}
		pkt = append(pkt, 1, 4, 0, 0, 0, 0)
	}
	pkt = append(pkt, udp...)
	if err := inNS(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet6{Addr: d})
	}); err != nil {
		t.Fatal(err)
	}
}

// TestUDPReplyLateJoinExtHeaders (review19): the receive check walked at
// most 8 IPv6 extension headers to the UDP header and passed a datagram
// whose chain is longer; the kernel (and conntrack, which finds the flow's
// tuple and its allow behind any number of them) delivers it to the socket
// it chooses. A peer that put 9 destination options headers before its
// answer reached a socket that joined the port of a flow pinned to another
// (TestUDPReplyLateJoinDropped's setup), as did one whose one destination
// options header was 1016 bytes long (the check read its ports at the
// offset masked to 10 bits: other bytes). Control: 1 header of 8 bytes,
// dropped before too.
func TestUDPReplyLateJoinExtHeaders(t *testing.T) {
	for i, c := range []struct {
		n   int
		big bool
	}{{1, false}, {9, false}, {1, true}} {
		n := c.n
		t.Run(fmt.Sprintf("headers=%d/big=%t", n, c.big), func(t *testing.T) {
			tp := newTopo(t)
			addV6(t, tp)
			d := startReceiveChecked(t, tp, "LATCH_TEST_ATTRIBUTE=1")
			defer d.stop()
			echo := netip.AddrPortFrom(netip.MustParseAddr(addrB6), uint16(9070+i))
			udpEcho(t, tp, echo)
			port := 40470 + i
			fd := joinPort(t, tp, true, port, false, time.Second)
			to := &unix.SockaddrInet6{Port: int(echo.Port()), Addr: echo.Addr().As16()}
			if err := unix.Sendto(fd, []byte("latch-out-1"), 0, to); err != nil {
				t.Fatal(err)
			}
			if got := recvOne(fd); got != "latch-out-1" {
				t.Fatalf("the allowed socket got %q back, want its echo", got)
			}
			local := netip.AddrPortFrom(netip.MustParseAddr(addrA6), uint16(port))
			// The kernel takes the headers: the allowed socket gets such an
			// answer (a chain of more than 8 the check drops now, whichever
			// socket receives it).
			sendUDP6Exts(t, tp.b, echo, local, n, c.big, []byte("latch-ext-1"))
			if got := recvOne(fd); n <= 8 && got != "latch-ext-1" {
				t.Fatalf("the allowed socket got %q, want the peer's datagram after %d extension headers", got, n)
			}
			joiner := joinPort(t, tp, true, port, false, time.Second)
			sendUDP6Exts(t, tp.b, echo, local, n, c.big, []byte("latch-ext-2"))
			if got := recvOne(joiner); got != "" {
				t.Errorf("the socket that joined the port received the peer's datagram %q after %d extension headers, on a flow allowed for another socket", got, n)
			}
		})
	}
}

// TestUDPJoinerUnpinsThenSendsWithoutInbound (review19): without --inbound
// the daemon forgets the pin of a flow the peer opened once the receive
// check reports a datagram of it delivered to another socket (PinMoved;
// TestUDPServerRestartWithoutInbound). A program that joins the port
// (SO_REUSEADDR; user nobody, whom LATCH_TEST_DENY_UID=65534 denies) so
// makes the flow unpinned: what it then sends on the flow must still be
// held and decided for it (denied), not pass as the allowed flow's.
func TestUDPJoinerUnpinsThenSendsWithoutInbound(t *testing.T) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_ATTRIBUTE=1", "LATCH_TEST_DENY_UID=65534")
	defer d.stop()
	const port = 40480
	server := joinPort(t, tp, false, port, false, time.Second)
	peerAddr := netip.AddrPortFrom(netip.MustParseAddr(addrB), 6120)
	local := netip.AddrPortFrom(netip.MustParseAddr(addrA), port)
	var peer *net.UDPConn
	if err := inNS(tp.b, func() error {
		var err error
		peer, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(peerAddr), net.UDPAddrFromAddrPort(local))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peerGot := func() string {
		peer.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 256)
		n, err := peer.Read(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	if _, err := peer.Write([]byte("latch-in-1")); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(server); got != "latch-in-1" {
		t.Fatalf("the server received %q, want the peer's datagram", got)
	}
	to := &unix.SockaddrInet4{Port: int(peerAddr.Port()), Addr: peerAddr.Addr().As4()}
	if err := unix.Sendto(server, []byte("latch-answer"), 0, to); err != nil {
		t.Fatal(err)
	}
	if got := peerGot(); got != "latch-answer" {
		t.Fatalf("the peer got %q, want the server's allowed answer", got)
	}
	ch := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=1500ms",
		"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+peerAddr.String(), "LATCH_TEST_UDP_MSGS=latch-hijack")
	if _, ok := ch.waitLine("bound", 10*time.Second); !ok {
		t.Fatalf("the joiner did not bind; stderr:\n%s", ch.errors())
	}
	d.drain()
	if _, err := peer.Write([]byte("latch-in-2")); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.waitLine(fmt.Sprintf("pin-moved 17 %s %s ", local, peerAddr), 2*time.Second); !ok {
		t.Fatalf("the receive check did not report the datagram the kernel gave the joiner")
	}
	if _, ok := ch.waitLine("sent latch-hijack", 5*time.Second); !ok {
		t.Fatalf("the joiner did not send; stderr:\n%s", ch.errors())
	}
	if got := peerGot(); got != "" {
		t.Errorf("the peer received %q from the joiner (nobody, denied) on the flow it unpinned", got)
	}
	if l, ok := d.waitLine(fmt.Sprintf("held out udp %s %s ", local, peerAddr), time.Second); !ok || !strings.Contains(l, " uid=65534 ") {
		t.Errorf("the joiner's datagram was held as %q, want nobody's", l)
	}
}
