package store

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestHistoryBatchAtBoundReusesFreedPages: a batch written into a history at
// its bound (which deletes as many old rows as it inserts) puts its rows into
// the pages the deleted rows left, so its transaction writes about the pages
// of its rows, not those and the freed ones too (33 pages of the write-ahead
// log for test/bench's batch of 750 rows, where it now writes 21). The bound
// still holds exactly, and the newest rows are all there.
func TestHistoryBatchAtBoundReusesFreedPages(t *testing.T) {
	const bound = 20_000
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := openHistory(path, HistoryOptions{MaxRows: bound}, historyQueueLen, historyHold)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.reports = true
	batch := make([]historyItem, daemonBatch)
	t0 := time.Unix(1_900_000_000, 0)
	next := 0
	fill := func() {
		for k := range batch {
			c := clientConn(next)
			c.Request.ID = engine.RequestID(1<<40 + next)
			c.Time = t0.Add(time.Duration(next) * time.Microsecond)
			batch[k] = historyItem{conn: c, ended: true}
			next++
		}
	}
	for range bound/daemonBatch + 3 {
		fill()
		h.writeBatch(batch)
	}
	db := h.db.Load()
	var pageSize int
	if err := db.QueryRow(`PRAGMA page_size`).Scan(&pageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	fill()
	h.writeBatch(batch)
	if st := h.Stats(); st.Failed != 0 {
		t.Fatalf("%+v: %s", st, h.LastError())
	}
	wal, err := os.ReadFile(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	frames := (len(wal) - 32) / (24 + pageSize)
	pages := map[uint32]bool{}
	for off := 32; off+24+pageSize <= len(wal); off += 24 + pageSize {
		pages[binary.BigEndian.Uint32(wal[off:])] = true
	}
	// The rows take 10-11 pages; the tables' other pages (the schema's, the
	// sequence's, procs', conns_batches', the B-tree's inner page, the first
	// leaf the deletion left part of) some 10 more.
	if frames > 24 {
		t.Errorf("the batch of %d rows wrote %d pages (%d distinct) into the write-ahead log, want at most 24", daemonBatch, frames, len(pages))
	}
	var n, minID, maxID int64
	if err := db.QueryRow(`SELECT COUNT(*), MIN(id), MAX(id) FROM conns`).Scan(&n, &minID, &maxID); err != nil {
		t.Fatal(err)
	}
	if n != bound || maxID-minID+1 != bound || maxID != int64(next) {
		t.Errorf("after %d rows: %d rows, ids %d-%d; want the newest %d", next, n, minID, maxID, bound)
	}
	got, err := h.Recent(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].ID != int64(next) || got[2].Request.Local != clientConn(next-1).Request.Local {
		t.Errorf("newest rows %+v, want the last recorded (id %d)", got, next)
	}
}
