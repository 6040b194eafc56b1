package engine

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestExplainSteps checks, for each precedence step, that Explain names the rule that
// decides, the step at which it won, and the rule that lost at that step. Each case is
// evaluated with the rules in both orders.
func TestExplainSteps(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []Rule // rule 1 must win, rule 2 lose at step
		step  Step
	}{
		{"exact app beats glob", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Allow},
			{ID: 2, App: "/usr/bin/*", Action: Deny, Remote: pfx("198.18.1.5/32"), Port: PortRange{443, 443}},
		}, StepApp},
		{"glob beats no app", []Rule{
			{ID: 1, App: "/usr/**", Action: Allow},
			{ID: 2, Action: Deny, Host: "www.example.com", Remote: pfx("198.18.1.5/32")},
		}, StepApp},
		{"service beats no service", []Rule{
			{ID: 1, App: "/usr/bin/curl", Service: "Dnscache", Action: Allow},
			{ID: 2, App: "/usr/bin/curl", Action: Deny, Remote: pfx("198.18.1.5/32")},
		}, StepApp},
		{"exact host beats wildcard", []Rule{
			{ID: 1, Host: "www.example.com", Action: Allow},
			{ID: 2, Host: "*.example.com", Action: Deny, Remote: pfx("198.18.1.5/32")},
		}, StepHost},
		{"host beats remote", []Rule{
			{ID: 1, Host: "*.example.com", Action: Allow},
			{ID: 2, Action: Deny, Remote: pfx("198.18.1.5/32"), Port: PortRange{443, 443}},
		}, StepHost},
		{"narrower remote beats wider", []Rule{
			{ID: 1, Remote: pfx("198.18.1.0/24"), Action: Allow},
			{ID: 2, Remote: pfx("198.18.0.0/15"), Action: Deny, Port: PortRange{443, 443}},
		}, StepRemote},
		{"narrower port beats wider", []Rule{
			{ID: 1, Port: PortRange{443, 443}, Action: Allow},
			{ID: 2, Port: PortRange{1, 1024}, Action: Deny, User: "alice"},
		}, StepPort},
		{"user beats no user", []Rule{
			{ID: 1, User: "alice", Action: Allow},
			{ID: 2, Action: Deny, LocalPort: PortRange{40000, 40000}, Protocol: TCP},
		}, StepUser},
		{"local port beats none", []Rule{
			{ID: 1, LocalPort: PortRange{40000, 40000}, Action: Allow},
			{ID: 2, Action: Deny, Protocol: TCP, Direction: Outbound},
		}, StepLocalPort},
		{"protocol beats any", []Rule{
			{ID: 1, Protocol: TCP, Action: Allow},
			{ID: 2, Action: Deny, Direction: Outbound},
		}, StepProtocol},
		{"direction beats any", []Rule{
			{ID: 1, Direction: Outbound, Action: Allow},
			{ID: 2, Action: Deny},
		}, StepDirection},
		{"deny beats allow", []Rule{
			{ID: 1, Remote: pfx("198.18.1.5/32"), Action: Reject},
			{ID: 2, Remote: pfx("198.18.1.5/32"), Action: Allow},
		}, StepAction},
		{"older rule wins", []Rule{
			{ID: 1, Remote: pfx("198.18.1.5/32"), Action: Allow},
			{ID: 2, Remote: pfx("198.18.1.5/32"), Action: Allow},
		}, StepID},
	} {
		for _, rev := range []bool{false, true} {
			rules := tc.rules
			if rev {
				rules = []Rule{rules[1], rules[0]}
			}
			// A third rule that does not match must not appear anywhere.
			rules = append(rules, Rule{ID: 3, App: "/usr/bin/wget", Action: Deny})
			e := newEngine(t, Config{Now: newClock().Now}, rules...)
			ex := e.Explain(curlReq())
			if ex.Outcome != OutcomeRule || ex.Rule == nil || ex.Rule.ID != 1 {
				t.Fatalf("%s: decided by %+v, want rule 1", tc.name, ex)
			}
			if ex.Step != tc.step || ex.Action != tc.rules[0].Action {
				t.Errorf("%s: step %s action %s, want step %s action %s", tc.name, ex.Step, ex.Action, tc.step, tc.rules[0].Action)
			}
			if len(ex.Losers) != 1 || ex.Losers[0].Rule.ID != 2 || ex.Losers[0].Step != tc.step {
				t.Errorf("%s: losers %+v, want rule 2 at step %s", tc.name, ex.Losers, tc.step)
			}
			// Decide agrees.
			v := newVerdicts(t)
			e.Decide(curlReq(), v.fn)
			if got := v.wait(); got.RuleID != 1 || got.Reason != ReasonRule {
				t.Errorf("%s: Decide gave %+v, Explain rule 1", tc.name, got)
			}
		}
	}
}

