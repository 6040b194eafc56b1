package main

import (
	"sync"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestClockStepEndsTimedMode (review29, fixed, low): review28's item 4 left the
// timed mode's end on the same two clocks. 'latch pause 10m' (or 'latch mode
// X --for D') puts silent-allow (or X) in force until a wall-clock time and
// arms a Go timer, which runs on the monotonic clock, for Until-now. After a
// forward step of the wall clock (or a suspend: CLOCK_MONOTONIC stops, and
// TFD_TIMER_CANCEL_ON_SET fires at resume) the pause outlives its Until, which
// 'latch mode' shows as passed, for as long as the step: silent-allow, that
// is every connection no rule decides allowed, past the time the user set.
// clockStepped checks the rules' expiries again but not the mode's. (The
// daemon's Until, like an answered prompt's rule Expires (answer.go, now.Add),
// also carries time.Now's monotonic reading, with which Before and Sub compare
// monotonic time only: a fix checks the mode again at a step and strips it,
// Until.Round(0), or compares Unix times.) Fixed: clockStepped calls
// Engine.CheckModeEnd, which ends the mode whose end passed by the stepped
// clock (and arms its timer again otherwise), and SetMode, the API and an
// answer's rule drop the monotonic reading. Injected wall clock, as
// TestClockStepPrunesAndDropsDecisions.
func TestClockStepEndsTimedMode(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	eng, err := engine.New(engine.Config{Default: engine.Deny, Now: clock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	// latch pause 1h.
	if err := eng.SetMode(engine.ModeState{Mode: engine.ModeSilentAllow, Until: clock().Add(time.Hour), Then: engine.ModeAsk}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour) // the step
	mu.Unlock()
	clockStepped(eng, nil, t.Logf)
	if m := eng.Mode(); m != engine.ModeAsk {
		t.Errorf("after a step of the wall clock past the pause's end (%s): mode %s, want %s (the mode after the pause)", eng.ModeState().Until.Format(time.TimeOnly), m, engine.ModeAsk)
	}
}
