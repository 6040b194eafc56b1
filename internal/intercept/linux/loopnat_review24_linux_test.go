package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// markReroute makes namespace A send to its own address (addr6A, or addrA
// with v4) out the veth to B (which has that address on its loopback, so its
// socket there receives it) when the packet has mark 0x24: policy routing
// before the local table (moved after it), as setups that steer by mark do.
// mark is the rule that gives the mark: an iptables mangle rule or an
// nftables route chain.
func markReroute(t *testing.T, tp *topo, v4 bool, mark func()) {
	t.Helper()
	fam, self, peer, bits := "-6", addr6A, addr6B, "/128"
	if v4 {
		fam, self, peer, bits = "-4", addrA, addrB, "/32"
	}
	cmds := [][]string{
		{"ip", "-n", tp.a, fam, "rule", "add", "pref", "1000", "lookup", "local"},
		{"ip", "-n", tp.a, fam, "rule", "del", "pref", "0", "lookup", "local"},
		{"ip", "-n", tp.a, fam, "rule", "add", "pref", "10", "fwmark", "0x24", "lookup", "124"},
		{"ip", "-n", tp.a, fam, "route", "add", "table", "124", self + bits, "via", peer, "dev", tp.vethA},
		{"ip", "-n", tp.b, "addr", "add", self + bits, "dev", "lo"},
	}
	if v4 {
		// B takes a datagram whose source is one of its addresses (A's,
		// on B's lo): accept_local, no reverse path filter.
		cmds = append(cmds, []string{"ip", "netns", "exec", tp.b, "sysctl", "-qw",
			"net.ipv4.conf.all.accept_local=1", "net.ipv4.conf." + tp.vethB + ".accept_local=1",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf." + tp.vethB + ".rp_filter=0"})
	}
	for _, args := range cmds {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	mark()
}

// nftIn runs the nft script in namespace ns.
func nftIn(t *testing.T, ns, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s\n%s", ns, err, out, script)
	}
}

// installNftDrop installs in namespace ns the native nftables ruleset of
// spec with its queue statements made drops (no native queue here): what it
// would hold is dropped.
func installNftDrop(t *testing.T, ns string, spec ruleSpec) {
	t.Helper()
	nftIn(t, ns, regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop"))
}

// rerouteCase is one way the host's mark reroutes a loopback packet
// (TestLoopbackExemptRerouteOut).
type rerouteCase struct {
	fw   string
	late bool // an nft route chain after the filter chains (10), else before them (mangle)
	v4   bool
}

func (c rerouteCase) name() string {
	n := c.fw + "/mangle"
	if c.late {
		n = c.fw + "/nft-route-after-filter"
	}
	if c.v4 {
		return n + "/ipv4"
	}
	return n + "/ipv6"
}

// markRule gives mark 0x24 in namespace ns to UDP to addr and port: an
// iptables mangle OUTPUT rule (the firewall's own variant; with nftables
// a route chain at mangle priority) or, late, an nft route chain at priority
// 10, after latch's filter chains.
func (c rerouteCase) markRule(t *testing.T, ns string, addr netip.Addr, port uint16) {
	t.Helper()
	fam := "ip6"
	if c.v4 {
		fam = "ip"
	}
	if c.late || c.fw == FirewallNftables {
		prio := "-150"
		if c.late {
			prio = "10"
		}
		nftIn(t, ns, fmt.Sprintf("add table %s r24route\nadd chain %s r24route out { type route hook output priority %s; }\n"+
			"add rule %s r24route out %s daddr %s udp dport %d meta mark set 0x24\n", fam, fam, prio, fam, fam, addr, port))
		return
	}
	ipt := "ip6tables-nft"
	if c.v4 {
		ipt = "iptables-nft"
	}
	if c.fw == FirewallIptablesLegacy {
		ipt = strings.Replace(ipt, "-nft", "-legacy", 1)
	}
	args := []string{"netns", "exec", ns, ipt, "-w", "-t", "mangle", "-A", "OUTPUT", "-d", addr.String(), "-p", "udp", "--dport", fmt.Sprint(port), "-j", "MARK", "--set-mark", "0x24"}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("mark rule: %v: %s", err, out)
	}
}

// rerouteTopo is the network of a rerouteCase with every rule denying: a
// daemon (Config.Inbound, loopback exempt) with iptables, or with nftables
// its ruleset installed with drops for queues. env goes to the daemon.
func (c rerouteCase) topo(t *testing.T, env ...string) (*topo, func()) {
	t.Helper()
	if c.fw != FirewallNftables {
		tp, d, _ := forgedTCPTopo(t, c.fw, "*=deny", env...)
		return tp, func() { d.stop() }
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp, _ := forgedTCPNet(t)
	installNftDrop(t, tp.a, ruleSpec{queue: testQueue, inbound: true, exemptLoopback: true})
	return tp, func() {}
}

// sendsRerouted reports whether a datagram from a socket on A's own address
// (port+1) to A's own address and port reaches peer, in up to three tries.
func sendsRerouted(t *testing.T, tp *topo, self netip.Addr, port uint16, peer *udpPeer) bool {
	t.Helper()
	var c *net.UDPConn
	if err := inNS(tp.a, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(self, port+1)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		c.WriteToUDPAddrPort([]byte("latch-reroute"), netip.AddrPortFrom(self, port))
		if peer.receives("latch-reroute", 700*time.Millisecond) {
			return true
		}
	}
	return false
}

// selfAddr is A's address of the family.
func selfAddr(v4 bool) netip.Addr {
	if v4 {
		return netip.MustParseAddr(addrA)
	}
	return netip.MustParseAddr(addr6A)
}

// TestLoopbackExemptRerouteOut (review24, low: it takes the host's own
// policy routing by mark of a local destination): a datagram to A's own
// address whose mark policy routing steers out the veth to B, with every
// rule denying, must not reach B undecided. LATCH-OUT's '-o lo' (and nft's
// oifname) is the nf_hook_state's output device, fixed when the LOCAL_OUT
// hook is called (the socket's route, lo); a reroute during the hook does
// not change it: the mangle table's (ip6t_mangle_out: ip6_route_me_harder on
// a mark change, priority -150, before the filter table) as well as a route
// chain's after it (priority 10 here). Only POSTROUTING sees the device the
// packet leaves by: the loopback return gives the flow MarkLoopbackExempt,
// and LATCH-POST (nft: chain postrouting) drops what of it leaves by another
// interface. It fails without them: the datagram reaches B, in every case
// (checked on iptables-nft, iptables-legacy and nftables, IPv4 and IPv6).
func TestLoopbackExemptRerouteOut(t *testing.T) {
	port := uint16(9451)
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		for _, late := range []bool{false, true} {
			for _, v4 := range []bool{false, true} {
				c := rerouteCase{fw: fw, late: late, v4: v4}
				port += 2
				t.Run(c.name(), func(t *testing.T) {
					tp, stop := c.topo(t)
					defer stop()
					self := selfAddr(v4)
					markReroute(t, tp, v4, func() { c.markRule(t, tp.a, self, port) })
					peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, port))
					if sendsRerouted(t, tp, self, port, peer) {
						t.Errorf("a datagram to A's own address that policy routing by mark (%s) sends out the veth reached B undecided (every rule denies)", c.name())
					}
				})
			}
		}
	}
}

