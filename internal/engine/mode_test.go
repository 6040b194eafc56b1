package engine

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

func decideNow(t *testing.T, e *Engine, r *Request) Verdict {
	t.Helper()
	v := newVerdicts(t)
	e.Decide(r, v.fn)
	return v.wait()
}

func TestModeLearnRecordsSuggestionsAndAcceptMakesRules(t *testing.T) {
	e := newEngine(t, Config{}, Rule{App: "/usr/bin/ssh", Action: Deny})
	if err := e.SetMode(ModeState{Mode: ModeLearn}); err != nil {
		t.Fatal(err)
	}
	// Rules still decide first.
	if got := decideNow(t, e, reqTo("/usr/bin/ssh", "198.18.0.1:22")); got.Action != Deny || got.Reason != ReasonRule || got.Mode != ModeLearn {
		t.Errorf("rule in learn mode: %+v", got)
	}
	for range 3 {
		if got := decideNow(t, e, reqTo("/usr/bin/curl", "198.18.0.1:443")); got != (Verdict{Action: Allow, Reason: ReasonMode, Mode: ModeLearn}) {
			t.Fatalf("learn: %+v", got)
		}
	}
	decideNow(t, e, reqTo("/usr/bin/curl", "198.18.0.9:80"))
	unverified := reqTo("/usr/bin/wget", "198.18.0.1:443")
	unverified.Identity = IdentityUnverified
	if got := decideNow(t, e, unverified); got.Action != Allow {
		t.Errorf("learn, unverified program: %+v", got)
	}
	if len(e.Prompts()) != 0 {
		t.Fatal("learn mode asked")
	}
	ss := e.Suggestions()
	if len(ss) != 2 || ss[0].Rule.App != "/usr/bin/curl" || ss[0].Count != 3 || ss[0].Rule.Port != (PortRange{443, 443}) || ss[1].Count != 1 {
		t.Fatalf("suggestions %+v", ss)
	}
	if st := e.SuggestionStats(); st.Unnamed != 1 || st.Kept != 2 {
		t.Errorf("stats %+v", st)
	}
	if _, err := e.AcceptSuggestions([]SuggestionID{ss[0].ID, 999}, false); err == nil {
		t.Fatal("accepting an unknown suggestion: no error")
	}
	if len(e.Suggestions()) != 2 || len(e.Rules()) != 1 {
		t.Fatal("a failed accept changed something")
	}
	added, err := e.AcceptSuggestions([]SuggestionID{ss[0].ID}, false)
	if err != nil || len(added) != 1 || added[0].Action != Allow {
		t.Fatalf("accept: %v %+v", err, added)
	}
	if err := e.SetMode(ModeState{Mode: ModeAsk}); err != nil {
		t.Fatal(err)
	}
	if got := decideNow(t, e, reqTo("/usr/bin/curl", "198.18.0.1:443")); got.Reason != ReasonRule || got.RuleID != added[0].ID {
		t.Errorf("accepted suggestion does not decide: %+v", got)
	}
	if _, err := e.AcceptSuggestions(nil, true); err != nil || len(e.Suggestions()) != 0 || len(e.Rules()) != 3 {
		t.Errorf("accept --all: %v, %d suggestions, %d rules", err, len(e.Suggestions()), len(e.Rules()))
	}
}

func TestModeSilent(t *testing.T) {
	e := newEngine(t, Config{}, Rule{App: "/usr/bin/ssh", Action: Allow})
	e.SetMode(ModeState{Mode: ModeSilentDeny})
	if got := decideNow(t, e, reqTo("/usr/bin/curl", "198.18.0.1:443")); got.Action != Deny || got.Reason != ReasonMode {
		t.Errorf("silent-deny: %+v", got)
	}
	if got := decideNow(t, e, reqTo("/usr/bin/ssh", "198.18.0.1:22")); got.Action != Allow || got.Reason != ReasonRule {
		t.Errorf("silent-deny, allowed by rule: %+v", got)
	}
	e.SetMode(ModeState{Mode: ModeSilentAllow})
	if got := decideNow(t, e, reqTo("/usr/bin/curl", "198.18.0.1:443")); got.Action != Allow || got.Reason != ReasonMode || got.Mode != ModeSilentAllow {
		t.Errorf("silent-allow: %+v", got)
	}
	if len(e.Suggestions()) != 0 || len(e.Prompts()) != 0 {
		t.Error("silent-allow recorded a suggestion or asked")
	}
}

