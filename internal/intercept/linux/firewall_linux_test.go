package linux

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestNftRulesetSyntax checks the native nftables ruleset with "nft -c" in a fresh
// namespace. Kernels without nft_queue (these machines) cannot take the queue
// statements, so they are checked as counters there; everything else is checked as is.
func TestNftRulesetSyntax(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	for _, spec := range []ruleSpec{
		{queue: 4242, exemptLoopback: true},
		{queue: 7, inbound: true, failOpen: true},
		{queue: 9, exemptLoopback: true, dnsLogGroup: 4243},
		{queue: 11, exemptLoopback: true, forward: true},
		{queue: 12, inbound: true, forward: true, failOpen: true},
		{queue: 13, exemptLoopback: true, notrack: true},
		{queue: 14, inbound: true, failOpen: true, notrack: true, dnsLogGroup: 4243},
		{queue: 15, inbound: true, forward: true, fastTCP: true, notrack: true, lease: "/sys/fs/bpf/latch-lease"},
		{queue: 16, exemptLoopback: true, fastTCP: true},
		// The socket pin, with and without the UDP match (whose allow chain
		// records before it accepts) and inbound (whose input chain records).
		{queue: 17, exemptLoopback: true, sockPin: "/sys/fs/bpf/latch-pin"},
		{queue: 18, inbound: true, fastUDP: "/sys/fs/bpf/latch-udp", lease: "/sys/fs/bpf/latch-lease", sockPin: "/sys/fs/bpf/latch-pin"},
	} {
		rules := spec.nftRules()
		check := exec.Command("ip", "netns", "exec", tp.a, "nft", "-c", "-f", "-")
		check.Stdin = strings.NewReader(rules)
		out, err := check.CombinedOutput()
		if err != nil && strings.Contains(string(out), "queue") {
			t.Log("this kernel refuses nftables queue statements; checking the rest with counters")
			rules = regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(rules, "counter")
			check = exec.Command("ip", "netns", "exec", tp.a, "nft", "-c", "-f", "-")
			check.Stdin = strings.NewReader(rules)
			out, err = check.CombinedOutput()
		}
		if err != nil {
			t.Errorf("nft -c rejects the ruleset for %+v: %v: %s\n%s", spec, err, out, rules)
		}
	}
}

