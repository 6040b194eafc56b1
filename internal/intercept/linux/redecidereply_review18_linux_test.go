package linux

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLocalRedecideReplyNotViaLo (review18, review16's hole by another
// way): with Config.Inbound and loopback held (--exempt-loopback=false), a
// local client opens a UDP flow to a local server (both ends this host's
// addresses; the client's datagrams go out lo), decided as the client's
// outbound flow. A rule change denies that (the client's outbound flows to
// the port) while the server's port may still take inbound ones. The server
// then sends its answer out a non-loopback interface (IP_UNICAST_IF, which
// any program may set; SO_BINDTODEVICE on an unbound socket or IP_PKTINFO do
// the same): a route with an output interface set takes a local destination
// that is not that interface's own address out of it. On the ruleset of
// b0b6084 that datagram matched "! -o lo", was held as the server's inbound
// flow and allowed by the server's inbound rules, which marked the whole
// flow allowed: the client's next datagram passed unheld to the server,
// though the client's rules now deny it. The opener of a flow whose other
// end is one of this host's addresses is local whatever the interface: the
// rule now also wants the destination not to be a local address. IPv4 only:
// IPv6 routes a local destination by lo whenever the source is set (as it is
// on a flow), whatever the output interface asked for (checked with
// IPV6_UNICAST_IF and ip -6 route get ... from ... oif: dev lo).
func TestLocalRedecideReplyNotViaLo(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port := 9180 + i
		t.Run(fw, func(t *testing.T) { testLocalRedecideReplyNotViaLo(t, fw, port) })
	}
}

func testLocalRedecideReplyNotViaLo(t *testing.T, fw string, port int) {
	needFirewall(t, fw)
	tp := newTopo(t)
	// The client's address: this host's, on lo (a /32, so the veth's
	// connected route still covers it for a lookup bound to the veth).
	const clientIP = "198.18.0.77"
	if out, err := exec.Command("ip", "-n", tp.a, "addr", "add", clientIP+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	d := startDaemon(t, tp, fmt.Sprintf("%d=allow,*=deny", port), "LATCH_TEST_FIREWALL="+fw,
		"LATCH_TEST_INBOUND=1", "LATCH_TEST_HOLD_LOOPBACK=1",
		fmt.Sprintf("LATCH_TEST_POLICY_AFTER=in:%d=allow,*=deny", port), "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
	defer d.stop()
	serverAddr := netip.MustParseAddrPort(net.JoinHostPort(addrA, strconv.Itoa(port)))
	var server, client *net.UDPConn
	var vethIndex int
	if err := inNS(tp.a, func() error {
		ifi, err := net.InterfaceByName(tp.vethA)
		if err != nil {
			return err
		}
		vethIndex = ifi.Index
		if server, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(serverAddr)); err != nil {
			return err
		}
		client, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(clientIP)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	defer client.Close()
	clientAddr := client.LocalAddr().(*net.UDPAddr).AddrPort()
	serverGot := make(chan string, 16)
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := server.ReadFromUDP(buf)
			if err != nil {
				return
			}
			serverGot <- string(buf[:n])
		}
	}()
	serverGets := func(msg string, within time.Duration) bool {
		deadline := time.After(within)
		for {
			select {
			case m := <-serverGot:
				if m == msg {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}
	if _, err := client.WriteToUDPAddrPort([]byte("latch-hello"), serverAddr); err != nil {
		t.Fatal(err)
	}
	if l, ok := d.waitLine("held out udp "+clientAddr.String()+" "+serverAddr.String(), 3*time.Second); !ok {
		t.Fatalf("the client's datagram was not held as its outbound flow (last %q)", l)
	}
	if !serverGets("latch-hello", 3*time.Second) {
		t.Fatal("the client's allowed datagram did not reach the server")
	}
	redecideAfterChange(t, d, 1)
	// The server answers out the veth (IP_UNICAST_IF: the ifindex in network
	// byte order for IPv4), to the client's local address.
	rc, err := server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(vethIndex))
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_UNICAST_IF, int(binary.NativeEndian.Uint32(b[:])))
	}); err != nil || serr != nil {
		t.Fatalf("IP_UNICAST_IF: %v %v", err, serr)
	}
	if _, err := server.WriteToUDPAddrPort([]byte("latch-push"), clientAddr); err != nil {
		t.Logf("server's answer out %s: %v", tp.vethA, err)
	}
	lines := d.linesFor(1 * time.Second)
	for _, l := range lines {
		if strings.HasPrefix(l, "held in udp ") {
			t.Errorf("the server's answer on the client's local flow, sent out %s, was held as an inbound flow: %q", tp.vethA, l)
		}
	}
	if _, err := client.WriteToUDPAddrPort([]byte("latch-client-after"), serverAddr); err != nil {
		t.Logf("client write: %v", err)
	}
	if serverGets("latch-client-after", 1500*time.Millisecond) {
		t.Error("after a rule change denied the client's local flow, its datagram reached the server (the server's inbound allow, from an answer sent out a non-loopback interface, reopened it)")
	}
	if n := strings.Count(strings.Join(append(lines, d.linesFor(200*time.Millisecond)...), "\n"), "held out udp "+clientAddr.String()); n < 1 {
		t.Errorf("the client's datagram after the rule change was not held as its outbound flow")
	}
}

