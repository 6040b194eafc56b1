package store

import (
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func testConn(i int) Conn {
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	c := Conn{
		Time: t0.Add(time.Duration(i) * time.Millisecond),
		Request: engine.Request{
			Direction: engine.Outbound,
			Protocol:  engine.TCP,
			Local:     netip.MustParseAddrPort(fmt.Sprintf("198.18.0.1:%d", 40000+i%20000)),
			Remote:    netip.MustParseAddrPort("198.18.0.2:443"),
			PID:       int32(1000 + i),
			Exe:       fmt.Sprintf("/usr/bin/client%d", i),
			UID:       0,
			User:      "root",
		},
		Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: engine.RuleID(i%7 + 1),
			Mode: engine.Mode(i % 5)},
	}
	if i%2 == 0 {
		c.Request.Host = fmt.Sprintf("api%d.example.com", i)
	}
	if i%4 == 1 {
		c.Request.Unit = "nginx.service"
		c.Request.AppID = "org.example.App"
		c.Request.Parents = []string{"/usr/bin/bash", "", "/usr/sbin/sshd"}
	}
	switch i % 3 {
	case 0:
		c.Request.Identity = engine.IdentityVerified
	case 1:
		c.Request.Identity = engine.IdentityUnverified
		c.Request.IdentityNote = "the executable was deleted or replaced since the process started"
	case 2:
		c.Request.Identity = engine.IdentityContainer
		c.Request.Container = "docker:" + strings.Repeat("ab", 32)
		c.Request.ContainerName = "web-1\x1b[2K\xff" // exact bytes, whatever they are
		c.Request.IdentityNote = "runs in container"
	}
	return c
}

