//go:build unix

package store

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// processCPU is the CPU time (user and system) the test process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHistoryRowCost measures what one connection costs the process in CPU
// (the writer's batches, the Record calls, the garbage collector) — the number a
// loaded machine does not blur, unlike wall time — for rows as the fast path records
// them and for queued rows (testConn: host, container, parents...), and for "attrs":
// fast-path rows with what the daemon's process cache gives (command line, unit,
// ancestors), in runs of 8 connections per process. "full": the history is at its
// bound, so each batch also deletes as many old rows.
func BenchmarkHistoryRowCost(b *testing.B) {
	for _, full := range []bool{false, true} {
		for _, kind := range []string{"fastpath", "queued", "ended", "ended-late", "attrs"} {
			name := kind
			if full {
				name += "/full"
			}
			b.Run(name, func(b *testing.B) {
				benchmarkRowCost(b, kind, full)
			})
		}
	}
}

// reportLag is how many connections later the "ended" benchmark reports a flow's end:
// about what the fast path records in the 20-30 ms an end report takes to come.
// "ended-late" reports lateLag connections later, when the row is written: the
// byte accountant, behind under a flood of connections, reported 0.4-1.8 s late.
const (
	reportLag = 400
	lateLag   = 10_000
)

// benchmarkRowCost records b.N connections of a kind: "fastpath" or "queued" rows
// (see BenchmarkHistoryRowCost), or "ended": fast-path rows each followed, reportLag
// connections later, by its flow's end-of-flow traffic report, as the daemon's byte
// accountant sends it; "ended-late": the same, lateLag connections later.
func benchmarkRowCost(b *testing.B, kind string, full bool) {
	cpu, updates := rowCost(b, kind, full, b.N, historyTuning{}, b.ResetTimer)
	b.StopTimer()
	b.ReportMetric(cpu, "cpu-µs/row")
	if strings.HasPrefix(kind, "ended") {
		b.ReportMetric(updates, "updates/row")
	}
}

// rowCost records n connections of a kind (see benchmarkRowCost) into a new
// history written with tuning, and returns the process's CPU time per connection
// in µs and the UPDATEs per connection. start is called when the measure starts.
func rowCost(b *testing.B, kind string, full bool, n int, tuning historyTuning, start func()) (cpuPerRow, updatesPerRow float64) {
	return rowCostIn(b, filepath.Join(b.TempDir(), HistoryFileName), kind, full, n, tuning, start)
}

// rowCostIn is rowCost with the history at path (which may exist).
func rowCostIn(b *testing.B, path, kind string, full bool, n int, tuning historyTuning, start func()) (cpuPerRow, updatesPerRow float64) {
	return rowCostPaced(b, path, kind, full, n, tuning, 0, start)
}