func TestExplainOnlyAndQuestion(t *testing.T) {
	clk := newClock()
	e := newEngine(t, Config{Now: clk.Now, Default: Reject},
		Rule{ID: 1, App: "/usr/bin/curl", Port: PortRange{443, 443}, Action: Allow},
		Rule{ID: 2, App: "/usr/bin/curl", Port: PortRange{80, 80}, Action: Deny},
		Rule{ID: 3, Remote: pfx("198.18.1.5/32"), Action: Deny, Expires: t0.Add(time.Minute)},
	)
	req := curlReq()
	ex := e.Explain(req)
	if ex.Outcome != OutcomeRule || ex.Rule.ID != 1 || len(ex.Losers) != 1 || ex.Losers[0].Rule.ID != 3 || ex.Losers[0].Step != StepApp {
		t.Fatalf("explanation %+v: want rule 1 winning over rule 3 at app", ex)
	}
	// Once rule 3 expires, rule 1 is the only match.
	clk.Advance(2 * time.Minute)
	ex = e.Explain(req)
	if ex.Rule == nil || ex.Rule.ID != 1 || ex.Step != StepNone || len(ex.Losers) != 0 {
		t.Fatalf("after expiry: %+v: want rule 1 alone", ex)
	}
	// No rule for curl to port 8080: a question, and the default if unanswered.
	req.Remote = netip.MustParseAddrPort("198.18.1.5:8080")
	ex = e.Explain(req)
	if ex.Outcome != OutcomeQuestion || ex.Rule != nil || ex.Action != Reject || ex.Default != Reject || len(ex.Losers) != 0 {
		t.Fatalf("no match: %+v: want a question with default reject", ex)
	}
	if len(e.Prompts()) != 0 {
		t.Fatal("Explain opened a question")
	}
}

// TestExplainAgreesWithDecide checks Explain against the engine's real decision on
// 100,000 random connections and a random set of 1,000 rules: the same rule (or the
// same question), the deciding rule first in precedence order among every rule that
// matches (by the unindexed scan), and each loser beaten at the step it names.
func TestExplainAgreesWithDecide(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 10))
	rules := randomRules(rng, 1000)
	for i := range rules {
		// No catch-all rules: some connections must become questions.
		if rules[i].App == "" && !rules[i].Remote.IsValid() {
			rules[i].Remote = netip.PrefixFrom(randAddr4(rng), 24).Masked()
		}
	}
	e := newEngine(t, Config{Now: newClock().Now, MaxPrompts: 1 << 20, MaxPromptsPerUser: 1 << 20, MaxPromptsPerApp: 1 << 20})
	if err := e.ReplaceRules(rules); err != nil {
		t.Fatal(err)
	}
	m := e.matcher.Load()
	byID := map[RuleID]*compiledRule{}
	for _, c := range m.rules {
		byID[c.ID] = c
	}
	var decided, questions, withLosers int
	for i := range 100_000 {
		req := randomRequest(rng, 1000)
		req.ID = RequestID(i + 1)
		ex := e.Explain(req)
		var got Verdict
		e.Decide(req, func(v Verdict) { got = v })
		switch {
		case got.Reason == ReasonRule:
			decided++
			if ex.Outcome != OutcomeRule || ex.Rule.ID != got.RuleID || ex.Action != got.Action {
				t.Fatalf("request %+v: Decide gave %+v, Explain %+v", req, got, ex)
			}
		case got.Reason == "": // became a question
			questions++
			if ex.Outcome != OutcomeQuestion || ex.Rule != nil || len(ex.Losers) != 0 {
				t.Fatalf("request %+v: Decide asked, Explain says %+v", req, ex)
			}
			continue
		default:
			t.Fatalf("request %+v: unexpected verdict %+v", req, got)
		}
		if lin := m.matchLinear(req, t0); lin == nil || lin.ID != ex.Rule.ID {
			t.Fatalf("request %+v: Explain rule %d, linear scan %v", req, ex.Rule.ID, lin)
		}
		n := 0
		for _, c := range m.rules {
			if c.matchesRequest(req, t0) {
				n++
			}
		}
		if len(ex.Losers)+1 != n {
			t.Fatalf("request %+v: %d losers, but %d rules match", req, len(ex.Losers), n)
		}
		win := byID[ex.Rule.ID]
		for j, l := range ex.Losers {
			step, c := precedenceStep(win, byID[l.Rule.ID])
			if c >= 0 || step != l.Step || step == StepNone {
				t.Fatalf("request %+v: loser %d at step %s, but comparison says %s (%d)", req, l.Rule.ID, l.Step, step, c)
			}
			if j > 0 && comparePrecedence(byID[ex.Losers[j-1].Rule.ID], byID[l.Rule.ID]) >= 0 {
				t.Fatalf("request %+v: losers out of precedence order", req)
			}
		}
		if len(ex.Losers) > 0 {
			withLosers++
			if ex.Step != ex.Losers[0].Step {
				t.Fatalf("request %+v: step %s, runner-up lost at %s", req, ex.Step, ex.Losers[0].Step)
			}
		}
	}
	t.Logf("100000 connections: %d decided by a rule (%d with rules that lost), %d questions", decided, withLosers, questions)
	if decided < 10_000 || questions < 1000 || withLosers < 1000 {
		t.Fatalf("random set too easy: %d decided, %d questions, %d with losers", decided, questions, withLosers)
	}
}