// TestLoopbackExemptDNATLocalRerouteOut (review24, a neighbour): the host's
// OUTPUT DNAT sends A's own address and port to another local port (the
// loopback return passes it: DNAT'd to a local address, the second return),
// and a route chain after latch's filter chains marks it for policy routing
// out the veth to B. With every rule denying it must not reach B: the
// second return's flows get MarkLoopbackExempt too. Fails if only the first
// return's (not DNAT'd) flows get it.
func TestLoopbackExemptDNATLocalRerouteOut(t *testing.T) {
	port := uint16(9481)
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port += 4
		c := rerouteCase{fw: fw, late: true}
		t.Run(fw, func(t *testing.T) {
			tp, stop := c.topo(t)
			defer stop()
			self := selfAddr(false)
			to := port + 2
			markReroute(t, tp, false, func() { c.markRule(t, tp.a, self, to) })
			nftIn(t, tp.a, fmt.Sprintf("add table ip6 r24nat\nadd chain ip6 r24nat out { type nat hook output priority -100; }\n"+
				"add rule ip6 r24nat out ip6 daddr %s udp dport %d dnat to [%s]:%d\n", self, port, self, to))
			peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, to))
			if sendsRerouted(t, tp, self, port, peer) {
				t.Error("a datagram to A's own address, DNAT'd to another local port and rerouted by mark out the veth, reached B undecided (every rule denies)")
			}
		})
	}
}

