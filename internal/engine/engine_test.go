package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is an injectable clock for tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// verdicts collects the verdicts of one request; it fails the test if one comes twice.
type verdicts struct {
	t  *testing.T
	ch chan Verdict
	n  atomic.Int32
}

func newVerdicts(t *testing.T) *verdicts {
	return &verdicts{t: t, ch: make(chan Verdict, 1)}
}

func (v *verdicts) fn(got Verdict) {
	if v.n.Add(1) > 1 {
		v.t.Errorf("verdict %v delivered twice", got)
		return
	}
	v.ch <- got
}

// wait returns the verdict, failing the test if none comes within a generous bound.
func (v *verdicts) wait() Verdict {
	v.t.Helper()
	select {
	case got := <-v.ch:
		return got
	case <-time.After(10 * time.Second):
		v.t.Fatal("no verdict")
		return Verdict{}
	}
}

// pending fails the test if a verdict has already arrived.
func (v *verdicts) pending() {
	v.t.Helper()
	select {
	case got := <-v.ch:
		v.t.Fatalf("unexpected verdict %v", got)
	default:
	}
}

func newEngine(t *testing.T, cfg Config, rules ...Rule) *Engine {
	t.Helper()
	if cfg.Default == NoAction {
		cfg.Default = Deny
	}
	if cfg.PromptTimeout == 0 {
		cfg.PromptTimeout = time.Hour // tests that want a timeout ask for a short one
	}
	e, err := New(cfg, rules)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func reqTo(exe, remote string) *Request {
	return &Request{
		Direction: Outbound, Protocol: TCP, Exe: exe, Identity: IdentityVerified, UID: 1000, PID: 42,
		Local:  netip.MustParseAddrPort("198.18.0.2:40000"),
		Remote: netip.MustParseAddrPort(remote),
	}
}

func onlyPrompt(t *testing.T, e *Engine) Prompt {
	t.Helper()
	ps := e.Prompts()
	if len(ps) != 1 {
		t.Fatalf("%d prompts open, want 1: %+v", len(ps), ps)
	}
	return ps[0]
}

func TestDecideByRule(t *testing.T) {
	e := newEngine(t, Config{}, Rule{ID: 9, App: "/usr/bin/curl", Action: Allow})
	v := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), v.fn)
	if got := v.wait(); got != (Verdict{Action: Allow, Reason: ReasonRule, RuleID: 9}) {
		t.Errorf("verdict %+v", got)
	}
	if len(e.Prompts()) != 0 {
		t.Error("a prompt was opened for a request a rule decides")
	}
}

func TestPromptDedupAndAnswerOnce(t *testing.T) {
	c := newClock()
	e := newEngine(t, Config{Now: c.Now})
	events, cancel := e.Subscribe()
	defer cancel()

	a, b := newVerdicts(t), newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), a.fn)
	second := reqTo("/usr/bin/curl", "198.18.0.1:443")
	second.Local = netip.MustParseAddrPort("198.18.0.2:40001") // another connection, same question
	e.Decide(second, b.fn)
	other := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:80"), other.fn) // different port: new question

	ps := e.Prompts()
	if len(ps) != 2 || ps[0].Held != 2 || ps[1].Held != 1 || ps[0].ID >= ps[1].ID {
		t.Fatalf("prompts %+v, want two, the first holding 2", ps)
	}
	if !ps[0].Expires.Equal(t0.Add(time.Hour)) || !ps[0].Opened.Equal(t0) {
		t.Errorf("prompt times %v %v", ps[0].Opened, ps[0].Expires)
	}
	a.pending()
	b.pending()

	rule, err := e.Answer(ps[0].ID, Answer{Action: Allow})
	if err != nil || rule != nil {
		t.Fatalf("Answer once = %v, %v; want no rule, no error", rule, err)
	}
	for _, v := range []*verdicts{a, b} {
		if got := v.wait(); got != (Verdict{Action: Allow, Reason: ReasonPrompt}) {
			t.Errorf("verdict %+v", got)
		}
	}
	other.pending()
	if len(e.Rules()) != 0 {
		t.Error("answering once created a rule")
	}
	if _, err := e.Answer(ps[0].ID, Answer{Action: Allow}); err == nil || !strings.Contains(err.Error(), "not open") {
		t.Errorf("second answer: %v, want a not-open error", err)
	}
	if _, err := e.Answer(999, Answer{Action: Allow}); err == nil {
		t.Error("answer to an unknown prompt: no error")
	}

	var kinds []EventKind
	for len(events) > 0 {
		kinds = append(kinds, (<-events).Kind)
	}
	if want := []EventKind{EventPrompt, EventPrompt, EventAnswered}; fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", kinds, want)
	}
}

