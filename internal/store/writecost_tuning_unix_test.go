//go:build unix

package store

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkHistoryRowCostTuning measures, as BenchmarkHistoryRowCostDaemon
// does (clientConn rows at daemonRate into a history at its bound), the CPU
// per connection of the writer as before this change ("before": a new history
// pruning after inserting) and as now, in interleaved rounds, and prints each round's
// numbers, their ratio (now/before) and the medians. b.N is ignored.
// LATCH_BENCH_ROUNDS sets the rounds (default 5).
func BenchmarkHistoryRowCostTuning(b *testing.B) {
	variants := tuningVariants(b)
	rounds := benchRounds(5)
	const rows = 30_000
	full := true
	if os.Getenv("LATCH_BENCH_BELOW") != "" {
		// Below the bound, as test/bench's daemon writes (100,000 rows).
		full = false
		defer func(n int) { rowCostBound = n }(rowCostBound)
		rowCostBound = DefaultMaxRows
	}
	cost := make([][]float64, len(variants))
	for r := range rounds {
		var line strings.Builder
		for k := range variants {
			v := (r + k) % len(variants)
			path := filepath.Join(b.TempDir(), HistoryFileName)
			got, _ := rowCostPaced(b, path, "client", full, rows, variants[v].tuning, daemonRate, func() {})
			cost[v] = append(cost[v], got)
		}
		for v := range variants {
			fmt.Fprintf(&line, " %s %.2f µs/row (%.3f)", variants[v].name, cost[v][r], cost[v][r]/cost[0][r])
		}
		b.Logf("round %d:%s", r+1, line.String())
	}
	var line strings.Builder
	for v := range variants {
		fmt.Fprintf(&line, " %s %.2f µs/row", variants[v].name, median(cost[v]))
		b.ReportMetric(median(cost[v]), variants[v].name+"-cpu-µs/row")
	}
	b.Logf("median:%s", line.String())
}

// tuningVariant is a way of writing the history a benchmark compares.
type tuningVariant struct {
	name   string
	tuning historyTuning
}

// tuningVariants are the writers the tuning benchmarks compare: as before this
// change ("before": the bound deletes the oldest rows after a batch's are in,
// and the write-ahead log is cut back to 1 MiB after each checkpoint) and as
// now; LATCH_BENCH_NOW_ONLY: now alone; LATCH_BENCH_WAL=1M or 6M: now with that
// journal_size_limit alone (to compare under strace).
func tuningVariants(b *testing.B) []tuningVariant {
	switch os.Getenv("LATCH_BENCH_WAL") {
	case "1M":
		return []tuningVariant{{"limit1M", historyTuning{walLimit: 1 << 20}}}
	case "6M":
		return []tuningVariant{{"limit6M", historyTuning{walLimit: 6 << 20}}}
	}
	if nowOnly {
		return []tuningVariant{{"now", historyTuning{}}}
	}
	return []tuningVariant{{"before", historyTuning{pruneAfter: true, walLimit: 1 << 20}}, {"now", historyTuning{}}}
}

// benchRounds is LATCH_BENCH_ROUNDS, or def.
func benchRounds(def int) int {
	if n, err := strconv.Atoi(os.Getenv("LATCH_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return def
}

func init() {
	if os.Getenv("LATCH_BENCH_NOW_ONLY") != "" {
		nowOnly = true
	}
}

var nowOnly bool
