package linux

import (
	"fmt"
	"net"
	"net/netip"
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
// to A's own address and port reaches B (the host's late DNAT sends it there).
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
