package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// heldInbound counts the daemon's "held in" lines (inbound requests) of
// protocol proto from local to remote in lines.
func heldInbound(lines []string, proto string, local, remote fmt.Stringer) int {
	n := 0
	prefix := fmt.Sprintf("held in %s %s %s ", proto, local, remote)
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// redecideAfterChange sends the daemon SIGUSR1: the test policy becomes
// LATCH_TEST_POLICY_AFTER, then Redecide marks the flows of
// LATCH_TEST_REDECIDE_PORT; want is how many entries it must mark.
func redecideAfterChange(t *testing.T, d *daemon, want int) {
	t.Helper()
	d.drain()
	if err := d.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if l, ok := d.waitLine("redecided ", 5*time.Second); !ok || !strings.HasPrefix(l, fmt.Sprintf("redecided %d ", want)) {
		t.Fatalf("Redecide: %q, want %d conntrack entries marked", l, want)
	}
}

// TestUDPInboundRedecideReplyDenied (review15's neighbour): with
// Config.Inbound, a rule change denies a UDP flow the peer opened (allowed
// before). What the server sends on it next is held and decided under the new
// rules as that inbound flow, and denied: it never reaches the peer (on the
// old ruleset it left LATCH-OUT at the final "-p udp RETURN", undecided),
// nor does the peer's next datagram reach the server, nor the server's
// answer after that (the flow's mark stays MarkRedecide: every packet either
// side sends is decided). With and without the socket pin (the ruleset's two
// branches after the MarkRedecide queue rule: with the kernel fast path and
// without), with each firewall mechanism this machine has.
func TestUDPInboundRedecideReplyDenied(t *testing.T) {
	i := 0
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		for _, pin := range []bool{false, true} {
			name := fw + "/no-pin"
			if pin {
				name = fw + "/pin"
			}
			port := 40470 + i
			i++
			t.Run(name, func(t *testing.T) { testUDPInboundRedecideReplyDenied(t, fw, pin, port) })
		}
	}
}