// TestForwardRedecideReplyNAT (review18, checks review16's reversed tuple
// under NAT): B sends to a port of this host's own address, which A's nat
// table forwards to C (DNAT) and masquerades on the way (SNAT): the
// forwarded flow's two directions differ in both addresses. LATCH-FWD runs
// between the two (DNAT in prerouting, SNAT in postrouting; for the reply the
// reverse), so C's answer reads there reversed as B's request exactly (B to
// C's port, not to this host's): after a rule change it is held once as that
// request, denied with it, and allowed with it.
func TestForwardRedecideReplyNAT(t *testing.T) {
	i := 0
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		for _, deny := range []bool{false, true} {
			name := fw + "/allowed"
			if deny {
				name = fw + "/denied"
			}
			port := 9190 + i
			i++
			t.Run(name, func(t *testing.T) { testForwardRedecideReplyNAT(t, fw, deny, port) })
		}
	}
}

func testForwardRedecideReplyNAT(t *testing.T, fw string, deny bool, port int) {
	needFirewall(t, fw)
	tp := newTopo(t)
	c := addContainer(t, tp)
	natPort := port + 1000
	for _, rule := range [][]string{
		{"-t", "nat", "-A", "PREROUTING", "-p", "udp", "-d", addrA, "--dport", strconv.Itoa(natPort), "-j", "DNAT", "--to-destination", net.JoinHostPort(addrC, strconv.Itoa(port))},
		{"-t", "nat", "-A", "POSTROUTING", "-p", "udp", "-d", addrC, "-j", "MASQUERADE"},
	} {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a, fw}, rule...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v: %s", fw, strings.Join(rule, " "), err, out)
		}
	}
	after := fmt.Sprintf("%d=allow,*=deny", port)
	if deny {
		after = "*=deny"
	}
	d := startDaemonOn(t, tp, fw, fmt.Sprintf("%d=allow,*=deny", port), "LATCH_TEST_FORWARD=1",
		"LATCH_TEST_POLICY_AFTER="+after, "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
	defer d.stop()
	server := netip.AddrPortFrom(netip.MustParseAddr(addrC), uint16(port))
	public := netip.AddrPortFrom(netip.MustParseAddr(addrA), uint16(natPort))
	client := netip.AddrPortFrom(netip.MustParseAddr(addrB), uint16(port-9190+9200))
	// Where C answers: the masqueraded B (MASQUERADE keeps a free port).
	masq := netip.AddrPortFrom(netip.MustParseAddr(addrAC), client.Port())
	srv := listenUDPIn(t, c, server)
	peer := listenUDPIn(t, tp.b, client)
	held := func(lines []string) (n, other int) {
		for _, l := range lines {
			if strings.HasPrefix(l, fmt.Sprintf("held out udp %s %s ", client, server)) {
				n++
			} else if strings.HasPrefix(l, "held ") {
				other++
			}
		}
		return n, other
	}
	peer.send(t, public, "latch-hello")
	if !srv.receives("latch-hello", 3*time.Second) {
		t.Fatal("B's datagram (forwarded by DNAT, allowed) did not reach C")
	}
	if n, _ := held(d.linesFor(200 * time.Millisecond)); n != 1 {
		t.Fatalf("B's first datagram was held %d times as B's request to C's port; want 1", n)
	}
	srv.send(t, masq, "latch-answer")
	if !peer.receives("latch-answer", 2*time.Second) {
		t.Fatal("C's answer on the allowed flow did not reach B")
	}
	redecideAfterChange(t, d, 1)
	srv.send(t, masq, "latch-answer-after")
	got := peer.receives("latch-answer-after", 1500*time.Millisecond)
	if n, other := held(d.linesFor(200 * time.Millisecond)); n != 1 || other != 0 {
		t.Errorf("C's answer after the rule change was held %d times as B's request to C's port (want 1), %d times as another", n, other)
	}
	if deny {
		if got {
			t.Fatal("after a rule change denied the NATed forwarded flow B opened, C's answer on it reached B")
		}
		peer.send(t, public, "latch-peer-denied")
		if srv.receives("latch-peer-denied", 1500*time.Millisecond) {
			t.Error("after the rule change B's datagram reached C")
		}
		return
	}
	if !got {
		t.Fatal("after a rule change that still allows the NATed forwarded flow, C's answer did not reach B")
	}
	peer.send(t, public, "latch-peer-after")
	if !srv.receives("latch-peer-after", 2*time.Second) {
		t.Fatal("B's datagram after the flow was allowed again did not reach C")
	}
	if n, _ := held(d.linesFor(200 * time.Millisecond)); n != 0 {
		t.Errorf("B's datagram after the flow was allowed again was held %d times; want 0", n)
	}
}

