package store

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
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
			Local:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, 1}), uint16(32768+i%28000)),
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

// TestHistoryWritesAfterAFailedBatch: a batch the database refuses is counted as
// failed (its error kept) and rolled back whole, and the writer's next batches are
// written as before.
func TestHistoryWritesAfterAFailedBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i := range 3 {
		h.Record(fastPathConn(i))
	}
	h.Flush()
	// Another connection makes inserts of one program fail.
	db := h.db.Load()
	if _, err := db.Exec(`CREATE TRIGGER refuse BEFORE INSERT ON procs WHEN NEW.exe = '/usr/bin/refused'
		BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`); err != nil {
		t.Fatal(err)
	}
	bad := fastPathConn(10)
	bad.Request.Exe = "/usr/bin/refused"
	h.Record(fastPathConn(11))
	h.Record(bad)
	h.Flush()
	if st := h.Stats(); st.Failed != 2 || st.Recorded != 3 || !strings.Contains(h.LastError(), "refused by the test") {
		t.Fatalf("after the refused batch: %+v, last error %q; want 2 failed, 3 recorded", st, h.LastError())
	}
	if _, err := db.Exec(`DROP TRIGGER refuse`); err != nil {
		t.Fatal(err)
	}
	for i := 20; i < 100; i++ {
		h.Record(fastPathConn(i))
	}
	h.Flush()
	if n, _ := h.Count(); n != 3+80 {
		t.Fatalf("history holds %d rows, want %d: %+v %q", n, 3+80, h.Stats(), h.LastError())
	}
}

// TestHistorySameColumnsRoundTrip: rows whose local address, remote address and
// port and process are the same in all the rows of a statement (bound once, see
// sameColumns) but for one row, at every place of a statement of every size
// (one column differing at a time), and runs where they are all the same, read
// back exactly as recorded, in order: no row takes another's value.
func TestHistorySameColumnsRoundTrip(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), 100_000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	base := func(i int) Conn {
		c := fastPathConn(i)
		r := &c.Request
		r.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, 2}), 9000)
		r.PID, r.Exe = 2000, "/usr/bin/client0"
		return c
	}
	// other changes one column of c (which: 0 the local address, 1 the remote
	// address, 2 the remote port, 3 the process).
	other := func(c *Conn, which int) {
		r := &c.Request
		switch which {
		case 0:
			r.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, 1}), r.Local.Port())
		case 1:
			r.Remote = netip.AddrPortFrom(netip.MustParseAddr("fd00::7"), r.Remote.Port())
		case 2:
			r.Remote = netip.AddrPortFrom(r.Remote.Addr(), 443)
		case 3:
			r.PID, r.Exe = 2001, "/usr/bin/client1"
		}
	}
	var want []Conn
	i := 0
	record := func(c Conn) {
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
		want = append(want, c)
		i++
	}
	for _, n := range insertSizes {
		for which := range 4 {
			for odd := range n {
				// Flushed before and after: the n rows are one statement.
				h.Flush()
				for k := range n {
					c := base(i)
					if k == odd {
						other(&c, which)
					}
					record(c)
				}
				h.Flush()
			}
		}
		for range 3 {
			record(base(i))
		}
		h.Flush()
	}
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
