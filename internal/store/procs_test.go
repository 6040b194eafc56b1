package store

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// normalized is c as the history reads it back: no request ID, the time in
// nanoseconds (no monotonic reading), the request's time the row's.
func normalized(c Conn) Conn {
	c.ID = 0
	c.Request.ID = 0
	c.Time = time.Unix(0, c.Time.UnixNano())
	c.Request.Time = c.Time
	c.Request.ExeFile = engine.FileID{}
	c.Request.ExeSHA256 = ""
	c.Request.Services = nil
	return c
}

// sameConns fails unless got (read back) are want (as recorded), in order.
func sameConns(t *testing.T, what string, got, want []Conn) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: read back %d rows, want %d", what, len(got), len(want))
	}
	for k := range want {
		g, w := normalized(got[k]), normalized(want[k])
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("%s: row %d:\n got %+v\nwant %+v", what, k, g, w)
		}
	}
}

// outcome counts c in a Bucket's or Count's way.
func outcome(c Conn) (allowed, denied, timeout int) {
	switch {
	case c.Verdict.Reason == engine.ReasonTimeout:
		return 0, 0, 1
	case c.Verdict.Action == engine.Allow:
		return 1, 0, 0
	}
	return 0, 1, 0
}

// wantTimeline is Timeline computed from the rows the history holds.
func wantTimeline(held []Conn, from, to time.Time, step time.Duration) []Bucket {
	n := int((to.Sub(from) + step - 1) / step)
	out := make([]Bucket, n)
	for i := range out {
		out[i].Start = from.Add(time.Duration(i) * step)
	}
	for _, c := range held {
		if c.Time.Before(from) || !c.Time.Before(to) {
			continue
		}
		b := &out[c.Time.Sub(from)/step]
		a, d, x := outcome(c)
		b.Allowed, b.Denied, b.Timeout = b.Allowed+a, b.Denied+d, b.Timeout+x
	}
	return out
}

// wantTop is Top computed from the rows the history holds.
func wantTop(held []Conn, by string, from, to time.Time, n int) []Count {
	counts := map[string]*Count{}
	for _, c := range held {
		if c.Time.Before(from) || !c.Time.Before(to) {
			continue
		}
		key := c.Request.Exe
		if by == "host" {
			key = c.Request.Host
			if key == "" {
				key = addrString(c.Request.Remote.Addr())
			}
		}
		k := counts[key]
		if k == nil {
			k = &Count{Key: key}
			counts[key] = k
		}
		a, d, x := outcome(c)
		k.Total, k.Allowed, k.Denied, k.Timeout = k.Total+1, k.Allowed+a, k.Denied+d, k.Timeout+x
	}
	out := []Count{}
	for _, k := range counts {
		out = append(out, *k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Total != out[j].Total {
			return out[i].Total > out[j].Total
		}
		return out[i].Key < out[j].Key
	})
	return out[:min(n, len(out))]
}

