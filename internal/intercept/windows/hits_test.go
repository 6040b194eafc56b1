package windows

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/proto"
	"github.com/latchfw/latch/internal/store"
)

// TestCacheHitsBecomeHistoryRows: a HIT_BATCH from the driver (connections its
// verdict cache decided without asking) becomes one history row per connection, in
// the real SQLite history, with the pid, the program Windows names for it, the tuple,
// the action and the id of the rule whose verdict was cached. Before HIT_BATCH such
// connections were only counted (driver_cache_hits) and history had no row for them.
func TestCacheHitsBecomeHistoryRows(t *testing.T) {
	hist, err := store.OpenHistory(filepath.Join(t.TempDir(), "history.db"), 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	drv := newFakeDriver(t)
	procs := &fakeProcs{users: map[uint32]string{4242: `HOST\alice`},
		images: map[uint32]string{4242: `C:\Windows\System32\curl.exe`}}
	b, err := New(Config{Dial: drv.dial, Processes: procs, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	b.RecordHits(func(req *engine.Request, v engine.Verdict) {
		if err := hist.Record(store.Conn{Time: req.Time, Request: *req, Verdict: v}); err != nil {
			t.Errorf("Record: %v", err)
		}
	})
	startRun(t, b)
	drv.waitConnected(t)

	at := time.Date(2026, 12, 5, 3, 30, 0, 0, time.UTC)
	batch := &proto.HitBatch{Hits: []proto.Hit{{
		RuleTag: 17, ProcessID: 4242, Timestamp: proto.TimeToFileTime(at),
		Direction: proto.Outbound, IPVersion: 4, Protocol: 6, Action: proto.ActionPermit,
		Local: netip.MustParseAddrPort("198.18.0.1:50001"), Remote: netip.MustParseAddrPort("198.19.0.2:443"),
	}, {
		RuleTag: 23, ProcessID: 4242, Timestamp: proto.TimeToFileTime(at.Add(time.Millisecond)),
		Direction: proto.Outbound, IPVersion: 6, Protocol: 17, Action: proto.ActionBlock,
		Local: netip.MustParseAddrPort("[fd00::1]:50002"), Remote: netip.MustParseAddrPort("[fd00::2]:53"),
	}}}
	raw, err := proto.Encode(batch)
	if err != nil {
		t.Fatal(err)
	}
	drv.current().deliver(raw)
	var rows []store.Conn
	eventually(t, "two history rows", func() bool {
		hist.Flush()
		rows, err = hist.Recent(10, 0)
		return err == nil && len(rows) == 2
	})
	byRule := map[engine.RuleID]store.Conn{}
	for _, r := range rows {
		byRule[r.Verdict.RuleID] = r
	}
	a, ok := byRule[17]
	if !ok || a.Verdict.Action != engine.Allow || a.Verdict.Reason != engine.ReasonFastPath ||
		a.Request.PID != 4242 || a.Request.Exe != `C:\Windows\System32\curl.exe` || a.Request.User != `HOST\alice` ||
		a.Request.Direction != engine.Outbound || a.Request.Protocol != engine.TCP ||
		a.Request.Local != netip.MustParseAddrPort("198.18.0.1:50001") ||
		a.Request.Remote != netip.MustParseAddrPort("198.19.0.2:443") || !a.Time.Equal(at) {
		t.Errorf("rule 17's row: %+v", a)
	}
	d, ok := byRule[23]
	if !ok || d.Verdict.Action != engine.Deny || d.Request.Protocol != engine.UDP ||
		d.Request.Remote != netip.MustParseAddrPort("[fd00::2]:53") {
		t.Errorf("rule 23's row: %+v", d)
	}
	if got := b.Stats().Extra["cache_hits_recorded"]; got != 2 {
		t.Errorf("cache_hits_recorded = %d, want 2", got)
	}
	if got := b.Stats().Extra["malformed_messages"]; got != 0 {
		t.Errorf("malformed_messages = %d: the HIT_BATCH was refused", got)
	}
}

// TestMalformedHitBatchChangesNothing: a HIT_BATCH with a bad record is dropped whole
// and counted; no row is recorded from it.
func TestMalformedHitBatchChangesNothing(t *testing.T) {
	drv := newFakeDriver(t)
	b, err := New(Config{Dial: drv.dial, Processes: &fakeProcs{}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	recorded := make(chan engine.RuleID, 4)
	b.RecordHits(func(req *engine.Request, v engine.Verdict) { recorded <- v.RuleID })
	startRun(t, b)
	drv.waitConnected(t)
	raw, err := proto.Encode(&proto.HitBatch{Hits: []proto.Hit{{RuleTag: 1, ProcessID: 9, Direction: proto.Outbound,
		IPVersion: 4, Protocol: 6, Action: proto.ActionPermit,
		Local: netip.MustParseAddrPort("198.18.0.1:1"), Remote: netip.MustParseAddrPort("198.18.0.2:2")}}})
	if err != nil {
		t.Fatal(err)
	}
	raw[24+63] = 3 // action reject: never in the driver's cache
	drv.current().deliver(raw)
	eventually(t, "the bad batch counted", func() bool { return b.Stats().Extra["malformed_messages"] == 1 })
	select {
	case id := <-recorded:
		t.Fatalf("a malformed batch recorded a row (rule %d)", id)
	case <-time.After(100 * time.Millisecond):
	}
}

// startRun runs b (made by the caller, so that RecordHits comes before Run) until the
// test ends; nothing it holds is answered.
func startRun(t *testing.T, b *Backend) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- b.Run(ctx, intercept.DeciderFunc(func(*engine.Request, func(engine.Verdict)) {}))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// TestSimCacheHitsRecorded runs the real driver (latch-sim, the C sources under the
// kernel emulation) with the backend: repeats of a rule's connection are decided by
// the driver's cache without a question, and each still becomes a history row (real
// SQLite) with the rule that decided it, its pid, program and tuple.
func TestSimCacheHitsRecorded(t *testing.T) {
	s := startSim(t)
	hist, err := store.OpenHistory(filepath.Join(t.TempDir(), "history.db"), 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	procs := &fakeProcs{users: map[uint32]string{1234: `HOST\bob`},
		images: map[uint32]string{1234: `C:\Windows\System32\curl.exe`}}
	b, err := New(Config{Dial: EmulatedDialer(s.port), PromptTimeout: time.Second, Processes: procs, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	b.RecordHits(func(req *engine.Request, v engine.Verdict) {
		if err := hist.Record(store.Conn{Time: req.Time, Request: *req, Verdict: v}); err != nil {
			t.Errorf("Record: %v", err)
		}
	})
	d := &simDecider{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, d) }()
	defer func() {
		cancel()
		<-done
	}()
	eventually(t, "the backend connected to latch-sim", func() bool { return b.Stats().Extra["connected"] == 1 })
	if err := b.RulesChanged([]engine.Rule{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, conn, want string }{
		{"c1", "v4 out tcp 198.18.0.1 50001 198.19.0.2 443", "permit"}, // asked: rule 1, cached
		{"c2", "v4 out tcp 198.18.0.1 50002 198.19.0.2 443", "permit"}, // the cache
		{"c3", "v4 out tcp 198.18.0.1 50003 198.19.0.2 443", "permit"}, // the cache
		{"c4", "v4 out tcp 198.18.0.1 50004 198.19.0.2 25", "block"},   // asked: rule 2, cached
		{"c5", "v4 out tcp 198.18.0.1 50005 198.19.0.2 25", "block"},   // the cache
	} {
		s.connect(c.name, c.conn+" pid=1234 path="+curlPath)
		if got := s.wait(c.name, 5000); got != c.want {
			t.Fatalf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	if n := d.asked.Load(); n != 2 {
		t.Fatalf("asked %d times, want 2 (the rest from the driver's cache)", n)
	}
	var rows []store.Conn
	eventually(t, "three history rows from the driver's cache", func() bool {
		hist.Flush()
		rows, err = hist.Recent(10, 0)
		return err == nil && len(rows) >= 3
	})
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3: %+v", len(rows), rows)
	}
	want := map[uint16]struct {
		rule   engine.RuleID
		action engine.Action
	}{50002: {1, engine.Allow}, 50003: {1, engine.Allow}, 50005: {2, engine.Deny}}
	for _, r := range rows {
		w, ok := want[r.Request.Local.Port()]
		if !ok || r.Verdict.RuleID != w.rule || r.Verdict.Action != w.action || r.Verdict.Reason != engine.ReasonFastPath ||
			r.Request.PID != 1234 || r.Request.Exe != `C:\Windows\System32\curl.exe` || r.Request.User != `HOST\bob` ||
			r.Request.Remote.Addr() != netip.MustParseAddr("198.19.0.2") || r.Request.Protocol != engine.TCP {
			t.Errorf("row %+v", r)
		}
		delete(want, r.Request.Local.Port())
	}
	st := s.stats()
	if lost, ok := st["hits_lost"]; !ok || st["cache_hits"] != 3 || lost != 0 {
		t.Errorf("driver cache_hits %d hits_lost %d (reported: %v), want 3 and 0", st["cache_hits"], lost, ok)
	}
	if got := b.Stats().Extra["driver_hits_lost"]; got != 0 {
		t.Errorf("Stats().Extra[driver_hits_lost] = %d", got)
	}
	if _, ok := b.Stats().Extra["driver_hits_lost"]; !ok {
		t.Error("Stats().Extra has no driver_hits_lost: status cannot show the loss")
	}
	s.unload()
}
