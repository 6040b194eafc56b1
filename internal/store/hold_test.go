package store

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// waitTaken waits until the writer has taken everything queued.
func waitTaken(t *testing.T, h *History) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.queue.len() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the writer did not take the queued items in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	// The writer takes the first item of a batch, then sleeps historyFlushGap
	// before it takes the rest and writes: wait past that too.
	time.Sleep(historyFlushGap + 20*time.Millisecond)
}

// TestEndReportLandsInTheRow: a short connection's end-of-flow report, recorded
// after the writer took the connection (the byte accountant reports tens of
// milliseconds after the connection), lands in the row's INSERT: one row with the
// bytes and no UPDATE; the bytes count for the program; and a Flush right after the
// report makes both readable at once, though the row is still held.
func TestEndReportLandsInTheRow(t *testing.T) {
	for _, kind := range []string{"fastpath", "queued"} {
		t.Run(kind, func(t *testing.T) {
			// A long hold: the report cannot come too late on a slow machine.
			h, err := openHistory(filepath.Join(t.TempDir(), HistoryFileName), HistoryOptions{MaxRows: 1000}, historyQueueLen, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			c := fastPathConn(1)
			if kind == "queued" {
				c = testConn(1)
				c.Request.ID = 77
			}
			if err := h.Record(c); err != nil {
				t.Fatal(err)
			}
			waitTaken(t, h)
			now := time.Now()
			if err := h.RecordTraffic(Traffic{Time: now, Request: c.Request, BytesIn: 4321, BytesOut: 987,
				DeltaIn: 4321, DeltaOut: 987, Ended: true}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			h.Flush()
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Flush took %v", d)
			}
			got, err := h.Recent(10, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].BytesIn != 4321 || got[0].BytesOut != 987 || got[0].Request.Exe != c.Request.Exe {
				t.Fatalf("after Flush: %+v; want one row of %s with 4321 bytes in, 987 out", got, c.Request.Exe)
			}
			if u := h.updates.Load(); u != 0 {
				t.Errorf("%d UPDATEs ran; want the report in the row's INSERT", u)
			}
			top, err := h.TopTraffic(now.Add(-time.Minute), now.Add(time.Second), 10*time.Second, false)
			if err != nil || len(top) != 1 || top[0].Exe != c.Request.Exe || top[0].BytesIn != 4321 || top[0].BytesOut != 987 {
				t.Errorf("top: %+v, %v; want %s with 4321 in, 987 out", top, err, c.Request.Exe)
			}
			// A report about the row now written still sets its totals (an UPDATE).
			if err := h.RecordTraffic(Traffic{Time: now, Request: c.Request, BytesIn: 5000, BytesOut: 1000,
				DeltaIn: 679, DeltaOut: 13}); err != nil {
				t.Fatal(err)
			}
			h.Flush()
			got, _ = h.Recent(10, 0)
			if len(got) != 1 || got[0].BytesIn != 5000 || got[0].BytesOut != 1000 || h.updates.Load() != 1 {
				t.Errorf("after a report about the written row: %+v, %d UPDATEs; want 5000 in, 1000 out, 1 UPDATE", got, h.updates.Load())
			}
		})
	}
}

// TestHeldRowsAreBounded: while rows are held (here for an hour), a flood of
// connections is written once more than historyHoldMax rows, or historyHoldBytes of
// them, are held, without a Flush; Close writes the rest.
func TestHeldRowsAreBounded(t *testing.T) {
	for _, kind := range []string{"rows", "bytes"} {
		t.Run(kind, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), HistoryFileName)
			h, err := openHistory(path, HistoryOptions{MaxRows: 100_000}, historyQueueLen, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			n, bound := historyHoldMax+1000, historyHoldMax
			cmdline := ""
			if kind == "bytes" {
				cmdline = strings.Repeat("x", 64<<10)
				n, bound = 300, historyHoldBytes/len(cmdline)
			}
			for i := range n {
				c := fastPathConn(i)
				c.Request.Cmdline = cmdline
				for h.Record(c) != nil {
					time.Sleep(time.Millisecond) // the writer is behind: let it take
				}
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				got, err := h.Count()
				if err != nil {
					t.Fatal(err)
				}
				if got >= n-bound {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d rows written without a Flush; want at least %d (at most %d held)", got, n, n-bound, bound)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			h, err = OpenHistory(path, 100_000)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if got, err := h.Count(); err != nil || got != n {
				t.Fatalf("after Close: %d rows (%v), want %d", got, err, n)
			}
			rows, _ := h.Recent(1, 0)
			if want := fmt.Sprintf("/usr/bin/client%d", (n-1)%4); len(rows) != 1 || rows[0].Request.Exe != want || rows[0].Request.Cmdline != cmdline {
				t.Errorf("newest row: %+v; want %s", rows, want)
			}
		})
	}
}

