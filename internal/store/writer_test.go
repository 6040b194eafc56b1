package store

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// fastPathConn is a connection as the kernel fast path records it: remote address,
// pid, executable, user and rule; no local address, host, command line or parents.
func fastPathConn(i int) Conn {
	return Conn{
		Time: time.Unix(1_800_000_000, int64(i)*1000),
		Request: engine.Request{
			ID: engine.RequestID(1<<40 + i), Direction: engine.Outbound, Protocol: engine.TCP,
			Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i%4)}), 9000),
			PID:    int32(2000 + i%64), Exe: fmt.Sprintf("/usr/bin/client%d", i%4), UID: 1000, User: "alice",
			Identity: engine.IdentityVerified,
		},
		Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonFastPath, RuleID: 10000},
	}
}

// TestHistoryMixedRowsRoundTrip: rows as the fast path records them (plain: written
// with the statements that bind fewer values) and full rows, interleaved in runs of
// every length across statement sizes, with traffic reports between them (in the
// same batch and in later ones), read back exactly as recorded, in order.
func TestHistoryMixedRowsRoundTrip(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), 10_000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var want []Conn
	id := engine.RequestID(100)
	record := func(c Conn) {
		id++
		c.Request.ID = id
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
		want = append(want, c)
	}
	report := func(k int, in, out uint64) {
		w := &want[k]
		w.BytesIn, w.BytesOut = in, out
		if err := h.RecordTraffic(Traffic{Request: w.Request, BytesIn: in, BytesOut: out, DeltaIn: in, DeltaOut: out}); err != nil {
			t.Fatal(err)
		}
	}
	// Runs of 1, 2, ... 70 rows of one kind, then of the other.
	i := 0
	for n := 1; n <= 70; n += 3 {
		for range n {
			record(fastPathConn(i))
			i++
		}
		report(len(want)-1, uint64(n), uint64(2*n))
		for range n % 7 {
			c := testConn(i)
			c.Request.Cmdline = fmt.Sprintf("client --n %d", i)
			record(c)
			i++
		}
		if n%4 == 0 {
			h.Flush() // the next report is about a row of an earlier batch
			report(len(want)-2, 5, 6)
		}
	}
	// A fast-path row that is not plain: bytes from the start.
	c := fastPathConn(i)
	c.BytesIn = 7
	record(c)
	h.Flush()
	got, err := h.Recent(len(want)+10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read back %d rows, want %d", len(got), len(want))
	}
	for k := range want {
		w, g := want[k], got[k]
		w.ID, g.ID = 0, 0
		w.Request.ID = 0 // not read back
		w.Time = time.Unix(0, w.Time.UnixNano())
		w.Request.Time = w.Time
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("row %d:\n got %+v\nwant %+v", k, g, w)
		}
	}
}

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
// them and for queued rows (testConn: host, container, parents...). "full": the
// history is at its bound, so each batch also deletes as many old rows.
func BenchmarkHistoryRowCost(b *testing.B) {
	for _, full := range []bool{false, true} {
		for _, kind := range []string{"fastpath", "queued"} {
			name := kind
			if full {
				name += "/full"
			}
			b.Run(name, func(b *testing.B) {
				const bound = 20_000
				h, err := OpenHistory(filepath.Join(b.TempDir(), HistoryFileName), bound)
				if err != nil {
					b.Fatal(err)
				}
				defer h.Close()
				conn := fastPathConn
				if kind == "queued" {
					conn = testConn
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
				before := h.Stats().Recorded
				cpu0 := processCPU(b)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for h.Record(rows[i%len(rows)]) != nil {
						h.Flush()
					}
				}
				h.Flush()
				b.StopTimer()
				cpu := processCPU(b) - cpu0
				if r := h.Stats().Recorded - before; r != uint64(b.N) {
					b.Fatalf("%d of %d recorded: %+v %s", r, b.N, h.Stats(), h.LastError())
				}
				b.ReportMetric(float64(cpu.Nanoseconds())/1000/float64(b.N), "cpu-µs/row")
			})
		}
	}
}
