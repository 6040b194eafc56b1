package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestHistoryWALGivesRoomBack: while a read holds back the checkpoints, the
// write-ahead log grows past historyWALLimit; once the read ends, it is cut back
// to at most that (it keeps its size between checkpoints, below it).
func TestHistoryWALGivesRoomBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := openHistory(path, HistoryOptions{MaxRows: 1_000_000}, historyQueueLen, historyHold)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	batch := make([]historyItem, historyBatchMax)
	t0 := time.Unix(1_900_000_000, 0)
	next := 0
	write := func(n int) {
		for range n {
			for k := range batch {
				c := testConn(next)
				c.Request.ID = engine.RequestID(1<<40 + next)
				c.Time = t0.Add(time.Duration(next) * time.Microsecond)
				batch[k] = historyItem{conn: c}
				next++
			}
			h.writeBatch(batch)
		}
		if st := h.Stats(); st.Failed != 0 {
			t.Fatalf("%+v: %s", st, h.LastError())
		}
	}
	walSize := func() int64 {
		fi, err := os.Stat(path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	// A read transaction on another connection: checkpoints cannot go past
	// its snapshot, so the log grows.
	ctx := context.Background()
	rc, err := h.db.Load().Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := rc.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM conns`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	for walSize() <= 2*historyWALLimit {
		write(4)
	}
	grown := walSize()
	tx.Rollback()
	rc.Close()
	// The next checkpoint copies it all; the transaction after it starts the
	// log again and cuts it back.
	for range 40 {
		write(1)
		if walSize() <= historyWALLimit {
			break
		}
	}
	if got := walSize(); got > historyWALLimit {
		t.Errorf("write-ahead log %d bytes after the read ended (%d while it held back checkpoints), want at most %d", got, grown, historyWALLimit)
	}
}