// TestLoopbackRerouteDecided (review24, a neighbour): what a verdict
// decided keeps passing when the host's mark reroutes it. With loopback held
// (--exempt-loopback=false: no loopback return, no postrouting chain) the
// datagram to A's own address is decided: allowed it reaches B, denied it
// does not. With loopback exempt, a flow the queue allowed (to B, MarkAllow)
// keeps passing when its datagrams get a mark that policy routing takes
// (a route chain after latch's filter chains): the postrouting drop takes
// only flows the loopback return passed.
func TestLoopbackRerouteDecided(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		for j, allow := range []bool{true, false} {
			port := uint16(9501 + i*8 + j*2)
			verdict := "deny"
			if allow {
				verdict = "allow"
			}
			t.Run(fw+"/held-loopback/"+verdict, func(t *testing.T) {
				needFirewall(t, fw)
				tp, _ := forgedTCPNet(t)
				d := startDaemonOn(t, tp, fw, fmt.Sprintf("%d=%s,*=deny", port, verdict), "LATCH_TEST_INBOUND=1", "LATCH_TEST_HOLD_LOOPBACK=1")
				defer d.stop()
				time.Sleep(200 * time.Millisecond)
				c := rerouteCase{fw: fw, late: true}
				self := selfAddr(false)
				markReroute(t, tp, false, func() { c.markRule(t, tp.a, self, port) })
				peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, port))
				if got := sendsRerouted(t, tp, self, port, peer); got != allow {
					t.Errorf("loopback held, the port's rule %s: the rerouted datagram reached B: %v, want %v", verdict, got, allow)
				}
			})
		}
		port := uint16(9501 + i*8 + 4)
		t.Run(fw+"/exempt/allowed-flow", func(t *testing.T) {
			tp, d, _ := forgedTCPTopo(t, fw, fmt.Sprintf("%d=allow,*=deny", port))
			defer d.stop()
			b := netip.MustParseAddr(addr6B)
			for _, args := range [][]string{
				{"-n", tp.a, "-6", "rule", "add", "pref", "10", "fwmark", "0x24", "lookup", "124"},
				{"-n", tp.a, "-6", "route", "add", "table", "124", addr6B + "/128", "dev", tp.vethA},
			} {
				if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
				}
			}
			rerouteCase{fw: fw, late: true}.markRule(t, tp.a, b, port)
			peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(b, port))
			var conn *net.UDPConn
			if err := inNS(tp.a, func() error {
				var err error
				conn, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(selfAddr(false), port+1)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			for _, msg := range []string{"latch-allowed-1", "latch-allowed-2"} {
				got := false
				for i := 0; i < 3 && !got; i++ {
					conn.WriteToUDPAddrPort([]byte(msg), netip.AddrPortFrom(b, port))
					got = peer.receives(msg, 700*time.Millisecond)
				}
				if !got {
					t.Errorf("%s of a flow the queue allowed, with a mark policy routing takes, did not reach B", msg)
				}
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

// postChains lists, for firewall fw in namespace ns, which of IPv4's and
// IPv6's mangle tables hold LATCH-POST and which POSTROUTING jumps to it
// ("ip:chain", "ip:jump", "ip6:chain", ...), and whether an nftables
// table named mangle exists (iptables-nft creates one for it).
func postChains(t *testing.T, ns, fw string) []string {
	t.Helper()
	var got []string
	for _, fam := range []string{"ip", "ip6"} {
		ipt := "iptables"
		if fam == "ip6" {
			ipt = "ip6tables"
		}
		if fw == FirewallIptablesLegacy {
			ipt += "-legacy"
		} else {
			ipt += "-nft"
		}
		if err := exec.Command("ip", "netns", "exec", ns, ipt, "-w", "-t", "mangle", "-S", chainPost).Run(); err == nil {
			got = append(got, fam+":chain")
		}
		if err := exec.Command("ip", "netns", "exec", ns, ipt, "-w", "-t", "mangle", "-C", "POSTROUTING", "-j", chainPost).Run(); err == nil {
			got = append(got, fam+":jump")
		}
		if fw == FirewallIptablesNft {
			if err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", fam, "mangle").Run(); err == nil {
				got = append(got, fam+":nft-mangle")
			}
		}
	}
	return got
}

// TestLoopbackPostChainRemoved (review24): LATCH-POST, the mangle table's
// chain of the postrouting drop, is installed with loopback exempt (with
// the jump from POSTROUTING, both families, with its untracked drop), goes
// at a clean stop (SIGTERM) and at Cleanup after a kill, with the mangle table iptables-nft created
// for it, and an install with loopback held removes a stopped daemon's.
func TestLoopbackPostChainRemoved(t *testing.T) {
	want := map[string][]string{
		FirewallIptablesNft:    {"ip:chain", "ip:jump", "ip:nft-mangle", "ip6:chain", "ip6:jump", "ip6:nft-mangle"},
		FirewallIptablesLegacy: {"ip:chain", "ip:jump", "ip6:chain", "ip6:jump"},
	}
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			before := ruleset(t, tp.a)
			d := startDaemonOn(t, tp, fw, "*=allow")
			if got := postChains(t, tp.a, fw); !slices.Equal(got, want[fw]) {
				t.Fatalf("while running: %v, want %v", got, want[fw])
			}
			if n := untrackedDrops(t, tp.a, fw); n != 2 {
				t.Errorf("while running: %d untracked drops in LATCH-POST, want 2 (IPv4's and IPv6's)", n)
			}
			d.stop()
			if got := postChains(t, tp.a, fw); len(got) != 0 {
				t.Errorf("after SIGTERM: %v left", got)
			}
			if n := untrackedDrops(t, tp.a, fw); n != 0 {
				t.Errorf("after SIGTERM: %d untracked drops left", n)
			}
			// iptables-legacy's tables stay (the kernel module's), empty.
			if after := ruleset(t, tp.a); fw == FirewallIptablesNft && after != before {
				t.Errorf("ruleset after a clean exit differs.\nbefore:\n%s\nafter:\n%s", before, after)
			}

			d = startDaemonOn(t, tp, fw, "*=allow")
			d.cmd.Process.Kill()
			<-d.exited
			if got := postChains(t, tp.a, fw); !slices.Equal(got, want[fw]) {
				t.Fatalf("after a kill: %v, want %v", got, want[fw])
			}
			d = startDaemonOn(t, tp, fw, "*=allow", "LATCH_TEST_HOLD_LOOPBACK=1")
			if got := postChains(t, tp.a, fw); len(got) != 0 {
				t.Errorf("loopback held, after a daemon with it exempt was killed: %v left", got)
			}
			d.cmd.Process.Kill()
			<-d.exited

			d = startDaemonOn(t, tp, fw, "*=allow")
			d.cmd.Process.Kill()
			<-d.exited
			c := spawnChild(t, tp, "cleanup", "")
			<-c.exited
			if code := c.cmd.ProcessState.ExitCode(); code != 0 {
				t.Fatalf("cleanup exited %d: %s", code, c.errors())
			}
			if got := postChains(t, tp.a, fw); len(got) != 0 {
				t.Errorf("after Cleanup: %v left", got)
			}
			if fw == FirewallIptablesNft {
				if after := ruleset(t, tp.a); after != before {
					t.Errorf("ruleset after Cleanup differs.\nbefore:\n%s\nafter:\n%s", before, after)
				}
			}
		})
	}
}

