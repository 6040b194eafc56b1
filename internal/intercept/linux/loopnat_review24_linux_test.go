package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// hostLateDNAT adds to namespace ns the host's own nftables NAT chain on the
// output hook at priority prio, sending UDP to A's address and port to B's:
// a chain at a priority above latch's filter chain (iptables' filter table
// and LATCH-OUT at 0, the native ruleset at filter - 1) rewrites the
// destination after LATCH-OUT has decided, and the kernel reroutes it then
// (nf_nat_ipv6_local_fn, ip6_route_me_harder).
func hostLateDNAT(t *testing.T, ns string, prio int, port uint16) {
	t.Helper()
	script := fmt.Sprintf("add table ip6 r24nat\nadd chain ip6 r24nat out { type nat hook output priority %d; }\n"+
		"add rule ip6 r24nat out ip6 daddr %s udp dport %d dnat to [%s]:%d\n", prio, addr6A, port, addr6B, port)
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s\n%s", ns, err, out, script)
	}
}

// sendsThroughLateDNAT reports whether a datagram from a plain socket on A
// to A's own address and port reaches B (the host's DNAT sends it there),
// once a datagram to B itself did not (every rule denies).
func sendsThroughLateDNAT(t *testing.T, tp *topo, port uint16) bool {
	t.Helper()
	a, b := netip.MustParseAddr(addr6A), netip.MustParseAddr(addr6B)
	peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(b, port))
	var c *net.UDPConn
	if err := inNS(tp.a, func() error {
		var err error
		c, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port+1)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Every rule denies: the same datagram sent to B itself is held and dropped.
	c.WriteToUDPAddrPort([]byte("latch-direct"), netip.AddrPortFrom(b, port))
	if peer.receives("latch-direct", time.Second) {
		t.Fatal("a datagram to B itself reached B (every rule denies)")
	}
	for i := 0; i < 3; i++ {
		c.WriteToUDPAddrPort([]byte("latch-late-dnat"), netip.AddrPortFrom(a, port))
		if peer.receives("latch-late-dnat", 700*time.Millisecond) {
			return true
		}
	}
	return false
}

// TestLoopbackExemptLateDNATOut (review24, a guard for cd9160c): the loopback
// return ('-o lo -m conntrack ! --ctstate DNAT -j RETURN') tells a DNAT'd
// packet by its conntrack status, which only a NAT hook run before LATCH-OUT
// sets. The host's own nftables NAT chain on the output hook written with a
// priority after the filter table's (100 here) still runs before it: every
// nat-type chain of a hook is called from the NAT core's one hook at
// NF_IP6_PRI_NAT_DST (-100), the chain's priority only orders the NAT chains.
// So the status is set and the datagram held. It fails with '-o lo -j
// RETURN' (the datagram to A's own address reaches B, every rule denying).
func TestLoopbackExemptLateDNATOut(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		port := uint16(9441 + i*2)
		t.Run(fw, func(t *testing.T) {
			tp, d, _ := forgedTCPTopo(t, fw, "*=deny")
			defer d.stop()
			hostLateDNAT(t, tp.a, 100, port)
			if sendsThroughLateDNAT(t, tp, port) {
				t.Error("a datagram to A's own address that the host's NAT chain (output, priority 100) sends to B reached B undecided (every rule denies)")
			}
		})
	}
}

// TestNftLoopbackExemptLateDNATOut is TestLoopbackExemptLateDNATOut against
// the native nftables ruleset (its queue statements made drops, as
// TestNftLoopbackExemptDNATOut): latch's output chain is at priority
// filter - 1 and the host's NAT chain says priority 0 (a value hand-written
// rulesets use); it still runs at the NAT core's priority, before latch's
// chain, and `ct status & dnat == 0` is false. Fails with `oifname "lo" accept`.
func TestNftLoopbackExemptLateDNATOut(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp, _ := forgedTCPNet(t)
	const port = 9445
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, inbound: true, exemptLoopback: true}.nftRules(), "counter drop")
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	hostLateDNAT(t, tp.a, 0, port)
	if sendsThroughLateDNAT(t, tp, port) {
		t.Error("a datagram to A's own address that the host's NAT chain (output, priority 0) sends to B reached B undecided (every rule denies)")
	}
}