// TestHistoryKeepsIdentity: the identity, container and note read back as written,
// and a database written before identities existed opens, keeps its rows (read as
// identity "", not checked) and takes new rows with identities.
func TestHistoryKeepsIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	// The schema as it was before identities.
	i := strings.Index(inlineSchema, ",\n\tidentity ")
	j := strings.Index(inlineSchema, "\n);")
	if i < 0 || j < i {
		t.Fatal("test out of date: no identity column at the end of inlineSchema")
	}
	old := inlineSchema[:i] + inlineSchema[j:]
	if strings.Contains(old, "identity") {
		t.Fatalf("old schema still has identity columns:\n%s", old)
	}
	if _, err := db.Exec(old); err != nil {
		t.Fatalf("%v\n%s", err, old)
	}
	if _, err := db.Exec(`INSERT INTO conns (time_ns, direction, proto, local_ip, local_port, remote_ip, remote_port,
		pid, exe, uid, user, cmdline, host, verdict, reason, rule_id)
		VALUES (1, 'out', 'tcp', '198.18.0.1', 40000, '198.18.0.2', 443, 7, '/usr/bin/old', 0, 'root', '', '', 'allow', 'rule', 1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	h, err := OpenHistory(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i := 3; i < 6; i++ {
		if err := h.Record(testConn(i)); err != nil {
			t.Fatal(err)
		}
	}
	h.Flush()
	got, err := h.Recent(10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("read back %d rows, want 4", len(got))
	}
	if r := got[0].Request; r.Exe != "/usr/bin/old" || r.Identity != engine.IdentityUnknown || r.Container != "" || r.IdentityNote != "" {
		t.Errorf("old row: %+v; want identity \"\" (not checked)", r)
	}
	if m := got[0].Verdict.Mode; m != engine.ModeAsk {
		t.Errorf("old row's mode %v, want ask", m)
	}
	for k, c := range got[1:] {
		want := testConn(3 + k).Request
		r := c.Request
		if r.Identity != want.Identity || r.Container != want.Container || r.IdentityNote != want.IdentityNote || r.ContainerName != want.ContainerName {
			t.Errorf("row %d: identity %q container %q (name %q) note %q; want %q %q (%q) %q", k+1,
				r.Identity, r.Container, r.ContainerName, r.IdentityNote, want.Identity, want.Container, want.ContainerName, want.IdentityNote)
		}
		if m, w := c.Verdict.Mode, testConn(3+k).Verdict.Mode; m != w {
			t.Errorf("row %d: mode %v, want %v", k+1, m, w)
		}
		if r.Unit != want.Unit || r.AppID != want.AppID || !slices.Equal(r.Parents, want.Parents) {
			t.Errorf("row %d: unit %q app id %q parents %q; want %q %q %q", k+1, r.Unit, r.AppID, r.Parents, want.Unit, want.AppID, want.Parents)
		}
	}
}

func TestHistoryRoundTripAndPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := h.Record(testConn(i)); err != nil {
			t.Fatal(err)
		}
	}
	h.Flush()
	got, err := h.Recent(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("Recent(3, 0) returned %d conns", len(got))
	}
	want := testConn(9)
	c := got[2]
	if !c.Time.Equal(want.Time) || c.Request.Exe != want.Request.Exe || c.Request.PID != want.Request.PID ||
		c.Request.Local != want.Request.Local || c.Request.Remote != want.Request.Remote ||
		c.Request.Direction != engine.Outbound || c.Request.Protocol != engine.TCP ||
		c.Request.User != "root" || c.Request.UID != 0 || c.Verdict != want.Verdict {
		t.Fatalf("newest conn read back as %+v, want %+v", c, want)
	}
	if got[1].Request.Host != "api8.example.com" || got[2].Request.Host != "" {
		t.Errorf("hosts read back as %q and %q, want api8.example.com and none", got[1].Request.Host, got[2].Request.Host)
	}
	if got[0].ID >= got[1].ID || got[1].ID >= got[2].ID {
		t.Errorf("Recent is not oldest first: ids %d %d %d", got[0].ID, got[1].ID, got[2].ID)
	}
	// Following: everything after an id, in order.
	after, err := h.Recent(100, got[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 2 || after[0].ID != got[1].ID {
		t.Fatalf("Recent(100, %d) = %d conns starting at %d", got[0].ID, len(after), after[0].ID)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Record(testConn(11)); !errors.Is(err, ErrHistoryClosed) {
		t.Errorf("Record after Close = %v, want ErrHistoryClosed", err)
	}

	// A real file in WAL mode that survives reopening.
	h, err = OpenHistory(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if n, _ := h.Count(); n != 10 {
		t.Fatalf("reopened history holds %d conns, want 10", n)
	}
	var mode string
	if err := h.db.Load().QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal mode %q (%v), want wal", mode, err)
	}
}

// TestHistoryMigratesHost opens a history.db written before conns had a host column:
// its rows stay, read with no host, and new rows keep theirs.
func TestHistoryMigratesHost(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	old := strings.Replace(inlineSchema, "\thost        TEXT    NOT NULL,\n", "", 1)
	if old == inlineSchema {
		t.Fatal("test out of date: no host column in inlineSchema to take out")
	}
	if _, err := db.Exec(old); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO conns (time_ns, direction, proto, local_ip, local_port, remote_ip, remote_port,
		pid, exe, uid, user, cmdline, verdict, reason, rule_id)
		VALUES (1, 'out', 'tcp', '198.18.0.1', 40000, '198.18.0.2', 443, 7, '/usr/bin/old', 0, 'root', '', 'allow', 'rule', 1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	for round := 0; round < 2; round++ { // the second open finds the column present
		h, err := OpenHistory(path, 1000)
		if err != nil {
			t.Fatalf("open %d: %v", round, err)
		}
		if round == 0 {
			c := testConn(2)
			if err := h.Record(c); err != nil {
				t.Fatal(err)
			}
			h.Flush()
		}
		got, err := h.Recent(10, 0)
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Request.Exe != "/usr/bin/old" || got[0].Request.Host != "" || got[1].Request.Host != "api2.example.com" {
			t.Fatalf("open %d: read back %+v", round, got)
		}
	}
}

func TestHistoryIsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	const total = 2500
	for i := range total {
		for h.Record(testConn(i)) != nil {
			h.Flush() // the buffer is full: let the writer catch up, then retry
		}
	}
	h.Flush()
	if n, _ := h.Count(); n != 100 {
		t.Fatalf("history holds %d conns with maxRows 100", n)
	}
	got, err := h.Recent(1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 100 || got[99].Request.PID != 1000+total-1 || got[0].Request.PID != 1000+total-100 {
		t.Fatalf("kept %d conns, pids %d..%d; want the newest 100", len(got), got[0].Request.PID, got[len(got)-1].Request.PID)
	}
	if s := h.Stats(); s.Recorded != total || s.Dropped != 0 {
		t.Errorf("stats %+v, want %d recorded, 0 dropped", s, total)
	}
	h.Close()

	// A smaller bound applies on open.
	h, err = OpenHistory(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if n, _ := h.Count(); n != 10 {
		t.Fatalf("reopened with maxRows 10: %d conns", n)
	}
}

// TestHistoryRecordNeverBlocks stalls the writer behind another connection's exclusive
// transaction and checks that Record drops and counts instead of waiting.
func TestHistoryRecordNeverBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := openHistory(path, HistoryOptions{MaxRows: 1000}, 16, historyHold)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	blocker, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	conn, err := blocker.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	full := 0
	for i := range 200 {
		if err := h.Record(testConn(i)); errors.Is(err, ErrHistoryFull) {
			full++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if full == 0 {
		t.Fatal("200 Records against a stalled writer with a 16-slot buffer all succeeded")
	}
	if _, err := conn.ExecContext(t.Context(), "COMMIT"); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	h.Flush()
	s := h.Stats()
	if s.Dropped != uint64(full) || s.Recorded+s.Failed+s.Dropped != 200 {
		t.Fatalf("stats %+v after %d drops of 200", s, full)
	}
	if n, _ := h.Count(); uint64(n) != s.Recorded {
		t.Errorf("history holds %d conns, stats say %d recorded", n, s.Recorded)
	}
}

func TestLockStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockStateDir(dir)
	if err == nil {
		t.Fatal("second LockStateDir on one directory succeeded")
	}
	want := fmt.Sprintf("in use by another latch daemon (pid %d)", os.Getpid())
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	l, err = LockStateDir(dir)
	if err != nil {
		t.Fatalf("LockStateDir after Unlock: %v", err)
	}
	l.Unlock()
}

// BenchmarkHistoryRecord measures what the decision path pays per connection: one
// Record call, with the writer draining in the background. "dropped" counts the
// connections the writer could not keep up with.
func BenchmarkHistoryRecord(b *testing.B) {
	h, err := OpenHistory(filepath.Join(b.TempDir(), HistoryFileName), 100_000)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	c := testConn(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.Record(c)
	}
	b.StopTimer()
	h.Flush()
	b.ReportMetric(float64(h.Stats().Dropped), "dropped")
}

// BenchmarkHistoryWrite measures the sustained rate at which connections reach the
// database (batched inserts plus pruning to the bound): a full buffer makes the
// benchmark wait for the writer and retry.
func BenchmarkHistoryWrite(b *testing.B) {
	h, err := OpenHistory(filepath.Join(b.TempDir(), HistoryFileName), 100_000)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	c := testConn(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for h.Record(c) != nil {
			h.Flush()
		}
	}
	h.Flush()
	b.StopTimer()
	if r := h.Stats().Recorded; r != uint64(b.N) {
		b.Fatalf("%d of %d recorded: %+v %s", r, b.N, h.Stats(), h.LastError())
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

// TestHistoryFlushWritesEverything fills the buffer behind a stalled writer and
// checks that one Flush writes every connection queued before it.
func TestHistoryFlushWritesEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, 100_000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	blocker, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	conn, err := blocker.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	const n = historyQueueLen // more than the writer's first batch can take
	recorded := 0
	for i := range n {
		if h.Record(testConn(i)) == nil {
			recorded++
		}
	}
	conn.ExecContext(t.Context(), "COMMIT")
	conn.Close()
	h.Flush()
	if got, _ := h.Count(); got != recorded {
		t.Fatalf("after Flush the history holds %d of %d recorded connections (%+v)", got, recorded, h.Stats())
	}
}

// TestRecordDecision: a decision recorded from its request reads back as the same
// connection recorded as a Conn does, with the time given (now if zero), the
// rule and the verdict; the caller's request is left as it was.
func TestRecordDecision(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), "h.db"), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c := testConn(4)
	req := c.Request
	if err := h.RecordDecision(c.Time, &req, c.Verdict); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := h.RecordDecision(time.Time{}, &req, c.Verdict); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	got, err := h.Recent(10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d rows, want 2", len(got))
	}
	slices.SortFunc(got, func(a, b Conn) int { return int(a.ID - b.ID) })
	for i, g := range got {
		if g.Verdict.RuleID != c.Verdict.RuleID || g.Verdict.Action != c.Verdict.Action || g.Verdict.Reason != c.Verdict.Reason ||
			g.Request.Exe != req.Exe || g.Request.Remote != req.Remote || g.Request.Local != req.Local || g.Request.PID != req.PID {
			t.Errorf("row %d: %+v, want the request %+v decided %+v", i, g, req, c.Verdict)
		}
	}
	if !got[0].Time.Equal(c.Time) {
		t.Errorf("row 0 time %v, want %v", got[0].Time, c.Time)
	}
	if got[1].Time.Before(before) {
		t.Errorf("row 1 (zero time) recorded at %v, before the call at %v", got[1].Time, before)
	}
	if !reflectEqualRequest(req, c.Request) {
		t.Errorf("the caller's request changed: %+v", req)
	}
	h.Close()
	if err := h.RecordDecision(c.Time, &req, c.Verdict); !errors.Is(err, ErrHistoryClosed) {
		t.Errorf("after Close: %v, want ErrHistoryClosed", err)
	}
}

func reflectEqualRequest(a, b engine.Request) bool {
	return a.Exe == b.Exe && a.Remote == b.Remote && a.Local == b.Local && a.PID == b.PID && a.Host == b.Host && slices.Equal(a.Parents, b.Parents)
}

// BenchmarkRecordDecision measures handing one fast-path connection's row to the
// writer, as the daemon records each decision: from its request (RecordDecision)
// and, for comparison, as a Conn built from it (Record). The writer keeps up
// (Flush every 4096, below the queue's half).
func BenchmarkRecordDecision(b *testing.B) {
	for _, how := range []string{"RecordDecision", "Record(Conn)"} {
		b.Run(how, func(b *testing.B) {
			h, err := OpenHistory(filepath.Join(b.TempDir(), "h.db"), 100_000)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			c := testConn(1)
			req := c.Request
			i := 0
			for b.Loop() {
				if how == "RecordDecision" {
					err = h.RecordDecision(c.Time, &req, c.Verdict)
				} else {
					err = h.Record(Conn{Time: req.Time, Request: req, Verdict: c.Verdict})
				}
				if err != nil {
					b.Fatal(err)
				}
				if i++; i%4096 == 0 {
					b.StopTimer()
					h.Flush()
					b.StartTimer()
				}
			}
		})
	}
}