func TestModeBlockAllBeatsRulesButNotLoopback(t *testing.T) {
	e := newEngine(t, Config{}, Rule{App: "/usr/bin/curl", Action: Allow})
	// An open question is decided by the switch at once.
	open := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/wget", "198.18.0.1:443"), open.fn)
	lo := newVerdicts(t)
	e.Decide(reqTo("/usr/bin/wget", "127.0.0.1:8080"), lo.fn)
	open.pending()
	e.SetMode(ModeState{Mode: ModeBlockAll})
	if got := open.wait(); got.Action != Deny || got.Reason != ReasonMode || got.Mode != ModeBlockAll {
		t.Errorf("open question at block-all: %+v", got)
	}
	lo.pending() // loopback's question stays open
	if got := decideNow(t, e, reqTo("/usr/bin/curl", "198.18.0.1:443")); got.Action != Deny || got.Reason != ReasonMode {
		t.Errorf("block-all let an allowed program through: %+v", got)
	}
	if got := decideNow(t, e, reqTo("/usr/bin/curl", "127.0.0.1:80")); got.Action != Allow || got.Reason != ReasonRule {
		t.Errorf("block-all, loopback: %+v", got)
	}
	e.SetMode(ModeState{Mode: ModeAsk})
	if got := decideNow(t, e, reqTo("/usr/bin/curl", "198.18.0.1:443")); got.Action != Allow {
		t.Errorf("after block-all was switched off: %+v", got)
	}
}

