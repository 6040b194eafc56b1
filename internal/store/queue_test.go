package store

import (
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFlushUnderConstantLoad: producers record faster than the writer writes
// (the queue is never empty, and drops are counted), and a Flush made meanwhile
// returns while the load goes on, with the connection recorded before it in the
// database: a query (the API flushes first) answers during a flood instead of
// waiting for its end. Then everything recorded is accounted for: written or
// counted as dropped, each connection once.
func TestFlushUnderConstantLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, 200_000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const producers = 4
	// The load is bounded in time and count; Flush must come back well before.
	const loadFor, perProducer = 10 * time.Second, 50_000_000
	conns := make([]Conn, 64)
	for i := range conns {
		conns[i] = fastPathConn(i)
	}
	var (
		stop     atomic.Bool
		loadOn   atomic.Bool
		ok, full atomic.Uint64
		wg       sync.WaitGroup
	)
	loadOn.Store(true)
	start := time.Now()
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perProducer && !stop.Load() && time.Since(start) < loadFor; i++ {
				c := &conns[(i+p)%len(conns)]
				switch err := h.RecordDecision(c.Time, &c.Request, c.Verdict); err {
				case nil:
					ok.Add(1)
				case ErrHistoryFull:
					full.Add(1)
				default:
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); loadOn.Store(false) }()
	defer func() { stop.Store(true); wg.Wait() }()

	// The load is on once the queue has overflowed (the writer is behind).
	for full.Load() == 0 && loadOn.Load() {
		time.Sleep(time.Millisecond)
	}
	marker := fastPathConn(1)
	marker.Request.Exe = "/usr/bin/marker"
	var err2 error
	for {
		if err2 = h.Record(marker); err2 != ErrHistoryFull || !loadOn.Load() {
			break
		}
		full.Add(1) // counted as dropped too
		time.Sleep(100 * time.Microsecond)
	}
	if err2 != nil {
		t.Fatalf("recording the marker: %v", err2)
	}
	t0, before := time.Now(), h.Stats().Recorded
	h.Flush()
	during, after := loadOn.Load(), h.Stats().Recorded
	t.Logf("Flush took %s, %d rows written meanwhile", time.Since(t0), after-before)
	// Straight from the database: Count and Recent do not flush.
	var n int
	if err := h.db.Load().QueryRow(`SELECT COUNT(*) FROM conns_view WHERE exe = '/usr/bin/marker'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if !during {
		t.Errorf("Flush returned only after the load ended (%s; %d recorded, %d dropped)",
			time.Since(start).Round(time.Millisecond), ok.Load(), full.Load())
	} else if n != 1 { // (after the load, the bound may have pruned it)
		t.Errorf("after Flush the marker recorded before it is in %d rows, want 1", n)
	}
	stop.Store(true)
	wg.Wait()
	h.Flush()
	st := h.Stats()
	if st.Dropped != full.Load() || st.Recorded+st.Failed != ok.Load()+1 || st.Failed != 0 {
		t.Errorf("stats %+v; producers had %d recorded (and the marker), %d dropped: %s", st, ok.Load(), full.Load(), h.LastError())
	}
}
