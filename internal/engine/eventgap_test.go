package engine

import (
	"fmt"
	"testing"
	"time"
)

// TestSlowSubscriberGetsGap: a subscriber that fell behind and lost events gets one
// EventGap after what it had queued (it learns it missed some, without a new event
// having to come); after it caught up, events flow again, and a later loss gets a
// new gap.
func TestSlowSubscriberGetsGap(t *testing.T) {
	e := newEngine(t, Config{PromptTimeout: time.Hour, MaxPrompts: 4096, MaxPromptsPerUser: 4096, MaxPromptsPerApp: 4096})
	evs, cancel := e.Subscribe()
	defer cancel()
	n := 0
	ask := func(count int) {
		for range count {
			e.Decide(reqTo("/usr/bin/curl", fmt.Sprintf("198.18.%d.%d:443", n/250, n%250+1)), func(Verdict) {})
			n++
		}
	}
	drain := func() (prompts, gaps int, last EventKind) {
		for {
			select {
			case ev := <-evs:
				switch ev.Kind {
				case EventPrompt:
					prompts++
				case EventGap:
					gaps++
				}
				last = ev.Kind
			default:
				return
			}
		}
	}
	for round := range 2 {
		ask(2 * subscriberBuffer)
		prompts, gaps, last := drain()
		if prompts != subscriberBuffer-1 || gaps != 1 || last != EventGap {
			t.Errorf("round %d: %d prompt events and %d gaps (last %q) for %d questions; want %d prompts and then one gap",
				round, prompts, gaps, last, 2*subscriberBuffer, subscriberBuffer-1)
		}
		ask(1)
		if prompts, gaps, _ := drain(); prompts != 1 || gaps != 0 {
			t.Errorf("round %d, after catching up: %d prompt events, %d gaps; want the one prompt", round, prompts, gaps)
		}
	}
	if d := e.Stats().Dropped; d != 2*(subscriberBuffer+1) {
		t.Errorf("dropped %d, want %d", d, 2*(subscriberBuffer+1))
	}
}
