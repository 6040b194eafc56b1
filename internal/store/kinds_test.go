package store

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestHistoryRowKindsRoundTrip: rows of every kind the writer tells apart (texts
// empty or not, request ID written or not, bytes or none: see column.group), in
// runs of lengths across the statement sizes (insertSizes) and their edges, each
// row with values of its own in every column, are stored exactly: every column of
// conns as written (the shared run_ns, the request ID of open flows only) and the
// process each row names. In a new history, in one an earlier version wrote (its
// rows keep the process columns), and written the way earlier versions did.
func TestHistoryRowKindsRoundTrip(t *testing.T) {
	for _, v := range []struct {
		name   string
		old    bool
		tuning historyTuning
	}{{"new", false, historyTuning{}}, {"upgraded", true, historyTuning{}}, {"inline", true, legacyTuning}} {
		t.Run(v.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), HistoryFileName)
			if v.old {
				old, err := openHistory(path, HistoryOptions{tuning: legacyTuning}, historyQueueLen, historyHold)
				if err != nil {
					t.Fatal(err)
				}
				if err := old.Close(); err != nil {
					t.Fatal(err)
				}
			}
			h, err := openHistory(path, HistoryOptions{MaxRows: 100_000, tuning: v.tuning}, historyQueueLen, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			testRowKinds(t, h, v.tuning.fullReqIndex)
		})
	}
}

// kindRow is what testRowKinds expects a row of conns to hold.
type kindRow struct {
	timeNS                          int64
	localIP                         string
	localPort                       int64
	remoteIP                        string
	remotePort                      int64
	host, hostSource, note          string
	runNS, reqID, bytesIn, bytesOut int64
	exe, verdict                    string
	ruleID                          int64
}

func testRowKinds(t *testing.T, h *History, allReqs bool) {
	// Runs of one kind, of lengths around 1, 4, 16 and 64 rows, kinds in an
	// order that visits every change of kind.
	lengths := []int{1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 1, 129, 7, 21}
	var want []kindRow
	i := 0
	// The first report turns byte accounting on.
	if err := h.RecordTraffic(Traffic{Request: engine.Request{ID: 1, Exe: "/usr/bin/x"}, DeltaIn: 1}); err != nil {
		t.Fatal(err)
	}
	for run := 0; run < 3*len(lengths); run++ {
		kind := uint8(run*5) % 8 // texts, request ID, bytes: every combination
		for range lengths[run%len(lengths)] {
			i++
			c := Conn{
				Time: time.Unix(1_800_000_000, int64(i)*1_000_003),
				Request: engine.Request{
					ID: engine.RequestID(1000 + i), Direction: engine.Outbound, Protocol: engine.TCP,
					Local:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(20000+i)),
					Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), uint16(1000+i)),
					PID:    int32(100 + i/3), Exe: fmt.Sprintf("/usr/bin/p%d", i/3), UID: 1000, User: "alice",
				},
				Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: engine.RuleID(i)},
			}
			w := kindRow{timeNS: c.Time.UnixNano(), localIP: c.Request.Local.Addr().String(), localPort: int64(c.Request.Local.Port()),
				remoteIP: c.Request.Remote.Addr().String(), remotePort: int64(c.Request.Remote.Port()),
				runNS: h.run, reqID: int64(c.Request.ID), exe: c.Request.Exe, verdict: "allow", ruleID: int64(i)}
			if kind&groupTexts == 0 {
				c.Request.Host, c.Request.HostSource, c.Request.Note = fmt.Sprintf("h%d.example", i), fmt.Sprintf("s%d", i), fmt.Sprintf("n%d", i)
				w.host, w.hostSource, w.note = c.Request.Host, c.Request.HostSource, c.Request.Note
			}
			ended := kind&groupReq != 0
			if ended && i%2 == 0 {
				// Not reported: a denied flow has no request ID either.
				c.Verdict.Action = engine.Deny
				w.verdict = "deny"
				ended = false
			}
			if kind&groupReq != 0 && !allReqs {
				w.reqID = 0
			}
			if err := h.Record(c); err != nil {
				t.Fatal(err)
			}
			if kind&groupBytes == 0 || ended {
				// The report lands in the held row.
				w.bytesIn, w.bytesOut = int64(3*i+1), int64(5*i+2)
				if kind&groupBytes != 0 {
					w.bytesIn, w.bytesOut = 0, 0 // an end report without bytes
				}
				r := Traffic{Request: c.Request, BytesIn: uint64(w.bytesIn), BytesOut: uint64(w.bytesOut), Ended: ended}
				if err := h.RecordTraffic(r); err != nil {
					t.Fatal(err)
				}
			}
			want = append(want, w)
		}
		if run%4 == 3 {
			h.Flush() // batches of several sizes
		}
	}
	h.Flush()
	if st := h.Stats(); st.Recorded != uint64(len(want)) || st.Failed != 0 {
		t.Fatalf("%+v %s; want %d recorded", st, h.LastError(), len(want))
	}
	rows, err := h.db.Load().Query(`SELECT c.time_ns, c.local_ip, c.local_port, c.remote_ip, c.remote_port, c.host, c.host_source,
		c.note, c.run_ns, c.req_id, c.bytes_in, c.bytes_out, v.exe, v.verdict, v.rule_id
		FROM conns c JOIN conns_view v ON v.id = c.id ORDER BY c.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	k := 0
	for ; rows.Next(); k++ {
		var g kindRow
		if err := rows.Scan(&g.timeNS, &g.localIP, &g.localPort, &g.remoteIP, &g.remotePort, &g.host, &g.hostSource,
			&g.note, &g.runNS, &g.reqID, &g.bytesIn, &g.bytesOut, &g.exe, &g.verdict, &g.ruleID); err != nil {
			t.Fatal(err)
		}
		if k >= len(want) {
			continue
		}
		if g != want[k] {
			t.Fatalf("row %d:\n got %+v\nwant %+v", k+1, g, want[k])
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if k != len(want) {
		t.Fatalf("conns holds %d rows, want %d", k, len(want))
	}
}