func TestPromptTimeout(t *testing.T) {
	e := newEngine(t, Config{Default: Reject, PromptTimeout: 20 * time.Millisecond})
	a, b := newVerdicts(t), newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), a.fn)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), b.fn)
	for _, v := range []*verdicts{a, b} {
		if got := v.wait(); got != (Verdict{Action: Reject, Reason: ReasonTimeout}) {
			t.Errorf("verdict %+v, want reject by timeout", got)
		}
	}
	if len(e.Prompts()) != 0 {
		t.Error("timed-out prompt still open")
	}
	if got := e.Stats().Decisions[ReasonTimeout]; got != 2 {
		t.Errorf("timeout count %d, want 2", got)
	}
}

func TestMaxPrompts(t *testing.T) {
	e := newEngine(t, Config{Default: Deny, MaxPrompts: 2})
	var vs []*verdicts
	for i := range 3 {
		v := newVerdicts(t)
		vs = append(vs, v)
		e.Decide(reqTo("/usr/bin/curl", fmt.Sprintf("198.18.0.%d:443", i+1)), v.fn)
	}
	if got := vs[2].wait(); got != (Verdict{Action: Deny, Reason: ReasonQuestionCap}) {
		t.Errorf("third question: %+v, want deny by limit", got)
	}
	vs[0].pending()
	vs[1].pending()
	// A request joining an open question is not limited.
	join := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), join.fn)
	join.pending()
	if ps := e.Prompts(); len(ps) != 2 || ps[0].Held != 2 {
		t.Errorf("prompts %+v", ps)
	}
}

func TestAnswerScopes(t *testing.T) {
	for _, tc := range []struct {
		scope  Scope
		remote string
		port   PortRange
	}{
		{ScopeApp, "", PortRange{}},
		{ScopeAppHost, "198.18.0.7/32", PortRange{}},
		{ScopeAppPort, "", PortRange{8443, 8443}},
		{ScopeAppHostPort, "198.18.0.7/32", PortRange{8443, 8443}},
	} {
		t.Run(tc.scope.String(), func(t *testing.T) {
			c := newClock()
			e := newEngine(t, Config{Now: c.Now})
			v := newVerdicts(t)
			req := reqTo("/usr/bin/curl", "198.18.0.7:8443")
			req.Protocol = UDP
			e.Decide(req, v.fn)
			rule, err := e.Answer(onlyPrompt(t, e).ID, Answer{Action: Deny, For: 2 * time.Hour, Scope: tc.scope})
			if err != nil {
				t.Fatal(err)
			}
			want := Rule{ID: rule.ID, App: "/usr/bin/curl", Direction: Outbound, Protocol: UDP,
				Port: tc.port, Action: Deny, Expires: t0.Add(2 * time.Hour), Created: t0, Note: rule.Note}
			if tc.remote != "" {
				want.Remote = pfx(tc.remote)
			}
			if *rule != want || rule.ID == 0 {
				t.Errorf("rule\n %v\nwant\n %v", rule, want)
			}
			if got := v.wait(); got != (Verdict{Action: Deny, Reason: ReasonPrompt, RuleID: rule.ID}) {
				t.Errorf("verdict %+v", got)
			}
			if rs := e.Rules(); len(rs) != 1 || rs[0] != *rule {
				t.Errorf("rules %v", rs)
			}
			// The rule decides the next such connection, until it expires.
			next := newVerdicts(t)
			e.Decide(req, next.fn)
			if got := next.wait(); got.Reason != ReasonRule || got.RuleID != rule.ID {
				t.Errorf("next connection: %+v", got)
			}
			c.Advance(2 * time.Hour)
			late := newVerdicts(t)
			e.Decide(req, late.fn)
			late.pending()
			if len(e.Rules()) != 0 {
				t.Error("expired rule still listed")
			}
		})
	}
}

