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

// BenchmarkHistoryWriteBatchDaemon measures the writer's transaction alone (as
// BenchmarkHistoryWriteBatch) for the batches the daemon writes under test/bench:
// daemonBatch rows of clientConn (one process, one server) whose ends were merged
// before they were written, byte accounting on, into a history at its bound. It
// writes them as before this change ("before": the rowids of ended rows in the
// writer's map, the procs rows' last_conn set with UPDATE ... FROM VALUES) and as
// now, into two histories, in interleaved rounds, and prints each round's CPU
// time of the writing thread per row, their ratio (now/before), and the medians.
// b.N is ignored.
func BenchmarkHistoryWriteBatchDaemon(b *testing.B) {
	variants := []struct {
		name   string
		tuning historyTuning
	}{
		{"before", historyTuning{rowidsOfEnded: true, procsByValues: true}},
		{"now", historyTuning{}},
	}
	const rounds, batches, bound = 9, 100, 20_000
	hs := make([]*History, len(variants))
	next := make([]int, len(variants))
	batch := make([]historyItem, daemonBatch)
	t0 := time.Unix(1_900_000_000, 0)
	fill := func(v int) {
		for k := range batch {
			i := next[v]
			c := clientConn(i)
			c.Request.ID = engine.RequestID(1<<40 + i)
			c.Time = t0.Add(time.Duration(i) * time.Microsecond)
			// No bytes: test/bench's client connects and closes.
			batch[k] = historyItem{conn: c, ended: true}
			next[v]++
		}
	}
	for v := range variants {
		h, err := openHistory(filepath.Join(b.TempDir(), HistoryFileName), HistoryOptions{MaxRows: bound, tuning: variants[v].tuning}, historyQueueLen, historyHold)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		h.reports = true // byte accounting is on
		hs[v] = h
		// The bound is reached before the measure starts.
		for range bound/daemonBatch + 2 {
			fill(v)
			h.writeBatch(batch)
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cost := make([][]float64, len(variants))
	var ratios []float64
	for r := range rounds {
		got := make([]float64, len(variants))
		for k := range variants {
			v := (r + k) % len(variants)
			var cpu time.Duration
			for range batches {
				fill(v)
				c0 := threadCPU(b)
				hs[v].writeBatch(batch)
				cpu += threadCPU(b) - c0
			}
			got[v] = float64(cpu.Nanoseconds()) / float64(batches*daemonBatch)
			cost[v] = append(cost[v], got[v])
		}
		ratios = append(ratios, got[1]/got[0])
		b.Logf("round %d: before %.0f ns/row, now %.0f ns/row, now/before %.3f", r+1, got[0], got[1], got[1]/got[0])
	}
	for v, h := range hs {
		if st := h.Stats(); st.Failed != 0 {
			b.Fatalf("%s: %+v: %s", variants[v].name, st, h.LastError())
		}
	}
	b.Logf("median: before %.0f ns/row, now %.0f ns/row, now/before %.3f", median(cost[0]), median(cost[1]), median(ratios))
	b.ReportMetric(median(cost[0]), "before-cpu-ns/row")
	b.ReportMetric(median(cost[1]), "now-cpu-ns/row")
	b.ReportMetric(median(ratios), "now/before")
}

// daemonBatch is about how many rows a batch of the daemon's writer holds under
// test/bench (some 15,000 connections a second, a batch per historyFlushGap).
const daemonBatch = 750
