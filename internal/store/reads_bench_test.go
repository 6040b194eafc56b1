package store

import (
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkHistoryReads measures the readers on a history at the default bound
// (100,000 fast-path and queued rows over an hour), written as before procs and
// conns_batches ("before"; Recent100 and ProgramConns read it with the statements of
// versions before procs) and as now: what `latch conns`, the summary and the web
// UI wait for. Each reader runs in interleaved rounds on both; each round's times
// and ratio (now/before) are printed, and the medians. b.N is ignored.
func BenchmarkHistoryReads(b *testing.B) {
	t0 := time.Unix(1_900_000_000, 0)
	end := t0.Add(time.Hour)
	open := func(tuning historyTuning) *History {
		h, err := openHistory(filepath.Join(b.TempDir(), HistoryFileName), HistoryOptions{MaxRows: DefaultMaxRows, tuning: tuning}, historyQueueLen, historyHold)
		if err != nil {
			b.Fatal(err)
		}
		for i := range DefaultMaxRows {
			c := fastPathConn(i)
			if i%8 == 0 {
				c = testConn(i % 64)
			}
			c.Time = t0.Add(time.Duration(i) * 36 * time.Millisecond)
			for h.Record(c) != nil {
				h.Flush()
			}
		}
		h.Flush()
		return h
	}
	hs := []*History{open(legacyTuning), open(historyTuning{})}
	defer hs[0].Close()
	defer hs[1].Close()
	// mainRead reads the history written as before with the statement versions
	// before procs ran (on conns itself, prepared at each call).
	mainRead := func(q string, args ...any) func(h *History) error {
		return func(h *History) error {
			rows, err := h.db.Load().Query(q, args...)
			if err != nil {
				return err
			}
			_, err = scanConns(rows)
			return err
		}
	}
	reads := []struct {
		name string
		read func(h *History) error
		// before, if set, reads the history written as before the way versions
		// before procs did; otherwise read does.
		before func(h *History) error
	}{
		{"Recent100", func(h *History) error { _, err := h.Recent(100, 0); return err },
			mainRead(`SELECT * FROM (SELECT `+connCols+` FROM conns ORDER BY id DESC LIMIT ?) ORDER BY id`, 100)},
		{"Programs", func(h *History) error { _, err := h.Programs(); return err }, nil},
		{"ProgramConns", func(h *History) error { _, err := h.ProgramConns("/usr/bin/client1", 50); return err },
			mainRead(`SELECT * FROM (SELECT `+connCols+` FROM conns WHERE exe = ? ORDER BY id DESC LIMIT ?) ORDER BY id`, "/usr/bin/client1", 50)},
		{"TopExe/hour", func(h *History) error { _, err := h.Top("exe", t0, end, 10); return err }, nil},
		{"TopHost/5min", func(h *History) error { _, err := h.Top("host", end.Add(-5*time.Minute), end, 10); return err }, nil},
		{"Timeline/hour", func(h *History) error { _, err := h.Timeline(t0, end, time.Minute); return err }, nil},
		{"Timeline/5min", func(h *History) error { _, err := h.Timeline(end.Add(-5*time.Minute), end, 10*time.Second); return err }, nil},
	}
	for _, r := range reads {
		b.Run(r.name, func(b *testing.B) {
			const rounds, reps = 5, 5
			var olds, news, ratios []float64
			for round := range rounds {
				var took [2]float64
				for k := range 2 {
					v := (round + k) % 2 // alternate which goes first
					read := r.read
					if v == 0 && r.before != nil {
						read = r.before
					}
					start := time.Now()
					for range reps {
						if err := read(hs[v]); err != nil {
							b.Fatal(err)
						}
					}
					took[v] = float64(time.Since(start).Microseconds()) / reps
				}
				olds, news, ratios = append(olds, took[0]), append(news, took[1]), append(ratios, took[1]/took[0])
				b.Logf("round %d: before %.0f µs, now %.0f µs, now/before %.3f", round+1, took[0], took[1], took[1]/took[0])
			}
			b.Logf("median: before %.0f µs, now %.0f µs, now/before %.3f", median(olds), median(news), median(ratios))
			b.ReportMetric(median(ratios), "now/before")
		})
	}
}

// median is the median of xs.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