// TestLoopbackPostEveryRuleset checks, in every combination of options, the
// rules of the postrouting drop (review24): with loopback exempt, the
// mangle table's LATCH-POST (iptables; table inet latch's postrouting chain
// with nft) holds the drop of a loopback-marked flow's packet out another
// interface and that of an untracked packet this host sends to a local
// address out another interface (untrackedPost: the conntrack state and
// packet mark before the address type, whose lookup only what passes them
// pays; a forwarded packet returns, review30), and
// exactly one rule gives MarkLoopbackExempt (where,
// TestLoopbackForgedEveryRuleset checks; two before review27); without it
// none of them is there.
func TestLoopbackPostEveryRuleset(t *testing.T) {
	setIpt := fmt.Sprintf("CONNMARK --set-xmark %#x/%#x", MarkLoopbackExempt, MarkMask)
	setNft := fmt.Sprintf("ct mark set ct mark & %#x | %#x", ^MarkMask, MarkLoopbackExempt)
	postRules := "-A LATCH-POST ! -o lo -m connmark --mark 0x60000000/0x60000000 -j DROP\n" +
		"-A LATCH-POST ! -o lo -m conntrack --ctstate UNTRACKED -m mark --mark 0x0/0x70000000 -m owner ! --socket-exists -m addrtype ! --src-type LOCAL,ANYCAST -j RETURN\n" +
		"-A LATCH-POST ! -o lo -m conntrack --ctstate UNTRACKED -m mark --mark 0x0/0x70000000 -m addrtype --dst-type LOCAL -j DROP\nCOMMIT\n"
	// With notrack, the fast path's untracked packets return first (issue 9).
	postHead := "*mangle\n:LATCH-POST - [0:0]\n-I POSTROUTING 1 -j LATCH-POST\n"
	postFast := "-A LATCH-POST -m conntrack --ctstate UNTRACKED -m mark ! --mark 0x0/0x70000000 -j RETURN\n"
	nftPostChain := "add chain inet latch postrouting { type filter hook postrouting priority filter; policy accept; }\n" +
		"add rule inet latch postrouting ct mark & 0x60000000 == 0x60000000 oifname != \"lo\" drop\n" +
		"add chain inet latch postrouting-local\n" +
		"add rule inet latch postrouting ct state untracked oifname != \"lo\" meta mark & 0x70000000 == 0 fib daddr type local jump postrouting-local\n" +
		"add rule inet latch postrouting-local meta skuid >= 0 drop\n" +
		"add rule inet latch postrouting-local fib saddr type { local, anycast } drop\n"
	everyRuleSpec(t, ruleSpec{queue: 7}, func(spec ruleSpec, names []string) {
		post := postHead + postRules
		if spec.notrack {
			post = postHead + postFast + postRules
		}
		for _, v := range []struct {
			name, rules, set, post string
		}{
			{"iptables", spec.iptablesRules(false, nil, map[string]bool{}), setIpt, post},
			{"ip6tables", spec.iptablesRules(true, nil, map[string]bool{}), setIpt, post},
			{"nft", spec.nftRules(), setNft, nftPostChain},
		} {
			where := fmt.Sprintf("%s with %v", v.name, names)
			sets, posts := strings.Count(v.rules, v.set), strings.Count(v.rules, "LATCH-POST")+strings.Count(v.rules, "postrouting")
			switch {
			case !spec.exemptLoopback && (sets != 0 || posts != 0):
				t.Errorf("%s: loopback held, yet %d rules give MarkLoopbackExempt and %d lines name the postrouting chain:\n%s", where, sets, posts, v.rules)
			case spec.exemptLoopback && sets != 1:
				t.Errorf("%s: %d rules give MarkLoopbackExempt, want 1:\n%s", where, sets, v.rules)
			case spec.exemptLoopback && (!strings.Contains(v.rules, v.post) || posts != strings.Count(v.post, "LATCH-POST")+strings.Count(v.post, "postrouting")):
				t.Errorf("%s: the postrouting part is not\n%s\nin:\n%s", where, v.post, v.rules)
			}
		}
	})
	// With the jump in place (a stopped daemon's ruleset), none is added.
	if r := (ruleSpec{queue: 7, exemptLoopback: true}).iptablesRules(false, nil, map[string]bool{chainPost: true}); strings.Contains(r, "-I POSTROUTING") {
		t.Errorf("a second jump to LATCH-POST:\n%s", r)
	}
}