// TestRuleHits checks the per-rule counters: each rule decision counts once for its
// rule, survives other rule changes, is gone with its rule, and Explain counts nothing.
func TestRuleHits(t *testing.T) {
	clk := newClock()
	e := newEngine(t, Config{Now: clk.Now},
		Rule{ID: 1, App: "/usr/bin/curl", Action: Allow},
		Rule{ID: 2, Remote: pfx("198.18.9.0/24"), Action: Deny},
		Rule{ID: 3, App: "/usr/bin/never", Action: Deny},
	)
	decide := func(req *Request) {
		v := newVerdicts(t)
		e.Decide(req, v.fn)
		v.wait()
	}
	for range 3 {
		decide(reqTo("/usr/bin/curl", "198.18.1.1:443"))
		e.Explain(reqTo("/usr/bin/curl", "198.18.1.1:443"))
	}
	clk.Advance(time.Minute)
	decide(reqTo("/usr/bin/wget", "198.18.9.9:80"))
	want := map[RuleID]RuleHits{1: {1, 3, t0}, 2: {2, 1, t0.Add(time.Minute)}, 3: {3, 0, time.Time{}}}
	check := func(when string) {
		t.Helper()
		hits := e.RuleHits()
		if len(hits) != len(want) {
			t.Fatalf("%s: %d counters %+v, want %d", when, len(hits), hits, len(want))
		}
		for _, h := range hits {
			w := want[h.ID]
			if h.Hits != w.Hits || !h.LastHit.Equal(w.LastHit) {
				t.Errorf("%s: rule %d: %d hits, last %v; want %d, %v", when, h.ID, h.Hits, h.LastHit, w.Hits, w.LastHit)
			}
		}
	}
	check("after decisions")
	added, err := e.AddRule(Rule{App: "/usr/bin/ssh", Action: Allow})
	if err != nil {
		t.Fatal(err)
	}
	want[added.ID] = RuleHits{ID: added.ID}
	check("after adding a rule")
	if _, err := e.RemoveRule(2); err != nil {
		t.Fatal(err)
	}
	delete(want, 2)
	check("after removing rule 2")
	e.SeedRuleHits([]RuleHits{{ID: 1, Hits: 10, LastHit: t0.Add(-time.Hour)}, {ID: 3, Hits: 2, LastHit: t0.Add(time.Hour)}, {ID: 2, Hits: 5}})
	want[1] = RuleHits{1, 13, t0}
	want[3] = RuleHits{3, 2, t0.Add(time.Hour)}
	check("after seeding")
	// An import that keeps rule 3 as it is and changes rule 1 under the same ID: rule
	// 1 starts from zero, rule 3 keeps its counts.
	rules := e.Rules()
	rules[0].Action = Deny
	if err := e.ReplaceRules(rules); err != nil {
		t.Fatal(err)
	}
	want[1] = RuleHits{ID: 1}
	check("after an import changed rule 1")
}

// TestExplainContainerByName: a rule naming a container by the name its runtime gives
// it decides that container's connection, and Explain says it matched by name (a new
// container given the name would match too); a rule naming the id says nothing of
// the kind; a user's own container of the same name is not matched.
func TestExplainContainerByName(t *testing.T) {
	const id = "4bd8f2a1c3e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7"
	clk := newClock()
	e := newEngine(t, Config{Now: clk.Now, Default: Reject},
		Rule{ID: 1, Container: "web-1", Port: PortRange{443, 443}, Action: Allow},
		Rule{ID: 2, Container: id[:12], Port: PortRange{80, 80}, Action: Allow},
	)
	req := curlReq()
	req.Identity, req.Container, req.ContainerName = IdentityContainer, "docker:"+id, "web-1"
	ex := e.Explain(req)
	if ex.Rule == nil || ex.Rule.ID != 1 || len(ex.Notes) != 1 || !strings.Contains(ex.Notes[0], "matched by the name") {
		t.Errorf("explanation %+v: want rule 1, with a note that it matched by name", ex)
	}
	req.Remote = netip.AddrPortFrom(req.Remote.Addr(), 80)
	if ex := e.Explain(req); ex.Rule == nil || ex.Rule.ID != 2 || len(ex.Notes) != 0 {
		t.Errorf("explanation %+v: want rule 2 (by id), no note", ex)
	}
	req.Remote = netip.AddrPortFrom(req.Remote.Addr(), 443)
	req.Container = "docker@1000:" + id
	if ex := e.Explain(req); ex.Rule != nil {
		t.Errorf("a user's own container named web-1: explanation %+v; want no rule", ex)
	}
}