// TestReportsOfHeldRowsInOrder: reports for held rows, for rows the bound made the
// writer write, and for requests never recorded, mixed, leave every row with its
// last report's totals and every program with all its bytes.
func TestReportsOfHeldRowsInOrder(t *testing.T) {
	h, err := openHistory(filepath.Join(t.TempDir(), HistoryFileName), HistoryOptions{MaxRows: 100_000}, historyQueueLen, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const n, late = historyHoldMax + 500, historyHoldMax + 100
	now := time.Now()
	var sumIn uint64
	report := func(req engine.Request, total, delta uint64) {
		for h.RecordTraffic(Traffic{Time: now, Request: req, BytesIn: total, DeltaIn: delta}) != nil {
			time.Sleep(time.Millisecond) // the writer is behind: let it take
		}
		sumIn += delta
	}
	for i := range n {
		for h.Record(fastPathConn(i)) != nil {
			time.Sleep(time.Millisecond)
		}
		// Each flow is reported at once, 300 connections later (its row held), and
		// for the first ones, late connections later (its row written).
		report(fastPathConn(i).Request, 10, 10)
		if i >= 300 {
			report(fastPathConn(i-300).Request, 25, 15)
		}
		if i >= late {
			report(fastPathConn(i-late).Request, 40, 15)
		}
		if i%10 == 0 {
			report(engine.Request{ID: engine.RequestID(1<<50 + i), Exe: "/usr/bin/gone", UID: 1000, User: "alice"}, 7, 7)
		}
	}
	h.Flush()
	got, err := h.Recent(n, 0)
	if err != nil || len(got) != n {
		t.Fatalf("%d rows (%v), want %d", len(got), err, n)
	}
	for i, c := range got {
		want := uint64(10)
		switch {
		case i < n-late:
			want = 40
		case i < n-300:
			want = 25
		}
		if c.BytesIn != want || c.Request.PID != fastPathConn(i).Request.PID {
			t.Fatalf("row %d: %d bytes in, pid %d; want %d, pid %d", i, c.BytesIn, c.Request.PID, want, fastPathConn(i).Request.PID)
		}
	}
	top, err := h.TopTraffic(now.Add(-time.Minute), now.Add(time.Second), 10*time.Second, false)
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, p := range top {
		total += p.BytesIn
	}
	if total != sumIn || len(top) != 5 {
		t.Errorf("top counts %d bytes in over %d programs, want %d over 5: %+v", total, len(top), sumIn, top)
	}
	t.Logf("%d UPDATEs for %d reports", h.updates.Load(), 2*n-300-500+n/10)
}

// TestReportAfterAFailedBatch: a report about a connection whose batch the database
// refused (rolled back: its rowids are given to the next rows) sets no other row's
// bytes, and reports about written rows still find them.
func TestReportAfterAFailedBatch(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	a := fastPathConn(1)
	h.Record(a)
	h.Flush()
	db := h.db.Load()
	if _, err := db.Exec(`CREATE TRIGGER refuse BEFORE INSERT ON procs WHEN NEW.exe = '/usr/bin/refused'
		BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`); err != nil {
		t.Fatal(err)
	}
	lost, bad := fastPathConn(2), fastPathConn(3)
	bad.Request.Exe = "/usr/bin/refused"
	h.Record(lost)
	h.Record(bad)
	h.Flush()
	if st := h.Stats(); st.Failed != 2 {
		t.Fatalf("the refused batch: %+v, want 2 failed", st)
	}
	if _, err := db.Exec(`DROP TRIGGER refuse`); err != nil {
		t.Fatal(err)
	}
	c := fastPathConn(4)
	h.Record(c)
	h.Flush()
	for _, r := range []Conn{lost, a} {
		if err := h.RecordTraffic(Traffic{Request: r.Request, BytesIn: 100 + uint64(r.Request.PID), BytesOut: 1, Ended: true}); err != nil {
			t.Fatal(err)
		}
	}
	h.Flush()
	got, err := h.Recent(10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Request.PID != a.Request.PID || got[1].Request.PID != c.Request.PID {
		t.Fatalf("rows: %+v; want the first and the last connection", got)
	}
	if got[0].BytesIn != 100+uint64(a.Request.PID) || got[1].BytesIn != 0 {
		t.Errorf("bytes in: %d and %d; want %d and 0 (the lost connection's report changes no row)",
			got[0].BytesIn, got[1].BytesIn, 100+a.Request.PID)
	}
}

// TestReportsAfterTheEnd: reports about a row whose flow's end was in its INSERT
// (the writer keeps its rowid in its ring, not its map) set its totals as
// reports about other written rows do, until one ends the flow again: a report
// after that changes nothing, as for a row found in the map.
func TestReportsAfterTheEnd(t *testing.T) {
	h, err := openHistory(filepath.Join(t.TempDir(), HistoryFileName), HistoryOptions{MaxRows: 1000}, historyQueueLen, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, other := fastPathConn(1), fastPathConn(2)
	for _, c := range []Conn{c, other} {
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
	}
	waitTaken(t, h)
	report := func(r engine.Request, in uint64, ended bool) {
		t.Helper()
		if err := h.RecordTraffic(Traffic{Request: r, BytesIn: in, BytesOut: 1, DeltaIn: 1, Ended: ended}); err != nil {
			t.Fatal(err)
		}
		h.Flush()
	}
	report(c.Request, 100, true) // merged into the held row
	if h.w.endedN != 1 {
		t.Fatalf("%d rows of ended flows in the writer's ring; want 1", h.w.endedN)
	}
	check := func(want uint64) {
		t.Helper()
		got, err := h.Get(1)
		if err != nil {
			t.Fatal(err)
		}
		if got.BytesIn != want {
			t.Fatalf("row 1: %d bytes in; want %d", got.BytesIn, want)
		}
		if o, _ := h.Get(2); o.BytesIn != 0 {
			t.Fatalf("row 2 (another flow): %d bytes in; want 0", o.BytesIn)
		}
	}
	check(100)
	report(c.Request, 200, false)
	check(200)
	report(c.Request, 300, true)
	check(300)
	report(c.Request, 400, false) // after the flow ended again: forgotten
	check(300)
}
