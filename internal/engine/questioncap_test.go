package engine

import (
	"fmt"
	"testing"
	"time"
)

// asker opens questions as one program of one user, to distinct destinations.
type asker struct {
	t    *testing.T
	e    *Engine
	exe  string
	uid  int32
	next int
	vs   []*verdicts
	// unverified: the requests carry IdentityUnverified (a forger's program under
	// exe's path); otherwise IdentityVerified.
	unverified bool
}

func (a *asker) ask(n int) {
	for range n {
		a.next++
		req := reqTo(a.exe, fmt.Sprintf("198.18.%d.%d:443", a.next/250, a.next%250+1))
		req.UID = a.uid
		if a.unverified {
			req.Identity, req.IdentityNote = IdentityUnverified, "another file"
		}
		v := newVerdicts(a.t)
		a.vs = append(a.vs, v)
		a.e.Decide(req, v.fn)
	}
}

// open counts the asker's open questions.
func (a *asker) open() int {
	n := 0
	for _, p := range a.e.Prompts() {
		if p.Request.Exe == a.exe && p.Request.UID == a.uid && (p.Request.Identity == IdentityUnverified) == a.unverified {
			n++
		}
	}
	return n
}

// capped returns how many of the asker's connections got the default by a cap.
func (a *asker) capped() int {
	n := 0
	for _, v := range a.vs {
		select {
		case got := <-v.ch:
			if got != (Verdict{Action: Deny, Reason: ReasonQuestionCap}) {
				a.t.Errorf("%s uid %d: verdict %+v, want deny by question-cap", a.exe, a.uid, got)
			}
			n++
		default:
		}
	}
	return n
}

func TestQuestionCapPerProgram(t *testing.T) {
	e := newEngine(t, Config{Default: Deny, PromptTimeout: time.Hour, MaxPromptsPerApp: 3})
	flood := &asker{t: t, e: e, exe: "/usr/bin/flood", uid: 1000}
	flood.ask(5)
	if got := flood.open(); got != 3 {
		t.Errorf("flooding program has %d questions open, want its bound 3", got)
	}
	if got := flood.capped(); got != 2 {
		t.Errorf("%d of the flooding program's connections got the default at once, want 2", got)
	}
	// Another program of the same user, and the same program of another user, are
	// still asked.
	other := &asker{t: t, e: e, exe: "/usr/bin/wget", uid: 1000}
	other.ask(1)
	otherUser := &asker{t: t, e: e, exe: "/usr/bin/flood", uid: 1001}
	otherUser.ask(1)
	if other.open() != 1 || otherUser.open() != 1 {
		t.Errorf("another program has %d questions open, the same program of another user %d; want 1 each",
			other.open(), otherUser.open())
	}
	st := e.Stats()
	if c := st.QuestionCaps; c.App != 2 || c.User != 0 || c.Global != 0 || c.Evicted != 0 || c.PerApp != 3 ||
		c.PerUser != DefaultMaxPromptsPerUser || c.Max != DefaultMaxPrompts {
		t.Errorf("question cap stats %+v, want 2 refused by the program bound (3)", c)
	}
	if st.Decisions[ReasonQuestionCap] != 2 {
		t.Errorf("decisions %v, want 2 by question-cap", st.Decisions)
	}
}

// TestQuestionCapForgerDoesNotSpendTheProgramsBound: a forger running under the path
// of a real program is another program: its open questions do not count against the
// real program's bound, so the real program is still asked.
func TestQuestionCapForgerDoesNotSpendTheProgramsBound(t *testing.T) {
	e := newEngine(t, Config{Default: Deny, PromptTimeout: time.Hour})
	forger := &asker{t: t, e: e, exe: "/usr/bin/curl", uid: 1000, unverified: true}
	forger.ask(DefaultMaxPromptsPerApp + 1)
	if got := forger.open(); got != DefaultMaxPromptsPerApp {
		t.Errorf("forger has %d questions open, want its bound %d", got, DefaultMaxPromptsPerApp)
	}
	real := &asker{t: t, e: e, exe: "/usr/bin/curl", uid: 1000}
	real.ask(1)
	if got := real.capped(); got != 0 {
		t.Errorf("the verified program got the default by question-cap %d times, want 0", got)
	}
	if got := real.open(); got != 1 {
		t.Errorf("the verified program has %d questions open, want 1", got)
	}
	if c := e.Stats().QuestionCaps; c.App != 1 {
		t.Errorf("question cap stats %+v, want 1 refused by the program bound (the forger's)", c)
	}
}

