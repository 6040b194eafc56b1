package store

import (
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/engine"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// HistoryFileName is the name of the history database inside the state directory.
const HistoryFileName = "history.db"

// DefaultMaxRows bounds the history when the caller gives no bound.
const DefaultMaxRows = 100_000

// ErrHistoryFull is returned by Record when the write buffer is full and the
// connection was not recorded (it is counted in HistoryStats.Dropped).
var ErrHistoryFull = errors.New("history: write buffer full, connection not recorded")

// ErrHistoryClosed is returned by Record after Close.
var ErrHistoryClosed = errors.New("history: closed")

// Conn is one decided connection in the history.
type Conn struct {
	ID      int64          `json:"id"` // assigned when written; increasing, never reused
	Time    time.Time      `json:"time"`
	Request engine.Request `json:"request"`
	Verdict engine.Verdict `json:"verdict"`
}

// HistoryStats are the history's counters since it was opened.
type HistoryStats struct {
	Recorded uint64 `json:"recorded"` // rows written
	Dropped  uint64 `json:"dropped"`  // connections not recorded because the buffer was full
	Failed   uint64 `json:"failed"`   // connections lost to a database error
	MaxRows  int    `json:"max_rows"`
}

// History is the bounded connection history, an SQLite database in WAL mode. Record
// never waits for the disk: a writer goroutine takes connections from a buffer and
// writes them in batches, then deletes the oldest rows beyond the bound.
type History struct {
	db      *sql.DB
	maxRows int
	queue   chan Conn
	flushes chan chan struct{}
	kick    chan struct{} // Record: the queue is past half full, write now
	done    chan struct{}

	closeMu sync.RWMutex // held for reading while sending to queue; Close takes it to close queue
	closed  bool

	recorded, dropped, failed atomic.Uint64
	lastErr                   atomic.Pointer[string]
}

const (
	historyQueueLen = 8192
	historyBatchMax = 512
	historyFlushGap = 50 * time.Millisecond
)

const historySchema = `
CREATE TABLE IF NOT EXISTS conns (
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
CREATE INDEX IF NOT EXISTS conns_time ON conns(time_ns);
`

// addedColumns are the columns of conns that databases written by earlier versions
// may lack, with the definition that adds them; old rows read the default.
var addedColumns = []struct{ name, def string }{
	{"host", "TEXT NOT NULL DEFAULT ''"},
}

// migrateHistory brings a conns table created by an earlier version up to
// historySchema: CREATE TABLE IF NOT EXISTS leaves an existing table as it is.
func migrateHistory(db *sql.DB) error {
	rows, err := db.Query(`SELECT name FROM pragma_table_info('conns')`)
	if err != nil {
		return fmt.Errorf("reading the conns table's columns: %w", err)
	}
	have := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("reading the conns table's columns: %w", err)
		}
		have[name] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the conns table's columns: %w", err)
	}
	for _, c := range addedColumns {
		if have[c.name] {
			continue
		}
		if _, err := db.Exec(`ALTER TABLE conns ADD COLUMN ` + c.name + ` ` + c.def); err != nil {
			return fmt.Errorf("adding column %s to conns: %w", c.name, err)
		}
	}
	return nil
}

// OpenHistory opens (creating if needed) the history database at path, keeping at most
// maxRows connections (0: DefaultMaxRows); older ones are deleted as new ones arrive.
func OpenHistory(path string, maxRows int) (*History, error) {
	return openHistory(path, maxRows, historyQueueLen)
}