// TestAnswerHostScopes checks that a host scope names the hostname when the request
// has one, so the rule still holds when DNS hands out another address, and the address
// when it does not.
func TestAnswerHostScopes(t *testing.T) {
	for _, tc := range []struct {
		scope Scope
		port  PortRange
	}{
		{ScopeAppHost, PortRange{}},
		{ScopeAppHostPort, PortRange{8443, 8443}},
	} {
		t.Run(tc.scope.String(), func(t *testing.T) {
			e := newEngine(t, Config{Now: newClock().Now})
			v := newVerdicts(t)
			req := reqTo("/usr/bin/curl", "198.18.0.7:8443")
			req.Host = "WWW.Example.com."
			e.Decide(req, v.fn)
			p := onlyPrompt(t, e)
			if p.Request.Host != "WWW.Example.com." {
				t.Errorf("prompt request host %q", p.Request.Host)
			}
			rule, err := e.Answer(p.ID, Answer{Action: Allow, For: Forever, Scope: tc.scope})
			if err != nil {
				t.Fatal(err)
			}
			if rule.Host != "www.example.com" || rule.Remote.IsValid() || rule.Port != tc.port {
				t.Fatalf("rule %v: want host www.example.com, no remote, port %v", rule, tc.port)
			}
			v.wait()
			// Same name, another address: decided by the rule.
			moved := reqTo("/usr/bin/curl", "198.18.9.9:8443")
			moved.Host = "www.example.com"
			next := newVerdicts(t)
			e.Decide(moved, next.fn)
			if got := next.wait(); got.Reason != ReasonRule || got.RuleID != rule.ID || got.Action != Allow {
				t.Errorf("same host, new address: %+v", got)
			}
			// Same address, name unknown: a question again.
			bare := reqTo("/usr/bin/curl", "198.18.0.7:8443")
			e.Decide(bare, newVerdicts(t).fn)
			if ps := e.Prompts(); len(ps) != 1 {
				t.Errorf("unknown host: %d prompts, want 1", len(ps))
			}
		})
	}
	// Unknown host: the address, as before.
	e := newEngine(t, Config{Now: newClock().Now})
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.7:8443"), newVerdicts(t).fn)
	rule, err := e.Answer(onlyPrompt(t, e).ID, Answer{Action: Allow, For: Forever, Scope: ScopeAppHost})
	if err != nil {
		t.Fatal(err)
	}
	if rule.Host != "" || rule.Remote != pfx("198.18.0.7/32") {
		t.Errorf("unknown host: rule %v, want remote 198.18.0.7/32", rule)
	}
}

// TestPromptPerHost checks that connections to one address under two names are two
// questions: the person may answer them differently.
func TestPromptPerHost(t *testing.T) {
	e := newEngine(t, Config{Now: newClock().Now})
	a := reqTo("/usr/bin/curl", "198.18.0.7:443")
	a.Host = "a.example.com"
	b := reqTo("/usr/bin/curl", "198.18.0.7:443")
	b.Host = "b.example.com"
	a2 := reqTo("/usr/bin/curl", "198.18.0.7:443")
	a2.Host = "A.example.com."
	for _, r := range []*Request{a, b, a2} {
		e.Decide(r, newVerdicts(t).fn)
	}
	ps := e.Prompts()
	if len(ps) != 2 || ps[0].Held+ps[1].Held != 3 {
		t.Errorf("%d prompts %+v, want 2 holding 3 connections", len(ps), ps)
	}
}

func TestAffectedHost(t *testing.T) {
	old := []Rule{{ID: 1, Action: Allow}}
	added := append(old, Rule{ID: 2, Host: "*.example.com", Action: Deny})
	affected := Affected(old, added)
	in := reqTo("/usr/bin/curl", "198.18.0.1:443")
	in.Host = "www.example.com"
	out := reqTo("/usr/bin/curl", "198.18.0.1:443")
	out.Host = "www.example.org"
	unknown := reqTo("/usr/bin/curl", "198.18.0.1:443") // conntrack flows have no host
	if !affected(in) || affected(out) || !affected(unknown) {
		t.Errorf("affected: matching host %v, other host %v, unknown host %v; want true false true", affected(in), affected(out), affected(unknown))
	}
	renamed := []Rule{old[0], {ID: 2, Host: "*.example.net", Action: Deny}}
	if !Affected(added, renamed)(in) {
		t.Error("a changed host does not affect the old host's flows")
	}
}

func TestAnswerForever(t *testing.T) {
	e := newEngine(t, Config{})
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.7:443"), newVerdicts(t).fn)
	rule, err := e.Answer(onlyPrompt(t, e).ID, Answer{Action: Allow, For: Forever, Scope: ScopeAppHostPort})
	if err != nil || !rule.Expires.IsZero() {
		t.Fatalf("rule %v, err %v; want a rule without expiry", rule, err)
	}
}

