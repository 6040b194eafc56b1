package engine

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestReview42ExplainMatchesDecide (property; held up unless it fails): over random
// rule sets (program-naming or not, host or address rules, user and unit rules, glob
// apps), random blocklists (hosts and addresses, two lists in order), random requests
// (own, shared or no hostname) and HostRulesMatchShared on and off, Explain's outcome
// is what Decide does in the default (ask) mode: the same rule id, the same list
// action, or a question exactly when Decide opens one.
func TestReview42ExplainMatchesDecide(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 7))
	seen := map[string]int{}
	pick := func(s ...string) string { return s[r.IntN(len(s))] }
	for iter := range 1500 {
		shared := r.IntN(2) == 0
		var rules []Rule
		for range r.IntN(5) {
			ru := Rule{Action: []Action{Allow, Deny}[r.IntN(2)],
				App:  pick("", "", "/usr/bin/curl", "/usr/bin/*"),
				User: pick("", "", "1000", "1001"),
				Unit: pick("", "", "", "x.service"),
				Host: pick("", "", "ads.example", "*.example", "a.example"),
			}
			if r.IntN(3) == 0 {
				ru.Port = PortRange{443, 443}
			}
			if r.IntN(4) == 0 {
				ru.Remote = netip.MustParsePrefix(pick("198.18.7.7/32", "198.18.6.0/24"))
			}
			rules = append(rules, ru)
		}
		e, err := New(Config{Default: Deny, HostRulesMatchShared: shared, PromptTimeout: 1 << 40}, rules)
		if err != nil {
			seen["refused"]++
			continue // a combination the rule checks refuse
		}
		var ls []BlockList
		for i := range r.IntN(3) {
			l := testList{}
			for range 1 + r.IntN(3) {
				l[pick("ads.example", "a.example", "198.18.7.7", "198.18.6.6", "b.example")] = true
			}
			ls = append(ls, BlockList{Name: []string{"one", "two"}[i], Action: []Action{Allow, Deny}[r.IntN(2)], List: l})
		}
		e.SetLists(ls)
		req := reqTo(pick("/usr/bin/curl", "/usr/bin/wget"), pick("198.18.6.6:443", "198.18.7.7:80", "198.18.7.7:443", "198.18.9.9:443"))
		req.UID = []int32{1000, 1001}[r.IntN(2)]
		req.Unit = pick("", "x.service")
		req.Host = pick("", "ads.example", "a.example", "c.example")
		req.HostSource = pick(HostOwn, HostShared, "")
		if req.Host == "" {
			req.HostSource = HostNone
		}
		r2 := *req
		var got *Verdict
		e.Decide(req, func(v Verdict) { got = &v })
		ex := e.Explain(&r2)
		seen[string(ex.Outcome)]++
		switch {
		case got == nil:
			if ex.Outcome != OutcomeQuestion {
				t.Errorf("iter %d: Decide asks, Explain says %q (rule %v list %q)\nrules %+v\nlists %+v\nreq %+v", iter, ex.Outcome, ex.Rule, ex.List, rules, ls, r2)
			}
		case got.Reason == ReasonRule:
			if ex.Outcome != OutcomeRule || ex.Rule == nil || ex.Rule.ID != got.RuleID || ex.Action != got.Action {
				t.Errorf("iter %d: Decide: rule %d %v; Explain: %q rule %v list %q %v\nrules %+v\nlists %+v\nreq %+v", iter, got.RuleID, got.Action, ex.Outcome, ex.Rule, ex.List, ex.Action, rules, ls, r2)
			}
		case got.Reason == ReasonList:
			if ex.Outcome != OutcomeList || ex.Action != got.Action || ex.Rule != nil {
				t.Errorf("iter %d: Decide: list %v; Explain: %q rule %v list %q %v\nrules %+v\nlists %+v\nreq %+v", iter, got.Action, ex.Outcome, ex.Rule, ex.List, ex.Action, rules, ls, r2)
			}
		default:
			t.Errorf("iter %d: unexpected verdict %+v", iter, got)
		}
		e.Close()
		if t.Failed() {
			return
		}
	}
	t.Logf("outcomes: %v", seen)
	if seen[string(OutcomeList)] < 50 || seen[string(OutcomeRule)] < 50 || seen[string(OutcomeQuestion)] < 50 {
		t.Errorf("the random cases miss an outcome: %v", seen)
	}
}