func openHistory(path string, maxRows, queueLen int) (*History, error) {
	if maxRows < 0 {
		return nil, fmt.Errorf("history %s: max rows %d: must not be negative", path, maxRows)
	}
	if maxRows == 0 {
		maxRows = DefaultMaxRows
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	if _, err := db.Exec(historySchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("history %s: creating schema: %w", path, err)
	}
	if err := migrateHistory(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	h := &History{
		db:      db,
		maxRows: maxRows,
		queue:   make(chan Conn, queueLen),
		flushes: make(chan chan struct{}),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	// A smaller bound than the last run's takes effect at once.
	if err := h.prune(); err != nil {
		db.Close()
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	go h.writer()
	return h, nil
}

// Record queues c for writing and returns at once. If the buffer is full the
// connection is dropped, counted, and ErrHistoryFull returned: the decision path never
// waits for the disk.
func (h *History) Record(c Conn) error {
	h.closeMu.RLock()
	defer h.closeMu.RUnlock()
	if h.closed {
		return ErrHistoryClosed
	}
	if c.Time.IsZero() {
		c.Time = time.Now()
	}
	select {
	case h.queue <- c:
		if len(h.queue) >= cap(h.queue)/2 {
			select {
			case h.kick <- struct{}{}:
			default:
			}
		}
		return nil
	default:
		h.dropped.Add(1)
		return ErrHistoryFull
	}
}

// Flush waits until every connection recorded before the call is in the database.
func (h *History) Flush() {
	ack := make(chan struct{})
	select {
	case h.flushes <- ack:
		<-ack
	case <-h.done:
	}
}

// Stats returns the history's counters.
func (h *History) Stats() HistoryStats {
	return HistoryStats{
		Recorded: h.recorded.Load(),
		Dropped:  h.dropped.Load(),
		Failed:   h.failed.Load(),
		MaxRows:  h.maxRows,
	}
}

// LastError is the last database error the writer met, or "".
func (h *History) LastError() string {
	if p := h.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// Close writes what is buffered and closes the database.
func (h *History) Close() error {
	h.closeMu.Lock()
	if h.closed {
		h.closeMu.Unlock()
		return nil
	}
	h.closed = true
	close(h.queue)
	h.closeMu.Unlock()
	<-h.done
	return h.db.Close()
}

// writer moves recorded connections into the database in batches. It wakes once per
// batch, not per connection: after the first connection of a batch it sleeps for
// historyFlushGap (less if the queue fills past half, or a Flush comes), then takes
// everything queued. Waking per connection would cost the decision path a thread
// wake-up on every held connection.
func (h *History) writer() {
	defer close(h.done)
	batch := make([]Conn, 0, historyBatchMax)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var acks []chan struct{}
	closed := false
	// take writes what the queue holds now, and then acknowledges waiting Flushes.
	take := func() {
	drain:
		for !closed {
			select {
			case c, ok := <-h.queue:
				if !ok {
					closed = true
					break drain
				}
				batch = append(batch, c)
				if len(batch) == historyBatchMax {
					h.writeBatch(batch)
					batch = batch[:0]
				}
			default:
				break drain
			}
		}
		if len(batch) > 0 {
			h.writeBatch(batch)
			batch = batch[:0]
		}
		for _, a := range acks {
			close(a)
		}
		acks = acks[:0]
	}
	for !closed {
		// Idle: wait for the first connection of a batch, a Flush, or Close.
		select {
		case c, ok := <-h.queue:
			if !ok {
				closed = true
				take()
				return
			}
			batch = append(batch, c)
		case ack := <-h.flushes:
			// Everything recorded before Flush was called is in the queue already.
			acks = append(acks, ack)
			take()
			continue
		}
		timer.Reset(historyFlushGap)
		select {
		case <-timer.C:
		case <-h.kick:
			timer.Stop()
		case ack := <-h.flushes:
			acks = append(acks, ack)
			timer.Stop()
		}
		take()
	}
}

func (h *History) fail(n int, err error) {
	h.failed.Add(uint64(n))
	s := err.Error()
	h.lastErr.Store(&s)
}

func (h *History) writeBatch(batch []Conn) {
	tx, err := h.db.Begin()
	if err != nil {
		h.fail(len(batch), err)
		return
	}
	stmt, err := tx.Prepare(`INSERT INTO conns (time_ns, direction, proto, local_ip, local_port,
		remote_ip, remote_port, pid, exe, uid, user, cmdline, host, verdict, reason, rule_id)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		tx.Rollback()
		h.fail(len(batch), err)
		return
	}
	for _, c := range batch {
		r := &c.Request
		_, err = stmt.Exec(c.Time.UnixNano(), r.Direction.String(), r.Protocol.String(),
			addrString(r.Local.Addr()), int(r.Local.Port()),
			addrString(r.Remote.Addr()), int(r.Remote.Port()),
			int64(r.PID), r.Exe, int64(r.UID), r.User, r.Cmdline, r.Host,
			c.Verdict.Action.String(), string(c.Verdict.Reason), int64(c.Verdict.RuleID))
		if err != nil {
			break
		}
	}
	stmt.Close()
	if err == nil {
		err = tx.Commit()
	} else {
		tx.Rollback()
	}
	if err != nil {
		h.fail(len(batch), err)
		return
	}
	h.recorded.Add(uint64(len(batch)))
	if err := h.prune(); err != nil {
		h.fail(0, err)
	}
}

// prune deletes the oldest rows beyond maxRows. IDs only grow (AUTOINCREMENT), so
// the newest maxRows rows are those with id > max(id) - maxRows.
func (h *History) prune() error {
	_, err := h.db.Exec(`DELETE FROM conns WHERE id <= (SELECT MAX(id) FROM conns) - ?`, h.maxRows)
	if err != nil {
		return fmt.Errorf("pruning history: %w", err)
	}
	return nil
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

// Recent returns up to n connections, oldest first. With afterID 0 they are the n
// newest; otherwise the first n with an ID greater than afterID (for following).
func (h *History) Recent(n int, afterID int64) ([]Conn, error) {
	if n <= 0 {
		return nil, fmt.Errorf("history: n %d: must be positive", n)
	}
	var rows *sql.Rows
	var err error
	if afterID > 0 {
		rows, err = h.db.Query(`SELECT `+connCols+` FROM conns WHERE id > ? ORDER BY id LIMIT ?`, afterID, n)
	} else {
		rows, err = h.db.Query(`SELECT * FROM (SELECT `+connCols+` FROM conns ORDER BY id DESC LIMIT ?) ORDER BY id`, n)
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return scanConns(rows)
}

// connCols are the columns scanConns reads, in order.
const connCols = `id, time_ns, direction, proto, local_ip, local_port, remote_ip, remote_port,
		pid, exe, uid, user, cmdline, host, verdict, reason, rule_id`

// scanConns reads rows of connCols and closes them.
func scanConns(rows *sql.Rows) ([]Conn, error) {
	defer rows.Close()
	var out []Conn
	for rows.Next() {
		var (
			c                             Conn
			timeNS, pid, uid, ruleID      int64
			localPort, remotePort         int
			dir, proto, localIP, remoteIP string
			verdict, reason               string
		)
		r := &c.Request
		if err := rows.Scan(&c.ID, &timeNS, &dir, &proto, &localIP, &localPort, &remoteIP, &remotePort,
			&pid, &r.Exe, &uid, &r.User, &r.Cmdline, &r.Host, &verdict, &reason, &ruleID); err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		c.Time = time.Unix(0, timeNS)
		r.Time = c.Time
		r.Direction, _ = engine.ParseDirection(dir)
		r.Protocol, _ = engine.ParseProtocol(proto)
		r.Local = addrPort(localIP, localPort)
		r.Remote = addrPort(remoteIP, remotePort)
		r.PID = int32(pid)
		r.UID = int32(uid)
		c.Verdict.Action, _ = engine.ParseAction(verdict)
		c.Verdict.Reason = engine.Reason(reason)
		c.Verdict.RuleID = engine.RuleID(ruleID)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return out, nil
}

// Count returns how many connections the history holds.
func (h *History) Count() (int, error) {
	var n int
	if err := h.db.QueryRow(`SELECT COUNT(*) FROM conns`).Scan(&n); err != nil {
		return 0, fmt.Errorf("history: %w", err)
	}
	return n, nil
}

func addrPort(ip string, port int) netip.AddrPort {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, uint16(port))
}