func TestAnswerUnknownExe(t *testing.T) {
	e := newEngine(t, Config{})
	v := newVerdicts(t)
	e.Decide(reqTo("", "198.18.0.7:443"), v.fn)
	p := onlyPrompt(t, e)
	if _, err := e.Answer(p.ID, Answer{Action: Allow, For: Forever}); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Fatalf("remembering an answer for an unknown exe: %v, want an error", err)
	}
	v.pending() // nothing changed: still waiting
	if len(e.Rules()) != 0 {
		t.Fatal("a rule was created")
	}
	if _, err := e.Answer(p.ID, Answer{Action: Allow}); err != nil {
		t.Fatal(err)
	}
	if got := v.wait(); got.Action != Allow || got.Reason != ReasonPrompt {
		t.Errorf("verdict %+v", got)
	}
}

func TestAnswerDecidesOtherPrompts(t *testing.T) {
	e := newEngine(t, Config{})
	first, sameApp, otherApp := newVerdicts(t), newVerdicts(t), newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), first.fn)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.2:80"), sameApp.fn)
	e.Decide(reqTo("/usr/bin/wget", "198.18.0.1:443"), otherApp.fn)
	events, cancel := e.Subscribe()
	defer cancel()

	rule, err := e.Answer(e.Prompts()[0].ID, Answer{Action: Allow, For: Forever, Scope: ScopeApp})
	if err != nil {
		t.Fatal(err)
	}
	if got := first.wait(); got.Reason != ReasonPrompt {
		t.Errorf("answered prompt: %+v", got)
	}
	if got := sameApp.wait(); got != (Verdict{Action: Allow, Reason: ReasonRule, RuleID: rule.ID}) {
		t.Errorf("other prompt of the same app: %+v, want decided by the new rule", got)
	}
	otherApp.pending()
	if ps := e.Prompts(); len(ps) != 1 || ps[0].Request.Exe != "/usr/bin/wget" {
		t.Errorf("open prompts %+v, want only wget's", ps)
	}
	var kinds []EventKind
	for len(events) > 0 {
		ev := <-events
		kinds = append(kinds, ev.Kind)
		if ev.Kind == EventRules && (len(ev.Rules) != 1 || ev.Rules[0].ID != rule.ID) {
			t.Errorf("rules event %+v", ev.Rules)
		}
	}
	if fmt.Sprint(kinds) != fmt.Sprint([]EventKind{EventAnswered, EventAnswered, EventRules}) {
		t.Errorf("events %v", kinds)
	}
}

func TestAddRuleDecidesOpenPrompts(t *testing.T) {
	e := newEngine(t, Config{})
	v, stays := newVerdicts(t), newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), v.fn)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:80"), stays.fn)
	r, err := e.AddRule(Rule{Port: PortRange{443, 443}, Action: Reject, ID: 77})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID == 77 || r.ID == 0 || r.Created.IsZero() {
		t.Errorf("AddRule kept the caller's ID or gave no Created: %+v", r)
	}
	if got := v.wait(); got != (Verdict{Action: Reject, Reason: ReasonRule, RuleID: r.ID}) {
		t.Errorf("verdict %+v", got)
	}
	stays.pending()
}

// TestNoHeadOfLineBlocking: while a question waits for a person, connections that
// rules decide are decided at once, and other questions open independently.
func TestNoHeadOfLineBlocking(t *testing.T) {
	e := newEngine(t, Config{}, Rule{App: "/usr/bin/ssh", Action: Allow})
	waiting := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), waiting.fn)
	for i := range 100 {
		decided := false
		e.Decide(reqTo("/usr/bin/ssh", fmt.Sprintf("198.18.0.%d:22", i%250+1)), func(v Verdict) {
			decided = v.Reason == ReasonRule
		})
		if !decided { // Decide answers rule matches before it returns
			t.Fatalf("request %d matching a rule was not decided while a prompt is open", i)
		}
	}
	waiting.pending()
}