// TestStopKeepsRulesAddedToCreatedChains (review24, a neighbour of
// LATCH-POST's cleanup): iptables-nft creates the nftables tables and base
// chains latch's jumps need (filter OUTPUT, mangle POSTROUTING) and latch
// deletes them at its stop; a rule someone else added to them meanwhile
// stays ("nft delete chain" deletes a chain with its rules: the chain is
// left). Fails when the chains are deleted unlooked (the rules go with them).
func TestStopKeepsRulesAddedToCreatedChains(t *testing.T) {
	needFirewall(t, FirewallIptablesNft)
	tp := newTopo(t)
	d := startDaemonOn(t, tp, FirewallIptablesNft, "*=allow")
	added := [][]string{
		{"iptables-nft", "-w", "-A", "OUTPUT", "-p", "tcp", "--dport", "7", "-j", "ACCEPT"},
		{"ip6tables-nft", "-w", "-t", "mangle", "-A", "POSTROUTING", "-p", "udp", "--dport", "7", "-j", "ACCEPT"},
	}
	for _, args := range added {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	d.stop()
	for _, args := range added {
		check := append([]string{"netns", "exec", tp.a}, args...)
		check[slices.Index(check, "-A")] = "-C"
		if out, err := exec.Command("ip", check...).CombinedOutput(); err != nil {
			t.Errorf("after the stop, %v is gone: %v: %s", args, err, out)
		}
	}
	if left := ruleset(t, tp.a); strings.Contains(left, "LATCH") {
		t.Errorf("after the stop a LATCH chain is left:\n%s", left)
	}
}

// TestLoopbackForgedRerouteOut (review24, a neighbour: review18's forged
// flows): a datagram over lo to A's own address from an IPV6_FREEBIND
// socket bound to B's address (no privilege) gets MarkLoopbackForged, not
// MarkLoopbackExempt, and the loopback return passes it; rerouted by mark
// out the veth it must not reach B either. The postrouting drop tests the
// bits both loopback marks have; it fails when it takes MarkLoopbackExempt
// alone.
func TestLoopbackForgedRerouteOut(t *testing.T) {
	port := uint16(9531)
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port += 2
		c := rerouteCase{fw: fw, late: true}
		t.Run(fw, func(t *testing.T) {
			tp, stop := c.topo(t)
			defer stop()
			self, b := selfAddr(false), netip.MustParseAddr(addr6B)
			markReroute(t, tp, false, func() { c.markRule(t, tp.a, self, port) })
			peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, port))
			got := false
			for i := 0; i < 3 && !got; i++ {
				if err := inNS(tp.a, func() error {
					fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
					if err != nil {
						return err
					}
					defer unix.Close(fd)
					if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
						return err
					}
					if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: b.As16(), Port: int(port) + 1}); err != nil {
						return err
					}
					// EPERM: a netfilter drop on the way out.
					if err := unix.Sendto(fd, []byte("latch-forged-reroute"), 0, &unix.SockaddrInet6{Addr: self.As16(), Port: int(port)}); err != unix.EPERM {
						return err
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				got = peer.receives("latch-forged-reroute", 700*time.Millisecond)
			}
			if got {
				t.Error("a datagram over lo from B's address (IPV6_FREEBIND) to A's own address, rerouted by mark out the veth, reached B undecided (every rule denies)")
			}
		})
	}
}

// hostNotrackLo keeps loopback out of conntrack in namespace ns the way
// the host's own rules would: raw OUTPUT '-o lo -j NOTRACK' with the
// firewall's own iptables (both families), or with nftables a table of the
// host's at priority raw.
func hostNotrackLo(t *testing.T, ns, fw string) {
	t.Helper()
	if fw == FirewallNftables {
		for _, fam := range []string{"ip", "ip6"} {
			nftIn(t, ns, fmt.Sprintf("add table %s hostraw\nadd chain %s hostraw out { type filter hook output priority raw; }\n"+
				"add rule %s hostraw out oifname \"lo\" notrack\n", fam, fam, fam))
		}
		return
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if fw == FirewallIptablesLegacy {
			ipt += "-legacy"
		} else {
			ipt += "-nft"
		}
		if out, err := exec.Command("ip", "netns", "exec", ns, ipt, "-w", "-t", "raw", "-A", "OUTPUT", "-o", "lo", "-j", "NOTRACK").CombinedOutput(); err != nil {
			t.Fatalf("%s NOTRACK: %v: %s", ipt, err, out)
		}
	}
}