// rowCostPaced is rowCostIn recording rate connections per second (0: as fast
// as it can), in bursts of a millisecond's.
func rowCostPaced(b *testing.B, path, kind string, full bool, n int, tuning historyTuning, rate int, start func()) (cpuPerRow, updatesPerRow float64) {
	bound := rowCostBound
	h, err := openHistory(path, HistoryOptions{MaxRows: bound, tuning: tuning}, historyQueueLen, historyHold)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	conn := fastPathConn
	switch kind {
	case "queued":
		conn = testConn
	case "attrs":
		conn = attrsConn
	case "client":
		conn = clientConn
	}
	if full {
		for i := range bound {
			for h.Record(conn(i)) != nil {
				h.Flush()
			}
		}
		h.Flush()
	}
	rows := make([]Conn, 1024)
	for i := range rows {
		rows[i] = conn(i)
	}
	t0 := time.Unix(1_900_000_000, 0)
	before, updates := h.Stats().Recorded, h.updates.Load()
	runtime.GC()
	cpu0 := processCPU(b)
	start()
	began := time.Now()
	for i := 0; i < n; i++ {
		if rate > 0 && i%max(rate/1000, 1) == 0 {
			time.Sleep(time.Until(began.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		}
		// Request IDs and times grow, as the daemon's do.
		c := &rows[i%len(rows)]
		c.Request.ID = engine.RequestID(1<<40 + i)
		c.Time = t0.Add(time.Duration(i) * time.Microsecond)
		for h.Record(*c) != nil {
			h.Flush()
		}
		lag := reportLag
		if kind == "ended-late" {
			lag = lateLag
		}
		if (strings.HasPrefix(kind, "ended") || kind == "client") && i >= lag {
			r := rows[(i-lag)%len(rows)].Request
			r.ID = engine.RequestID(1<<40 + i - lag)
			t := Traffic{Request: r, BytesIn: 900, BytesOut: 120, DeltaIn: 900, DeltaOut: 120, Ended: true}
			for h.RecordTraffic(t) != nil {
				h.Flush()
			}
		}
	}
	h.Flush()
	cpu := processCPU(b) - cpu0
	if r := h.Stats().Recorded - before; r != uint64(n) {
		b.Fatalf("%d of %d recorded: %+v %s", r, n, h.Stats(), h.LastError())
	}
	return float64(cpu.Nanoseconds()) / 1000 / float64(n), float64(h.updates.Load()-updates) / float64(n)
}

// rowCostBound is the bound of the histories rowCostPaced writes.
var rowCostBound = 20_000

// attrsProcs are attrsConn's processes' attributes, the same texts and slices for
// every connection of a process, as the daemon's process cache hands them.
var attrsProcs = func() []engine.Request {
	ps := make([]engine.Request, 64)
	for i := range ps {
		exe := fmt.Sprintf("/usr/bin/client%d", i%4)
		ps[i] = engine.Request{PID: int32(3000 + i), Exe: exe,
			Cmdline: fmt.Sprintf("%s --profile=default --session=%d", exe, i),
			Unit:    fmt.Sprintf("app-client%d.scope", i),
			Parents: []string{fmt.Sprintf("/usr/bin/launcher%d", i%4), "/usr/lib/systemd/systemd"}}
	}
	return ps
}()

// attrsConn is the i-th connection of the "attrs" rows: a fast-path row with a
// command line, a unit and ancestors, each process making 8 in a row.
func attrsConn(i int) Conn {
	p := &attrsProcs[i/8%64]
	c := fastPathConn(i)
	r := &c.Request
	r.PID, r.Exe, r.Cmdline, r.Unit, r.Parents = p.PID, p.Exe, p.Cmdline, p.Unit, p.Parents
	return c
}

// BenchmarkHistoryRowCostOldNew measures the CPU per connection of fast-path rows
// whose ends are merged before they are written ("ended"), written the way earlier
// versions did (legacyTuning) and as now, in interleaved rounds in one run, and
// prints each round's numbers and ratio (new/old) and the median ratio. b.N is
// ignored: each round writes oldNewRows connections each way.
func BenchmarkHistoryRowCostOldNew(b *testing.B) {
	for _, full := range []bool{false, true} {
		name := "ended"
		if full {
			name += "/full"
		}
		b.Run(name, func(b *testing.B) {
			const rounds = 5
			var olds, news, ratios []float64
			for r := range rounds {
				// Alternate which goes first, so that neither always runs on the
				// heap and page cache the other left.
				var o, n float64
				if r%2 == 0 {
					o, _ = rowCost(b, "ended", full, oldNewRows, legacyTuning, func() {})
					n, _ = rowCost(b, "ended", full, oldNewRows, historyTuning{}, func() {})
				} else {
					n, _ = rowCost(b, "ended", full, oldNewRows, historyTuning{}, func() {})
					o, _ = rowCost(b, "ended", full, oldNewRows, legacyTuning, func() {})
				}
				olds, news, ratios = append(olds, o), append(news, n), append(ratios, n/o)
				b.Logf("round %d: old %.2f µs/row, new %.2f µs/row, new/old %.3f", r+1, o, n, n/o)
			}
			b.Logf("median: old %.2f µs/row, new %.2f µs/row, new/old %.3f", median(olds), median(news), median(ratios))
			b.ReportMetric(median(olds), "old-cpu-µs/row")
			b.ReportMetric(median(news), "new-cpu-µs/row")
			b.ReportMetric(median(ratios), "new/old")
		})
	}
}

// oldNewRows is how many connections a round of BenchmarkHistoryRowCostOldNew
// writes each way.
const oldNewRows = 100_000

// BenchmarkHistoryRowCostProcs measures the CPU per connection of fast-path rows
// whose ends are merged before they are written ("ended"), written four ways in
// interleaved rounds in one run: as before procs and conns_batches (every row
// holding its process's columns, its time indexed: "before"), with only
// conns_batches ("batches"), with only procs ("procs"), as now ("both"), and as
// now into a history an earlier version wrote ("upgraded": its table keeps the
// columns procs took, left empty). It prints each round's numbers and their ratios
// to "before", and the medians. b.N is ignored: each round writes oldNewRows
// connections each way.
func BenchmarkHistoryRowCostProcs(b *testing.B) {
	variants := []struct {
		name   string
		tuning historyTuning
	}{
		{"before", historyTuning{inlineProcs: true, timeIndex: true}},
		{"batches", historyTuning{inlineProcs: true}},
		{"procs", historyTuning{timeIndex: true}},
		{"both", historyTuning{}},
		{"upgraded", historyTuning{}},
	}
	for _, full := range []bool{false, true} {
		name := "ended"
		if full {
			name += "/full"
		}
		b.Run(name, func(b *testing.B) {
			const rounds = 5
			cost := make([][]float64, len(variants))
			ratio := make([][]float64, len(variants))
			for r := range rounds {
				// Each round starts with another variant, so that none always runs
				// on the heap and page cache another left.
				got := make([]float64, len(variants))
				for k := range variants {
					v := (r + k) % len(variants)
					path := filepath.Join(b.TempDir(), HistoryFileName)
					if variants[v].name == "upgraded" {
						old, err := openHistory(path, HistoryOptions{tuning: legacyTuning}, historyQueueLen, historyHold)
						if err != nil {
							b.Fatal(err)
						}
						old.Record(fastPathConn(0))
						old.Close()
					}
					got[v], _ = rowCostIn(b, path, "ended", full, oldNewRows, variants[v].tuning, func() {})
				}
				line := fmt.Sprintf("round %d:", r+1)
				for v := range variants {
					cost[v] = append(cost[v], got[v])
					ratio[v] = append(ratio[v], got[v]/got[0])
					line += fmt.Sprintf(" %s %.2f µs/row (%.3f)", variants[v].name, got[v], got[v]/got[0])
				}
				b.Log(line)
			}
			line := "median:"
			for v := range variants {
				line += fmt.Sprintf(" %s %.2f µs/row (%.3f)", variants[v].name, median(cost[v]), median(ratio[v]))
				b.ReportMetric(median(cost[v]), variants[v].name+"-cpu-µs/row")
			}
			b.Log(line)
		})
	}
}

// clientConn is the i-th connection of the "client" rows: what the daemon
// records for test/bench's client, one process making every connection to one
// server from a new local port, decided by the fast path.
func clientConn(i int) Conn {
	c := fastPathConn(i)
	r := &c.Request
	r.PID, r.Exe, r.Remote = 4242, "/usr/local/bin/bench-client", netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, 2}), 9000)
	return c
}