func TestRemoveAndReplaceRules(t *testing.T) {
	e := newEngine(t, Config{}, Rule{ID: 5, Action: Allow, App: "/usr/bin/curl"})
	if _, err := e.RemoveRule(6); err == nil || !strings.Contains(err.Error(), "rule 6") {
		t.Errorf("removing a missing rule: %v", err)
	}
	err := e.ReplaceRules([]Rule{{ID: 1, Action: Allow}, {ID: 2, Action: Allow, Port: PortRange{9, 3}}})
	var re *RuleError
	if !errors.As(err, &re) || re.Index != 1 || re.ID != 2 || !strings.Contains(err.Error(), `"port"`) {
		t.Errorf("replace with a bad rule: %v", err)
	}
	if rs := e.Rules(); len(rs) != 1 || rs[0].ID != 5 {
		t.Fatalf("failed replace changed the rules: %v", rs)
	}
	if err := e.ReplaceRules([]Rule{{ID: 1, Action: Deny}, {Action: Allow, App: "/bin/x"}}); err != nil {
		t.Fatal(err)
	}
	rs := e.Rules()
	if len(rs) != 2 || rs[0].ID != 1 || rs[1].ID <= 5 {
		t.Errorf("rules after replace %v; the new rule must get an ID never used before", rs)
	}
	if r, err := e.RemoveRule(1); err != nil || r.Action != Deny {
		t.Errorf("RemoveRule = %v, %v", r, err)
	}
	if r, err := e.AddRule(Rule{Action: Allow}); err != nil || r.ID <= rs[1].ID {
		t.Errorf("AddRule after remove = %v, %v; IDs are never reused", r, err)
	}
	if _, err := e.AddRule(Rule{Action: Allow, Remote: pfx("198.18.0.1/15")}); err == nil || !strings.Contains(err.Error(), `"remote"`) {
		t.Errorf("AddRule with a bad remote: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{Default: Deny}, []Rule{{ID: 1, Action: Allow}, {ID: 1, Action: Deny}}); err == nil || !strings.Contains(err.Error(), "id 1") {
		t.Errorf("duplicate IDs: %v", err)
	}
	if _, err := New(Config{Default: Deny}, []Rule{{ID: 3}}); err == nil || !strings.Contains(err.Error(), `"action"`) {
		t.Errorf("missing action: %v", err)
	}
	if _, err := New(Config{}, nil); err == nil || !strings.Contains(err.Error(), "Default") {
		t.Errorf("no default: %v", err)
	}
}

func TestCloseAnswersEverything(t *testing.T) {
	e, err := New(Config{Default: Reject, PromptTimeout: time.Hour}, []Rule{{App: "/usr/bin/ssh", Action: Allow}})
	if err != nil {
		t.Fatal(err)
	}
	events, _ := e.Subscribe()
	a, b := newVerdicts(t), newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), a.fn)
	e.Decide(reqTo("/usr/bin/wget", "198.18.0.1:443"), b.fn)
	e.Close()
	for _, v := range []*verdicts{a, b} {
		if got := v.wait(); got != (Verdict{Action: Reject, Reason: ReasonDefault}) {
			t.Errorf("verdict at close %+v", got)
		}
	}
	for range events { // drains, then ends: Close closed the channel
	}
	after := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/curl", "198.18.0.1:443"), after.fn)
	if got := after.wait(); got.Reason != ReasonDefault {
		t.Errorf("after close: %+v", got)
	}
	ssh := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/ssh", "198.18.0.1:22"), ssh.fn)
	if got := ssh.wait(); got.Reason != ReasonRule {
		t.Errorf("rule after close: %+v", got)
	}
	e.Close() // twice is fine
}

