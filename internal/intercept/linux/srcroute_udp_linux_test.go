package linux

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// routedNet is the topology of the source-route UDP tests: A (the daemon's
// namespace, 198.18.0.1) - B (F, 198.18.0.2; 198.18.2.1, a router that honours
// source routes) - C (X, 198.18.2.2, which takes source-routed datagrams too and
// counts what it receives on UDP port 9002). The daemon allows F only. For
// IPv6 the same: A fd00::1, B (F) fd00::2 and fd00:2::1 (a router that honours
// segment routing headers), C (X) fd00:2::2 (which takes them too).
type routedNet struct {
	tp  *topo
	x   string // X's namespace
	d   *daemon
	got chan string // what X received
}

const (
	addrX   = "198.18.2.2"
	addr6X  = "fd00:2::2"
	addr6BX = "fd00:2::1"
)

func newRoutedNet(t *testing.T, fw string) *routedNet {
	t.Helper()
	return routedNetFor(t, newTopo(t), fw, false)
}

// nftNoQueue, in place of a firewall's name, is the native nftables ruleset
// without a daemon, for kernels without nft_queue: see nftAllowFirst.
const nftNoQueue = "nftables-noqueue"

// routedNetFor is newRoutedNet on tp (which may have more, such as
// addContainer's namespace), with --forward if forward.
func routedNetFor(t *testing.T, tp *topo, fw string, forward bool) *routedNet {
	t.Helper()
	if fw == nftNoQueue {
		if _, err := exec.LookPath("nft"); err != nil {
			t.Skipf("needs nft: %v", err)
		}
		n := routedNetOn(t, tp, "")
		nftAllowFirst(t, tp.a, ruleSpec{queue: testQueue, exemptLoopback: true, forward: forward}, addrB, addr6B)
		return n
	}
	needFirewall(t, fw)
	var env []string
	if forward {
		env = append(env, "LATCH_TEST_FORWARD=1")
	}
	return routedNetOn(t, tp, fw, env...)
}

// nftAllowFirst installs in ns the native nftables ruleset of spec with its
// queue statements as drops (no nft_queue needed), and before its chains
// (priority filter - 2) one that gives the first packet of a flow to one of
// allowed the mark an allow verdict gives a packet back from the queue: the
// ruleset decides the flow as allowed, as the daemon's rule would.
func nftAllowFirst(t *testing.T, ns string, spec ruleSpec, allowed ...string) {
	t.Helper()
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "drop")
	rules += "add table inet latchverdict\n"
	for _, hook := range []string{"output", "forward"} {
		rules += fmt.Sprintf("add chain inet latchverdict %s { type filter hook %s priority filter - 2; }\n", hook, hook)
		for _, a := range allowed {
			fam := "ip"
			if strings.Contains(a, ":") {
				fam = "ip6"
			}
			rules += fmt.Sprintf("add rule inet latchverdict %s ct state new %s daddr %s meta mark set %#x\n", hook, fam, a, MarkAllow)
		}
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset in %s: %v: %s\n%s", ns, err, out, rules)
	}
}