func TestParseQueueStatus(t *testing.T) {
	in := "    0  12345     0 2 65531     0     0        0  1\n 4242 987654     3 2   256    17    42     1234  1\n"
	qs, err := parseQueueStatus([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	st, ok := qs[4242]
	if !ok || st.PortID != 987654 || st.Waiting != 3 || st.Dropped != 17 || st.UserDropped != 42 {
		t.Errorf("queue 4242 = %+v (found %v)", st, ok)
	}
	if _, err := parseQueueStatus([]byte("4242 x 0 2 0 0 0 0 1\n")); err == nil || !strings.Contains(err.Error(), "field 2") {
		t.Errorf("bad field: err = %v, want one naming field 2", err)
	}
}

func TestIptablesRulesHoldSYNByFlag(t *testing.T) {
	r := ruleSpec{queue: 4242, exemptLoopback: true, fastTCP: true}.iptablesRules(false, []string{"table"}, nil)
	// The SYN rule comes before the conntrack shortcut: a SYN that hits a stale
	// conntrack entry carrying latch's allow mark is still held.
	syn := strings.Index(r, "--tcp-flags SYN,ACK,RST,FIN SYN -j NFQUEUE")
	// (Not the drop of a flow forged over lo, MarkLoopbackForged: it holds
	// nothing, and passes nothing.)
	shortcut := strings.Index(r, fmt.Sprintf("-A LATCH-OUT -m connmark --mark %#x/%#x -j RETURN", MarkAllow, MarkMask))
	if syn < 0 || shortcut < 0 || syn > shortcut {
		t.Errorf("SYN rule at %d, connmark shortcut at %d; want the SYN rule first:\n%s", syn, shortcut, r)
	}
	// Only a SYN the kernel fast path marked passes before the SYN rule (a rule
	// for everything but a SYN may come first).
	for _, l := range strings.Split(r, "\n") {
		if strings.Contains(l, "-j NFQUEUE") {
			break
		}
		notSYN := strings.Contains(l, "! --tcp-flags SYN,ACK,RST,FIN SYN") || strings.Contains(l, "--tcp-flags SYN NONE")
		if strings.Contains(l, "SYN") && !notSYN &&
			!strings.Contains(l, fmt.Sprintf("-m mark --mark %#x/%#x", MarkFastAllow, MarkMask)) {
			t.Errorf("a SYN rule before the queue's does not require the fast path's mark: %s", l)
		}
	}
	if strings.Contains(r, "--queue-bypass") {
		t.Error("fail-closed ruleset has --queue-bypass")
	}
	if !strings.Contains(r, "-m comment --comment latch-created:table") {
		t.Errorf("ruleset does not record the table it creates:\n%s", r)
	}
	if !strings.Contains(ruleSpec{queue: 1, failOpen: true}.iptablesRules(true, nil, nil), "--queue-bypass") {
		t.Error("fail-open ruleset lacks --queue-bypass")
	}
}

// TestForwardChainInstalledAndRemoved: with Config.Forward each iptables variant
// jumps from FORWARD to LATCH-FWD, which queues new connections; a clean exit
// leaves the ruleset as it found it, and so does Cleanup after a kill.
func TestForwardChainInstalledAndRemoved(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			if _, err := newIptables(fw); err != nil {
				t.Skipf("%s: %v", fw, err)
			}
			tp := newTopo(t)
			ruleset := func(t *testing.T, ns string) string {
				// This variant's own view (ruleset shows iptables-nft's and nft's).
				out, err := exec.Command("ip", "netns", "exec", ns, "iptables-"+strings.TrimPrefix(fw, "iptables-")+"-save").CombinedOutput()
				if err != nil {
					t.Fatalf("save %s rules: %v: %s", fw, err, out)
				}
				return regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`).ReplaceAllString(string(out), "")
			}
			before := ruleset(t, tp.a)
			d := startDaemon(t, tp, "*=allow", "LATCH_TEST_FORWARD=1", "LATCH_TEST_FIREWALL="+fw)
			during := ruleset(t, tp.a)
			for _, want := range []string{"-A FORWARD -j LATCH-FWD", "-A LATCH-FWD -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 4242"} {
				if !strings.Contains(during, want) {
					t.Errorf("installed ruleset lacks %q:\n%s", want, during)
				}
			}
			// iptables-legacy cannot delete a table once made: an empty filter table
			// may stay; no rule of latch's may.
			same := func(after string) bool {
				return after == before || fw == FirewallIptablesLegacy && before == "" && !strings.Contains(after, "-A ")
			}
			d.stop()
			if after := ruleset(t, tp.a); !same(after) {
				t.Errorf("ruleset after a clean exit differs.\nbefore:\n%s\nafter:\n%s", before, after)
			}

			d = startDaemon(t, tp, "*=allow", "LATCH_TEST_FORWARD=1", "LATCH_TEST_FIREWALL="+fw)
			d.cmd.Process.Kill()
			<-d.exited
			if left := ruleset(t, tp.a); !strings.Contains(left, "LATCH-FWD") {
				t.Fatalf("after a kill the forward chain is gone already:\n%s", left)
			}
			c := spawnChild(t, tp, "cleanup", "")
			<-c.exited
			if code := c.cmd.ProcessState.ExitCode(); code != 0 {
				t.Fatalf("cleanup exited %d: %s", code, c.errors())
			}
			if after := ruleset(t, tp.a); !same(after) {
				t.Errorf("ruleset after cleanup differs.\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestIptablesSourceRouteInvalidFirst (review4): in every mode (conntrack only,
// fast TCP, notrack) and both families, LATCH-OUT resets INVALID TCP with a
// source route (IPv4 options, IPv6 routing header) before any rule that could
// pass INVALID TCP (the INVALID RETURN, the last TCP RETURN); without the
// option matches (noOptMatch) it drops every INVALID TCP packet there instead,
// and the ruleset names neither match (nor passes anything by a fast mark).
func TestIptablesSourceRouteInvalidFirst(t *testing.T) {
	specs := []ruleSpec{
		{queue: 1},
		{queue: 2, fastTCP: true},
		{queue: 3, fastTCP: true, notrack: true, inbound: true},
		{queue: 4, noOptMatch: true, inbound: true},
	}
	for _, spec := range specs {
		for _, v6 := range []bool{false, true} {
			r := spec.iptablesRules(v6, nil, nil)
			want := "-A LATCH-OUT -p tcp -m conntrack --ctstate INVALID -m u32 --u32 0>>24&0xF=6:15 -j REJECT --reject-with tcp-reset"
			if v6 {
				want = "-A LATCH-OUT -p tcp -m conntrack --ctstate INVALID -m ipv6header --header ipv6-route --soft -j REJECT --reject-with tcp-reset"
			}
			if spec.noOptMatch {
				want = "-A LATCH-OUT -p tcp -m conntrack --ctstate INVALID -j DROP"
				if strings.Contains(r, "u32") || strings.Contains(r, "ipv6header") {
					t.Errorf("%+v v6=%v: noOptMatch ruleset uses an option match:\n%s", spec, v6, r)
				}
			}
			at := strings.Index(r, want+"\n")
			if at < 0 {
				t.Errorf("%+v v6=%v: LATCH-OUT lacks %q:\n%s", spec, v6, want, r)
				continue
			}
			for _, pass := range []string{"-A LATCH-OUT -p tcp -m tcp --tcp-flags SYN NONE -m conntrack --ctstate INVALID", "-A LATCH-OUT -p tcp -j RETURN"} {
				if p := strings.Index(r, pass); p < 0 || p < at {
					t.Errorf("%+v v6=%v: %q at %d, the source-route rule at %d: want the latter first:\n%s", spec, v6, pass, p, at, r)
				}
			}
		}
	}
	for _, spec := range specs[:3] {
		n := strings.Count(spec.nftRules(), "ct state invalid reject with tcp reset")
		if n != 2 {
			t.Errorf("%+v: nft ruleset has %d INVALID source-route resets, want 2 (IPv4, IPv6)", spec, n)
		}
	}
}
