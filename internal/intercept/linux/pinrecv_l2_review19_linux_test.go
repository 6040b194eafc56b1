package linux

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
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
		// open: a hole left (LATCH_TEST_KNOWN_HOLES=1 runs it).
		open bool
	}{
		{false, "01:00:5e:00:00:01", false},
		{true, "33:33:00:00:00:01", false},
		{true, "ff:ff:ff:ff:ff:ff", false},
		// IPv4's subnet broadcasts come in frames to ff:ff:ff:ff:ff:ff,
		// and every socket on the port gets its copy: the check cannot
		// tell one from a unicast datagram in such a frame.
		{false, "ff:ff:ff:ff:ff:ff", true},
	} {
		t.Run(fmt.Sprintf("v6=%t/mac=%s", c.v6, c.mac), func(t *testing.T) {
			if c.open && os.Getenv("LATCH_TEST_KNOWN_HOLES") == "" {
				t.Skip("known hole (README, Open): LATCH_TEST_KNOWN_HOLES=1 runs it")
			}
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
// (and the peer's next one), none is dropped as another socket's.
func TestUDPInboundSubnetBroadcastSharedPort(t *testing.T) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=1")
	defer d.stop()
	const port = 40450
	bcast := netip.MustParseAddr("198.18.0.255")
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
		return unix.Bind(peer, &unix.SockaddrInet4{Port: port, Addr: netip.MustParseAddr(addrB).As4()})
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