// TestInboundRedecideRedirect (review18, Redecide behind DNAT on this host):
// with Config.Inbound, B sends to one port of this host that the nat table
// redirects to the server's port (REDIRECT: DNAT in prerouting). The flow is
// decided as an inbound one to the server's port (LATCH-IN runs after it). A
// rule change that denies it must find its conntrack entry, whose original
// tuple names the port B sent to; before, it was looked for by that port,
// which no rule names: nothing was marked, and B's datagrams kept reaching the
// server by the old rules.
func TestInboundRedecideRedirect(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		port := 9195 + i
		t.Run(fw, func(t *testing.T) { testInboundRedecideRedirect(t, fw, port) })
	}
}

func testInboundRedecideRedirect(t *testing.T, fw string, port int) {
	needFirewall(t, fw)
	tp := newTopo(t)
	natPort := port + 1000
	rule := []string{"-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", strconv.Itoa(natPort), "-j", "REDIRECT", "--to-ports", strconv.Itoa(port)}
	if out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a, fw}, rule...)...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", fw, strings.Join(rule, " "), err, out)
	}
	d := startDaemonOn(t, tp, fw, fmt.Sprintf("in:%d=allow,*=deny", port), "LATCH_TEST_INBOUND=1",
		"LATCH_TEST_POLICY_AFTER=*=deny", "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
	defer d.stop()
	local := netip.AddrPortFrom(netip.MustParseAddr(addrA), uint16(port))
	public := netip.AddrPortFrom(netip.MustParseAddr(addrA), uint16(natPort))
	remote := netip.AddrPortFrom(netip.MustParseAddr(addrB), uint16(port-9195+9205))
	srv := listenUDPIn(t, tp.a, local)
	peer := listenUDPIn(t, tp.b, remote)
	peer.send(t, public, "latch-hello")
	if !srv.receives("latch-hello", 3*time.Second) {
		t.Fatal("B's datagram (redirected, inbound, allowed) did not reach the server")
	}
	if n := heldInbound(d.linesFor(200*time.Millisecond), "udp", local, remote); n != 1 {
		t.Fatalf("B's first datagram was held %d times as an inbound flow to the server's port; want 1", n)
	}
	redecideAfterChange(t, d, 1)
	peer.send(t, public, "latch-denied")
	if srv.receives("latch-denied", 1500*time.Millisecond) {
		t.Error("after a rule change denied the redirected inbound flow, B's datagram reached the server")
	}
	if n := heldInbound(d.linesFor(200*time.Millisecond), "udp", local, remote); n != 1 {
		t.Errorf("B's datagram after the rule change was held %d times as the inbound flow; want 1", n)
	}
}

