package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/fastpath"
)

var sinkReq *engine.Request

// BenchmarkFastRequest measures making a fast-path decision's request on the
// heap, as the daemon does for every connect the fast path allows (its flow is
// registered too).
func BenchmarkFastRequest(b *testing.B) {
	d := fastpath.Decision{
		Time: time.Now(), PID: 1234, UID: 1000, Exe: "/usr/bin/curl", Protocol: engine.TCP,
		Remote: netip.MustParseAddrPort("198.18.0.2:443"), Local: netip.MustParseAddrPort("198.18.0.1:40000"),
		Action: engine.Allow, RuleID: 7,
	}
	b.ReportAllocs()
	for i := range b.N {
		req := new(engine.Request)
		fastRequest(req, engine.RequestID(i), &d, "user")
		sinkReq = req
	}
}