func TestQuestionCapPerUserIsSharedByItsPrograms(t *testing.T) {
	e := newEngine(t, Config{Default: Deny, PromptTimeout: time.Hour, MaxPromptsPerUser: 4, MaxPromptsPerApp: 4})
	x := &asker{t: t, e: e, exe: "/usr/bin/x", uid: 1000}
	x.ask(4)
	y := &asker{t: t, e: e, exe: "/usr/bin/y", uid: 1000}
	// The user is at its bound; y holds nothing, so x's newest question makes room.
	y.ask(1)
	if x.open() != 3 || y.open() != 1 {
		t.Fatalf("x %d, y %d questions open; want 3 and 1", x.open(), y.open())
	}
	if got := x.vs[3].wait(); got != (Verdict{Action: Deny, Reason: ReasonQuestionCap}) {
		t.Errorf("x's newest question closed with %+v, want deny by question-cap", got)
	}
	x.vs[0].pending()
	y.ask(1) // 1+1 < 3: once more
	y.ask(1) // 2+1 < 2 is false: an equal share, refused
	if x.open() != 2 || y.open() != 2 {
		t.Errorf("x %d, y %d questions open; want an equal share, 2 and 2", x.open(), y.open())
	}
	if c := e.Stats().QuestionCaps; c.Evicted != 2 || c.User != 1 {
		t.Errorf("question cap stats %+v, want 2 evicted and 1 refused by the user bound", c)
	}
	// Another user is not touched by this user's bound.
	z := &asker{t: t, e: e, exe: "/usr/bin/x", uid: 1001}
	z.ask(1)
	if z.open() != 1 || x.open() != 2 {
		t.Errorf("another user: %d open (x %d); want 1 (x 2)", z.open(), x.open())
	}
}

func TestQuestionCapGlobalIsSharedFairly(t *testing.T) {
	e := newEngine(t, Config{Default: Deny, PromptTimeout: time.Hour, MaxPrompts: 8, MaxPromptsPerUser: 6, MaxPromptsPerApp: 6})
	a := &asker{t: t, e: e, exe: "/usr/bin/flood", uid: 1000}
	a.ask(6)
	b := &asker{t: t, e: e, exe: "/usr/bin/flood", uid: 1001}
	b.ask(2)
	if len(e.Prompts()) != 8 {
		t.Fatalf("%d questions open, want the global bound 8", len(e.Prompts()))
	}
	// A newcomer (a third user) takes the place of the heaviest user's newest question.
	c := &asker{t: t, e: e, exe: "/usr/bin/curl", uid: 1002}
	c.ask(1)
	if c.open() != 1 || a.open() != 5 || b.open() != 2 {
		t.Fatalf("open: newcomer %d, heaviest %d, other %d; want 1, 5, 2", c.open(), a.open(), b.open())
	}
	if got := a.vs[5].wait(); got.Reason != ReasonQuestionCap {
		t.Errorf("heaviest user's newest question closed with %+v, want question-cap", got)
	}
	// b (2) asks again: 3 < 5, so a gives up one more; then b at 3 vs a at 4 is refused.
	b.ask(1)
	b.ask(1)
	if a.open() != 4 || b.open() != 3 || c.open() != 1 || len(e.Prompts()) != 8 {
		t.Errorf("open: a %d, b %d, c %d, total %d; want 4, 3, 1, 8", a.open(), b.open(), c.open(), len(e.Prompts()))
	}
	if got := b.capped(); got != 1 {
		t.Errorf("b got the default at once %d times, want 1", got)
	}
	if cs := e.Stats().QuestionCaps; cs.Global != 1 || cs.Evicted != 2 {
		t.Errorf("question cap stats %+v, want 1 refused by the global bound and 2 evicted", cs)
	}
	// The heaviest user itself is refused, never evicts others.
	a.ask(1)
	if a.open() != 4 || len(e.Prompts()) != 8 {
		t.Errorf("heaviest user asking at the global bound: a %d open, total %d; want 4, 8", a.open(), len(e.Prompts()))
	}
	// Closing questions frees their places.
	for _, p := range e.Prompts() {
		if p.Request.UID == 1000 {
			if _, err := e.Answer(p.ID, Answer{Action: Deny}); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.ask(2)
	if b.open() != 5 {
		t.Errorf("after the heaviest user's questions closed, b has %d open, want 5", b.open())
	}
}

func TestQuestionCapBoundsNest(t *testing.T) {
	e := newEngine(t, Config{Default: Deny, MaxPrompts: 5})
	if c := e.Stats().QuestionCaps; c.Max != 5 || c.PerUser != 5 || c.PerApp != 5 {
		t.Errorf("bounds %+v: per user and per program above the global bound must be lowered to it", c)
	}
	if _, err := New(Config{Default: Deny, MaxPromptsPerApp: -1}, nil); err == nil {
		t.Error("negative MaxPromptsPerApp accepted")
	}
}
