package store

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// BenchmarkHistoryWriteBatchTuning is BenchmarkHistoryWriteBatchDaemon (the
// writer's transaction alone, CPU of the writing thread, for the batches the
// daemon writes under test/bench) for the writer as before this change and as
// now (see tuningVariants), in interleaved rounds. b.N is ignored.
func BenchmarkHistoryWriteBatchTuning(b *testing.B) {
	variants := tuningVariants(b)
	rounds, batches, bound := benchRounds(9), 100, 20_000
	size := daemonBatch
	if n, err := strconv.Atoi(os.Getenv("LATCH_BENCH_BATCH")); err == nil && n > 0 {
		// test/bench's paired bursts: 200 connects, a transaction each, into
		// a history below its bound.
		size, bound = n, 1_000_000
	}
	hs := make([]*History, len(variants))
	next := make([]int, len(variants))
	batch := make([]historyItem, size)
	t0 := time.Unix(1_900_000_000, 0)
	fill := func(v int) {
		for k := range batch {
			i := next[v]
			c := clientConn(i)
			c.Request.ID = engine.RequestID(1<<40 + i)
			c.Time = t0.Add(time.Duration(i) * time.Microsecond)
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
		for range min(bound/size+2, 20_000/size) {
			fill(v)
			h.writeBatch(batch)
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cost := make([][]float64, len(variants))
	for r := range rounds {
		for k := range variants {
			v := (r + k) % len(variants)
			var cpu time.Duration
			for range batches {
				fill(v)
				c0 := threadCPU(b)
				hs[v].writeBatch(batch)
				cpu += threadCPU(b) - c0
			}
			cost[v] = append(cost[v], float64(cpu.Nanoseconds())/float64(batches*size))
		}
		var line strings.Builder
		for v := range variants {
			fmt.Fprintf(&line, " %s %.0f ns/row (%.3f)", variants[v].name, cost[v][r], cost[v][r]/cost[0][r])
		}
		b.Logf("round %d:%s", r+1, line.String())
	}
	for v, h := range hs {
		if st := h.Stats(); st.Failed != 0 {
			b.Fatalf("%s: %+v: %s", variants[v].name, st, h.LastError())
		}
	}
	var line strings.Builder
	for v := range variants {
		fmt.Fprintf(&line, " %s %.0f ns/row", variants[v].name, median(cost[v]))
		b.ReportMetric(median(cost[v]), variants[v].name+"-cpu-ns/row")
	}
	b.Logf("median:%s", line.String())
}
