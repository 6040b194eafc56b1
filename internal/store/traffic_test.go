package store

import (
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// schemaBeforeTraffic is the conns table as the version before byte accounting
// created it.
const schemaBeforeTraffic = `
CREATE TABLE conns (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	time_ns     INTEGER NOT NULL,
	direction   TEXT    NOT NULL,
	proto       TEXT    NOT NULL,
	local_ip    TEXT    NOT NULL,
	local_port  INTEGER NOT NULL,
	remote_ip   TEXT    NOT NULL,
	remote_port INTEGER NOT NULL,
	pid         INTEGER NOT NULL,
	exe         TEXT    NOT NULL,
	uid         INTEGER NOT NULL,
	user        TEXT    NOT NULL,
	cmdline     TEXT    NOT NULL,
	host        TEXT    NOT NULL,
	verdict     TEXT    NOT NULL,
	reason      TEXT    NOT NULL,
	rule_id     INTEGER NOT NULL
);
CREATE INDEX conns_time ON conns(time_ns);
INSERT INTO conns (time_ns, direction, proto, local_ip, local_port, remote_ip, remote_port,
	pid, exe, uid, user, cmdline, host, verdict, reason, rule_id)
	VALUES (1, 'out', 'tcp', '198.18.0.1', 40000, '198.18.0.2', 443, 7, '/usr/bin/old', 0, 'root', '', '', 'allow', 'rule', 1);
`

// TestTrafficOnAnOldHistory opens a history written before byte accounting: its
// rows read 0 bytes, and a new connection's traffic reports set its totals and count
// for its program in Top, by total and by rate.
func TestTrafficOnAnOldHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(schemaBeforeTraffic); err != nil {
		t.Fatal(err)
	}
	db.Close()

	h, err := OpenHistory(path, 1000)
	if err != nil {
		t.Fatalf("open an old history: %v", err)
	}
	now := time.Now()
	a, b := testConn(1), testConn(2)
	a.Request.ID, b.Request.ID = 11, 12
	a.Request.Exe, b.Request.Exe = "/usr/bin/bulk", "/usr/bin/chatty"
	for _, c := range []Conn{a, b} {
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
	}
	reports := []Traffic{
		{Time: now.Add(-50 * time.Minute), Request: a.Request, BytesIn: 100, BytesOut: 1_000_000, DeltaIn: 100, DeltaOut: 1_000_000},
		{Time: now.Add(-2 * time.Second), Request: a.Request, BytesIn: 300, BytesOut: 3_000_000, DeltaIn: 200, DeltaOut: 2_000_000, Ended: true},
		{Time: now.Add(-3 * time.Second), Request: b.Request, BytesIn: 4000, BytesOut: 10, DeltaIn: 4000, DeltaOut: 10},
		// A report about a request this history never recorded counts for its program.
		{Time: now.Add(-90 * time.Minute), Request: engine.Request{ID: 99, Exe: "/usr/bin/bulk", UID: 0, User: "root"}, BytesOut: 5, DeltaOut: 5},
	}
	for _, r := range reports {
		if err := h.RecordTraffic(r); err != nil {
			t.Fatal(err)
		}
		// One batch each: a batch's reports make one row per program, at its last time.
		h.Flush()
	}
	got, err := h.Recent(10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("Recent: %d rows, want 3", len(got))
	}
	if got[0].Request.Exe != "/usr/bin/old" || got[0].BytesIn != 0 || got[0].BytesOut != 0 {
		t.Errorf("old row: %+v", got[0])
	}
	if got[1].BytesIn != 300 || got[1].BytesOut != 3_000_000 {
		t.Errorf("bulk row: bytes in %d out %d, want 300 and 3000000", got[1].BytesIn, got[1].BytesOut)
	}
	if got[2].BytesIn != 4000 || got[2].BytesOut != 10 {
		t.Errorf("chatty row: bytes in %d out %d, want 4000 and 10", got[2].BytesIn, got[2].BytesOut)
	}

	top, err := h.TopTraffic(now.Add(-time.Hour), now, 10*time.Second, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) != 2 || top[0].Exe != "/usr/bin/bulk" || top[0].BytesOut != 3_000_000 || top[0].BytesIn != 300 {
		t.Fatalf("top by total over the last hour: %+v", top)
	}
	// Only the last report (2 s ago) falls in the 10 s window: 2,000,000 bytes out.
	if top[0].RateOut != 200_000 || top[0].RateIn != 20 {
		t.Errorf("bulk rate: in %v out %v B/s, want 20 and 200000", top[0].RateIn, top[0].RateOut)
	}
	top, err = h.TopTraffic(now.Add(-2*time.Hour), now, 2500*time.Millisecond, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) != 2 || top[0].Exe != "/usr/bin/bulk" || top[0].BytesOut != 3_000_005 {
		t.Fatalf("top over two hours: %+v", top)
	}
	top, err = h.TopTraffic(now.Add(-2*time.Hour), now, 5*time.Second, true)
	if err != nil {
		t.Fatal(err)
	}
	// By rate over 5 s: chatty's 4010 B/5 s... bulk still leads with 2,000,200 B.
	if top[0].Exe != "/usr/bin/bulk" || top[1].RateIn != 800 {
		t.Errorf("top by rate: %+v", top)
	}
	if _, err := h.TopTraffic(now, now, time.Second, false); err == nil {
		t.Error("Top with an empty range: no error")
	}
	h.Close()

	// The next opening is another run: the same request ID names none of its rows.
	h, err = OpenHistory(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.RecordTraffic(Traffic{Time: now, Request: a.Request, BytesOut: 1, DeltaOut: 1}); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	got, _ = h.Recent(10, 0)
	if len(got) != 3 || got[1].BytesOut != 3_000_000 {
		t.Errorf("a later run's report changed an earlier run's row: %+v", got[1])
	}
}

// TestTrafficInTheSameBatch: a report written in the same batch as its connection
// sets the row's totals (applied before the insert) and counts for the program.
func TestTrafficInTheSameBatch(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	now := time.Now()
	c := testConn(3)
	c.Request.ID = 5
	h.Record(c)
	h.RecordTraffic(Traffic{Time: now, Request: c.Request, BytesIn: 40, BytesOut: 1_000_000, DeltaIn: 40, DeltaOut: 1_000_000, Ended: true})
	h.Flush()
	got, err := h.Recent(1, 0)
	if err != nil || len(got) != 1 || got[0].BytesOut != 1_000_000 || got[0].BytesIn != 40 {
		t.Fatalf("row: %+v, %v", got, err)
	}
	top, err := h.TopTraffic(now.Add(-time.Minute), now.Add(time.Second), 10*time.Second, false)
	if err != nil || len(top) != 1 || top[0].BytesOut != 1_000_000 {
		t.Errorf("top: %+v, %v", top, err)
	}
}