// TestLoopbackForgedSourceReply (review18): with Config.Inbound (loopback
// exempt, as by default), one unprivileged program holds two UDP sockets:
// S on this host's address, and F bound with IPV6_FREEBIND to B's address,
// which is not this host's. F sends to S over lo; IPv6 lets a freebind
// socket send from a source that is not local, so conntrack records a flow
// that B seems to have opened, which nothing decided (loopback exempt). S
// then sends to B: conntrack direction reply on an undecided flow, which the
// ruleset passed as it passes this host's side of flows from before latch,
// and the datagram went out to B, the real host: an outbound channel to any
// IPv6 address, both ways, that no rule decided (B's answers reach S as
// the flow's original direction, also undecided). Open (README, review18):
// LATCH_TEST_KNOWN_HOLES=1 runs it. IPv4 needs IP_TRANSPARENT
// (CAP_NET_ADMIN) for a source that is not local. Fixes weighed: dropping
// what leaves by lo from a source that is not local breaks transparent
// proxies that reach a local backend with the client's address (TPROXY
// with IP_TRANSPARENT); holding this host's side of every undecided flow the
// peer opened (MarkRedecideReply for conntrack mark 0 too) would decide
// S's datagram as B's inbound flow to S, but holds flows from before latch
// once each, and with loopback held an allow of F's loopback flow marks it
// allowed, S's side too.
func TestLoopbackForgedSourceReply(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port := 9197 + i*2
		t.Run(fw, func(t *testing.T) { testLoopbackForgedSourceReply(t, fw, port, false) })
	}
}

// TestLoopbackForgedSourceReplyHeld is TestLoopbackForgedSourceReply with
// loopback held (--exempt-loopback=false) and the program's loopback flow
// allowed (a rule for S's port): the allow's CONNMARK save marks the flow
// MarkAllow, B's side too, so S's datagrams to B pass as an allowed flow's.
// Open (README, review18): LATCH_TEST_KNOWN_HOLES=1 runs it.
func TestLoopbackForgedSourceReplyHeld(t *testing.T) {
	if os.Getenv("LATCH_TEST_KNOWN_HOLES") == "" {
		t.Skip("a known hole (see the comment); LATCH_TEST_KNOWN_HOLES=1 runs it")
	}
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port := 9213 + i*2
		t.Run(fw, func(t *testing.T) { testLoopbackForgedSourceReply(t, fw, port, true) })
	}
}

