//go:build linux

package store

import (
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// BenchmarkHistoryWriteBatch measures the writer's transaction alone (writeBatch:
// the INSERTs, procs, conns_batches, the bound's DELETEs and the commit), called
// directly with batches of historyBatchMax fast-path rows whose ends were merged
// before they were written ("ended", as the daemon's short connections are):
// the part of a row's cost that is the database's, without the queue, the hold
// and the goroutines that make BenchmarkHistoryRowCost's process CPU noisy on a
// loaded machine. The history is at its bound (20,000 rows) after the first ten
// batches. It reports the CPU time of the thread that writes (user and system,
// locked to the benchmark's goroutine) per row, not the time waited for the
// disk (the checkpoints' fsyncs).
func BenchmarkHistoryWriteBatch(b *testing.B) {
	for _, kind := range []string{"ended", "attrs"} {
		b.Run(kind, func(b *testing.B) {
			h, err := openHistory(filepath.Join(b.TempDir(), HistoryFileName), HistoryOptions{MaxRows: 20_000}, historyQueueLen, historyHold)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			conn := fastPathConn
			if kind == "attrs" {
				conn = attrsConn
			}
			batch := make([]historyItem, historyBatchMax)
			t0 := time.Unix(1_900_000_000, 0)
			next := 0
			fill := func() {
				for k := range batch {
					c := conn(next)
					c.Request.ID = engine.RequestID(1<<40 + next)
					c.Time = t0.Add(time.Duration(next) * time.Microsecond)
					c.BytesIn, c.BytesOut = 900, 120
					batch[k] = historyItem{conn: c, ended: true}
					next++
				}
			}
			// The bound is reached before the measure starts.
			for range 12 {
				fill()
				h.writeBatch(batch)
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var cpu time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				fill()
				b.StartTimer()
				c0 := threadCPU(b)
				h.writeBatch(batch)
				cpu += threadCPU(b) - c0
			}
			b.StopTimer()
			if st := h.Stats(); st.Failed != 0 {
				b.Fatalf("%+v: %s", st, h.LastError())
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*len(batch)), "cpu-ns/row")
		})
	}
}

// threadCPU is the CPU time (user and system) the calling thread has used.
func threadCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