func TestModeTimedRevertsByItself(t *testing.T) {
	e := newEngine(t, Config{})
	changed := make(chan ModeState, 4)
	e.OnModeChanged(func(s ModeState) { changed <- s })
	until := time.Now().Add(100 * time.Millisecond)
	e.SetMode(ModeState{Mode: ModeSilentAllow, Until: until, Then: ModeLearn})
	if s := <-changed; s.Mode != ModeSilentAllow || !s.Until.Equal(until) {
		t.Fatalf("state %+v", s)
	}
	select {
	case s := <-changed:
		if s.Mode != ModeLearn || !s.Until.IsZero() || e.Mode() != ModeLearn {
			t.Errorf("after the pause: %+v, mode %v", s, e.Mode())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the timed mode did not end")
	}
	// A time already passed (a pause that ended while the daemon was down).
	e.SetMode(ModeState{Mode: ModeSilentAllow, Until: time.Now().Add(-time.Second), Then: ModeSilentDeny})
	if e.Mode() != ModeSilentDeny {
		t.Errorf("a passed pause left mode %v", e.Mode())
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range modeNames {
		m, err := ParseMode(s)
		if err != nil || m.String() != s {
			t.Errorf("%q: %v %v", s, m, err)
		}
	}
	for _, s := range []string{"", "Ask", "block", "silent"} {
		if _, err := ParseMode(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestAnswerLifetimes(t *testing.T) {
	e := newEngine(t, Config{BootID: "0b5e1d2c-0000-4000-8000-000000000001"})
	for _, c := range []struct {
		for_ string
		port string
	}{{"until-exit", "198.18.0.1:1"}, {"until-reboot", "198.18.0.1:2"}} {
		d, err := ParseFor(c.for_)
		if err != nil || formatFor(d) != c.for_ {
			t.Fatalf("%s: %v %v", c.for_, d, err)
		}
		v := newVerdicts(t)
		e.Decide(reqTo("/usr/bin/curl", c.port), v.fn)
		p := e.Prompts()[0]
		r, err := e.Answer(p.ID, Answer{Action: Allow, For: d, Scope: ScopeAppHostPort})
		if err != nil {
			t.Fatal(err)
		}
		switch d {
		case UntilExit:
			if r.ExitPID != 42 || r.BootID != "" || !r.Expires.IsZero() {
				t.Errorf("until-exit rule %s", r)
			}
		case UntilReboot:
			if r.BootID != "0b5e1d2c-0000-4000-8000-000000000001" || r.ExitPID != 0 {
				t.Errorf("until-reboot rule %s", r)
			}
		}
		// The rules file keeps the lifetime.
		data, _ := r.MarshalJSON()
		var back Rule
		if err := back.UnmarshalJSON(data); err != nil || back.ExitPID != r.ExitPID || back.BootID != r.BootID {
			t.Errorf("round trip of %s: %+v %v", data, back, err)
		}
	}
	// Without a boot id, until-reboot is refused and the question stays open.
	e2 := newEngine(t, Config{})
	e2.Decide(reqTo("/usr/bin/curl", "198.18.0.1:3"), func(Verdict) {})
	if _, err := e2.Answer(e2.Prompts()[0].ID, Answer{Action: Allow, For: UntilReboot}); err == nil || len(e2.Prompts()) != 1 {
		t.Errorf("until-reboot without a boot id: %v", err)
	}
}

type testList map[string]bool

func (l testList) MatchHost(h string) bool     { return l[h] }
func (l testList) MatchAddr(a netip.Addr) bool { return l[a.String()] }

// TestListPrecedence: an app rule overrides a list; a list overrides rules without
// an app, and decides where no rule does.
func TestListPrecedence(t *testing.T) {
	e := newEngine(t, Config{},
		Rule{App: "/usr/bin/curl", Port: PortRange{443, 443}, Action: Allow},
		Rule{Port: PortRange{443, 443}, Action: Allow},
	)
	e.SetLists([]BlockList{{Name: "ads", Action: Deny, List: testList{"ads.example": true, "198.18.0.66": true}}})
	r := reqTo("/usr/bin/curl", "198.18.0.66:443")
	if v := decideNow(t, e, r); v.Reason != ReasonRule {
		t.Errorf("app rule vs list: %+v", v)
	}
	r = reqTo("/usr/bin/wget", "198.18.0.66:443")
	if v := decideNow(t, e, r); v.Reason != ReasonList || v.Action != Deny {
		t.Errorf("app-less rule vs list: %+v", v)
	}
	r = reqTo("/usr/bin/wget", "198.18.0.5:80")
	r.Host = "ads.example"
	if v := decideNow(t, e, r); v.Reason != ReasonList {
		t.Errorf("listed host, no rule: %+v", v)
	}
}

// TestModeEndFollowsTheWallClock (review29): a timed mode ends at its Until by
// the engine's wall clock, not by the monotonic timer alone. With the wall clock
// (injected) stepped back, the timer that fires at Until's monotonic time finds
// the end not reached and arms itself again: the pause still holds, as 'latch
// mode' shows it; once the clock passes Until, the next firing ends it. And the
// Until SetMode keeps has no monotonic reading (time.Now().Add(d) has one, with
// which Before and Sub ignore a step of the wall clock).
func TestModeEndFollowsTheWallClock(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEngine(t, Config{Now: clock})
	changed := make(chan ModeState, 4)
	e.OnModeChanged(func(s ModeState) { changed <- s })
	e.SetMode(ModeState{Mode: ModeSilentAllow, Until: clock().Add(50 * time.Millisecond), Then: ModeSilentDeny})
	<-changed
	// The clock does not move (as after a step back): the timer fires and re-arms.
	select {
	case s := <-changed:
		t.Fatalf("the timed mode ended by the monotonic timer before its end by the wall clock: %+v", s)
	case <-time.After(300 * time.Millisecond):
	}
	if m := e.Mode(); m != ModeSilentAllow {
		t.Fatalf("mode %v before the end, want %v", m, ModeSilentAllow)
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	select {
	case s := <-changed:
		if s.Mode != ModeSilentDeny || e.Mode() != ModeSilentDeny {
			t.Errorf("after the end: %+v, mode %v", s, e.Mode())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the timed mode did not end after the wall clock passed its end")
	}

	e2 := newEngine(t, Config{})
	e2.SetMode(ModeState{Mode: ModeSilentAllow, Until: time.Now().Add(time.Hour), Then: ModeAsk})
	if u := e2.ModeState().Until; u != u.Round(0) {
		t.Errorf("the mode's end %v keeps a monotonic reading", u)
	}
	r, err := e2.AddRule(Rule{App: "/usr/bin/curl", Action: Allow, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range e2.Rules() {
		if got.ID == r.ID && got.Expires != got.Expires.Round(0) {
			t.Errorf("the rule's expiry %v keeps a monotonic reading", got.Expires)
		}
	}
}