// TestLoopbackExemptRerouteUntrackedOut (review24, low: it takes the host's
// own NOTRACK of lo and its policy routing by mark of a local destination):
// where the host keeps loopback out of conntrack (raw OUTPUT '-o lo -j
// NOTRACK', for speed), a loopback packet has no conntrack entry for the
// loopback return to mark, and LATCH-POST's first drop, which tests the
// entry's mark, does not see it. Rerouted by mark out the veth, with every
// rule denying, it must not reach B: LATCH-POST's second rule drops an
// untracked packet without latch's bits in its mark that leaves by another
// interface than lo to a local address (untrackedPost). In every ruleset
// (nftables: its ruleset with drops for queues), IPv4 and IPv6, the host's
// mark from the mangle table (before latch's filter chains) and from a route
// chain after them; and from a socket bound with IPV6_FREEBIND to B's
// address (no privilege; the source is not what is tested). It failed
// before that rule in every case (the datagram reached B).
func TestLoopbackExemptRerouteUntrackedOut(t *testing.T) {
	port := uint16(9551)
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		for _, late := range []bool{false, true} {
			for _, v4 := range []bool{false, true} {
				c := rerouteCase{fw: fw, late: late, v4: v4}
				port += 2
				t.Run(c.name(), func(t *testing.T) {
					tp, stop := c.topo(t)
					defer stop()
					self := selfAddr(v4)
					markReroute(t, tp, v4, func() { c.markRule(t, tp.a, self, port) })
					hostNotrackLo(t, tp.a, c.fw)
					peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, port))
					if sendsRerouted(t, tp, self, port, peer) {
						t.Errorf("an untracked datagram to A's own address that policy routing by mark (%s) sends out the veth reached B undecided (every rule denies)", c.name())
					}
				})
			}
		}
	}
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		c := rerouteCase{fw: fw, late: true}
		port += 2
		t.Run(fw+"/freebind", func(t *testing.T) {
			tp, stop := c.topo(t)
			defer stop()
			self, b := selfAddr(false), netip.MustParseAddr(addr6B)
			markReroute(t, tp, false, func() { c.markRule(t, tp.a, self, port) })
			hostNotrackLo(t, tp.a, c.fw)
			peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, port))
			if sendsFreebind(t, tp, b, self, port, peer) {
				t.Error("an untracked datagram over lo from B's address (IPV6_FREEBIND) to A's own address, rerouted by mark out the veth, reached B undecided (every rule denies)")
			}
		})
	}
}

// sendsFreebind reports whether a datagram to A's address self and port,
// sent from an IPV6_FREEBIND socket in A bound to from (port+1), reaches
// peer, in up to three tries.
func sendsFreebind(t *testing.T, tp *topo, from, self netip.Addr, port uint16, peer *udpPeer) bool {
	t.Helper()
	for i := 0; i < 3; i++ {
		if err := inNS(tp.a, func() error {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
				return err
			}
			if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: from.As16(), Port: int(port) + 1}); err != nil {
				return err
			}
			// EPERM: a netfilter drop on the way out.
			if err := unix.Sendto(fd, []byte("latch-freebind"), 0, &unix.SockaddrInet6{Addr: self.As16(), Port: int(port)}); err != unix.EPERM {
				return err
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if peer.receives("latch-freebind", 700*time.Millisecond) {
			return true
		}
	}
	return false
}

// hostNotrackTCP keeps every TCP packet in namespace ns out of conntrack,
// both ways, as a host does for speed: raw OUTPUT and PREROUTING '-p tcp -j
// NOTRACK' with the firewall's own iptables (both families), or a table of
// the host's with nftables.
func hostNotrackTCP(t *testing.T, ns, fw string) {
	t.Helper()
	if fw == FirewallNftables {
		nftIn(t, ns, "add table inet hostrawtcp\n"+
			"add chain inet hostrawtcp out { type filter hook output priority raw; }\n"+
			"add chain inet hostrawtcp pre { type filter hook prerouting priority raw; }\n"+
			"add rule inet hostrawtcp out meta l4proto tcp notrack\n"+
			"add rule inet hostrawtcp pre meta l4proto tcp notrack\n")
		return
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if fw == FirewallIptablesLegacy {
			ipt += "-legacy"
		} else {
			ipt += "-nft"
		}
		for _, hook := range []string{"OUTPUT", "PREROUTING"} {
			if out, err := exec.Command("ip", "netns", "exec", ns, ipt, "-w", "-t", "raw", "-A", hook, "-p", "tcp", "-j", "NOTRACK").CombinedOutput(); err != nil {
				t.Fatalf("%s NOTRACK: %v: %s", ipt, err, out)
			}
		}
	}
}

