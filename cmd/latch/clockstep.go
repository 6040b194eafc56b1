package main

import "github.com/latchfw/latch/internal/engine"

// generationBumper is the fast path's (or any kernel cache's) way to make
// every decision it stored miss, keeping the rules in force
// (fastpath.FastPath.ModeChanged).
type generationBumper interface {
	ModeChanged() error
}

// clockStepped is what the daemon does when the wall clock was stepped
// (watchClockSteps): a rule's expiry is a wall-clock time, while the engine's
// expiry timer runs on the monotonic clock and the fast path's deadlines on the
// boot clock, which a step does not move (review28). So the engine prunes the
// rules that expired by the stepped clock and arms its timer again from it, and
// the fast path's stored decisions, whose deadlines were computed against the
// clock before the step, miss from now on (fp nil: no fast path). A timed mode
// ('latch pause', 'latch mode X --for D') ends at a wall-clock time on a
// monotonic timer too: it is checked again, and ends now if its end passed
// (review29).
func clockStepped(eng *engine.Engine, fp generationBumper, logf func(string, ...any)) {
	logf("the wall clock was stepped: rule expiries and the timed mode's end checked again, the fast path's decisions dropped")
	eng.PruneExpired()
	eng.CheckModeEnd()
	if fp != nil {
		if err := fp.ModeChanged(); err != nil {
			logf("after a clock step: %v", err)
		}
	}
}
