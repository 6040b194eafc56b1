package events

import (
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// discard is a sink that counts and drops.
type discard struct{}

func (discard) Name() string { return "discard" }
func (discard) Run(lines <-chan []byte, c *Counters) {
	for range lines {
		c.Sent.Add(1)
	}
}

// BenchmarkHubDecided is the cost a verdict pays for the event stream: with no sink
// (nothing is queued) and with one (a non-blocking send of a copy of the request).
func BenchmarkHubDecided(b *testing.B) {
	for _, sinks := range [][]Sink{nil, {discard{}}} {
		name := "no-sinks"
		if len(sinks) > 0 {
			name = "one-sink"
		}
		b.Run(name, func(b *testing.B) {
			h := NewHub(Config{HostID: "h"}, sinks...)
			defer h.Close(time.Second)
			req := testRequest(1)
			v := engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}
			b.ReportAllocs()
			for b.Loop() {
				h.Decided(&req, v, time.Microsecond)
			}
		})
	}
}