// TestUntrackedPostPassesLegit (review24, the neighbours of the untracked
// drop, untrackedPost): what is untracked and was never loopback traffic
// rerouted keeps passing. The host keeps TCP out of conntrack (both ways)
// and lo too; TCP connections from A to B (IPv4, IPv6) opened before latch
// (untracked: no SYN for the queue, no conntrack mark, no packet mark) carry
// data both ways once latch is in, every rule denying (nftables: its
// ruleset with drops for queues); and a datagram over lo to A's own address
// (untracked, not rerouted) still reaches A's socket: loopback stays exempt.
// It fails with the drop's address type taken out (the segments to B are
// dropped) or its '! -o lo' (the datagram over lo is).
func TestUntrackedPostPassesLegit(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port := 9601 + i*4
		t.Run(fw, func(t *testing.T) {
			if fw == FirewallNftables {
				if _, err := exec.LookPath("nft"); err != nil {
					t.Skip("needs nft")
				}
			} else {
				needFirewall(t, fw)
			}
			tp := newTopo(t)
			addV6(t, tp)
			hostNotrackTCP(t, tp.a, fw)
			hostNotrackLo(t, tp.a, fw)
			type pair struct {
				name string
				c    net.Conn
				s    *pushConn
			}
			var pairs []pair
			for _, a := range []struct{ name, addr string }{{"IPv4", addrB}, {"IPv6", addrB6}} {
				srv := listenPush(t, tp, a.addr, port)
				c := dialFast(t, tp, a.addr, port, 0)
				pairs = append(pairs, pair{a.name, c, srv.conn(t, c)})
			}
			if fw == FirewallNftables {
				installNftDrop(t, tp.a, ruleSpec{queue: testQueue, inbound: true, exemptLoopback: true})
			} else {
				d := startDaemonOn(t, tp, fw, "*=deny", "LATCH_TEST_INBOUND=1")
				defer d.stop()
			}
			if n := untrackedDrops(t, tp.a, fw); n != 2 {
				t.Fatalf("%d untracked drops in the postrouting chains, want 2 (IPv4's and IPv6's, or inet's twice)", n)
			}
			for _, p := range pairs {
				p.c.Write(make([]byte, 100))
				p.s.c.Write(make([]byte, 100))
				if err := readN(p.c, 100); err != nil {
					t.Errorf("%s: the peer's segment on an untracked connection to B: %v", p.name, err)
				}
				for deadline := time.Now().Add(3 * time.Second); p.s.got.Load() < 100 && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
				}
				if got := p.s.got.Load(); got != 100 {
					t.Errorf("%s: an untracked connection's segment to B (not local) did not get through: B has %d bytes, want 100", p.name, got)
				}
			}
			for _, v4 := range []bool{true, false} {
				self := selfAddr(v4)
				if !v4 {
					self = netip.MustParseAddr(addrA6)
				}
				peer := listenUDPIn(t, tp.a, netip.AddrPortFrom(self, uint16(port+2)))
				if !sendsRerouted(t, tp, self, uint16(port+2), peer) {
					t.Errorf("an untracked datagram over lo to A's own address %v (not rerouted) did not reach A's socket (loopback is exempt)", self)
				}
			}
		})
	}
}

// untrackedDrops counts the untracked drops (untrackedPost) in namespace
// ns's postrouting chains of firewall fw: LATCH-POST of IPv4's and IPv6's
// mangle tables, or table inet latch's postrouting chain (counted twice: it
// takes both families).
func untrackedDrops(t testing.TB, ns, fw string) int {
	t.Helper()
	if fw == FirewallNftables {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", nftTable, nftPost).CombinedOutput()
		if err != nil {
			return 0
		}
		return 2 * strings.Count(string(out), "ct state untracked")
	}
	n := 0
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if fw == FirewallIptablesLegacy {
			ipt += "-legacy"
		} else {
			ipt += "-nft"
		}
		out, err := exec.Command("ip", "netns", "exec", ns, ipt, "-w", "-t", "mangle", "-S", chainPost).CombinedOutput()
		if err == nil {
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "--ctstate UNTRACKED") && strings.HasSuffix(l, "-j DROP") {
					n++
				}
			}
		}
	}
	return n
}

// TestUntrackedPostPassesDecided (review24, a neighbour of the untracked
// drop): an untracked datagram to a local address that leaves by the veth
// because of the socket's own route (the host's policy routing by
// destination port ahead of the local table, no mark), which LATCH-OUT sees
// leave by the veth, is decided (queued: UNTRACKED UDP) and, allowed, reaches
// B: it carries MarkAllow from its verdict, which the drop's packet mark test
// lets pass; denied it does not. Fails with the drop's mark test taken out
// (the allowed datagram is dropped).
func TestUntrackedPostPassesDecided(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		for j, allow := range []bool{true, false} {
			port := uint16(9641 + i*8 + j*2)
			verdict := "deny"
			if allow {
				verdict = "allow"
			}
			t.Run(fw+"/"+verdict, func(t *testing.T) {
				needFirewall(t, fw)
				tp, _ := forgedTCPNet(t)
				self := selfAddr(false)
				markReroute(t, tp, false, func() {
					if out, err := exec.Command("ip", "-n", tp.a, "-6", "rule", "add", "pref", "11", "ipproto", "udp", "dport", fmt.Sprint(port), "lookup", "124").CombinedOutput(); err != nil {
						t.Fatalf("ip rule dport: %v: %s", err, out)
					}
				})
				hostNotrackLo(t, tp.a, fw)
				ipt := "ip6tables-nft"
				if fw == FirewallIptablesLegacy {
					ipt = "ip6tables-legacy"
				}
				if out, err := exec.Command("ip", "netns", "exec", tp.a, ipt, "-w", "-t", "raw", "-A", "OUTPUT", "-p", "udp", "-j", "NOTRACK").CombinedOutput(); err != nil {
					t.Fatalf("NOTRACK udp: %v: %s", err, out)
				}
				d := startDaemonOn(t, tp, fw, fmt.Sprintf("%d=%s,*=deny", port, verdict), "LATCH_TEST_INBOUND=1")
				defer d.stop()
				time.Sleep(200 * time.Millisecond)
				peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, port))
				if got := sendsRerouted(t, tp, self, port, peer); got != allow {
					t.Errorf("an untracked datagram to A's own address routed out the veth by its port, the port's rule %s: reached B: %v, want %v", verdict, got, allow)
				}
			})
		}
	}
}

