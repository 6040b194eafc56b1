package linux

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// churnRoutes makes many route changes in ns at once, broadcast routes
// among them (a veth device's address added and removed), as a host with a
// routing daemon or a burst of interface changes does: more notifications
// than a route subscription's socket buffer holds while its reader lists the
// routes again. Bounded: n routes, added then removed.
func churnRoutes(t *testing.T, ns string, n int) {
	t.Helper()
	dev := "ltchurn"
	if out, err := exec.Command("ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev+"p").CombinedOutput(); err != nil {
		t.Fatalf("ip link add veth: %v: %s", err, out)
	}
	defer exec.Command("ip", "-n", ns, "link", "del", dev).Run()
	for _, l := range []string{dev, dev + "p"} {
		if out, err := exec.Command("ip", "-n", ns, "link", "set", l, "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set up: %v: %s", err, out)
		}
	}
	for _, verb := range []string{"add", "del"} {
		var b strings.Builder
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "route %s blackhole 198.19.%d.%d/32\n", verb, 64+i/250, 1+i%250)
			if i%100 == 0 {
				fmt.Fprintf(&b, "addr add 198.19.255.%d/24 dev %s\naddr del 198.19.255.%d/24 dev %s\n", 1+i/100%250, dev, 1+i/100%250, dev)
			}
		}
		cmd := exec.Command("ip", "-n", ns, "-force", "-batch", "-")
		cmd.Stdin = strings.NewReader(b.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ip -batch (route %s): %v: %s", verb, err, out)
		}
	}
}

// TestUDPReplyLateJoinBroadcastFrameAfterRouteChurn (review20): the receive
// check knows IPv4 subnet broadcasts by local_bcast, which the loader keeps
// by a subscription to route changes. When that subscription's socket
// overflowed (ENOBUFS: a burst of route changes while the loader listed the
// routes again), the subscription ended for good and key 0 came back: from
// then on a peer on the link got a unicast datagram in a frame to
// ff:ff:ff:ff:ff:ff past the check to a socket that joined a pinned flow's
// port (review19's hole, reopened by any route churn and never closed
// again). The loader now subscribes again and lists the routes anew.
func TestUDPReplyLateJoinBroadcastFrameAfterRouteChurn(t *testing.T) {
	tp := newTopo(t)
	d := startReceiveChecked(t, tp, "LATCH_TEST_ATTRIBUTE=1")
	defer d.stop()
	churnRoutes(t, tp.a, 20000)
	// The loader subscribes again within a second of losing its
	// subscription.
	time.Sleep(2 * time.Second)
	echo := netip.AddrPortFrom(netip.MustParseAddr(addrB), 9070)
	udpEcho(t, tp, echo)
	const port = 40460
	fd := joinPort(t, tp, false, port, false, time.Second)
	to := &unix.SockaddrInet4{Port: int(echo.Port()), Addr: echo.Addr().As4()}
	if err := unix.Sendto(fd, []byte("latch-out-1"), 0, to); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(fd); got != "latch-out-1" {
		t.Fatalf("the allowed socket got %q back, want its echo", got)
	}
	if out, err := exec.Command("ip", "-n", tp.b, "neigh", "replace", addrA, "lladdr", "ff:ff:ff:ff:ff:ff", "dev", tp.vethB, "nud", "permanent").CombinedOutput(); err != nil {
		t.Fatalf("ip neigh replace: %v: %s", err, out)
	}
	joiner := joinPort(t, tp, false, port, false, time.Second)
	if err := unix.Sendto(fd, []byte("latch-out-2"), 0, to); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(joiner); got != "" {
		t.Errorf("after route churn, the socket that joined the port received the answer %q (in a frame to ff:ff:ff:ff:ff:ff) on a flow allowed for another socket", got)
	}
}

// TestUDPReplyLateJoinBroadcastFrameManySubnets (review20): local_bcast held
// 1024 keys, key 0 among them. With more IPv4 subnets than that on the host
// (1100 /28s here, a router's or a VPN server's), the loader's first listing
// could not put them all, left key 0 in the map for good, and a peer's
// unicast datagram in a frame to ff:ff:ff:ff:ff:ff reached a socket that
// joined a pinned flow's port (review19's hole). The map now holds 16384
// (allocated as filled).
func TestUDPReplyLateJoinBroadcastFrameManySubnets(t *testing.T) {
	tp := newTopo(t)
	var b strings.Builder
	for i := 0; i < 1100; i++ {
		fmt.Fprintf(&b, "addr add 198.19.%d.%d/28 dev %s\n", i/16, i%16*16+1, tp.vethA)
	}
	cmd := exec.Command("ip", "-n", tp.a, "-batch", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch (addr add): %v: %s", err, out)
	}
	d := startReceiveChecked(t, tp, "LATCH_TEST_ATTRIBUTE=1")
	defer d.stop()
	echo := netip.AddrPortFrom(netip.MustParseAddr(addrB), 9072)
	udpEcho(t, tp, echo)
	const port = 40462
	fd := joinPort(t, tp, false, port, false, time.Second)
	to := &unix.SockaddrInet4{Port: int(echo.Port()), Addr: echo.Addr().As4()}
	if err := unix.Sendto(fd, []byte("latch-out-1"), 0, to); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(fd); got != "latch-out-1" {
		t.Fatalf("the allowed socket got %q back, want its echo", got)
	}
	if out, err := exec.Command("ip", "-n", tp.b, "neigh", "replace", addrA, "lladdr", "ff:ff:ff:ff:ff:ff", "dev", tp.vethB, "nud", "permanent").CombinedOutput(); err != nil {
		t.Fatalf("ip neigh replace: %v: %s", err, out)
	}
	joiner := joinPort(t, tp, false, port, false, time.Second)
	if err := unix.Sendto(fd, []byte("latch-out-2"), 0, to); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(joiner); got != "" {
		t.Errorf("with 1100 subnets, the socket that joined the port received the answer %q (in a frame to ff:ff:ff:ff:ff:ff) on a flow allowed for another socket", got)
	}
}