func TestSlowSubscriberDoesNotBlock(t *testing.T) {
	e := newEngine(t, Config{PromptTimeout: time.Hour, MaxPrompts: 4096, MaxPromptsPerUser: 4096, MaxPromptsPerApp: 4096})
	_, cancel := e.Subscribe() // never read
	defer cancel()
	done := make(chan struct{})
	go func() {
		for i := range 2 * subscriberBuffer {
			e.Decide(reqTo("/usr/bin/curl", fmt.Sprintf("198.18.%d.%d:443", i/250, i%250+1)), func(Verdict) {})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Decide blocked on a subscriber that does not read")
	}
	if e.Stats().Dropped == 0 {
		t.Error("no events counted as dropped")
	}
}

func TestOnRulesChangedAndAffected(t *testing.T) {
	e := newEngine(t, Config{}, Rule{ID: 1, App: "/usr/bin/curl", Action: Allow}, Rule{ID: 2, Port: PortRange{22, 22}, Action: Allow})
	type change struct{ old, new []Rule }
	changes := make(chan change, 10)
	e.OnRulesChanged(func(old, new []Rule) {
		// A hook may call the engine: it runs outside engine locks.
		_ = e.Rules()
		changes <- change{old, new}
	})
	if _, err := e.RemoveRule(1); err != nil {
		t.Fatal(err)
	}
	var c change
	select {
	case c = <-changes:
	case <-time.After(10 * time.Second):
		t.Fatal("hook not called")
	}
	if len(c.old) != 2 || len(c.new) != 1 || c.new[0].ID != 2 {
		t.Fatalf("hook got old %v new %v", c.old, c.new)
	}
	affected := Affected(c.old, c.new)
	curl := reqTo("/usr/bin/curl", "198.18.0.1:443")
	ssh := reqTo("/usr/bin/ssh", "198.18.0.1:22")
	unknown := reqTo("", "198.18.0.1:443") // a flow known only from conntrack
	unknown.UID = -1
	if !affected(curl) || affected(ssh) || !affected(unknown) {
		t.Errorf("affected: curl %v ssh %v unknown %v; want true false true", affected(curl), affected(ssh), affected(unknown))
	}
	if Affected(c.new, c.new)(curl) {
		t.Error("no change, yet affected")
	}
	changed := append([]Rule(nil), c.new...)
	changed[0].Action = Deny
	if !Affected(c.new, changed)(ssh) {
		t.Error("changed action not affected")
	}
}

// TestConcurrency runs deciders, answerers and rule writers at once; run with -race.
// Every request must get exactly one verdict, within the prompt timeout.
func TestConcurrency(t *testing.T) {
	e := newEngine(t, Config{Default: Deny, PromptTimeout: 50 * time.Millisecond, MaxPrompts: 64})
	const deciders, perDecider = 8, 400
	var wg, answered sync.WaitGroup
	var got atomic.Int64
	stop := make(chan struct{})
	for d := range deciders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perDecider {
				var once atomic.Int32
				answered.Add(1)
				exe := fmt.Sprintf("/usr/bin/app%d", (d+i)%5)
				e.Decide(reqTo(exe, fmt.Sprintf("198.18.0.%d:%d", i%7+1, 440+i%4)), func(Verdict) {
					if once.Add(1) != 1 {
						t.Error("verdict twice")
						return
					}
					got.Add(1)
					answered.Done()
				})
			}
		}()
	}
	var writers sync.WaitGroup
	writers.Add(2)
	go func() { // answers whatever is open
		defer writers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for j, p := range e.Prompts() {
				_, _ = e.Answer(p.ID, Answer{Action: Allow, For: []time.Duration{0, time.Minute}[j%2], Scope: ScopeAppHostPort})
			}
			time.Sleep(time.Millisecond)
		}
	}()
	go func() { // adds and removes rules
		defer writers.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r, err := e.AddRule(Rule{App: fmt.Sprintf("/usr/bin/app%d", i%5), Port: PortRange{441, 441}, Action: Reject})
			if err != nil {
				t.Error(err)
				return
			}
			_ = e.Rules()
			_ = e.Stats()
			if _, err := e.RemoveRule(r.ID); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	done := make(chan struct{})
	go func() { answered.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%d of %d requests got a verdict", got.Load(), deciders*perDecider)
	}
	close(stop)
	writers.Wait()
}