func testLoopbackForgedSourceReply(t *testing.T, fw string, port int, holdLoopback bool) {
	needFirewall(t, fw)
	tp := newTopo(t)
	for _, args := range [][]string{
		{"-n", tp.a, "addr", "add", addr6A + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "add", addr6B + "/64", "dev", tp.vethB, "nodad"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	policy, env := "*=deny", []string{"LATCH_TEST_INBOUND=1"}
	if holdLoopback {
		policy, env = fmt.Sprintf("%d=allow,*=deny", port), append(env, "LATCH_TEST_HOLD_LOOPBACK=1")
	}
	d := startDaemonOn(t, tp, fw, policy, env...)
	defer d.stop()
	forgedLoopbackExchange(t, tp, port)
}

// forgedLoopbackExchange forges the flow over lo in tp.a (see
// TestLoopbackForgedSourceReply) and checks that its datagram over lo
// arrives and that neither S's datagram to B nor B's to S does.
func forgedLoopbackExchange(t *testing.T, tp *topo, port int) {
	local := netip.AddrPortFrom(netip.MustParseAddr(addr6A), uint16(port))
	remote := netip.AddrPortFrom(netip.MustParseAddr(addr6B), uint16(port+1))
	peer := listenUDPIn(t, tp.b, remote)
	var s *net.UDPConn
	if err := inNS(tp.a, func() error {
		var err error
		s, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(local))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := freebindConn(t, tp.a, remote)
	f.WriteToUDPAddrPort([]byte("latch-forged"), local)
	s.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	buf := make([]byte, 64)
	// What travels by lo alone (a transparent proxy's flow to a local
	// backend with the client's address) passes: exempt, or allowed.
	if n, from, err := s.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != "latch-forged" {
		t.Errorf("S got %q from %v over lo (%v); want %q", buf[:n], from, err, "latch-forged")
	}
	if _, err := s.WriteToUDPAddrPort([]byte("latch-exfil"), remote); err != nil {
		t.Logf("S's datagram to B: %v", err)
	}
	if peer.receives("latch-exfil", 1500*time.Millisecond) {
		t.Error("a datagram to B left undecided (every rule to B denies) on a flow the program forged over lo with B's address as its source")
	}
	// B's datagram to S is that flow's original direction (B seems to
	// have opened it), arriving by B's interface: dropped too.
	peer.send(t, local, "latch-infil")
	s.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	if n, from, err := s.ReadFromUDPAddrPort(buf); err == nil {
		t.Errorf("S got %q from %v on the flow the program forged over lo (every rule for B denies)", buf[:n], from)
	}
}

// TestLoopbackForgedEveryRuleset checks, in every combination of options,
// where the rules against a flow forged over lo stand (see
// TestLoopbackForgedSourceReply): with loopback exempt, the conntrack mark
// MarkLoopbackForged is given by the rule right before LATCH-OUT's loopback
// return, and every chain but LATCH-FWD drops a packet of a flow carrying it
// right after its loopback return, before any rule that passes or queues
// (MarkRedecideReply's tests a conntrack mark other than 0, the protocols'
// returns pass an undecided flow's reply direction). No other rule names the
// conntrack mark; without the loopback exemption none does.
func TestLoopbackForgedEveryRuleset(t *testing.T) {
	forged := fmt.Sprintf("%#x/%#x", MarkLoopbackForged, MarkMask)
	nftDrop := fmt.Sprintf("ct mark & %#x == %#x drop", MarkMask, MarkLoopbackForged)
	nftSet := fmt.Sprintf("ct mark set ct mark & %#x | %#x", ^MarkMask, MarkLoopbackForged)
	// loReturn: the loopback return's rules, in a row (out: what leaves by
	// lo to a local address, also after DNAT, review23; after the rules
	// that give such a flow MarkLoopbackExempt, review24).
	type chainWant struct {
		prefix, set string
		loReturn    []string
		drop        string
	}
	ipt := func(chain, lo, set string) chainWant {
		ret := []string{"-A " + chain + " " + lo + " lo -j RETURN"}
		if lo == "-o" {
			// The rule that gives a flow the returns pass
			// MarkLoopbackExempt first (review24, review27).
			ret = []string{
				"-A " + chain + " -o lo -m connmark --mark 0x0/0x70000000 -m addrtype --src-type LOCAL --dst-type LOCAL,ANYCAST -j CONNMARK --set-xmark 0x60000000/0x70000000",
				"-A " + chain + " -o lo -m conntrack ! --ctstate DNAT -j RETURN", "-A " + chain + " -o lo -m addrtype --dst-type LOCAL -j RETURN"}
		}
		c := chainWant{"-A " + chain + " ", "", ret, "-A " + chain + " -m connmark --mark " + forged + " -j DROP"}
		if set != "" {
			c.set = "-A " + chain + " -o lo -m conntrack --ctstate NEW -m connmark --mark 0x0/0x70000000 -m addrtype ! --src-type LOCAL -j CONNMARK --set-xmark " + forged
		}
		return c
	}
	nft := func(chain, lo string, set bool) chainWant {
		p := "add rule inet " + nftTable + " " + chain + " "
		ret := []string{p + lo + ` "lo" accept`}
		if lo == "oifname" {
			ret = []string{
				p + `oifname "lo" ct mark & 0x70000000 == 0 fib saddr type local fib daddr type { local, anycast } ct mark set ct mark & 0x8fffffff | 0x60000000`,
				p + `oifname "lo" ct status & dnat == 0 accept`, p + `oifname "lo" fib daddr type local accept`}
		}
		c := chainWant{p, "", ret, p + nftDrop}
		if set {
			c.set = p + `oifname "lo" ct state new ct mark & 0x70000000 == 0 fib saddr type != local ` + nftSet
		}
		return c
	}
	everyRuleSpec(t, ruleSpec{queue: 7}, func(spec ruleSpec, names []string) {
		for _, v := range []struct {
			name   string
			chains []chainWant
			rules  string
		}{
			{"iptables", []chainWant{ipt(chainOut, "-o", "set"), ipt(chainIn, "-i", "")}, spec.iptablesRules(false, nil, map[string]bool{})},
			{"ip6tables", []chainWant{ipt(chainOut, "-o", "set"), ipt(chainIn, "-i", "")}, spec.iptablesRules(true, nil, map[string]bool{})},
			{"nft", []chainWant{nft("output", "oifname", true), nft("input", "iifname", false)}, spec.nftRules()},
		} {
			where := fmt.Sprintf("%s with %v", v.name, names)
			lines := strings.Split(v.rules, "\n")
			seen := 0
			for _, l := range lines {
				if strings.Contains(l, "connmark --mark "+forged) || strings.Contains(l, "CONNMARK --set-xmark "+forged) || strings.Contains(l, nftDrop) || strings.Contains(l, nftSet) {
					seen++
				}
			}
			want := 0
			if spec.exemptLoopback {
				want = 2
				if spec.inbound {
					want = 3
				}
			}
			if seen != want {
				t.Errorf("%s: %d rules name MarkLoopbackForged as a conntrack mark, want %d:\n%s", where, seen, want, v.rules)
				continue
			}
			if !spec.exemptLoopback {
				continue
			}
			for i, c := range v.chains {
				if i == 1 && !spec.inbound {
					continue
				}
				var out []string
				for _, l := range lines {
					if strings.HasPrefix(l, c.prefix) {
						out = append(out, l)
					}
				}
				at := -1
				for j := range out {
					if j+len(c.loReturn) <= len(out) && slices.Equal(out[j:j+len(c.loReturn)], c.loReturn) {
						at = j
					}
				}
				end := at + len(c.loReturn) - 1
				switch {
				case at < 0:
					t.Errorf("%s: no loopback return %q:\n%s", where, c.loReturn, strings.Join(out, "\n"))
				case c.set != "" && (at == 0 || out[at-1] != c.set):
					t.Errorf("%s: the rule before the loopback return is not %q:\n%s", where, c.set, strings.Join(out, "\n"))
				case end+1 >= len(out) || out[end+1] != c.drop:
					t.Errorf("%s: the rule after the loopback return is not %q:\n%s", where, c.drop, strings.Join(out, "\n"))
				}
				// Before it only DNS copies (NFLOG, nft log), which never hold
				// or pass a packet, and the early returns of the output chain
				// (issue 9), which take only untracked packets and flows
				// marked MarkAllow: no flow the forged rules mark (NEW, no
				// mark of latch's) or drop.
				start := at - 1
				if c.set == "" {
					start = at
				}
				early := spec.iptablesEarlyReturns(chainOut, v.name == "ip6tables", spec.leaseMatch())
				switch {
				case v.name == "nft" && i == 0:
					early = strings.Join(spec.nftEarlyReturns(), "\n")
				case v.name == "nft":
					early = strings.Join(spec.nftEarlyReturnsIn(), "\n")
				case i == 1:
					early = spec.iptablesEarlyReturnsIn(chainIn)
				}
				for _, l := range out[:max(start, 0)] {
					if early != "" && strings.Contains(early, strings.TrimPrefix(l, c.prefix)) {
						continue
					}
					if !strings.Contains(l, "NFLOG") && !strings.Contains(l, " log group ") {
						t.Errorf("%s: %q comes before the rules against a forged loopback flow", where, l)
					}
				}
			}
		}
	})
}

// TestNftLoopbackForgedRuleset runs TestLoopbackForgedSourceReply's exchange
// against the native nftables ruleset (Config.Inbound, loopback exempt) on a
// kernel that cannot queue from nftables (these machines), its queue
// statements made drops as by TestNftICMPRuleset: every rule denies.
func TestNftLoopbackForgedRuleset(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	for _, args := range [][]string{
		{"-n", tp.a, "addr", "add", addr6A + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "add", addr6B + "/64", "dev", tp.vethB, "nodad"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, inbound: true, exemptLoopback: true}.nftRules(), "counter drop")
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	forgedLoopbackExchange(t, tp, 9231)
}
