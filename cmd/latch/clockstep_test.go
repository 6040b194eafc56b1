package main

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

type countBumps struct{ n atomic.Int32 }

func (c *countBumps) ModeChanged() error { c.n.Add(1); return nil }

// TestClockStepPrunesAndDropsDecisions (review28): after a forward step of the
// wall clock (injected: the test never steps the machine's) a rule that expired
// by the stepped clock is pruned at once, with the hooks told, instead of when
// the engine's monotonic timer fires, and the fast path's stored decisions,
// whose deadlines were computed against the clock before the step, are dropped.
func TestClockStepPrunesAndDropsDecisions(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	eng, err := engine.New(engine.Config{Default: engine.Deny, Now: clock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	r, err := eng.AddRule(engine.Rule{App: "/usr/bin/curl", Action: engine.Allow, Expires: clock().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	pruned := make(chan []engine.Rule, 1)
	eng.OnRulesChanged(func(old, new []engine.Rule) {
		if len(old) == 1 && len(new) == 0 {
			pruned <- old
		}
	})
	mu.Lock()
	now = now.Add(2 * time.Hour) // the step
	mu.Unlock()
	var fp countBumps
	clockStepped(eng, &fp, t.Logf)
	eng.SettleHooks(context.Background())
	select {
	case old := <-pruned:
		if old[0].ID != r.ID {
			t.Errorf("pruned %v, want rule %d", old, r.ID)
		}
	default:
		t.Errorf("the rule that expired by the stepped clock is still in the set")
	}
	if n := fp.n.Load(); n != 1 {
		t.Errorf("the fast path's generation bumped %d times, want 1", n)
	}
	clockStepped(eng, nil, t.Logf) // no fast path: nothing to drop
}

// TestWatchClockStepsStops: the watcher arms its timerfd and returns nil once
// its context ends.
func TestWatchClockStepsStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- watchClockSteps(ctx, func() {}) }()
	time.Sleep(100 * time.Millisecond) // armed and reading by then (an arm that failed returns at once)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watchClockSteps: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watchClockSteps did not return after its context ended")
	}
}