// markReroute makes namespace A send UDP to its own address and port out the
// veth to B (which has A's address on its loopback, so its socket there
// receives it) when the packet has mark 0x24: policy routing before the local
// table (moved after it), as setups that steer by mark do. mark is the rule
// that gives the mark: an iptables mangle rule or an nftables route chain.
func markReroute(t *testing.T, tp *topo, port uint16, mark func()) {
	t.Helper()
	for _, args := range [][]string{
		{"-n", tp.a, "-6", "rule", "add", "pref", "1000", "lookup", "local"},
		{"-n", tp.a, "-6", "rule", "del", "pref", "0", "lookup", "local"},
		{"-n", tp.a, "-6", "rule", "add", "pref", "10", "fwmark", "0x24", "lookup", "124"},
		{"-n", tp.a, "-6", "route", "add", "table", "124", addr6A + "/128", "via", addr6B, "dev", tp.vethA},
		{"-n", tp.b, "addr", "add", addr6A + "/128", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	mark()
}

// TestLoopbackExemptRerouteOut (review24, open, low: it takes the host's own
// policy routing by mark of a local destination): a datagram to A's own
// address whose mark policy routing steers out the veth to B, with every
// rule denying, reaches B undecided. LATCH-OUT's '-o lo' (and nft's oifname)
// is the nf_hook_state's output device, fixed when the LOCAL_OUT hook is
// called (the socket's route, lo); a reroute during the hook does not change
// it: the mangle table's (ip6t_mangle_out: ip6_route_me_harder on a mark
// change, priority -150, before the filter table) as well as a route chain's
// after it (priority 10 here). Only POSTROUTING sees the device the packet
// leaves by. cd9160c closed this for DNAT (the conntrack status, then the
// destination's type), not for a reroute by mark: the destination is still
// local, so both loopback returns take it (the first one matched, counters).
func TestLoopbackExemptRerouteOut(t *testing.T) {
	if os.Getenv("LATCH_TEST_KNOWN_HOLES") == "" {
		t.Skip("known hole (review24, low): a loopback packet rerouted by mark during the output hook leaves by another interface undecided; LATCH_TEST_KNOWN_HOLES=1 runs it")
	}
	for i, late := range []bool{false, true} {
		port := uint16(9451 + i*2)
		name := "mangle"
		if late {
			name = "nft-route-after-filter"
		}
		t.Run(name, func(t *testing.T) {
			fw := FirewallIptablesNft
			tp, d, _ := forgedTCPTopo(t, fw, "*=deny")
			defer d.stop()
			markReroute(t, tp, port, func() {
				var cmd *exec.Cmd
				if late {
					cmd = exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
					cmd.Stdin = strings.NewReader(fmt.Sprintf("add table ip6 r24route\nadd chain ip6 r24route out { type route hook output priority 10; }\n"+
						"add rule ip6 r24route out ip6 daddr %s udp dport %d meta mark set 0x24\n", addr6A, port))
				} else {
					cmd = exec.Command("ip", "netns", "exec", tp.a, "ip6tables-nft", "-w", "-t", "mangle", "-A", "OUTPUT", "-d", addr6A, "-p", "udp", "--dport", fmt.Sprint(port), "-j", "MARK", "--set-mark", "0x24")
				}
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("mark rule: %v: %s", err, out)
				}
			})
			a := netip.MustParseAddr(addr6A)
			peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(a, port))
			var c *net.UDPConn
			if err := inNS(tp.a, func() error {
				var err error
				c, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port+1)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := false
			for i := 0; i < 3 && !got; i++ {
				c.WriteToUDPAddrPort([]byte("latch-reroute"), netip.AddrPortFrom(a, port))
				got = peer.receives("latch-reroute", 700*time.Millisecond)
			}
			if got {
				t.Errorf("a datagram to A's own address that policy routing by mark (%s) sends out the veth reached B undecided (every rule denies)", name)
			}
		})
	}
}

// TestLoopbackExemptLocalhostDNATOut (review24, a guard for cd9160c in IPv4):
// what Docker without its userland proxy and kube-proxy's NodePorts on
// localhost do: route_localnet, an OUTPUT DNAT of 127.0.0.1's port to another
// host and a MASQUERADE of 127.0.0.1 on the way out. A datagram to
// 127.0.0.1 then goes to B; with every rule denying it is held (the conntrack
// status is DNAT and B's address is not local). Fails with '-o lo -j RETURN'.
func TestLoopbackExemptLocalhostDNATOut(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		port := uint16(9461 + i*2)
		t.Run(fw, func(t *testing.T) {
			tp, d, _ := forgedTCPTopo(t, fw, "*=deny")
			defer d.stop()
			ipt := "iptables-nft"
			if fw == FirewallIptablesLegacy {
				ipt = "iptables-legacy"
			}
			for _, args := range [][]string{
				{"sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf." + tp.vethA + ".route_localnet=1"},
				{ipt, "-w", "-t", "nat", "-A", "OUTPUT", "-d", "127.0.0.1", "-p", "udp", "--dport", fmt.Sprint(port), "-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", addrB, port)},
				{ipt, "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "127.0.0.0/8", "-o", tp.vethA, "-j", "MASQUERADE"},
			} {
				if out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a}, args...)...).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
				}
			}
			peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(netip.MustParseAddr(addrB), port))
			var c *net.UDPConn
			if err := inNS(tp.a, func() error {
				var err error
				c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port) + 1})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := false
			for i := 0; i < 3 && !got; i++ {
				c.WriteToUDPAddrPort([]byte("latch-localhost-dnat"), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
				got = peer.receives("latch-localhost-dnat", 700*time.Millisecond)
			}
			if got {
				t.Error("a datagram to 127.0.0.1 that the host's OUTPUT DNAT sends to B reached B undecided (every rule denies)")
			}
		})
	}
}
