package store

import (
	"path/filepath"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// legacyTuning is the writer as it was before its cost savings (historyTuning).
var legacyTuning = historyTuning{fullReqIndex: true, inlineProcs: true, timeIndex: true}

// indexes returns the names of the conns table's indexes.
func indexes(t *testing.T, h *History) map[string]bool {
	t.Helper()
	rows, err := h.db.Load().Query(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'conns'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		out[name] = true
	}
	return out
}

// recordLongFlows records n allowed connections whose flows are still open (no
// end report), from request ID first on, and writes them.
func recordLongFlows(t *testing.T, h *History, first, n int) {
	t.Helper()
	for i := range n {
		c := fastPathConn(i)
		c.Request.ID = engine.RequestID(first + i)
		for h.Record(c) != nil {
			h.Flush()
		}
	}
	h.Flush()
}

// TestLateReportFindsAnOldRow: a long flow's report that comes after its row was
// written, and after the writer stopped remembering where the row is (more than
// rowidsMax flows later), still sets the row's totals (found by its request ID);
// a report about a connection that was denied, or whose end was already in its
// row, changes no row.
func TestLateReportFindsAnOldRow(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), rowidsMax+1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// A first report turns remembering rowids on (byte accounting is on).
	if err := h.RecordTraffic(Traffic{Request: engine.Request{ID: 1, Exe: "/usr/bin/x"}, DeltaIn: 1}); err != nil {
		t.Fatal(err)
	}
	long, denied, ended := fastPathConn(1), fastPathConn(2), fastPathConn(3)
	long.Request.ID, denied.Request.ID, ended.Request.ID = 10, 11, 12
	denied.Verdict.Action = engine.Deny
	for _, c := range []Conn{long, denied, ended} {
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.RecordTraffic(Traffic{Request: ended.Request, BytesIn: 5, BytesOut: 6, Ended: true}); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	recordLongFlows(t, h, 1000, rowidsMax+10)
	if _, ok := h.w.rowids[long.Request.ID]; ok {
		t.Fatalf("the writer still remembers the first row's rowid: the test does not reach the request ID lookup")
	}
	for _, r := range []Traffic{
		{Request: long.Request, BytesIn: 700, BytesOut: 800, Ended: true},
		{Request: denied.Request, BytesIn: 1, BytesOut: 1},
		{Request: ended.Request, BytesIn: 9, BytesOut: 9},
	} {
		if err := h.RecordTraffic(r); err != nil {
			t.Fatal(err)
		}
	}
	h.Flush()
	for _, w := range []struct {
		id      int64
		in, out uint64
	}{{1, 700, 800}, {2, 0, 0}, {3, 5, 6}} {
		c, err := h.Get(w.id)
		if err != nil {
			t.Fatal(err)
		}
		if c.BytesIn != w.in || c.BytesOut != w.out {
			t.Errorf("row %d (%s, request %d): bytes %d in, %d out; want %d, %d", w.id, c.Verdict.Action, c.Request.ID, c.BytesIn, c.BytesOut, w.in, w.out)
		}
	}
}

// TestReqIndexMigrates: a history written the way versions before conns_open did
// (every row's request ID in the index conns_req) is opened: the old index is
// replaced by conns_open, the old rows read as before, and a late report about a
// connection written since sets its row's totals.
func TestReqIndexMigrates(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	old, err := openHistory(path, HistoryOptions{MaxRows: 1000, tuning: legacyTuning}, historyQueueLen, historyHold)
	if err != nil {
		t.Fatal(err)
	}
	var want []Conn
	for i := range 20 {
		c := fastPathConn(i)
		c.Request.ID = engine.RequestID(100 + i)
		if err := old.Record(c); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := old.RecordTraffic(Traffic{Request: c.Request, BytesIn: uint64(i), BytesOut: 3, DeltaIn: uint64(i), DeltaOut: 3, Ended: true}); err != nil {
				t.Fatal(err)
			}
			c.BytesIn, c.BytesOut = uint64(i), 3
		}
		want = append(want, c)
	}
	old.Flush()
	if ix := indexes(t, old); !ix["conns_req"] || ix["conns_open"] || !ix["conns_time"] {
		t.Fatalf("the old writer's indexes: %v; want conns_req and conns_time", ix)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	h, err := OpenHistory(path, 1000)
	if err != nil {
		t.Fatalf("opening a history with conns_req: %v", err)
	}
	defer h.Close()
	if ix := indexes(t, h); ix["conns_req"] || !ix["conns_open"] || ix["conns_time"] {
		t.Fatalf("indexes after opening: %v; want conns_open, not conns_req nor conns_time (conns_batches)", ix)
	}
	got, err := h.Recent(100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows after opening; want %d", len(got), len(want))
	}
	for i, c := range got {
		w := want[i]
		if c.Request.Exe != w.Request.Exe || c.Request.Local != w.Request.Local || c.BytesIn != w.BytesIn || c.BytesOut != w.BytesOut || c.Verdict.RuleID != w.Verdict.RuleID {
			t.Errorf("row %d: %+v; want %+v", i, c, w)
		}
	}
	// A new long flow, reported on after its row was written and forgotten.
	c := fastPathConn(1)
	c.Request.ID = 5000
	if err := h.Record(c); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	h.w.rowids = map[engine.RequestID]int64{} // forget where it went (the writer is idle)
	if err := h.RecordTraffic(Traffic{Request: c.Request, BytesIn: 42, BytesOut: 43, DeltaIn: 42, DeltaOut: 43, Ended: true}); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	got, err = h.Recent(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].BytesIn != 42 || got[0].BytesOut != 43 {
		t.Errorf("the late report's row: %+v; want 42 bytes in, 43 out", got)
	}
}
