//go:build linux

package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// TestKernelHitsInConns: a connection the Windows driver's cache decided (a HIT_BATCH
// record, as the backend hands it over) becomes a row of `latch conns` with its rule
// id, and counts as a hit of that rule, like a connection the engine decided.
func TestKernelHitsInConns(t *testing.T) {
	f := newFixture(t)
	rule, err := f.eng.AddRule(engine.Rule{App: `C:\Windows\System32\curl.exe`, Action: engine.Allow})
	if err != nil {
		t.Fatal(err)
	}
	id := rule.ID
	rec := kernelHitRecorder(f.eng, func(req *engine.Request, v engine.Verdict) {
		f.hist.Record(store.Conn{Time: req.Time, Request: *req, Verdict: v})
	})
	at := time.Now().UTC().Truncate(time.Millisecond)
	rec(&engine.Request{ID: 9, Time: at, Direction: engine.Outbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:50001"), Remote: netip.MustParseAddrPort("198.19.0.2:443"),
		PID: 4242, Exe: `C:\Windows\System32\curl.exe`, UID: -1},
		engine.Verdict{Action: engine.Allow, Reason: engine.ReasonFastPath, RuleID: id})
	f.hist.Flush()
	cs := jsonLines(t, f.must(t, "conns", "--json"))
	if len(cs) != 1 || cs[0]["rule_id"] != float64(id) || cs[0]["verdict"] != "allow" || cs[0]["reason"] != "fast-path" ||
		cs[0]["pid"] != float64(4242) || cs[0]["exe"] != `C:\Windows\System32\curl.exe` || cs[0]["remote_port"] != float64(443) {
		t.Fatalf("conns --json: %v", cs)
	}
	if table := f.must(t, "conns"); !strings.Contains(table, "198.19.0.2:443") {
		t.Errorf("conns table lacks the connection:\n%s", table)
	}
	var hits uint64
	for _, h := range f.eng.RuleHits() {
		if h.ID == id {
			hits = h.Hits
		}
	}
	if hits != 1 {
		t.Errorf("rule %d counted %d hits, want 1", id, hits)
	}
}