// routedNetOn is routedNetFor's topology, with a daemon of firewall fw and
// env unless fw is "".
func routedNetOn(t *testing.T, tp *topo, fw string, env ...string) *routedNet {
	t.Helper()
	c := tp.a[:len(tp.a)-1] + "c"
	vb, vc := "s5b"+tp.vethB[3:], "s5c"+tp.vethB[3:]
	t.Cleanup(func() { exec.Command("ip", "netns", "del", c).Run() })
	const addrBX = "198.18.2.1"
	for _, args := range [][]string{
		{"netns", "add", c},
		{"link", "add", vb, "netns", tp.b, "type", "veth", "peer", "name", vc, "netns", c},
		{"-n", tp.b, "addr", "add", addrBX + "/24", "dev", vb},
		{"-n", c, "addr", "add", addrX + "/24", "dev", vc},
		{"-n", tp.b, "link", "set", vb, "up"},
		{"-n", c, "link", "set", vc, "up"},
		{"-n", c, "link", "set", "lo", "up"},
		{"-n", c, "route", "add", "default", "via", addrBX},
		{"-n", tp.a, "route", "add", "198.18.2.0/24", "via", addrB},
		{"-n", tp.a, "addr", "replace", addr6A + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "replace", addr6B + "/64", "dev", tp.vethB, "nodad"},
		{"-n", tp.b, "addr", "add", addr6BX + "/64", "dev", vb, "nodad"},
		{"-n", c, "addr", "add", addr6X + "/64", "dev", vc, "nodad"},
		{"-n", c, "-6", "route", "add", "default", "via", addr6BX},
		{"-n", tp.a, "-6", "route", "add", "fd00:2::/64", "via", addr6B},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, s := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.accept_source_route=1", "net.ipv4.conf." + tp.vethB + ".accept_source_route=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf." + tp.vethB + ".rp_filter=0",
		"net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.seg6_enabled=1", "net.ipv6.conf." + tp.vethB + ".seg6_enabled=1"} {
		if out, err := exec.Command("ip", "netns", "exec", tp.b, "sysctl", "-w", s).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s in %s: %v: %s", s, tp.b, err, out)
		}
	}
	// X takes source-routed datagrams too (ip_rcv_options drops them at the
	// end host otherwise).
	for _, s := range []string{"net.ipv4.conf.all.accept_source_route=1", "net.ipv4.conf." + vc + ".accept_source_route=1",
		"net.ipv6.conf.all.seg6_enabled=1", "net.ipv6.conf." + vc + ".seg6_enabled=1"} {
		if out, err := exec.Command("ip", "netns", "exec", c, "sysctl", "-w", s).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s in %s: %v: %s", s, c, err, out)
		}
	}
	got := make(chan string, 100)
	for _, l := range []struct{ net, addr string }{{"udp4", addrX + ":9002"}, {"udp6", "[" + addr6X + "]:9002"}} {
		var pc net.PacketConn
		if err := inNS(c, func() (err error) { pc, err = net.ListenPacket(l.net, l.addr); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 100)
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				got <- string(buf[:n])
			}
		}()
	}
	n := &routedNet{tp: tp, x: c, got: got}
	if fw != "" {
		n.d = startDaemon(t, tp, "*=deny", append(env, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_ADDR_POLICY="+addrB+"=allow,"+addr6B+"=allow")...)
		t.Cleanup(func() { n.d.stop() })
	}
	return n
}

// sendX sends each of msgs from a socket in A to X, after setup(fd) (which
// may set options and send to F first). A send the output chain refuses
// (EPERM) is what the tests want, not an error.
func (n *routedNet) sendX(t *testing.T, setup func(fd int) error, msgs ...string) {
	t.Helper()
	err := inNS(n.tp.a, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := setup(fd); err != nil {
			return err
		}
		to := &unix.SockaddrInet4{Port: 9002}
		copy(to.Addr[:], net.ParseIP(addrX).To4())
		for _, m := range msgs {
			if err := unix.Sendto(fd, []byte(m), 0, to); err != nil && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("send %q to X: %w", m, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// logDaemon logs what the daemon (if any) says.
func (n *routedNet) logDaemon(t *testing.T) {
	if n.d == nil {
		return
	}
	for _, l := range n.d.linesFor(200 * time.Millisecond) {
		t.Logf("daemon: %s", l)
	}
}

// xGetsNothing checks that X received nothing within 2 s.
func (n *routedNet) xGetsNothing(t *testing.T) {
	t.Helper()
	var recv []string
	for deadline := time.After(2 * time.Second); ; {
		select {
		case m := <-n.got:
			recv = append(recv, m)
			continue
		case <-deadline:
		}
		break
	}
	if len(recv) != 0 {
		t.Errorf("X (%s, %s, which no rule allows) received %q from A; want none: a datagram source-routed via F (allowed) was decided on F and forwarded to X", addrX, addr6X, recv)
		n.logDaemon(t)
	}
}

// setLSRR gives the socket a loose source route via F.
func setLSRR(fd int) error {
	if err := unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, string(lsrrVia(addrB))); err != nil {
		return fmt.Errorf("IP_OPTIONS: %w", err)
	}
	return nil
}

// TestSourceRouteUDPReachesUndecidedHost (review5): a datagram with an IPv4
// loose source route (IP_OPTIONS, no privilege needed) has the route's first
// hop F as its IP destination and the address given to sendto, X, in the
// option. Conntrack, the fast UDP match and the queue all see F, a host a rule
// allows; F forwards it to X, which no rule allows and which the queue never
// saw (X must accept source routes too: not Linux's default). Control: the
// same datagram without the option (A routes X via F) is held and denied.
// Failed before the queue refused a source-routed packet (X received the
// routed datagram).
func TestSourceRouteUDPReachesUndecidedHost(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft} {
		t.Run(fw, func(t *testing.T) {
			n := newRoutedNet(t, fw)
			n.sendX(t, func(int) error { return nil }, "direct")
			n.sendX(t, setLSRR, "routed")
			n.xGetsNothing(t)
		})
	}
}

// TestSourceRouteUDPOnAllowedFlow (review6): the queue sees a flow's first
// packet only. One socket sends a plain datagram to F (allowed: the flow gets
// connmark MarkAllow), then sets a loose source route via F and sends to X:
// its IP header says F, the same 5-tuple, so the allowed flow's RETURN passed
// it, never queued, and F sent it on (X received 3 datagrams before the output
// chain dropped non-TCP packets with IPv4 options).
func TestSourceRouteUDPOnAllowedFlow(t *testing.T) {
	for _, fw := range []string{FirewallNftables, nftNoQueue, FirewallIptablesNft} {
		t.Run(fw, func(t *testing.T) {
			n := newRoutedNet(t, fw)
			n.sendX(t, func(fd int) error {
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 40123}); err != nil {
					return err
				}
				toF := &unix.SockaddrInet4{Port: 9002}
				copy(toF.Addr[:], net.ParseIP(addrB).To4())
				if err := unix.Sendto(fd, []byte("plain-to-F"), 0, toF); err != nil {
					return fmt.Errorf("send to F: %w", err)
				}
				time.Sleep(500 * time.Millisecond)
				return setLSRR(fd)
			}, "routed-0", "routed-1", "routed-2")
			n.xGetsNothing(t)
		})
	}
}