func TestParseForAndScope(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"once": 0, "forever": Forever, "90m": 90 * time.Minute, "1d": 24 * time.Hour,
		"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour,
	} {
		if got, err := ParseFor(in); err != nil || got != want {
			t.Errorf("ParseFor(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"0s", "-5m", "soon", "d", "1x", "-1d"} {
		if _, err := ParseFor(bad); err == nil {
			t.Errorf("ParseFor(%q): no error", bad)
		}
	}
	for _, s := range []Scope{ScopeApp, ScopeAppHost, ScopeAppPort, ScopeAppHostPort} {
		if got, err := ParseScope(s.String()); err != nil || got != s {
			t.Errorf("ParseScope(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseScope("host"); err == nil {
		t.Error("ParseScope(host): no error")
	}
	var a Answer
	if err := a.UnmarshalJSON([]byte(`{"action":"reject","for":"1d","scope":"app+port"}`)); err != nil ||
		a != (Answer{Action: Reject, For: 24 * time.Hour, Scope: ScopeAppPort}) {
		t.Errorf("Answer JSON: %+v %v", a, err)
	}
}

func TestEscapedExeRule(t *testing.T) {
	e := newEngine(t, Config{})
	v := newVerdicts(t)
	e.Decide(reqTo("/opt/odd[1]/bin*", "198.18.0.1:443"), v.fn)
	rule, err := e.Answer(onlyPrompt(t, e).ID, Answer{Action: Allow, For: Forever})
	if err != nil {
		t.Fatal(err)
	}
	next, near := newVerdicts(t), newVerdicts(t)
	e.Decide(reqTo("/opt/odd[1]/bin*", "198.18.0.9:80"), next.fn)
	if got := next.wait(); got.RuleID != rule.ID {
		t.Errorf("exe with glob characters not matched by its own rule %q: %+v", rule.App, got)
	}
	e.Decide(reqTo("/opt/odd1/binx", "198.18.0.9:80"), near.fn)
	near.pending()
}

// TestExpiryPrunes: when a rule expires the engine drops it by itself and tells the
// hooks, so the daemon can re-decide the flows it allowed.
func TestExpiryPrunes(t *testing.T) {
	e := newEngine(t, Config{})
	changes := make(chan []Rule, 10)
	e.OnRulesChanged(func(old, new []Rule) {
		if len(old) == 1 && len(new) == 0 {
			changes <- old
		}
	})
	r, err := e.AddRule(Rule{App: "/usr/bin/curl", Action: Allow, Expires: time.Now().Add(30 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case old := <-changes:
		if old[0].ID != r.ID {
			t.Errorf("expired rule %v, want %d", old, r.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("expired rule not pruned")
	}
	if len(e.Rules()) != 0 {
		t.Error("expired rule still listed")
	}
	if _, err := e.AddRule(Rule{Action: Allow, Expires: time.Now().Add(-time.Second)}); err == nil || !strings.Contains(err.Error(), "expires") {
		t.Errorf("adding an expired rule: %v", err)
	}
}

func TestAffectedLargeChangeRedecidesEverything(t *testing.T) {
	var old, new []Rule
	for i := range affectedCompileMax + 1 {
		new = append(new, Rule{ID: RuleID(i + 1), App: fmt.Sprintf("/opt/app%d", i), Port: PortRange{443, 443}, Action: Allow})
	}
	req := reqTo("/usr/bin/curl", "198.18.0.1:22")
	if !Affected(old, new)(req) {
		t.Error("a change of more rules than Affected compiles must re-decide every request")
	}
	small := new[:10]
	if Affected(old, small)(req) {
		t.Error("a small change re-decides a request none of its rules matches")
	}
	if Affected(new, new)(req) {
		t.Error("no change re-decides a request")
	}
}

// TestOnInstallSynchronous: the hook sees the rules at once, and every change
// before the call that made it returns (a fast path's invalidation relies on it),
// expiry included.
func TestOnInstallSynchronous(t *testing.T) {
	e, err := New(Config{Default: Deny, PromptTimeout: time.Minute}, []Rule{{ID: 1, Action: Allow}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var mu sync.Mutex
	var seen [][]RuleID
	e.OnInstall(func(live []Rule) {
		ids := []RuleID{}
		for _, r := range live {
			ids = append(ids, r.ID)
		}
		mu.Lock()
		seen = append(seen, ids)
		mu.Unlock()
	})
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprint(len(seen), seen[len(seen)-1])
	}
	if got := last(); got != "1 [1]" {
		t.Fatalf("at registration: %s", got)
	}
	r, err := e.AddRule(Rule{Action: Deny, Expires: time.Now().Add(50 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if got := last(); got != fmt.Sprint(2, []RuleID{1, r.ID}) {
		t.Fatalf("after AddRule returned: %s", got)
	}
	if _, err := e.RemoveRule(1); err != nil {
		t.Fatal(err)
	}
	if got := last(); got != fmt.Sprint(3, []RuleID{r.ID}) {
		t.Fatalf("after RemoveRule returned: %s", got)
	}
	if err := e.ReplaceRules([]Rule{{ID: 9, Action: Allow}}); err != nil {
		t.Fatal(err)
	}
	if got := last(); got != "4 [9]" {
		t.Fatalf("after ReplaceRules returned: %s", got)
	}
	e.AddRule(Rule{Action: Deny, Expires: time.Now().Add(30 * time.Millisecond)})
	deadline := time.Now().Add(5 * time.Second)
	for last() != "6 [9]" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := last(); got != "6 [9]" {
		t.Fatalf("after expiry: %s", got)
	}
}

// TestSettleHooks: SettleHooks returns once the hooks ran for every change made
// before it, gives up with ctx, and does not wait for a closed engine.
func TestSettleHooks(t *testing.T) {
	e, err := New(Config{Default: Deny}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SettleHooks(t.Context()); err != nil {
		t.Fatalf("no hooks, no changes: %v", err)
	}
	release := make(chan struct{})
	var ran atomic.Int32
	e.OnRulesChanged(func(old, new []Rule) {
		<-release
		ran.Add(1)
	})
	for range 2 {
		if _, err := e.AddRule(Rule{App: "/usr/bin/curl", Action: Allow}); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := e.SettleHooks(short); err == nil {
		t.Fatal("SettleHooks returned while the hooks were blocked")
	}
	close(release)
	if err := e.SettleHooks(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := ran.Load(); n != 2 {
		t.Fatalf("SettleHooks returned after the hooks ran %d times, want 2", n)
	}
	e.Close()
	if err := e.SettleHooks(t.Context()); err != nil {
		t.Fatalf("after Close: %v", err)
	}
}

// TestStatsCountsLiveRules: the status's rule count is the rules in force, an
// expired rule not yet pruned left out, as Rules lists them.
func TestStatsCountsLiveRules(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEngine(t, Config{Now: clock})
	for i := range 3 {
		r := Rule{App: fmt.Sprintf("/usr/bin/app%d", i), Action: Allow}
		if i == 0 {
			r.Expires = now.Add(time.Hour)
		}
		if _, err := e.AddRule(r); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.Stats().Rules; got != 3 {
		t.Errorf("Stats().Rules = %d, want 3", got)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour) // the first rule expired; nothing pruned it yet
	mu.Unlock()
	if got, want := e.Stats().Rules, len(e.Rules()); got != want || got != 2 {
		t.Errorf("Stats().Rules = %d, Rules() lists %d, want 2 after one expired", got, want)
	}
}

// TestAffectedAllowed: for flows the old rules allowed, an allow rule that comes
// and a deny, reject or drop rule that goes change nothing; an allow that goes
// and a deny that comes do, and so does a rule whose action changed from allow.
func TestAffectedAllowed(t *testing.T) {
	curl := reqTo("/usr/bin/curl", "198.18.0.1:443")
	base := []Rule{{ID: 1, App: "/usr/bin/curl", Action: Allow}, {ID: 2, Port: PortRange{443, 443}, Action: Deny}}
	with := func(r Rule) []Rule { return append(append([]Rule(nil), base...), r) }
	action := func(id RuleID, a Action) []Rule {
		rs := append([]Rule(nil), base...)
		for i := range rs {
			if rs[i].ID == id {
				rs[i].Action = a
			}
		}
		return rs
	}
	for _, c := range []struct {
		name     string
		old, new []Rule
		want     bool
	}{
		{"allow added", base, with(Rule{ID: 3, App: "/usr/bin/curl", Remote: netip.MustParsePrefix("198.18.0.1/32"), Action: Allow}), false},
		{"deny added", base, with(Rule{ID: 3, App: "/usr/bin/curl", Remote: netip.MustParsePrefix("198.18.0.1/32"), Action: Deny}), true},
		{"reject added", base, with(Rule{ID: 3, Remote: netip.MustParsePrefix("198.18.0.1/32"), Action: Reject}), true},
		{"allow removed", base, base[1:], true},
		{"deny removed", base, base[:1], false},
		{"allow made deny", base, action(1, Deny), true},
		{"deny made allow", base, action(2, Allow), false},
	} {
		if got := AffectedAllowed(c.old, c.new)(curl); got != c.want {
			t.Errorf("%s: AffectedAllowed %v, want %v", c.name, got, c.want)
		}
		if !Affected(c.old, c.new)(curl) {
			t.Errorf("%s: Affected false, want true (it is asked about denied flows too)", c.name)
		}
	}
}

// TestExpiryAfterClockStepBack (review28): a rule's expiry is a wall-clock
// time and the expiry timer runs on the monotonic clock, so after the wall
// clock was stepped back the timer fires before the rule expires. The engine
// must arm it again: the rule is pruned, and the hooks told, once it expires by
// the stepped clock (it stayed in the rule set for good before). The clock is
// injected (the test never steps the machine's), without a monotonic reading,
// as a rule's expiry read from the rules file has none.
func TestExpiryAfterClockStepBack(t *testing.T) {
	var step atomic.Int64
	now := func() time.Time { return time.Now().Round(0).Add(time.Duration(step.Load())) }
	e := newEngine(t, Config{Now: now})
	changes := make(chan []Rule, 10)
	e.OnRulesChanged(func(old, new []Rule) {
		if len(old) == 1 && len(new) == 0 {
			changes <- old
		}
	})
	r, err := e.AddRule(Rule{App: "/usr/bin/curl", Action: Allow, Expires: now().Add(50 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	step.Store(int64(-300 * time.Millisecond)) // the wall clock stepped back
	select {
	case old := <-changes:
		if old[0].ID != r.ID {
			t.Errorf("expired rule %v, want %d", old, r.ID)
		}
		if n := now(); n.Before(r.Expires) {
			t.Errorf("pruned at %v, before its expiry %v", n, r.Expires)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the rule was not pruned after the clock stepped back (the expiry timer was not armed again)")
	}
}
