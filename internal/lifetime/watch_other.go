//go:build !linux

package lifetime

import "github.com/latchfw/latch/internal/engine"

// Watcher removes rules bound to a process when it exits. Outside Linux it cannot
// watch processes yet: such rules are removed at once (they never outlive their
// process).
type Watcher struct {
	eng  *engine.Engine
	logf func(string, ...any)
}

// NewWatcher returns a Watcher.
func NewWatcher(eng *engine.Engine, logf func(string, ...any)) (*Watcher, error) {
	return &Watcher{eng: eng, logf: logf}, nil
}

// Sync removes every rule bound to a process.
func (w *Watcher) Sync(rules []engine.Rule) {
	for _, r := range rules {
		if r.ExitPID > 0 {
			if _, err := w.eng.RemoveRule(r.ID); err == nil {
				w.logf("rule %d removed: until-exit rules are not supported on this system", r.ID)
			}
		}
	}
}

// Close does nothing.
func (w *Watcher) Close() {}