// TestLoopbackExemptRerouteAnycastOut (review24's class, low: it takes
// IPv6 forwarding and the host's own policy routing by mark of one of its
// addresses): a host that forwards IPv6 answers its links' subnet-router
// anycast addresses (fd00:: for fd00::1/64), and its packets to one leave
// by lo, as to its own addresses; but the address type is ANYCAST, not
// LOCAL. The loopback mark took a flow from a local address to a LOCAL one
// only (review27), so such a flow passed the loopback return unmarked and,
// rerouted by mark out the veth, reached B undecided, in every ruleset:
// the mark rule now takes LOCAL or ANYCAST (a packet that leaves by lo to
// an anycast address is to one of this host's; the tracked subtests failed
// without it). Open, the untracked subtests with iptables (gated,
// LATCH_TEST_KNOWN_HOLES=1): the first loopback return ('! --ctstate DNAT')
// passes an untracked packet whatever its destination, and the untracked
// drop (untrackedPost) takes LOCAL only: ANYCAST there would also take a
// host's untracked packets to its link's subnet-router address that leave
// by the veth as they should (the kernel calls any on-link prefix's first
// address anycast, forwarding or not). The native ruleset holds the
// untracked datagram ('ct status' matches no untracked packet, its second
// return wants a LOCAL address): that subtest passes.
func TestLoopbackExemptRerouteAnycastOut(t *testing.T) {
	port := uint16(9661)
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		for _, untracked := range []bool{false, true} {
			c := rerouteCase{fw: fw, late: true}
			port += 2
			name := fw + "/tracked"
			if untracked {
				name = fw + "/untracked"
			}
			t.Run(name, func(t *testing.T) {
				if untracked && fw != FirewallNftables && os.Getenv("LATCH_TEST_KNOWN_HOLES") == "" {
					t.Skip("known hole (review24's class, low): an untracked packet to the host's own IPv6 subnet-router anycast address (over lo), rerouted by mark, leaves by another interface undecided with iptables; LATCH_TEST_KNOWN_HOLES=1 runs it")
				}
				tp, stop := c.topo(t)
				defer stop()
				anycast := netip.MustParseAddr("fd00::")
				for _, args := range [][]string{
					{"ip", "netns", "exec", tp.a, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
					{"ip", "-n", tp.a, "-6", "rule", "add", "pref", "1000", "lookup", "local"},
					{"ip", "-n", tp.a, "-6", "rule", "del", "pref", "0", "lookup", "local"},
					{"ip", "-n", tp.a, "-6", "rule", "add", "pref", "10", "fwmark", "0x24", "lookup", "124"},
					{"ip", "-n", tp.a, "-6", "route", "add", "table", "124", "fd00::/128", "via", addr6B, "dev", tp.vethA},
					{"ip", "-n", tp.b, "addr", "add", "fd00::/128", "dev", "lo"},
				} {
					if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
						t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
					}
				}
				if out, err := exec.Command("ip", "-n", tp.a, "-6", "route", "get", "fd00::").CombinedOutput(); err != nil || !strings.Contains(string(out), "dev lo") {
					t.Fatalf("A's route to its subnet-router anycast address is not lo: %v: %s", err, out)
				}
				c.markRule(t, tp.a, anycast, port)
				if untracked {
					hostNotrackLo(t, tp.a, fw)
				}
				peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(anycast, port))
				var conn *net.UDPConn
				if err := inNS(tp.a, func() error {
					var err error
					conn, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(selfAddr(false), port+1)))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				got := false
				for i := 0; i < 3 && !got; i++ {
					conn.WriteToUDPAddrPort([]byte("latch-anycast"), netip.AddrPortFrom(anycast, port))
					got = peer.receives("latch-anycast", 700*time.Millisecond)
				}
				if got {
					t.Error("a datagram to A's own subnet-router anycast address (over lo), rerouted by mark out the veth, reached B undecided (every rule denies)")
				}
			})
		}
	}
}