func testUDPInboundRedecideReplyDenied(t *testing.T, fw string, pin bool, port int) {
	needFirewall(t, fw)
	tp := newTopo(t)
	env := []string{"LATCH_TEST_FIREWALL=" + fw, "LATCH_TEST_INBOUND=1",
		fmt.Sprintf("LATCH_TEST_POLICY=%d=allow,*=deny", port), "LATCH_TEST_POLICY_AFTER=*=deny",
		"LATCH_TEST_REDECIDE_PORT=" + strconv.Itoa(port)}
	var d *daemon
	if pin {
		d = startPinned(t, tp, 5*time.Second, env...)
	} else {
		d = startDaemon(t, tp, "*=allow", env...)
	}
	defer d.stop()
	local := netip.MustParseAddrPort(net.JoinHostPort(addrA, strconv.Itoa(port)))
	remote := netip.MustParseAddrPort(net.JoinHostPort(addrB, strconv.Itoa(port-40470+9130)))
	peer := listenUDPIn(t, tp.b, remote)
	var server *net.UDPConn
	if err := inNS(tp.a, func() error {
		var err error
		server, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := server.ReadFromUDP(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	serverGets := func(msg string, within time.Duration) bool {
		deadline := time.After(within)
		for {
			select {
			case m := <-got:
				if m == msg {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}
	answer := func(msg string) {
		t.Helper()
		if _, err := server.WriteToUDPAddrPort([]byte(msg), remote); err != nil {
			t.Fatal(err)
		}
	}
	peer.send(t, local, "latch-hello")
	if !serverGets("latch-hello", 3*time.Second) {
		t.Fatal("the peer's datagram (inbound, allowed) did not arrive")
	}
	answer("latch-answer")
	if !peer.receives("latch-answer", 2*time.Second) {
		t.Fatal("the allowed server's answer did not arrive")
	}
	redecideAfterChange(t, d, 1)
	answer("latch-answer-denied")
	if peer.receives("latch-answer-denied", 1500*time.Millisecond) {
		t.Fatal("after a rule change denied the flow the peer opened, the server's answer on it reached the peer")
	}
	if n := heldInbound(d.linesFor(200*time.Millisecond), "udp", local, remote); n != 1 {
		t.Errorf("the server's answer after the rule change was held %d times as the inbound flow; want 1", n)
	}
	peer.send(t, local, "latch-peer-denied")
	if serverGets("latch-peer-denied", 1500*time.Millisecond) {
		t.Error("after the rule change, the peer's datagram reached the server")
	}
	if n := heldInbound(d.linesFor(200*time.Millisecond), "udp", local, remote); n != 1 {
		t.Errorf("the peer's datagram after the rule change was held %d times; want 1", n)
	}
	answer("latch-answer-denied-again")
	if peer.receives("latch-answer-denied-again", 1500*time.Millisecond) {
		t.Error("the server's second answer after the rule change reached the peer")
	}
	if n := heldInbound(d.linesFor(200*time.Millisecond), "udp", local, remote); n != 1 {
		t.Errorf("the server's second answer after the rule change was held %d times; want 1", n)
	}
}

// TestTCPInboundRedecideReply (review15's neighbour, TCP): with
// Config.Inbound, after a rule change marks a TCP connection the peer opened
// MarkRedecide, what this host sends on it is held and decided as that
// inbound connection, as the peer's next segment is: whichever side sends
// first. Denied by the new rules: the server's data never reaches the peer
// (on the old ruleset it left LATCH-OUT at the final "-p tcp RETURN",
// undecided, while the peer was silent), and the server's socket is reset.
// Allowed: the server's segment is held once, passes, and marks the flow
// allowed again (the peer's answer passes unheld). Without the socket pin
// (TCP has none) and without the fast path's notrack (whose sockets are
// decided again by their marks, TestNotrack).
func TestTCPInboundRedecideReply(t *testing.T) {
	// holdLo: loopback held too (--exempt-loopback=false), which the
	// reset to the server's socket takes (review16: held by 6 and denied
	// again, it never reached the socket).
	for i, c := range []struct{ deny, holdLo bool }{{true, false}, {false, false}, {true, true}} {
		deny := c.deny
		name := "allowed"
		if deny {
			name = "denied"
		}
		env := []string{"LATCH_TEST_INBOUND=1"}
		if c.holdLo {
			name += "/loopback-held"
			env = append(env, "LATCH_TEST_HOLD_LOOPBACK=1")
		}
		t.Run(name, func(t *testing.T) {
			tp := newTopo(t)
			port := 9140 + i
			after := fmt.Sprintf("%d=allow,*=deny", port)
			if deny {
				after = "*=deny"
			}
			var ln net.Listener
			if err := inNS(tp.a, func() error {
				var err error
				ln, err = net.Listen("tcp4", net.JoinHostPort(addrA, strconv.Itoa(port)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			d := startDaemon(t, tp, fmt.Sprintf("%d=allow,*=deny", port), append([]string{"LATCH_TEST_FIREWALL=" + FirewallIptablesNft,
				"LATCH_TEST_POLICY_AFTER=" + after, "LATCH_TEST_REDECIDE_PORT=" + strconv.Itoa(port)}, env...)...)
			defer d.stop()
			var c net.Conn
			if err := inNS(tp.b, func() error {
				var err error
				c, err = net.DialTimeout("tcp4", net.JoinHostPort(addrA, strconv.Itoa(port)), 3*time.Second)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			local := netip.MustParseAddrPort(s.LocalAddr().String())
			remote := netip.MustParseAddrPort(s.RemoteAddr().String())
			read := func(c net.Conn, within time.Duration) (string, error) {
				c.SetReadDeadline(time.Now().Add(within))
				buf := make([]byte, 64)
				n, err := c.Read(buf)
				return string(buf[:n]), err
			}
			if _, err := s.Write([]byte("latch-before")); err != nil {
				t.Fatal(err)
			}
			if m, err := read(c, 3*time.Second); m != "latch-before" {
				t.Fatalf("before the rule change the peer read %q, %v; want the server's data", m, err)
			}
			redecideAfterChange(t, d, 1)
			if _, err := s.Write([]byte("latch-after")); err != nil {
				t.Fatal(err)
			}
			m, err := read(c, 1500*time.Millisecond)
			lines := d.linesFor(200 * time.Millisecond)
			held := heldInbound(lines, "tcp", local, remote)
			if deny {
				if m != "" {
					t.Fatalf("after a rule change denied the connection the peer opened, the server's data reached the peer: %q", m)
				}
				if held < 1 {
					t.Errorf("the server's segment after the rule change was not held as the inbound connection: %q", lines)
				}
				// The deny resets the server's socket (a reset from the
				// ruleset, as for a denied connect).
				if _, err := read(s, 3*time.Second); !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("the server's socket after its segment was denied: read error %v, want a reset", err)
				}
				return
			}
			if m != "latch-after" {
				t.Fatalf("after a rule change that still allows the connection the peer read %q, %v; want the server's data", m, err)
			}
			if held != 1 {
				t.Errorf("the server's segment after the rule change was held %d times as the inbound connection; want 1: %q", held, lines)
			}
			if _, err := c.Write([]byte("latch-peer")); err != nil {
				t.Fatal(err)
			}
			if m, err := read(s, 3*time.Second); m != "latch-peer" {
				t.Fatalf("the peer's data after the connection was allowed again: read %q, %v", m, err)
			}
			if n := heldInbound(d.linesFor(200*time.Millisecond), "tcp", local, remote); n != 0 {
				t.Errorf("the peer's segment after the connection was allowed again was held %d times; want 0", n)
			}
		})
	}
}

// TestRedecideReplyHeldEveryRuleset (review15): in every ruleset latch can
// install (each combination of the options that shape its chains, with and
// without the sender stash; iptables IPv4 and IPv6, native nftables), with
// Config.Inbound LATCH-OUT has exactly one rule that gives MarkRedecideReply
// (to an ESTABLISHED packet of direction reply whose flow is marked
// MarkRedecide or MarkAllow, review26; not over loopback: review16), right followed by the one queue rule
// on that packet mark alone (nft: one rule sets it and queues), after the
// MarkRedecide queue rule for the side that opened the flow (6) and the
// allowed flow's returns after it, and before the first rule that returns by
// protocol alone: this host's side of a flow the peer opened and a rule
// change marked is never passed undecided. With Config.Forward LATCH-FWD has
// the same (without the loopback exception: review16, a forwarded flow's
// other side). With Config.Inbound LATCH-IN has the same too (the peer's
// side of a flow this host opened, decided as that flow; over loopback too,
// whose opener is a local socket decided by its own rules: review16,
// TestOutboundRedecidePeerPushes). Without Config.Inbound LATCH-OUT (a
// reply then is held by 9 and 11 as this host's outbound connection) has
// no rule that names the mark, and there is no LATCH-IN to hold a peer's
// packets.
func TestRedecideReplyHeldEveryRuleset(t *testing.T) {
	mark := fmt.Sprintf("%#x/%#x", MarkRedecideReply, MarkMask)
	nftMark := fmt.Sprintf("meta mark set meta mark & %#x | %#x", ^MarkMask, MarkRedecideReply)
	type chainWant struct {
		out, markRule, queueRule, redecide, lastReturn string
		want                                           bool
	}
	// lo: the loopback match (LATCH-OUT); local: the destination's
	// (LATCH-OUT: not one of this host's addresses, review18).
	ipt := func(want bool, chain, lo, local string) chainWant {
		return chainWant{"-A " + chain + " ",
			"-A " + chain + lo + " -m conntrack --ctstate ESTABLISHED --ctdir REPLY -m connmark --mark 0x10000000/0x50000000" + local + " -j MARK --set-xmark " + mark,
			"-A " + chain + " -m mark --mark " + mark + " -j NFQUEUE",
			fmt.Sprintf("-A %s -m connmark --mark %#x/%#x -m conntrack --ctdir ORIGINAL -j NFQUEUE", chain, MarkRedecide, MarkMask),
			"-A " + chain + " -p udp -j RETURN", want}
	}
	nft := func(want bool, chain, lo, local string) chainWant {
		return chainWant{"add rule inet " + nftTable + " " + chain + " ",
			fmt.Sprintf("add rule inet %s %s%s ct state established ct direction reply ct mark & %#x == %#x%s %s queue num 7", nftTable, chain, lo, MarkAllow|OwnMark, MarkAllow, local, nftMark),
			"",
			fmt.Sprintf("add rule inet %s %s ct mark & %#x == %#x ct direction original queue num 7", nftTable, chain, MarkMask, MarkRedecide),
			"add rule inet " + nftTable + " " + chain + " meta l4proto { tcp, udp } accept", want}
	}
	for _, stash := range []string{"", "/sys/fs/bpf/latch-fast-stash-test"} {
		everyRuleSpec(t, ruleSpec{queue: 7, stash: stash}, func(spec ruleSpec, names []string) {
			for _, v := range []struct {
				name   string
				chains []chainWant
				rules  string
			}{
				{"iptables", []chainWant{ipt(spec.inbound, chainOut, " ! -o lo", " -m addrtype ! --dst-type LOCAL"), ipt(spec.forward, chainFwd, "", ""), ipt(spec.inbound, chainIn, "", "")}, spec.iptablesRules(false, nil, map[string]bool{})},
				{"ip6tables", []chainWant{ipt(spec.inbound, chainOut, " ! -o lo", " -m addrtype ! --dst-type LOCAL"), ipt(spec.forward, chainFwd, "", ""), ipt(spec.inbound, chainIn, "", "")}, spec.iptablesRules(true, nil, map[string]bool{})},
				{"nft", []chainWant{nft(spec.inbound, "output", ` oifname != "lo"`, " fib daddr type != local"), nft(spec.forward, "forward", "", ""), nft(spec.inbound, "input", "", "")}, spec.nftRules()},
			} {
				where := fmt.Sprintf("%s with %v, stash %q", v.name, names, stash)
				lines := strings.Split(v.rules, "\n")
				// The packet mark MarkRedecideReply, not the conntrack mark
				// MarkLoopbackForged of the same value.
				names := func(l string) bool {
					return strings.Contains(l, "-m mark --mark "+mark) || strings.Contains(l, "-j MARK --set-xmark "+mark) || strings.Contains(l, nftMark)
				}
				for _, l := range lines {
					if !names(l) {
						continue
					}
					if !slices.ContainsFunc(v.chains, func(c chainWant) bool { return strings.HasPrefix(l, c.out) }) {
						t.Errorf("%s: a rule outside %s, %s and %s names MarkRedecideReply: %q", where, chainOut, chainFwd, chainIn, l)
					}
				}
				for _, c := range v.chains {
					var out []string
					for _, l := range lines {
						if strings.HasPrefix(l, c.out) {
							out = append(out, l)
						}
					}
					markAt, redecideAt, lastAllowAt, returnAt, n := -1, -1, -1, -1, 0
					for i, l := range out {
						if names(l) {
							n++
							if strings.Contains(l, "-j MARK --set-xmark") || strings.Contains(l, "meta mark set") {
								markAt = i
							}
						}
						if strings.HasPrefix(l, c.redecide) {
							redecideAt = i
						}
						if (strings.Contains(l, fmt.Sprintf("connmark --mark %#x/%#x", MarkAllow, MarkMask)) ||
							strings.Contains(l, fmt.Sprintf("ct mark & %#x == %#x", MarkMask, MarkAllow))) && returnAt < 0 {
							lastAllowAt = i
						}
						if l == c.lastReturn && returnAt < 0 {
							returnAt = i
						}
					}
					if !c.want {
						if n != 0 {
							t.Errorf("%s: %d rules of %q name MarkRedecideReply; want none", where, n, c.out)
						}
						continue
					}
					want := 2
					if c.queueRule == "" {
						want = 1
					}
					switch {
					case n != want || markAt < 0:
						t.Errorf("%s: %d rules name MarkRedecideReply (setting it at %d), want %d:\n%s", where, n, markAt, want, strings.Join(out, "\n"))
					case out[markAt] != c.markRule && !(c.queueRule == "" && strings.HasPrefix(out[markAt], c.markRule)):
						t.Errorf("%s: %q, want %q", where, out[markAt], c.markRule)
					case c.queueRule != "" && (markAt+1 >= len(out) || !strings.HasPrefix(out[markAt+1], c.queueRule)):
						t.Errorf("%s: the rule after the one giving MarkRedecideReply is not its queue rule %q:\n%s", where, c.queueRule, strings.Join(out, "\n"))
					case redecideAt < 0 || returnAt < 0:
						t.Errorf("%s: no MarkRedecide queue rule (%d) or protocol return (%d):\n%s", where, redecideAt, returnAt, strings.Join(out, "\n"))
					case markAt < redecideAt || markAt < lastAllowAt || markAt > returnAt:
						t.Errorf("%s: MarkRedecideReply given at %d, want after the MarkRedecide queue rule (%d) and the allowed flow's rules (last at %d), before the protocols' return (%d):\n%s",
							where, markAt, redecideAt, lastAllowAt, returnAt, strings.Join(out, "\n"))
					}
				}
			}
		})
	}
}
