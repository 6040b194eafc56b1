package store

import (
	"fmt"
	"time"
)

// Bucket counts the connections decided in one step of a Timeline.
type Bucket struct {
	Start   time.Time `json:"start"`
	Allowed int       `json:"allowed"` // allowed, by a rule or an answer
	Denied  int       `json:"denied"`  // denied, rejected or dropped, by a rule or an answer
	Timeout int       `json:"timeout"` // unanswered: the default applied at the timeout
}

// Count is how many connections one program or host made in a range, by outcome.
type Count struct {
	Key     string `json:"key"` // the executable path or the host (its name, else its address)
	Total   int    `json:"total"`
	Allowed int    `json:"allowed"`
	Denied  int    `json:"denied"`
	Timeout int    `json:"timeout"`
}

// Program is what the history knows of one executable.
type Program struct {
	Exe       string    `json:"exe"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Total     int       `json:"total"`
	Allowed   int       `json:"allowed"`
	Denied    int       `json:"denied"`
	Timeout   int       `json:"timeout"`
}

// outcome sums (allowed, denied, timeout) in SQL: a timeout counts as a timeout
// whatever the default was.
const outcomeCols = `
	SUM(CASE WHEN c.reason != 'timeout' AND c.verdict = 'allow' THEN 1 ELSE 0 END),
	SUM(CASE WHEN c.reason != 'timeout' AND c.verdict != 'allow' THEN 1 ELSE 0 END),
	SUM(CASE WHEN c.reason = 'timeout' THEN 1 ELSE 0 END)`

// maxBuckets bounds a Timeline's length.
const maxBuckets = 10_000

// Timeline counts the connections decided in [from, to) per step, oldest first; every
// step of the range has a bucket, empty ones too.
func (h *History) Timeline(from, to time.Time, step time.Duration) ([]Bucket, error) {
	if step <= 0 {
		return nil, fmt.Errorf("history timeline: step %v: must be positive", step)
	}
	if !to.After(from) {
		return nil, fmt.Errorf("history timeline: %v to %v: empty range", from, to)
	}
	// Sub saturates at the largest Duration: count steps without overflowing.
	d := to.Sub(from)
	steps := d / step
	if d%step != 0 {
		steps++
	}
	if steps > maxBuckets || steps < 0 || d == time.Duration(1<<63-1) {
		return nil, fmt.Errorf("history timeline: %v to %v by %v: more than %d steps", from, to, step, maxBuckets)
	}
	n := int(steps)
	out := make([]Bucket, n)
	for i := range out {
		out[i].Start = from.Add(time.Duration(i) * step)
	}
	db := h.db.Load()
	if db == nil {
		return nil, errHistoryNotOpen
	}
	where, args := h.timeRange("conns_view", from, to)
	rows, err := db.Query(`SELECT (c.time_ns - ?) / ?, `+outcomeCols+` FROM `+where+` GROUP BY 1`,
		append([]any{from.UnixNano(), int64(step)}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("history timeline: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var i int64
		var b Bucket
		if err := rows.Scan(&i, &b.Allowed, &b.Denied, &b.Timeout); err != nil {
			return nil, fmt.Errorf("history timeline: %w", err)
		}
		if i >= 0 && i < int64(n) {
			b.Start = out[i].Start
			out[i] = b
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history timeline: %w", err)
	}
	return out, nil
}

// Top returns the n programs (by "exe") or hosts (by "host": the name if known, else
// the remote address) with the most connections in [from, to), most first.
func (h *History) Top(by string, from, to time.Time, n int) ([]Count, error) {
	var key, table string
	switch by {
	case "exe":
		key, table = "c.exe", "conns_view"
	case "host":
		key, table = "CASE WHEN c.host != '' THEN c.host ELSE c.remote_ip END", "conns_view"
	default:
		return nil, fmt.Errorf("history top: by %q: want exe or host", by)
	}
	if n <= 0 {
		return nil, fmt.Errorf("history top: n %d: must be positive", n)
	}
	db := h.db.Load()
	if db == nil {
		return nil, errHistoryNotOpen
	}
	where, args := h.timeRange(table, from, to)
	rows, err := db.Query(`SELECT `+key+`, COUNT(*), `+outcomeCols+`
		FROM `+where+` GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?`, append(args, n)...)
	if err != nil {
		return nil, fmt.Errorf("history top: %w", err)
	}
	defer rows.Close()
	out := []Count{}
	for rows.Next() {
		var c Count
		if err := rows.Scan(&c.Key, &c.Total, &c.Allowed, &c.Denied, &c.Timeout); err != nil {
			return nil, fmt.Errorf("history top: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history top: %w", err)
	}
	return out, nil
}

// Programs returns every executable in the history with its counts, the most recently
// seen first.
func (h *History) Programs() ([]Program, error) {
	db := h.db.Load()
	if db == nil {
		return nil, errHistoryNotOpen
	}
	rows, err := db.Query(`SELECT c.exe, MIN(c.time_ns), MAX(c.time_ns), COUNT(*), ` + outcomeCols + `
		FROM conns_view c GROUP BY exe ORDER BY 3 DESC, 1`)
	if err != nil {
		return nil, fmt.Errorf("history programs: %w", err)
	}
	defer rows.Close()
	out := []Program{}
	for rows.Next() {
		var p Program
		var first, last int64
		if err := rows.Scan(&p.Exe, &first, &last, &p.Total, &p.Allowed, &p.Denied, &p.Timeout); err != nil {
			return nil, fmt.Errorf("history programs: %w", err)
		}
		p.FirstSeen, p.LastSeen = time.Unix(0, first), time.Unix(0, last)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history programs: %w", err)
	}
	return out, nil
}

// ProgramConns returns the n newest connections of the executable exe, oldest first.
func (h *History) ProgramConns(exe string, n int) ([]Conn, error) {
	if n <= 0 {
		return nil, fmt.Errorf("history: n %d: must be positive", n)
	}
	db := h.db.Load()
	if db == nil {
		return nil, errHistoryNotOpen
	}
	// The rows naming exe's procs rows (and, in a history an earlier version
	// wrote, its rows that hold their process inline), newest first, read from
	// conns alone; then those rows through conns_view. Reading conns_view newest
	// first would look up the procs row of every row it passes.
	match := `proc IN (SELECT id FROM procs WHERE exe = ?1)`
	if h.inline {
		match += ` OR proc = 0 AND exe = ?1`
	}
	rows, err := h.query(db, `SELECT `+connCols+` FROM conns_view
		WHERE id IN (SELECT id FROM conns WHERE `+match+` ORDER BY id DESC LIMIT ?2) ORDER BY id`, exe, n)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return scanConns(rows)
}

// timeRange returns the FROM and WHERE clauses, and their arguments, that select
// the rows of table (conns or conns_view, named c) with a time in [from, to). The
// rows are found through conns_batches: those of the batches whose span of times
// meets the range (a span of ids each, the rows' primary key), then filtered by
// their own time.
func (h *History) timeRange(table string, from, to time.Time) (string, []any) {
	f, t := from.UnixNano(), to.UnixNano()
	if h.tuning.timeIndex {
		return table + ` c WHERE c.time_ns >= ? AND c.time_ns < ?`, []any{f, t}
	}
	// CROSS JOIN: the batches first, then their rows.
	return `conns_batches b CROSS JOIN ` + table + ` c ON c.id BETWEEN b.min_id AND b.max_id
		WHERE b.max_time >= ? AND b.min_time < ? AND c.time_ns >= ? AND c.time_ns < ?`, []any{f, t, f, t}
}
