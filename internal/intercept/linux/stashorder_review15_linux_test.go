package linux

import (
	"fmt"
	"strings"
	"testing"
)

// TestStashBeforeEveryQueueRule (review15): in every ruleset LATCH-OUT (native
// nftables: chain output) can have (each combination of the options that
// change it, iptables IPv4 and IPv6 and native nftables), the sender stash
// runs in exactly one rule, by protocol alone (no match on the flow's
// conntrack state or mark, which another CPU may change between two rules,
// review14), and no rule before it queues anything: every UDP datagram the
// queue gets from LATCH-OUT passed it. A second stash rule, a stash rule with
// the queue rules' matches, or a queue rule moved above it fails here.
func TestStashBeforeEveryQueueRule(t *testing.T) {
	const stash = "/sys/fs/bpf/latch-fast-stash-test"
	everyRuleSpec(t, ruleSpec{queue: 7, stash: stash}, func(spec ruleSpec, names []string) {
		for _, v := range []struct {
			name, prefix, stashRule, queue string
			rules                          string
		}{
			{"iptables", "-A " + chainOut + " ", "-A " + chainOut + " -p udp -m bpf --object-pinned " + stash, "-j NFQUEUE", spec.iptablesRules(false, nil, map[string]bool{})},
			{"ip6tables", "-A " + chainOut + " ", "-A " + chainOut + " -p udp -m bpf --object-pinned " + stash, "-j NFQUEUE", spec.iptablesRules(true, nil, map[string]bool{})},
			{"nft", "add rule inet " + nftTable + " output ", "add rule inet " + nftTable + " output meta l4proto udp jump " + nftSendStash, "queue num", spec.nftRules()},
		} {
			where := fmt.Sprintf("%s with %v", v.name, names)
			stashAt, firstQueue := -1, -1
			n := 0
			for i, l := range strings.Split(v.rules, "\n") {
				if !strings.HasPrefix(l, v.prefix) {
					continue
				}
				if strings.Contains(l, stash) || strings.Contains(l, "jump "+nftSendStash) {
					n++
					if l != v.stashRule {
						t.Errorf("%s: stash rule %q, want %q (by protocol alone)", where, l, v.stashRule)
					}
					if stashAt < 0 {
						stashAt = i
					}
				}
				if strings.Contains(l, v.queue) && firstQueue < 0 {
					firstQueue = i
				}
			}
			if n != 1 {
				t.Errorf("%s: %d stash rules, want 1:\n%s", where, n, v.rules)
			}
			if firstQueue >= 0 && firstQueue < stashAt {
				t.Errorf("%s: a queue rule (line %d) before the stash (line %d):\n%s", where, firstQueue, stashAt, v.rules)
			}
		}
	})
}

// everyRuleSpec calls check with base changed by each combination (2048) of
// the options that shape latch's chains, named in names, until a check
// fails.
func everyRuleSpec(t *testing.T, base ruleSpec, check func(spec ruleSpec, names []string)) {
	t.Helper()
	type opt struct {
		name string
		set  func(*ruleSpec)
	}
	opts := []opt{
		{"inbound", func(s *ruleSpec) { s.inbound = true }},
		{"failOpen", func(s *ruleSpec) { s.failOpen = true }},
		{"exemptLoopback", func(s *ruleSpec) { s.exemptLoopback = true }},
		{"dnsLog", func(s *ruleSpec) { s.dnsLogGroup = 4243 }},
		{"forward", func(s *ruleSpec) { s.forward = true }},
		{"fastUDP", func(s *ruleSpec) { s.fastUDP = "/sys/fs/bpf/latch-udp" }},
		{"fastTCP", func(s *ruleSpec) { s.fastTCP = true }},
		{"sockPin", func(s *ruleSpec) { s.sockPin = "/sys/fs/bpf/latch-pin" }},
		{"lease", func(s *ruleSpec) { s.lease = "/sys/fs/bpf/latch-lease" }},
		{"notrack", func(s *ruleSpec) { s.notrack = true }},
		{"noOptMatch", func(s *ruleSpec) { s.noOptMatch = true }},
	}
	for m := 0; m < 1<<len(opts); m++ {
		spec := base
		var names []string
		for i, o := range opts {
			if m&(1<<i) != 0 {
				o.set(&spec)
				names = append(names, o.name)
			}
		}
		check(spec, names)
		if t.Failed() {
			return
		}
	}
}