// checkReads compares every reader of the history with what it holds (held, as
// recorded, oldest first): Recent, Get, Programs, ProgramConns, and Top and
// Timeline over ranges around the rows' times.
func checkReads(t *testing.T, what string, h *History, held []Conn) {
	t.Helper()
	got, err := h.Recent(len(held)+10, 0)
	if err != nil {
		t.Fatal(err)
	}
	sameConns(t, what+": Recent", got, held)
	for k := 0; k < len(got); k += 37 {
		c, err := h.Get(got[k].ID)
		if err != nil {
			t.Fatal(err)
		}
		sameConns(t, fmt.Sprintf("%s: Get(%d)", what, got[k].ID), []Conn{c}, held[k:k+1])
	}
	if len(got) > 0 {
		after, err := h.Recent(5, got[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		sameConns(t, what+": Recent after the first", after, held[1:min(6, len(held))])
	}
	progs, err := h.Programs()
	if err != nil {
		t.Fatal(err)
	}
	byExe := map[string][]Conn{}
	for _, c := range held {
		byExe[c.Request.Exe] = append(byExe[c.Request.Exe], c)
	}
	if len(progs) != len(byExe) {
		t.Fatalf("%s: Programs: %d, want %d", what, len(progs), len(byExe))
	}
	for _, p := range progs {
		cs := byExe[p.Exe]
		if p.Total != len(cs) {
			t.Fatalf("%s: Programs: %s has %d, want %d", what, p.Exe, p.Total, len(cs))
		}
		pc, err := h.ProgramConns(p.Exe, 3)
		if err != nil {
			t.Fatal(err)
		}
		sameConns(t, what+": ProgramConns "+p.Exe, pc, cs[max(0, len(cs)-3):])
		// All of them: in a history an earlier version wrote, rows of both forms.
		if pc, err = h.ProgramConns(p.Exe, len(cs)+5); err != nil {
			t.Fatal(err)
		}
		sameConns(t, what+": ProgramConns (all) "+p.Exe, pc, cs)
	}
	if len(held) == 0 {
		return
	}
	lo, hi := held[0].Time, held[0].Time
	for _, c := range held {
		if c.Time.Before(lo) {
			lo = c.Time
		}
		if c.Time.After(hi) {
			hi = c.Time
		}
	}
	span := hi.Sub(lo) + time.Second
	for _, r := range [][2]float64{{-0.1, 1.1}, {0, 0.3}, {0.25, 0.5}, {0.45, 0.55}, {0.7, 1.0}, {0.99, 1.2}, {-1, -0.5}} {
		from := lo.Add(time.Duration(r[0] * float64(span)))
		to := lo.Add(time.Duration(r[1] * float64(span)))
		step := to.Sub(from)/17 + 1
		tl, err := h.Timeline(from, to, step)
		if err != nil {
			t.Fatal(err)
		}
		if want := wantTimeline(held, from, to, step); !reflect.DeepEqual(tl, want) {
			t.Fatalf("%s: Timeline(%v, %v, %v):\n got %+v\nwant %+v", what, from, to, step, tl, want)
		}
		for _, by := range []string{"exe", "host"} {
			top, err := h.Top(by, from, to, 5)
			if err != nil {
				t.Fatal(err)
			}
			if want := wantTop(held, by, from, to, 5); !reflect.DeepEqual(top, want) {
				t.Fatalf("%s: Top(%s, %v, %v):\n got %+v\nwant %+v", what, by, from, to, top, want)
			}
		}
	}
}

// shuffledConns are n connections of both kinds (testConn, fastPathConn), from
// request ID first on, whose times are out of order: a connection is recorded
// when it was decided, up to a minute after it began (a question answered late).
func shuffledConns(first, n int, rng *rand.Rand) []Conn {
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	var out []Conn
	for i := first; i < first+n; i++ {
		c := testConn(i % 40)
		if i%3 == 0 {
			c = fastPathConn(i % 200)
		}
		c.Request.ID = engine.RequestID(1000 + i)
		c.Time = t0.Add(time.Duration(i) * 100 * time.Millisecond)
		if rng.IntN(10) == 0 {
			c.Time = c.Time.Add(-time.Duration(rng.IntN(60_000)) * time.Millisecond)
		}
		if i%11 == 0 {
			c.Verdict.Reason = engine.ReasonTimeout
		}
		if i%5 == 0 {
			c.Verdict.Action = engine.Deny
		}
		out = append(out, c)
	}
	return out
}

// record records cs, writing a batch every every connections.
func record(t *testing.T, h *History, cs []Conn, every int) {
	t.Helper()
	for i, c := range cs {
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
		if (i+1)%every == 0 {
			h.Flush()
		}
	}
	h.Flush()
}

// procsCount is how many rows procs has, and how many of them no row names.
func procsCount(t *testing.T, h *History) (rows, unused int) {
	t.Helper()
	err := h.db.Load().QueryRow(`SELECT COUNT(*), (SELECT COUNT(*) FROM procs WHERE id NOT IN (SELECT proc FROM conns)) FROM procs`).Scan(&rows, &unused)
	if err != nil {
		t.Fatal(err)
	}
	return rows, unused
}

// TestHistoryOldFormReadsAndGrows: a history written the way versions before
// procs and conns_batches did (every row holding its process's columns, its time
// indexed by conns_time, rows out of time order) reads the same through every
// reader after it is opened (no row rewritten: their process columns stay in
// them), and keeps growing: new rows name procs rows, old and new read together,
// and the bound deletes the old ones first, their batches too.
func TestHistoryOldFormReadsAndGrows(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	const bound = 500
	rng := rand.New(rand.NewPCG(1, 2))
	old, err := openHistory(path, HistoryOptions{MaxRows: bound, tuning: legacyTuning}, historyQueueLen, historyHold)
	if err != nil {
		t.Fatal(err)
	}
	held := shuffledConns(0, 400, rng)
	record(t, old, held, 97)
	if ix := indexes(t, old); !ix["conns_time"] {
		t.Fatalf("the old writer's indexes: %v; want conns_time", ix)
	}
	checkReads(t, "written the old way", old, held)
	if n, _ := procsCount(t, old); n != 0 {
		t.Fatalf("the old writer wrote %d procs rows", n)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	h, err := OpenHistory(path, bound)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if ix := indexes(t, h); ix["conns_time"] {
		t.Fatalf("indexes after opening: %v; want no conns_time", ix)
	}
	var unnamed int
	if err := h.db.Load().QueryRow(`SELECT COUNT(*) FROM conns WHERE proc = 0 AND exe != ''`).Scan(&unnamed); err != nil || unnamed != len(held) {
		t.Fatalf("old rows holding their process after opening: %d, %v; want %d", unnamed, err, len(held))
	}
	checkReads(t, "opened", h, held)

	// New rows, then more: the bound deletes the old rows, then new ones.
	for _, n := range []int{50, 300, 400} {
		more := shuffledConns(len(held)+1000, n, rng)
		record(t, h, more, 61)
		held = append(held, more...)
		held = held[max(0, len(held)-bound):]
		checkReads(t, fmt.Sprintf("after %d more", n), h, held)
	}
	var batches, oldest int64
	if err := h.db.Load().QueryRow(`SELECT COUNT(*), MIN(min_id) FROM conns_batches`).Scan(&batches, &oldest); err != nil {
		t.Fatal(err)
	}
	var first int64
	h.db.Load().QueryRow(`SELECT MIN(id) FROM conns`).Scan(&first)
	if batches > bound/61+3 || first-oldest > 61 {
		t.Errorf("conns_batches: %d rows, the oldest from id %d, the history's first row %d; want the pruned ones gone", batches, oldest, first)
	}

	// Opened again: the same, and still growing.
	h.Close()
	h, err = OpenHistory(path, bound)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	checkReads(t, "opened again", h, held)
	more := shuffledConns(len(held)+5000, 30, rng)
	record(t, h, more, 7)
	held = append(held[len(more):], more...)
	checkReads(t, "opened again, then more", h, held)
}

// TestHistoryProcsPruned: the bound deletes the procs rows no connection names
// any more, so procs stays bounded while every process is new (a pid per
// connection); a process that goes on making connections keeps its row (its last
// connection moves on); and a process whose row was deleted, seen again, gets a new
// one: no row ever reads without its process's columns.
func TestHistoryProcsPruned(t *testing.T) {
	const bound = 200
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, bound)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	long := testConn(1) // a process that goes on
	long.Request.Cmdline = "long --running"
	once := testConn(2) // a process seen at the start and at the end
	var all []Conn
	add := func(c Conn) {
		c.Request.ID = engine.RequestID(len(all) + 1)
		c.Time = time.Unix(1_800_000_000, int64(len(all))*int64(time.Millisecond))
		all = append(all, c)
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
		if len(all)%50 == 0 {
			h.Flush()
		}
	}
	add(once)
	for i := range 2000 {
		if i%10 == 0 {
			add(long)
		} else {
			add(testConn(1000 + i)) // a pid and an executable of its own
		}
	}
	h.Flush()
	held := all[len(all)-bound:]
	checkReads(t, "after 2000 processes", h, held)
	rows, unused := procsCount(t, h)
	// Processes are pruned with the last row that names them.
	if rows > bound || unused != 0 {
		t.Fatalf("procs holds %d rows (%d named by no connection) for a history of %d; want at most %d, each named", rows, unused, bound, bound)
	}
	var longRows int
	if err := h.db.Load().QueryRow(`SELECT COUNT(*) FROM procs WHERE cmdline = 'long --running'`).Scan(&longRows); err != nil || longRows != 1 {
		t.Fatalf("the long-running process has %d procs rows, %v; want 1", longRows, err)
	}
	// once's procs row is gone (no row named it): seen again, its row reads whole.
	var onceRows int
	if err := h.db.Load().QueryRow(`SELECT COUNT(*) FROM procs WHERE exe = ?`, once.Request.Exe).Scan(&onceRows); err != nil || onceRows != 0 {
		t.Fatalf("the first process has %d procs rows after its connection was deleted, %v; want 0", onceRows, err)
	}
	add(once)
	add(long)
	h.Flush()
	checkReads(t, "the first process again", h, all[len(all)-bound:])

	// A smaller bound when opened again deletes rows and processes at once.
	h.Close()
	h, err = OpenHistory(path, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	checkReads(t, "opened with a smaller bound", h, all[len(all)-20:])
	if rows, unused := procsCount(t, h); rows > 20 || unused != 0 {
		t.Fatalf("procs holds %d rows (%d named by no connection) after opening with a bound of 20", rows, unused)
	}
}

// TestHistoryProcsDedupe: connections of one process, decided alike, share a procs
// row, within a batch and across batches; connections that differ in any one of
// the columns of procs (the process's, the decision's) get rows of their own, and
// each connection reads back its own.
func TestHistoryProcsDedupe(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	base := testConn(1)
	base.Request.Cmdline = "client --flag"
	base.Request.Netns = "net:[4026531840]"
	base.Request.Container = "docker:" + "cd"
	base.Request.ContainerName = "web"
	variants := map[string]func(r *engine.Request){
		"pid":            func(r *engine.Request) { r.PID++ },
		"uid":            func(r *engine.Request) { r.UID = 1000 },
		"identity":       func(r *engine.Request) { r.Identity = engine.IdentityVerified },
		"exe":            func(r *engine.Request) { r.Exe += "x" },
		"user":           func(r *engine.Request) { r.User = "alice" },
		"cmdline":        func(r *engine.Request) { r.Cmdline += " --more" },
		"container":      func(r *engine.Request) { r.Container = "podman:cd" },
		"identity_note":  func(r *engine.Request) { r.IdentityNote = "another note" },
		"netns":          func(r *engine.Request) { r.Netns = "net:[4026532000]" },
		"unit":           func(r *engine.Request) { r.Unit = "other.service" },
		"app_id":         func(r *engine.Request) { r.AppID = "org.example.Other" },
		"parents":        func(r *engine.Request) { r.Parents = slices.Concat(r.Parents, []string{"/sbin/init"}) },
		"parents order":  func(r *engine.Request) { slices.Reverse(r.Parents) },
		"no parents":     func(r *engine.Request) { r.Parents = nil },
		"container_name": func(r *engine.Request) { r.ContainerName = "db" },
		"direction":      func(r *engine.Request) { r.Direction = engine.Inbound },
		"proto":          func(r *engine.Request) { r.Protocol = engine.UDP },
	}
	// Connections of one process decided otherwise.
	decided := map[string]func(v *engine.Verdict){
		"verdict": func(v *engine.Verdict) { v.Action = engine.Deny },
		"reason":  func(v *engine.Verdict) { v.Reason = engine.ReasonPrompt },
		"rule_id": func(v *engine.Verdict) { v.RuleID++ },
		"mode": func(v *engine.Verdict) {
			v.Mode = engine.ModeLearn
			if base.Verdict.Mode == engine.ModeLearn {
				v.Mode = engine.ModeAsk
			}
		},
	}
	var want []Conn
	rec := func(c Conn) {
		c.Request.ID = engine.RequestID(len(want) + 1)
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
		want = append(want, c)
	}
	rec(base)
	rec(base)
	for _, name := range slices.Sorted(maps.Keys(variants)) {
		c := base
		c.Request.Parents = slices.Clone(base.Request.Parents)
		variants[name](&c.Request)
		if reflect.DeepEqual(c.Request, base.Request) {
			t.Fatalf("variant %s changes nothing", name)
		}
		rec(c)
		rec(c)
	}
	for _, name := range slices.Sorted(maps.Keys(decided)) {
		c := base
		decided[name](&c.Verdict)
		if c.Verdict == base.Verdict {
			t.Fatalf("variant %s changes nothing", name)
		}
		rec(c)
		rec(c)
	}
	h.Flush()
	rec(base) // in a later batch
	h.Flush()
	got, err := h.Recent(100, 0)
	if err != nil {
		t.Fatal(err)
	}
	sameConns(t, "processes differing in one column", got, want)
	if rows, _ := procsCount(t, h); rows != 1+len(variants)+len(decided) {
		t.Fatalf("procs holds %d rows; want %d: one per distinct process and decision", rows, 1+len(variants)+len(decided))
	}
	var per []int
	rows, err := h.db.Load().Query(`SELECT COUNT(*) FROM conns GROUP BY proc ORDER BY proc`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var n int
		rows.Scan(&n)
		per = append(per, n)
	}
	wantPer := []int{3}
	for range len(variants) + len(decided) {
		wantPer = append(wantPer, 2)
	}
	if !slices.Equal(per, wantPer) {
		t.Fatalf("connections per procs row: %v; want %v", per, wantPer)
	}
}

// TestHistoryTimeRangesExact: Timeline and Top over rows written out of time
// order, across many batches (conns_batches), count exactly the rows whose time
// is in the range, as the index of times did; also a row far older than its batch
// (a question answered after a long time) and ranges that meet a batch's span but
// none of its rows.
func TestHistoryTimeRangesExact(t *testing.T) {
	for _, tuning := range []historyTuning{{}, {timeIndex: true}} {
		h, err := openHistory(filepath.Join(t.TempDir(), HistoryFileName), HistoryOptions{MaxRows: 5000, tuning: tuning}, historyQueueLen, historyHold)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		cs := shuffledConns(0, 1500, rng)
		cs[700].Time = cs[700].Time.Add(-2 * time.Hour)
		cs[701].Request.Remote = netip.MustParseAddrPort("[2001:db8::1]:443")
		record(t, h, cs, 89)
		checkReads(t, fmt.Sprintf("%+v", tuning), h, cs)
		// A range holding only the late row, inside its batch's span.
		from := cs[700].Time
		tl, err := h.Timeline(from, from.Add(time.Millisecond), time.Millisecond)
		if err != nil || len(tl) != 1 || tl[0].Allowed+tl[0].Denied+tl[0].Timeout != 1 {
			t.Fatalf("%+v: the late row's timeline: %+v, %v", tuning, tl, err)
		}
		h.Close()
	}
}