// daemonRate is the connections per second BenchmarkHistoryRowCostDaemon
// records: about what test/bench's client makes with the fast path.
const daemonRate = 15_000

// BenchmarkHistoryRowCostDaemon measures the CPU per connection of the rows the
// daemon records under test/bench (clientConn: one process, one server, each
// flow's end reported reportLag connections later and merged into its row),
// recorded at daemonRate connections per second as the daemon does, so that
// the writer writes the batches of historyFlushGap it writes there (some 750
// rows), not full ones, into a history at its bound. It runs the writer as
// before this change ("before": the rowids of ended rows remembered, the procs
// rows' last_conn set with UPDATE ... FROM VALUES) and as now, in interleaved
// rounds, and prints each round's numbers, their ratio (now/before) and the
// medians. b.N is ignored.
func BenchmarkHistoryRowCostDaemon(b *testing.B) {
	variants := []struct {
		name   string
		tuning historyTuning
	}{
		{"before", historyTuning{rowidsOfEnded: true, procsByValues: true}},
		{"now", historyTuning{}},
	}
	const rounds, rows = 5, 30_000
	cost := make([][]float64, len(variants))
	var ratios []float64
	for r := range rounds {
		got := make([]float64, len(variants))
		for k := range variants {
			v := (r + k) % len(variants)
			path := filepath.Join(b.TempDir(), HistoryFileName)
			got[v], _ = rowCostPaced(b, path, "client", true, rows, variants[v].tuning, daemonRate, func() {})
			cost[v] = append(cost[v], got[v])
		}
		ratios = append(ratios, got[1]/got[0])
		b.Logf("round %d: before %.2f µs/row, now %.2f µs/row, now/before %.3f", r+1, got[0], got[1], got[1]/got[0])
	}
	b.Logf("median: before %.2f µs/row, now %.2f µs/row, now/before %.3f", median(cost[0]), median(cost[1]), median(ratios))
	b.ReportMetric(median(cost[0]), "before-cpu-µs/row")
	b.ReportMetric(median(cost[1]), "now-cpu-µs/row")
	b.ReportMetric(median(ratios), "now/before")
}
