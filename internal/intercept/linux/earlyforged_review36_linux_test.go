package linux

import (
	"fmt"
	"strings"
	"testing"
)

// TestReview36NothingBeforeForgedRulesTakesNewFlows: with the loopback
// exemption, every rule of LATCH-OUT and LATCH-IN (table inet latch's output
// and input chains) before the rules against a forged loopback flow
// (review18) is a DNS copy or a return (accept) that wants an untracked
// packet or a flow whose conntrack mark is MarkAllow, and does nothing else:
// no new flow with no mark of latch's (the forged rules' own) can leave
// before them. TestLoopbackForgedEveryRuleset allows what
// iptablesEarlyReturns and nftEarlyReturns write there, whatever it is (by
// substring); this checks what those rules say.
func TestReview36NothingBeforeForgedRulesTakesNewFlows(t *testing.T) {
	everyRuleSpec(t, ruleSpec{queue: 7}, func(spec ruleSpec, names []string) {
		if !spec.exemptLoopback {
			return
		}
		for _, v := range []struct {
			name, rules string
			chains      [][2]string // line prefix, the first loopback rule's mark
		}{
			{"iptables", spec.iptablesRules(false, nil, map[string]bool{}), [][2]string{{"-A LATCH-OUT ", " -o lo "}, {"-A LATCH-IN ", " -i lo "}}},
			{"ip6tables", spec.iptablesRules(true, nil, map[string]bool{}), [][2]string{{"-A LATCH-OUT ", " -o lo "}, {"-A LATCH-IN ", " -i lo "}}},
			{"nft", spec.nftRules(), [][2]string{{"add rule inet latch output ", `oifname "lo"`}, {"add rule inet latch input ", `iifname "lo"`}}},
		} {
			where := fmt.Sprintf("%s with %v", v.name, names)
			for _, c := range v.chains {
				for _, l := range strings.Split(v.rules, "\n") {
					if !strings.HasPrefix(l, c[0]) {
						continue
					}
					if strings.Contains(l, c[1]) {
						break
					}
					switch {
					case strings.Contains(l, "-j NFLOG ") || strings.Contains(l, " log group "):
						continue
					case !strings.HasSuffix(l, " -j RETURN") && !strings.HasSuffix(l, " accept") && !strings.HasSuffix(l, " jump "+nftFastLease):
						t.Errorf("%s: %q before the rules against a forged loopback flow does more than return", where, l)
					case strings.Contains(l, "--ctstate UNTRACKED ") || strings.Contains(l, " ct state untracked "):
					case strings.Contains(l, fmt.Sprintf(" -m connmark --mark %#x/%#x ", MarkAllow, MarkMask)) || strings.Contains(l, fmt.Sprintf(" ct mark & %#x == %#x ", MarkMask, MarkAllow)):
					default:
						t.Errorf("%s: %q before the rules against a forged loopback flow may take a new flow", where, l)
					}
				}
			}
		}
	})
}
