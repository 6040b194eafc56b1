package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// udpPeer is a UDP socket in one namespace that records what it receives.
type udpPeer struct {
	c   *net.UDPConn
	got chan string
}

func listenUDPIn(t *testing.T, ns string, addr netip.AddrPort) *udpPeer {
	t.Helper()
	p := &udpPeer{got: make(chan string, 16)}
	if err := inNS(ns, func() error {
		var err error
		p.c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatalf("listen udp %v in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { p.c.Close() })
	go func() {
		buf := make([]byte, 2000)
		for {
			n, _, err := p.c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			p.got <- string(buf[:n])
		}
	}()
	return p
}

func (p *udpPeer) send(t *testing.T, to netip.AddrPort, msg string) {
	t.Helper()
	if _, err := p.c.WriteToUDPAddrPort([]byte(msg), to); err != nil {
		t.Fatalf("send %q to %v: %v", msg, to, err)
	}
}

// receives reports whether msg arrives within d.
func (p *udpPeer) receives(msg string, d time.Duration) bool {
	deadline := time.After(d)
	for {
		select {
		case m := <-p.got:
			if m == msg {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// startDaemonOn starts the backend with a forced firewall mechanism; the test is
// skipped where the kernel cannot queue from native nftables (TestNftRulesetSyntax
// still checks that ruleset).
func startDaemonOn(t *testing.T, tp *topo, firewall, policy string, env ...string) *daemon {
	t.Helper()
	d := spawnDaemon(t, tp, policy, append(env, "LATCH_TEST_FIREWALL="+firewall)...)
	if _, ok := d.waitLine("ready", readyWithin); !ok {
		if firewall == FirewallNftables && strings.Contains(d.errors(), "nft_queue missing") {
			t.Skip("this kernel cannot queue from nftables; the ruleset's syntax is checked by TestNftRulesetSyntax")
		}
		t.Fatalf("daemon did not become ready: %s; stderr:\n%s", d.progress(), d.errors())
	}
	return d
}

// TestUDPReplyDirectionHeld: without Config.Inbound a peer's datagram reaches a local
// UDP socket unheld and opens a conntrack entry; what the local program sends back on
// it (conntrack direction reply) is the first thing anyone decides, so it is held as
// the program's outbound connection. It used to pass as ESTABLISHED: any program could
// talk to any host that first sent it a datagram.
func TestUDPReplyDirectionHeld(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s v6=%v", fw, v6), func(t *testing.T) {
				testUDPReplyDirectionHeld(t, fw, v6)
			})
		}
	}
}

func testUDPReplyDirectionHeld(t *testing.T, firewall string, v6 bool) {
	tp := newTopo(t)
	a, b := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
	if v6 {
		addSecondAddresses(t, tp)
		a, b = netip.MustParseAddr(addr6A), netip.MustParseAddr(addr6B)
		time.Sleep(200 * time.Millisecond) // nodad: usable at once, but let the links settle
	}
	ap := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
	bp := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(b, port) }
	// Port 6000: the exploit, dropped. 6001: a server's answer, allowed. 6002: a
	// client's query, allowed.
	d := startDaemonOn(t, tp, firewall, "6000=drop,6001=allow,6002=allow,*=drop",
		"LATCH_TEST_REDECIDE_PORT=6001", "LATCH_TEST_TRAFFIC_INTERVAL=200ms")
	defer d.stop()
	held := func(local, remote netip.AddrPort) string {
		return fmt.Sprintf("held out udp %v %v ", local, remote)
	}

	// The exploit: B speaks first, from 6000 to A's 5000 (not held: inbound is not
	// held); A's program, with no rule, answers.
	loc, rem := listenUDPIn(t, tp.a, ap(5000)), listenUDPIn(t, tp.b, bp(6000))
	rem.send(t, ap(5000), "knock")
	if !loc.receives("knock", 3*time.Second) {
		t.Fatal("the peer's datagram did not reach A (inbound is not held)")
	}
	loc.send(t, bp(6000), "leak")
	if _, ok := d.waitLine(held(ap(5000), bp(6000)), 3*time.Second); !ok {
		t.Error("a datagram sent on a flow the peer opened was not held")
	}
	if rem.receives("leak", time.Second) {
		t.Error("a datagram on a flow the peer opened passed although its verdict was drop")
	}
	// Dropped, so still undecided: the next one is held again.
	loc.send(t, bp(6000), "leak-2")
	if _, ok := d.waitLine(held(ap(5000), bp(6000)), 3*time.Second); !ok {
		t.Error("after a drop the next datagram on the flow was not held")
	}
	if rem.receives("leak-2", time.Second) {
		t.Error("second datagram passed although its verdict was drop")
	}

	// A server's answer, allowed: held once, then the flow passes both ways.
	srv, cli := listenUDPIn(t, tp.a, ap(5001)), listenUDPIn(t, tp.b, bp(6001))
	cli.send(t, ap(5001), "ask")
	if !srv.receives("ask", 3*time.Second) {
		t.Fatal("the client's datagram did not reach A")
	}
	srv.send(t, bp(6001), "answer")
	if _, ok := d.waitLine(held(ap(5001), bp(6001)), 3*time.Second); !ok {
		t.Error("the server's first answer was not held")
	}
	if !cli.receives("answer", 3*time.Second) {
		t.Fatal("an allowed answer did not arrive")
	}
	d.drain()
	cli.send(t, ap(5001), "ask-2")
	srv.send(t, bp(6001), "answer-2")
	if !srv.receives("ask-2", 3*time.Second) || !cli.receives("answer-2", 3*time.Second) {
		t.Fatal("the allowed flow stopped")
	}
	if l, ok := d.waitLine("held ", 300*time.Millisecond); ok {
		t.Errorf("a packet of an allowed flow was held again: %q", l)
	}
	// Redecide: the flow's next datagram from A is held again.
	if err := d.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if l, ok := d.waitLine("redecided ", 5*time.Second); !ok {
		t.Fatal("no answer to Redecide")
	} else if l == "redecided 0 <nil>" {
		t.Errorf("Redecide marked nothing: %q", l)
	}
	srv.send(t, bp(6001), "answer-3")
	if _, ok := d.waitLine(held(ap(5001), bp(6001)), 3*time.Second); !ok {
		t.Error("after Redecide the server's next answer was not held")
	}
	if !cli.receives("answer-3", 3*time.Second) {
		t.Error("an answer allowed again did not arrive")
	}
	// Its bytes are reported as the server's: what A sends is out, though conntrack
	// counts it in the reply direction.
	big := strings.Repeat("x", 1000)
	for range 3 {
		srv.send(t, bp(6001), big)
		if !cli.receives(big, 3*time.Second) {
			t.Fatal("a large answer did not arrive")
		}
	}
	// A periodic report may come while the answers are being sent: the flow's
	// totals grow to them within a few reports.
	last, done := "", false
	for deadline := time.Now().Add(5 * time.Second); !done && time.Now().Before(deadline); {
		l, ok := d.waitLine(fmt.Sprintf("traffic %v %v ", ap(5001), bp(6001)), time.Until(deadline))
		if !ok {
			break
		}
		var in, out int
		var ended bool
		if _, err := fmt.Sscanf(strings.Fields(l)[3]+" "+strings.Fields(l)[4]+" "+strings.Fields(l)[5], "in=%d out=%d ended=%t", &in, &out, &ended); err != nil {
			t.Fatalf("traffic line %q: %v", l, err)
		}
		if in >= out {
			t.Errorf("traffic %q: want in < out (A's answers are its bytes out)", l)
		}
		last, done = l, out >= 3000
	}
	switch {
	case last == "":
		t.Error("no traffic report for an allowed flow the peer opened")
	case !done:
		t.Errorf("last traffic report %q: want out >= 3000 bytes (A's answers) within 5 s", last)
	}

	// A client's query and its answers: the query is held, the answers come back,
	// the next query is not held.
	q, dns := listenUDPIn(t, tp.a, ap(5002)), listenUDPIn(t, tp.b, bp(6002))
	d.drain()
	q.send(t, bp(6002), "query")
	if _, ok := d.waitLine(held(ap(5002), bp(6002)), 3*time.Second); !ok {
		t.Error("a client's first query was not held")
	}
	if !dns.receives("query", 3*time.Second) {
		t.Fatal("an allowed query did not arrive")
	}
	dns.send(t, ap(5002), "reply")
	if !q.receives("reply", 3*time.Second) {
		t.Fatal("the answer to an allowed query did not arrive")
	}
	q.send(t, bp(6002), "query-2")
	dns.send(t, ap(5002), "reply-2")
	if !dns.receives("query-2", 3*time.Second) || !q.receives("reply-2", 3*time.Second) {
		t.Fatal("the allowed client flow stopped")
	}
	if l, ok := d.waitLine("held ", 300*time.Millisecond); ok {
		t.Errorf("a packet of an allowed client flow was held again: %q", l)
	}
}

// TestUDPReplyWithInbound: with Config.Inbound the peer's first datagram is held on
// the way in, and once allowed the local server's answers pass without a second
// question.
func TestUDPReplyWithInbound(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft} {
		t.Run(fw, func(t *testing.T) {
			tp := newTopo(t)
			a, b := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
			d := startDaemonOn(t, tp, fw, "5001=allow,*=drop", "LATCH_TEST_INBOUND=1")
			defer d.stop()
			srv := listenUDPIn(t, tp.a, netip.AddrPortFrom(a, 5001))
			cli := listenUDPIn(t, tp.b, netip.AddrPortFrom(b, 6001))
			cli.send(t, netip.AddrPortFrom(a, 5001), "ask")
			if _, ok := d.waitLine(fmt.Sprintf("held in udp %v:5001 %v:6001 ", a, b), 3*time.Second); !ok {
				t.Fatal("the inbound datagram was not held")
			}
			if !srv.receives("ask", 3*time.Second) {
				t.Fatal("an allowed inbound datagram did not arrive")
			}
			d.drain()
			srv.send(t, netip.AddrPortFrom(b, 6001), "answer")
			if !cli.receives("answer", 3*time.Second) {
				t.Fatal("the server's answer on an allowed inbound flow did not arrive")
			}
			if l, ok := d.waitLine("held ", 300*time.Millisecond); ok {
				t.Errorf("the answer on an allowed inbound flow was held: %q", l)
			}
		})
	}
}

// TestNftUDPReplyRuleMatches runs the native nftables ruleset on the real kernel
// where the kernel cannot queue from nftables: each queue statement becomes "counter
// drop" (held and never answered), which shows that the rules match what they
// should: a datagram a local program sends on a flow the peer opened is dropped
// (the sender sees EPERM) and counted by the reply rule.
func TestNftUDPReplyRuleMatches(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	a, b := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
	spec := ruleSpec{queue: testQueue, exemptLoopback: true}
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop")
	load := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	load.Stdin = strings.NewReader(rules)
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, rules)
	}
	loc, rem := listenUDPIn(t, tp.a, netip.AddrPortFrom(a, 5000)), listenUDPIn(t, tp.b, netip.AddrPortFrom(b, 6000))
	rem.send(t, netip.AddrPortFrom(a, 5000), "knock")
	if !loc.receives("knock", 3*time.Second) {
		t.Fatal("the peer's datagram did not reach A (inbound is not held)")
	}
	if _, err := loc.c.WriteToUDPAddrPort([]byte("leak"), netip.AddrPortFrom(b, 6000)); err != nil && !errors.Is(err, unix.EPERM) {
		t.Fatalf("send: %v", err)
	}
	if rem.receives("leak", time.Second) {
		t.Error("nftables: a datagram on a flow the peer opened passed the output chain")
	}
	out, err := exec.Command("ip", "netns", "exec", tp.a, "nft", "list", "chain", "inet", nftTable, "output").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	if !regexp.MustCompile(`udp ct direction reply counter packets [1-9]`).Match(out) {
		t.Errorf("the reply rule did not count the datagram:\n%s", out)
	}
}
