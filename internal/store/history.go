package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/latchfw/latch/internal/engine"

	"modernc.org/sqlite" // registers the "sqlite" driver
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
	// BytesIn and BytesOut are what the flow moved, received and sent by the local
	// program, as last reported by RecordTraffic (0 until then, and for flows that
	// were not allowed).
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
}

// Traffic is one report of an allowed flow's bytes: the totals since it began, and
// what it moved since its previous report.
type Traffic struct {
	Time     time.Time
	Request  engine.Request // the flow's request as recorded (ID, Exe, UID, User)
	BytesIn  uint64
	BytesOut uint64
	DeltaIn  uint64
	DeltaOut uint64
	Ended    bool
}

// historyItem is a connection to insert or a traffic report to apply, in the order
// they were recorded. A report is held in the item itself, not behind a pointer (a
// heap object per report): conn holds its Time, Request and totals (BytesIn,
// BytesOut), delta its bytes since the flow's previous report.
type historyItem struct {
	conn Conn
	// report: the item is a traffic report (see trafficItem), not a connection.
	report            bool
	deltaIn, deltaOut uint64
	// ended: a connection whose flow's end report was merged into its row: no
	// more reports are expected for it; a report: the flow's end report.
	ended bool
}

// trafficItem is the item of the report t.
func trafficItem(t *Traffic) historyItem {
	return historyItem{conn: Conn{Time: t.Time, Request: t.Request, BytesIn: t.BytesIn, BytesOut: t.BytesOut},
		report: true, deltaIn: t.DeltaIn, deltaOut: t.DeltaOut, ended: t.Ended}
}

// HistoryStats are the history's counters since it was opened.
type HistoryStats struct {
	Recorded uint64 `json:"recorded"` // rows written
	Dropped  uint64 `json:"dropped"`  // connections not recorded because the buffer was full
	Failed   uint64 `json:"failed"`   // connections lost to a database error
	// NoSpace counts connections not recorded because the disk had less free space
	// than MinFree.
	NoSpace uint64 `json:"no_space"`
	// Stopped: the history is not writing now, for lack of free space.
	Stopped bool  `json:"stopped"`
	MinFree int64 `json:"min_free"` // bytes of free space below which writing stops
	MaxRows int   `json:"max_rows"`
}

// HistoryOptions configure OpenHistoryOptions.
type HistoryOptions struct {
	// MaxRows bounds the history; 0: DefaultMaxRows.
	MaxRows int
	// MinFree: while the file system holding the database has less free space than
	// this, connections are counted (HistoryStats.NoSpace), not written, so the
	// history never takes the last of the disk. 0: DefaultMinFree of the file
	// system's size; negative: no floor.
	MinFree int64
	// Logf, if set, hears once when writing stops for lack of space and once when
	// it resumes.
	Logf func(format string, args ...any)

	// tuning: what the writer does the way earlier versions did (for the
	// benchmarks that compare them); the zero value is today's.
	tuning historyTuning
}

// historyTuning switches the writer's cost savings off, one by one, to measure
// each against the way it was done before.
type historyTuning struct {
	// fullReqIndex: every row's request ID is written and indexed (conns_req),
	// not only those of flows that may still be reported (conns_open).
	fullReqIndex bool
	// inlineProcs: every row holds its process's columns (inlineSchema), as
	// versions before procs wrote them.
	inlineProcs bool
	// timeIndex: the rows' times are indexed (conns_time), as versions before
	// conns_batches did.
	timeIndex bool
	// rowidsOfEnded: the rowids of rows whose flow's end was merged into them
	// are in rowWriter.rowids too (a map entry each), as versions before had
	// them, not only in its ring.
	rowidsOfEnded bool
	// procsByValues: the procs rows' last_conn are set with one UPDATE ... FROM
	// (VALUES ...) per chunk however few they are, as versions before did.
	procsByValues bool
	// pruneAfter: the bound deletes the oldest rows after a batch's rows are
	// in, as versions before pruneAhead did.
	pruneAfter bool
	// walLimit is the write-ahead log's journal_size_limit (0:
	// historyWALLimit); versions before had 1 MiB.
	walLimit int
}

// historyWALLimit is the size the write-ahead log is cut back to after a
// checkpoint (journal_size_limit), so that it gives back the room a flood (or
// a long read holding back checkpoints) made it take. It is above the log's
// own size between checkpoints (SQLite checkpoints once the log holds 1000
// pages, 4 MiB of 4 KiB pages, and the last transaction's): a limit below
// that (1 MiB before) had the log cut back after every checkpoint, and the
// transactions after it write at its end again, growing the file a block at a
// time: on ext4 such a write took 19 µs under strace, one over the log's old
// pages 14 µs, and the commit's writes were two fifths of the writer's CPU for
// test/bench's transactions of 200 rows (-25% CPU per row with this limit,
// BenchmarkHistoryWriteBatchTuning). After a checkpoint the log keeps its
// size (some 4 MiB) where it was cut to 1 MiB.
const historyWALLimit = 6 << 20

// DefaultMinFree is the free-space floor of the history on a file system of total
// bytes: 1/32 of it, from 16 KiB to 256 MiB.
func DefaultMinFree(total int64) int64 {
	return min(max(total/32, 16<<10), 256<<20)
}

// History is the bounded connection history, an SQLite database in WAL mode. Record
// never waits for the disk: a writer goroutine takes connections from a buffer and
// writes them in batches, then deletes the oldest rows beyond the bound.
type History struct {
	// db is nil while the database could not be opened for lack of space; the
	// writer opens it once there is room.
	db      atomic.Pointer[sql.DB]
	path    string
	maxRows int
	queue   itemQueue
	hold    time.Duration // historyHold, but for tests
	run     int64         // this opening's start (ns): with a request ID, it names a row
	// trafficTable: the traffic table exists (see trafficSchema).
	trafficTable atomic.Bool
	// inline: the conns table has the processes' columns (inlineSchema: written
	// by an earlier version); new rows leave them empty unless tuning.inlineProcs.
	inline  bool
	flushes chan chan struct{}
	// wake: an idle writer has something to take (the queue was empty), or
	// the history is closing.
	wake chan struct{}
	kick chan struct{} // Record: the queue is past half full, write now
	done chan struct{}
	w    *rowWriter // the writer goroutine's connection; nil until needed

	// reports is rowHold.reports, for writeItems (writer goroutine only).
	reports bool
	// totals are the bytes of the reports taken since the last batch, by
	// program, for the traffic table (writer goroutine only).
	totals programTotals

	recorded, dropped, failed, noSpace atomic.Uint64
	// updates counts the traffic reports that set a written row's bytes with an
	// UPDATE (those that did not land in their row's INSERT).
	updates atomic.Uint64
	lastErr atomic.Pointer[string]

	tuning historyTuning

	// stmts holds the prepared statements of the readers that return a few rows
	// (query text → *sql.Stmt, see query): preparing a statement over conns_view
	// costs about as much as reading 50 rows with it.
	stmts sync.Map

	dir     string // holds the database: its free space is watched
	minFree int64  // < 0: no floor
	logf    func(format string, args ...any)
	spaceMu sync.Mutex
	stopped atomic.Bool // below the floor at the last look
	// failedFree is the free space when opening the database last failed for lack
	// of room; it is tried again only once there is more. spaceMu guards it.
	failedFree int64
}

const (
	historyQueueLen = 8192
	// historyBatchMax is the most connections one transaction writes. A
	// transaction costs the writer about as much as 150 fast-path rows (its
	// commit writes a dozen pages besides the rows', and it writes procs,
	// conns_batches, traffic and prunes): under a load that fills a batch in
	// less than historyFlushGap, 2048 rows per transaction cost about 15% less
	// CPU per row than 512 did. The traffic reports among them do not count: an
	// end report per short connection would halve the rows per transaction.
	// historyBatchItems bounds them all.
	historyBatchMax   = 2048
	historyBatchItems = 4096
	// historyRoomUnit is the unit of free space the history wants (see
	// batchRoom): once stopped for lack of space, it writes again when a batch
	// of this many rows fits.
	historyRoomUnit = 512
	historyFlushGap = 50 * time.Millisecond
	// historyHold is how long the writer holds a connection's row after taking it
	// from the queue before it writes it (see writer). The byte accountant reports
	// a short connection's end a few milliseconds after its row is recorded (it
	// drains 2 ms after the fast path hands a burst over, and every 50 ms), so
	// reports up to 50-100 ms after their connection land in the row's INSERT (a
	// row waits 0-50 ms in the queue, more under a steady load, then is held 50
	// ms more, up to 100 ms until the writer's next write, see writer). Queries
	// Flush first, so the hold delays nothing a user reads.
	historyHold = historyFlushGap
	// historyHoldMax and historyHoldBytes bound the rows held: a flood writes the
	// oldest at once instead of holding more. A fast-path row takes about 700 bytes.
	historyHoldMax   = 4096
	historyHoldBytes = 8 << 20
)

// historySchema is the schema of a new history. A connection's row holds what is
// its own (time, addresses, host, bytes); what is the same for every connection of
// a process decided alike — the process's columns (pid, executable, user, command
// line, identity, container, unit, parents...) and the decision's (direction,
// protocol, verdict, reason, rule, mode) — is one row of procs, which the
// connection's row names (proc). The writer keeps the procs rows it wrote in memory
// and writes one only for a combination it has not written yet: a connection's row
// binds 10 values where it bound 20 (a fast-path row), and has 13 columns besides
// its id where it had 31.
// conns_view reads a connection's row with the columns of its procs row, as earlier
// versions stored them all in the row (see connsView).
//
// There is no index of the connections' times: conns_batches holds each written
// batch's span of ids and of times (see timeRange), a row per batch instead of an
// index entry per row.
const historySchema = `
CREATE TABLE IF NOT EXISTS conns (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	time_ns     INTEGER NOT NULL,
	local_ip    TEXT    NOT NULL,
	local_port  INTEGER NOT NULL,
	remote_ip   TEXT    NOT NULL,
	remote_port INTEGER NOT NULL,
	host        TEXT    NOT NULL DEFAULT '',
	host_source TEXT    NOT NULL DEFAULT '',
	note        TEXT    NOT NULL DEFAULT '',
	run_ns      INTEGER NOT NULL DEFAULT 0,
	req_id      INTEGER NOT NULL DEFAULT 0,
	bytes_in    INTEGER NOT NULL DEFAULT 0,
	bytes_out   INTEGER NOT NULL DEFAULT 0,
	proc        INTEGER NOT NULL DEFAULT 0
);
`

// inlineSchema is the conns table of earlier versions: every row holds its
// process's and decision's columns itself, and conns_time indexes the rows' times.
// Histories written so keep their table (it is not rewritten): their rows read as
// they were, and new rows name a procs row (proc) with those columns empty.
const inlineSchema = `
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
	rule_id     INTEGER NOT NULL,
	identity    TEXT    NOT NULL DEFAULT '',
	container   TEXT    NOT NULL DEFAULT '',
	identity_note TEXT  NOT NULL DEFAULT '',
	host_source TEXT    NOT NULL DEFAULT '',
	note        TEXT    NOT NULL DEFAULT '',
	run_ns      INTEGER NOT NULL DEFAULT 0,
	req_id      INTEGER NOT NULL DEFAULT 0,
	bytes_in    INTEGER NOT NULL DEFAULT 0,
	bytes_out   INTEGER NOT NULL DEFAULT 0,
	netns       TEXT    NOT NULL DEFAULT '',
	mode        TEXT    NOT NULL DEFAULT 'ask',
	unit        TEXT    NOT NULL DEFAULT '',
	app_id      TEXT    NOT NULL DEFAULT '',
	parents     TEXT    NOT NULL DEFAULT '',
	container_name TEXT NOT NULL DEFAULT ''
);
`

// timeIndex is the index of the connections' times that earlier versions had,
// which conns_batches replaces (historyTuning.timeIndex keeps it).
const timeIndex = `CREATE INDEX IF NOT EXISTS conns_time ON conns(time_ns);`

// procsSchema holds the processes connections were made by, with how they were
// decided, a row per distinct set of those columns (procColumns). last_conn is the
// id of the newest connection row that names it: once the bound deletes the rows up
// to it, no row names it any more, and it goes too. Its index (procs_last) has an
// entry per procs row, updated once per batch that names the row, not per
// connection.
const procsSchema = `
CREATE TABLE IF NOT EXISTS procs (
	id             INTEGER PRIMARY KEY,
	last_conn      INTEGER NOT NULL,
	pid            INTEGER NOT NULL,
	exe            TEXT    NOT NULL,
	uid            INTEGER NOT NULL,
	user           TEXT    NOT NULL,
	cmdline        TEXT    NOT NULL,
	identity       TEXT    NOT NULL,
	container      TEXT    NOT NULL,
	identity_note  TEXT    NOT NULL,
	netns          TEXT    NOT NULL,
	unit           TEXT    NOT NULL,
	app_id         TEXT    NOT NULL,
	parents        TEXT    NOT NULL,
	container_name TEXT    NOT NULL,
	direction      TEXT    NOT NULL,
	proto          TEXT    NOT NULL,
	verdict        TEXT    NOT NULL,
	reason         TEXT    NOT NULL,
	rule_id        INTEGER NOT NULL,
	mode           TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS procs_last ON procs(last_conn);
`

// batchesSchema holds, per batch the writer wrote, its span of connection ids
// and the earliest and latest time of its rows. Rows are written nearly in time
// order, but not exactly (a question answered after 30 s is written after rows of
// later connections): a time range's rows are those of the batches whose span of
// times meets the range, filtered by their own time (see timeRange), exactly what
// an index of the times finds.
const batchesSchema = `
CREATE TABLE IF NOT EXISTS conns_batches (
	max_id   INTEGER PRIMARY KEY,
	min_id   INTEGER NOT NULL,
	min_time INTEGER NOT NULL,
	max_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS conns_batches_time ON conns_batches(max_time);
`

// procColumns are the columns of procs that hold a process's values and its
// connection's decision, as connsView reads them, with the value a row without a
// procs row reads.
var procColumns = []struct{ name, zero string }{
	{"pid", "0"}, {"exe", "''"}, {"uid", "0"}, {"user", "''"}, {"cmdline", "''"},
	{"identity", "''"}, {"container", "''"}, {"identity_note", "''"}, {"netns", "''"},
	{"unit", "''"}, {"app_id", "''"}, {"parents", "''"}, {"container_name", "''"},
	{"direction", "''"}, {"proto", "''"}, {"verdict", "''"}, {"reason", "''"}, {"rule_id", "0"}, {"mode", "'ask'"},
}

// trafficSchema holds what programs moved over time, one row per traffic report with
// the bytes since the flow's previous one. It is created with the first report, with
// the index that finds a report's connection (connsOpenIndex), so a history without
// byte accounting takes no room for them.
const trafficSchema = `
CREATE TABLE IF NOT EXISTS traffic (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	time_ns     INTEGER NOT NULL,
	exe         TEXT    NOT NULL,
	uid         INTEGER NOT NULL,
	user        TEXT    NOT NULL,
	bytes_in    INTEGER NOT NULL,
	bytes_out   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS traffic_time ON traffic(time_ns);
`

// connsOpenIndex finds the row of a flow that may still be reported, by request ID,
// for a traffic report that comes after its row was written (and after the
// writer forgot its rowid, see rowWriter.rowids). Only those rows have a request
// ID: a row whose flow was not allowed, or whose end was reported before it was
// written, gets none (0) and no entry, which spares most rows of short
// connections an index entry to write, and to delete when the row is pruned.
// Versions before indexed every row's request ID (conns_req).
const connsOpenIndex = `CREATE INDEX IF NOT EXISTS conns_open ON conns(req_id) WHERE req_id <> 0;`

// legacyReqIndex is the index of every row's request ID that versions before
// conns_open had (historyTuning.fullReqIndex).
const legacyReqIndex = `CREATE INDEX IF NOT EXISTS conns_req ON conns(req_id);`

// addedColumns are the columns of conns that databases written by earlier versions
// may lack, with the definition that adds them; old rows read the default. proc:
// rows written before procs name none (0), and hold their process's columns.
var addedColumns = []struct{ name, def string }{
	{"host", "TEXT NOT NULL DEFAULT ''"},
	// Rows written before latch verified program identities read identity "": not
	// checked (engine.IdentityUnknown).
	{"identity", "TEXT NOT NULL DEFAULT ''"},
	{"container", "TEXT NOT NULL DEFAULT ''"},
	{"identity_note", "TEXT NOT NULL DEFAULT ''"},
	// Rows written before names were kept per program read host_source "".
	{"host_source", "TEXT NOT NULL DEFAULT ''"},
	{"note", "TEXT NOT NULL DEFAULT ''"},
	{"run_ns", "INTEGER NOT NULL DEFAULT 0"},
	{"req_id", "INTEGER NOT NULL DEFAULT 0"},
	{"bytes_in", "INTEGER NOT NULL DEFAULT 0"},
	{"bytes_out", "INTEGER NOT NULL DEFAULT 0"},
	{"netns", "TEXT NOT NULL DEFAULT ''"},
	// Rows written before latch had modes were decided in what is now mode ask.
	{"mode", "TEXT NOT NULL DEFAULT 'ask'"},
	{"unit", "TEXT NOT NULL DEFAULT ''"},
	{"app_id", "TEXT NOT NULL DEFAULT ''"},
	// The ancestors' executables, parent first, each ending in a NUL byte.
	{"parents", "TEXT NOT NULL DEFAULT ''"},
	// The name docker or podman gives the container (rows from before: none).
	{"container_name", "TEXT NOT NULL DEFAULT ''"},
	{"proc", "INTEGER NOT NULL DEFAULT 0"},
}

// isProcColumn reports whether name is one of procColumns.
func isProcColumn(name string) bool {
	for _, c := range procColumns {
		if c.name == name {
			return true
		}
	}
	return false
}

// migrateHistory brings a conns table created by an earlier version up to
// date: CREATE TABLE IF NOT EXISTS leaves an existing table as it is. It reports
// whether the table holds the processes' columns (inlineSchema): a table written
// by versions before procs, whose rows keep them.
func migrateHistory(db *sql.DB) (inline bool, err error) {
	rows, err := db.Query(`SELECT name FROM pragma_table_info('conns')`)
	if err != nil {
		return false, fmt.Errorf("reading the conns table's columns: %w", err)
	}
	have := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return false, fmt.Errorf("reading the conns table's columns: %w", err)
		}
		have[name] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("reading the conns table's columns: %w", err)
	}
	inline = have["exe"]
	for _, c := range addedColumns {
		if have[c.name] || !inline && isProcColumn(c.name) {
			continue
		}
		// Adding a column rewrites no row: old rows read its default.
		if _, err := db.Exec(`ALTER TABLE conns ADD COLUMN ` + c.name + ` ` + c.def); err != nil {
			return false, fmt.Errorf("adding column %s to conns: %w", c.name, err)
		}
	}
	return inline, nil
}

// connsView makes conns_view: a connection's row with its process's columns, from
// procs, or for a row of an earlier version (proc 0), from the row itself (inline:
// the table has them).
func connsView(inline bool) string {
	var b strings.Builder
	b.WriteString("DROP VIEW IF EXISTS conns_view;\nCREATE VIEW conns_view AS SELECT c.id AS id")
	for _, col := range connColumns {
		if col.name != "proc" {
			fmt.Fprintf(&b, ", c.%s AS %[1]s", col.name)
		}
	}
	for _, col := range procColumns {
		other := col.zero
		if inline {
			other = "c." + col.name
		}
		fmt.Fprintf(&b, ", ifnull(p.%s, %s) AS %[1]s", col.name, other)
	}
	b.WriteString(" FROM conns c LEFT JOIN procs p ON p.id = c.proc;")
	return b.String()
}

// batchRows is how many rows of a history written before conns_batches one of its
// rows covers (see migrateBatches).
const batchRows = 512

// migrateBatches makes conns_batches cover every row: rows written before it (or
// by an earlier version, after it) get a row per batchRows ids, found by reading
// them once (they are not rewritten). Then the index of times goes.
func migrateBatches(db *sql.DB) error {
	_, err := db.Exec(batchesSchema + `
		INSERT INTO conns_batches (max_id, min_id, min_time, max_time)
			SELECT MAX(id), MIN(id), MIN(time_ns), MAX(time_ns) FROM conns
			WHERE id > (SELECT ifnull(MAX(max_id), 0) FROM conns_batches)
			GROUP BY id / ` + fmt.Sprint(batchRows) + `;
		DROP INDEX IF EXISTS conns_time;`)
	if err != nil {
		return fmt.Errorf("listing the connections' times by batch (conns_batches): %w", err)
	}
	return nil
}

// migrateReqIndex replaces the index of every row's request ID that earlier
// versions made (conns_req) with conns_open.
func (h *History) migrateReqIndex(db *sql.DB) error {
	if h.tuning.fullReqIndex || !h.trafficTable.Load() {
		return nil
	}
	if _, err := db.Exec(`DROP INDEX IF EXISTS conns_req; ` + connsOpenIndex); err != nil {
		return fmt.Errorf("replacing the index conns_req with conns_open: %w", err)
	}
	return nil
}

// OpenHistory opens (creating if needed) the history database at path, keeping at most
// maxRows connections (0: DefaultMaxRows); older ones are deleted as new ones arrive.
// Writing stops while free space is below DefaultMinFree (see OpenHistoryOptions).
func OpenHistory(path string, maxRows int) (*History, error) {
	return openHistory(path, HistoryOptions{MaxRows: maxRows}, historyQueueLen, historyHold)
}

// OpenHistoryOptions opens (creating if needed) the history database at path with o.
func OpenHistoryOptions(path string, o HistoryOptions) (*History, error) {
	return openHistory(path, o, historyQueueLen, historyHold)
}

func openHistory(path string, o HistoryOptions, queueLen int, hold time.Duration) (*History, error) {
	maxRows := o.MaxRows
	if maxRows < 0 {
		return nil, fmt.Errorf("history %s: max rows %d: must not be negative", path, maxRows)
	}
	if maxRows == 0 {
		maxRows = DefaultMaxRows
	}
	dir := filepath.Dir(path)
	minFree := o.MinFree
	if minFree == 0 {
		_, total, err := diskSpace(dir)
		if err != nil {
			return nil, fmt.Errorf("history %s: %w", path, err)
		}
		minFree = DefaultMinFree(total)
	}
	h := &History{
		path:    path,
		maxRows: maxRows,
		queue:   itemQueue{max: queueLen},
		wake:    make(chan struct{}, 1),
		hold:    hold,
		run:     time.Now().UnixNano(),
		flushes: make(chan chan struct{}),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		dir:     dir,
		minFree: minFree,
		logf:    o.Logf,
		tuning:  o.tuning,
	}
	if h.logf == nil {
		h.logf = func(string, ...any) {}
	}
	if err := h.open(); err != nil {
		if !h.isDiskFull(err) || h.minFree < 0 {
			return nil, err
		}
		// A full disk does not keep the daemon from starting: the history stays
		// closed, counting what it cannot record, until there is room.
		h.openFailed(err)
	}
	go h.writer()
	return h, nil
}

// open opens the database, creating or upgrading its schema, and applies the bound.
func (h *History) open() error {
	if err := privateHistoryFiles(h.path); err != nil {
		return err
	}
	// journal_size_limit: the write-ahead log gives its room back after a checkpoint
	// instead of keeping its largest size for ever (see historyWALLimit).
	walLimit := historyWALLimit
	if h.tuning.walLimit != 0 {
		walLimit = h.tuning.walLimit
	}
	dsn := "file:" + h.path + fmt.Sprintf("?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)&_pragma=journal_size_limit(%d)", walLimit)
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("history %s: %w", h.path, err)
	}
	schema := historySchema
	if h.tuning.inlineProcs {
		schema = inlineSchema
	}
	if _, err := db.Exec(schema + procsSchema); err != nil {
		db.Close()
		return fmt.Errorf("history %s: creating schema: %w", h.path, err)
	}
	inline, err := migrateHistory(db)
	if err != nil {
		db.Close()
		return fmt.Errorf("history %s: %w", h.path, err)
	}
	if h.tuning.inlineProcs && !inline {
		db.Close()
		return fmt.Errorf("history %s: written with procs, cannot be written with every row's process inline", h.path)
	}
	h.inline = inline
	if h.tuning.timeIndex {
		_, err = db.Exec(`DROP TABLE IF EXISTS conns_batches; ` + timeIndex)
	} else {
		err = migrateBatches(db)
	}
	if err != nil {
		db.Close()
		return fmt.Errorf("history %s: %w", h.path, err)
	}
	if _, err := db.Exec(connsView(inline)); err != nil {
		db.Close()
		return fmt.Errorf("history %s: creating conns_view: %w", h.path, err)
	}
	h.trafficTable.Store(hasTable(db, "traffic"))
	if err := h.migrateReqIndex(db); err != nil {
		db.Close()
		return fmt.Errorf("history %s: %w", h.path, err)
	}
	// A smaller bound than the last run's takes effect at once.
	if err := prune(db, h.maxRows); err != nil {
		db.Close()
		return fmt.Errorf("history %s: %w", h.path, err)
	}
	// The schema's pages go into the database now: the write-ahead log starts
	// empty, and takes no more room than before there were procs and batches.
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		db.Close()
		return fmt.Errorf("history %s: checkpoint: %w", h.path, err)
	}
	h.db.Store(db)
	return nil
}

// openFailed notes that the database could not be opened for lack of room.
func (h *History) openFailed(err error) {
	h.spaceMu.Lock()
	defer h.spaceMu.Unlock()
	h.failedFree, _, _ = diskSpace(h.dir)
	if !h.stopped.Swap(true) {
		h.logf("history: stopped writing: %v; connections are counted (no_space), not recorded, until there is room again", err)
	}
}

// isDiskFull reports whether err is SQLite's "database or disk is full", or an I/O
// error (such as failing to grow the shared-memory file) while the disk has less
// free space than a batch needs above the floor.
func (h *History) isDiskFull(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case 13: // SQLITE_FULL
		return true
	case 10: // SQLITE_IOERR
		free, _, serr := diskSpace(h.dir)
		return serr == nil && free-batchRoom(historyRoomUnit) < h.minFree
	}
	return false
}

// errHistoryNotOpen answers queries while the database could not be opened.
var errHistoryNotOpen = errors.New("history: not open (the disk was full)")

// itemQueue holds the items recorded and not yet taken by the writer, at most
// max. Producers append under mu; the writer takes them all at once (take),
// swapping in the slice it emptied before: a connection costs its producer one
// uncontended lock and one copy of the item, where a channel cost a lock the
// writer took too for every item it received (the runtime's, spinning when both
// sides met), a copy into the channel and another out of it.
type itemQueue struct {
	mu     sync.Mutex
	items  []historyItem
	max    int
	closed bool
}

// put appends an item set by fill to q, and reports how many items q holds then
// (0: full, not added) and whether q is closed (nothing added).
func (q *itemQueue) put(fill func(*historyItem)) (n int, closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, true
	}
	if len(q.items) >= q.max {
		return 0, false
	}
	q.items = append(q.items, historyItem{})
	fill(&q.items[len(q.items)-1])
	return len(q.items), false
}

// take returns the items queued, and whether q was closed when they were taken:
// then nothing comes after them. The items are the caller's until its next
// take, which hands them back (spare: the slice the last take returned, which
// the caller emptied) for q to append to.
func (q *itemQueue) take(spare []historyItem) (items []historyItem, closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	items, q.items = q.items, spare[:0]
	return items, q.closed
}

// len is how many items q holds.
func (q *itemQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// close closes q, and reports whether it was open.
func (q *itemQueue) close() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	was := !q.closed
	q.closed = true
	return was
}

// Record queues c for writing and returns at once. If the buffer is full the
// connection is dropped, counted, and ErrHistoryFull returned: the decision path never
// waits for the disk.
func (h *History) Record(c Conn) error {
	return h.enqueue(func(it *historyItem) {
		it.conn = c
		if it.conn.Time.IsZero() {
			it.conn.Time = time.Now()
		}
	})
}

// RecordDecision is Record of the connection req decided as v at time at (zero:
// now): its row is built in place in the queue from *req, which the caller
// keeps, instead of from a Conn copied on its way (the fast path records a row
// per connection, and a Conn is some 400 bytes).
func (h *History) RecordDecision(at time.Time, req *engine.Request, v engine.Verdict) error {
	if at.IsZero() {
		at = time.Now()
	}
	return h.enqueue(func(it *historyItem) {
		it.conn.Time, it.conn.Request, it.conn.Verdict = at, *req, v
	})
}

// RecordTraffic queues a report of a recorded connection's bytes and returns at
// once: the connection's row (the one Record wrote for the same Request.ID during
// this opening) gets the totals, and the bytes since its last report count for
// its program in Top. A full buffer drops it as Record does.
func (h *History) RecordTraffic(t Traffic) error {
	if t.Time.IsZero() {
		t.Time = time.Now()
	}
	return h.enqueue(func(it *historyItem) { *it = trafficItem(&t) })
}

// enqueue queues an item set by fill for the writer (the queue's is the only
// copy made), waking it if it was idle, and kicking it once the queue is half
// full.
func (h *History) enqueue(fill func(*historyItem)) error {
	n, closed := h.queue.put(fill)
	switch {
	case closed:
		return ErrHistoryClosed
	case n == 0:
		h.dropped.Add(1)
		return ErrHistoryFull
	case n == 1:
		signal(h.wake)
	}
	if n >= h.queue.max/2 {
		signal(h.kick)
	}
	return nil
}

// signal sends on c (of capacity 1) unless a signal is pending already.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
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
		NoSpace:  h.noSpace.Load(),
		Stopped:  !h.roomToWrite(),
		MinFree:  h.minFree,
		MaxRows:  h.maxRows,
	}
}

// roomToWrite looks at the free space of the database's file system and reports
// whether the history may write (see roomFor), logging when that changes. If the space
// cannot be read, writing goes on (and a full disk shows as failed writes).
func (h *History) roomToWrite() bool { return h.roomFor(0) }

// batchRoom is what writing n connections may take on disk, generously: a row and
// its index entry in the write-ahead log, the same pages again when a checkpoint
// copies them into the database, and a few pages of B-tree and log overhead.
func batchRoom(n int) int64 { return int64(n)*2048 + 32<<10 }

// roomFor reports whether writing n more connections leaves at least the floor
// free.
func (h *History) roomFor(n int) bool {
	if h.minFree < 0 {
		return true
	}
	h.spaceMu.Lock()
	defer h.spaceMu.Unlock()
	free, _, err := diskSpace(h.dir)
	if err != nil {
		return !h.stopped.Load()
	}
	// Stop when the batch would take the free space below the floor; resume only
	// once a full batch fits again, so that the history does not flap at the edge.
	var below bool
	if h.stopped.Load() {
		below = free-batchRoom(historyRoomUnit) < h.minFree
	} else {
		below = free-batchRoom(n) < h.minFree
	}
	below = below || h.db.Load() == nil && free <= h.failedFree
	if below != h.stopped.Load() {
		h.stopped.Store(below)
		if below {
			h.logf("history: stopped writing: %d bytes free on %s, below the floor of %d; connections are counted (no_space), not recorded, until there is room again", free, h.dir, h.minFree)
		} else {
			h.logf("history: writing again: %d bytes free on %s (floor %d)", free, h.dir, h.minFree)
		}
	}
	return !below
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
	if !h.queue.close() {
		return nil
	}
	// The writer writes what it holds now, idle or not.
	signal(h.wake)
	signal(h.kick)
	<-h.done
	if db := h.db.Load(); db != nil {
		return db.Close()
	}
	return nil
}

// writer moves recorded connections into the database in batches. It wakes once per
// batch, not per connection: after the first connection of a batch it sleeps for
// historyFlushGap (less if the queue fills past half, or a Flush comes), then takes
// everything queued. Waking per connection would cost the decision path a thread
// wake-up on every held connection.
//
// A connection's row is not written at once: the writer holds it for historyHold
// after taking it (see rowHold), so that the end-of-flow traffic report of a short
// connection, which the byte accountant sends tens of milliseconds after the
// connection, lands in the row's INSERT instead of costing an UPDATE later. While
// rows are held it writes at most once per two holds (a transaction per two
// historyFlushGap under a steady load, see the wait below). A Flush or Close
// writes the held rows at once.
func (h *History) writer() {
	defer close(h.done)
	defer h.closeWriter()
	hold := rowHold{hold: h.hold, at: map[engine.RequestID]uint64{}}
	batch := make([]historyItem, 0, historyBatchMax)
	conns := 0 // in batch
	// write adds an item to the batch, writing the batch once it is full: a
	// transaction writes up to historyBatchMax connections, and the reports
	// between them (at most historyBatchItems items).
	write := func(it *historyItem) {
		h.reports = hold.reports
		batch = append(batch, *it)
		if !it.report {
			conns++
		}
		if conns == historyBatchMax || len(batch) == historyBatchItems {
			h.writeBatch(batch)
			clear(batch) // let the values go
			batch, conns = batch[:0], 0
		}
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var acks []chan struct{}
	closed := false
	var items []historyItem // the queue's items taken last
	// wrote is when take last wrote a batch (see the wait for held rows below).
	var wrote time.Time
	// take takes what the queue holds now, writes the rows held long enough (all of
	// them for a Flush or on Close) and the reports, and then acknowledges waiting
	// Flushes.
	take := func() {
		now := time.Now()
		// Until the queue is empty: what came while the writer took the last
		// items (a flood's) is taken too. But not more than a full queue's worth
		// at a time: under a load the writer cannot keep up with the queue is
		// never empty, and waiting Flushes (and the held rows due) would wait
		// for the load to end. What is left is taken next, at once (kick).
		for taken := 0; !closed; {
			if taken >= h.queue.max {
				if h.queue.len() > 0 {
					signal(h.kick)
				}
				break
			}
			items, closed = h.queue.take(items)
			if len(items) == 0 {
				break
			}
			taken += len(items)
			for i := range items {
				hold.take(&items[i], now, write, &h.totals)
			}
			clear(items) // let the values go (the held rows are copies)
		}
		hold.release(now, closed || len(acks) > 0, write)
		if len(batch) > 0 || h.totals.reports {
			h.writeBatch(batch)
			clear(batch)
			batch, conns = batch[:0], 0
			wrote = now
		}
		for _, a := range acks {
			close(a)
		}
		acks = acks[:0]
	}
	for !closed {
		if hold.len() == 0 {
			// Idle: wait for the first connection of a batch (or Close, which
			// kicks too), or a Flush.
			select {
			case <-h.wake:
			case ack := <-h.flushes:
				// Everything recorded before Flush was called is in the queue already.
				acks = append(acks, ack)
				take()
				continue
			}
			timer.Reset(historyFlushGap)
		} else {
			// Rows are held: wake when the oldest is due (and take what came
			// meanwhile), but not sooner than twice the hold after the last
			// write. Under a steady load each take's rows are due together, one
			// hold after it: waking at each due time wrote a transaction per
			// historyFlushGap, while a transaction costs the writer about as much
			// as 150 rows (test/bench: some 550 rows a transaction, at 500 rows
			// 1,590 ns a row against 1,320 at 1,000). Rows are held from one to
			// two holds, which a flow's end report has longer to reach too; a
			// Flush writes them all at once as before.
			at := hold.due()
			if next := wrote.Add(2 * h.hold); next.After(at) {
				at = next
			}
			timer.Reset(time.Until(at))
		}
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

// rowHold holds the rows the writer took, oldest first, until they are due (see
// writer), and finds a request's held row for its traffic reports. What it holds is
// bounded in rows (historyHoldMax) and in memory (historyHoldBytes): past either,
// the oldest rows are written at once. The rows are kept in a ring, which grows to
// what the writer held at most, so that holding a row copies it once.
type rowHold struct {
	ring        []heldRow // a power of two long; the held rows are first..next-1
	first, next uint64    // sequence numbers: a row's slot is its number mod len(ring)
	at          map[engine.RequestID]uint64
	bytes       int           // memory the held rows take, about
	hold        time.Duration // how long a row is held: historyHold
	// reports: a traffic report came in this opening. Until one does (byte
	// accounting is off) the rowids of rows written are not remembered
	// (rowWriter.rowids): nothing would look for them.
	reports bool
}

type heldRow struct {
	item historyItem
	due  time.Time
	size int
}

func (r *rowHold) len() int { return int(r.next - r.first) }

func (r *rowHold) slot(seq uint64) *heldRow { return &r.ring[seq&uint64(len(r.ring)-1)] }

// due is when the oldest held row is due; there must be one.
func (r *rowHold) due() time.Time { return r.slot(r.first).due }

// take holds a connection's row taken at now, or sets a held row's totals from its
// traffic report: such a report needs no statement of its own, its bytes only
// count for its program (totals). Other reports, and rows the bounds make it
// write, go to write.
func (r *rowHold) take(it *historyItem, now time.Time, write func(*historyItem), totals *programTotals) {
	if it.report {
		r.reports = true
		t := &it.conn
		if seq, ok := r.at[t.Request.ID]; ok && t.Request.ID != 0 {
			row := &r.slot(seq).item
			row.conn.BytesIn, row.conn.BytesOut = t.BytesIn, t.BytesOut
			row.ended = row.ended || it.ended
			totals.add(it)
			return
		}
		write(it)
		return
	}
	size := heldSize(&it.conn)
	for r.len() > 0 && (r.len() >= historyHoldMax || r.bytes+size > historyHoldBytes) {
		r.pop(write)
	}
	if r.len() == len(r.ring) {
		ring := make([]heldRow, max(64, 2*len(r.ring)))
		for seq := r.first; seq < r.next; seq++ {
			ring[seq&uint64(len(ring)-1)] = *r.slot(seq)
		}
		r.ring = ring
	}
	slot := r.slot(r.next)
	slot.item, slot.due, slot.size = *it, now.Add(r.hold), size
	if id := it.conn.Request.ID; id != 0 {
		r.at[id] = r.next
	}
	r.next++
	r.bytes += size
}

// release writes the rows that are due at now, or all of them.
func (r *rowHold) release(now time.Time, all bool, write func(*historyItem)) {
	for r.len() > 0 && (all || !r.slot(r.first).due.After(now)) {
		r.pop(write)
	}
}

// pop writes the oldest held row.
func (r *rowHold) pop(write func(*historyItem)) {
	h := r.slot(r.first)
	id := h.item.conn.Request.ID
	if seq, ok := r.at[id]; ok && seq == r.first {
		delete(r.at, id)
	}
	r.bytes -= h.size
	write(&h.item)
	*h = heldRow{} // let the values go
	r.first++
}

// heldSize is about the memory a held row takes: the row and its texts.
func heldSize(c *Conn) int {
	r := &c.Request
	n := int(unsafe.Sizeof(heldRow{})) + len(r.Exe) + len(r.User) + len(r.Cmdline) + len(r.Host) +
		len(r.HostSource) + len(r.Note) + len(r.Netns) + len(r.Container) + len(r.ContainerName) +
		len(r.IdentityNote) + len(r.Unit) + len(r.AppID) + len(r.ExeSHA256)
	for _, p := range r.Parents {
		n += int(unsafe.Sizeof(p)) + len(p)
	}
	for _, p := range r.Services {
		n += int(unsafe.Sizeof(p)) + len(p)
	}
	return n
}

func (h *History) fail(n int, err error) {
	h.failed.Add(uint64(n))
	s := err.Error()
	h.lastErr.Store(&s)
}

func (h *History) writeBatch(batch []historyItem) {
	defer h.totals.reset() // written, or lost with the batch
	conns := 0
	for i := range batch {
		if !batch[i].report {
			conns++
		}
	}
	if !h.roomFor(conns) {
		h.noSpace.Add(uint64(conns))
		return
	}
	db := h.db.Load()
	if db == nil {
		if err := h.open(); err != nil {
			if h.isDiskFull(err) {
				h.openFailed(err)
				h.noSpace.Add(uint64(conns))
			} else {
				h.fail(conns, err)
			}
			return
		}
		db = h.db.Load()
	}
	if h.w == nil {
		shape := shapeProcs
		if h.tuning.inlineProcs {
			shape = shapeInline
		} else if h.inline {
			shape = shapeMixed
		}
		w, err := newRowWriter(db, shape)
		if err != nil {
			h.fail(conns, err)
			return
		}
		w.procsByValues = h.tuning.procsByValues
		h.w = w
	}
	err := h.w.conn.Raw(func(dc any) error {
		c, ok := dc.(driverConn)
		if !ok {
			return fmt.Errorf("history: the SQLite driver's connection (%T) cannot execute statements", dc)
		}
		h.w.dc = c
		defer func() { h.w.dc = nil }()
		if err := h.w.exec("BEGIN"); err != nil {
			return err
		}
		h.w.begin()
		var err error
		if !h.tuning.pruneAfter {
			err = h.pruneAhead(h.w, conns)
		}
		if err == nil {
			err = h.writeItems(h.w, batch)
		}
		if err == nil {
			err = h.prune(h.w)
		}
		if err == nil {
			err = h.w.exec("COMMIT")
		}
		if err != nil {
			h.w.exec("ROLLBACK")
			return err
		}
		h.w.committed()
		return nil
	})
	if err != nil {
		// A traffic table created in the failed transaction is gone with it, and the
		// writer's statements start afresh.
		h.trafficTable.Store(hasTable(db, "traffic"))
		h.closeWriter()
		h.fail(conns, err)
		return
	}
	h.recorded.Add(uint64(conns))
}

// driverConn is what the writer needs of the SQLite driver's connection.
type driverConn interface {
	driver.ConnPrepareContext
	driver.ExecerContext
}

// rowWriter is the writer goroutine's own connection to the database, with its
// statements prepared once and used through the driver directly: a batch costs no
// statement compiled again and no conversion of arguments by database/sql.
type rowWriter struct {
	conn  *sql.Conn
	dc    driverConn // the driver's connection, while inside conn.Raw
	stmts map[string]driver.Stmt
	args  []driver.NamedValue
	row   [inlineCols]driver.Value // one connection's values (values)
	// shape is how rows are written (shapeProcs...); per: how many columns a
	// row has (w.columns()).
	shape int
	per   int
	// rowVals are the values of the rows not inserted yet, per each (w.row's
	// first per), and rowKinds their kinds (see values): a statement is chosen
	// for a run of rows once it is complete.
	rowVals  []driver.Value
	rowKinds []uint8
	// rowReqs are the request IDs of the rows whose arguments are in args (0: not
	// to remember, see rowids), and whether their flows ended (rowidOf.ended);
	// their rowids are set once inserted.
	rowReqs []rowidOf
	// rowProcs are the processes of those rows (nil: none, shapeInline).
	rowProcs []*procRow
	// rowids finds recently written rows of allowed flows by request ID: an UPDATE by rowid is cheaper than one by
	// request ID. ring holds them in the order written, to forget the oldest;
	// staged, those of the open transaction. The rows whose flows had ended
	// when written are in ring only (ended: endedN of them), found by a look
	// through it (endedRowids): no report is expected for them, and a map
	// entry per short connection cost the writer a tenth of its CPU under a
	// flood of them.
	rowids   map[engine.RequestID]int64
	ring     []rowidOf
	ringNext int
	staged   []rowidOf
	endedN   int
	last     [inlineCols]driver.Value // each column's last value (boxText)
	// procs are the processes written (see proc); nextProc is the id the next
	// new one takes, tx the number of the open transaction.
	procs map[procKey]*procRow
	// lastProc is the procs row of the last row written: a process's
	// connections come in runs, and comparing its key with theirs (the same
	// texts, mostly: a comparison of pointers) costs less than hashing it.
	lastProc *procRow
	// lastParents and lastJoined are the ancestors of the last row written and
	// their joinParents: the process cache hands the same ones for every
	// connection of a process.
	lastParents []string
	lastJoined  string
	nextProc    int64
	tx          uint64
	// txProcs are the processes the open transaction's rows name.
	txProcs []*procRow
	// procsByValues is historyTuning.procsByValues.
	procsByValues bool
	// maxConn is the largest connection id written; cutoff, the largest one
	// the bound deleted (prune): a procs row whose last_conn is at most cutoff
	// is gone.
	maxConn, cutoff int64
	// connsCutoff is the largest connection id the bound deleted from conns:
	// pruneAhead deletes a batch's share before its rows go in (cutoff moves
	// only once they are).
	connsCutoff int64
	// span is the ids and times of the rows of the open transaction
	// (conns_batches); spanN counts them.
	span  batchSpan
	spanN int
	// addrs holds the texts of the addresses written lately, local and remote, as
	// driver values (nil: none): a host has few addresses of its own, and its
	// programs' connections mostly go to the same few others. Formatting and
	// boxing one cost an allocation each, every row. Past addrsMax it is emptied.
	addrs map[netip.Addr]driver.Value
	// scratch is writeItems' working memory, kept from batch to batch: its maps
	// and slices grown once instead of in every batch.
	scratch itemsScratch
}

// itemsScratch is what writeItems works with (see there), emptied for each batch.
type itemsScratch struct {
	inBatch map[engine.RequestID]int
	pending map[engine.RequestID]int
	applied []bool
	updates []bytesUpdate
	// byReq and byRow are updateBytes', wanted endedRowids'.
	byReq, byRow []bytesUpdate
	wanted       map[engine.RequestID]int
}

// reset empties s for a batch of n items.
func (s *itemsScratch) reset(n int) {
	if s.inBatch == nil {
		s.inBatch = map[engine.RequestID]int{}
		s.pending = map[engine.RequestID]int{}
	}
	clear(s.inBatch)
	clear(s.pending)
	s.applied = append(s.applied[:0], make([]bool, n)...)
	s.updates = s.updates[:0]
}

func newRowWriter(db *sql.DB, shape int) (*rowWriter, error) {
	conn, err := db.Conn(context.Background())
	if err != nil {
		return nil, fmt.Errorf("history: a connection for the writer: %w", err)
	}
	w := &rowWriter{conn: conn, stmts: map[string]driver.Stmt{}, rowids: map[engine.RequestID]int64{},
		shape: shape, procs: map[procKey]*procRow{}}
	w.per = len(w.columns())
	if err := conn.QueryRowContext(context.Background(), `SELECT (SELECT ifnull(MAX(id), 0) FROM conns), (SELECT ifnull(MAX(id), 0) FROM procs)`).Scan(&w.maxConn, &w.nextProc); err != nil {
		conn.Close()
		return nil, fmt.Errorf("history: the writer's first ids: %w", err)
	}
	w.nextProc++
	return w, nil
}

// procKey is a procs row's columns: a process's, and how its connection was
// decided.
type procKey struct {
	direction engine.Direction
	proto     engine.Protocol
	action    engine.Action
	reason    engine.Reason
	ruleID    engine.RuleID
	mode      engine.Mode

	pid, uid                                   int32
	identity                                   engine.Identity
	exe, user, cmdline, container, idNote      string
	netns, unit, appID, parents, containerName string
}

// procRow is a row of procs the writer wrote (or writes in the open transaction).
type procRow struct {
	key procKey
	id  int64
	// last is the procs row's last_conn as committed; 0: not written yet.
	last int64
	tx   uint64 // the last transaction whose rows name it
	// txLast is the id of the last row of that transaction that names it.
	txLast int64
}

// procsMax bounds the processes the writer remembers: past it, it forgets them all
// (a process seen again gets a new procs row).
const procsMax = 16384

// proc returns r's process's procs row, a new one (written with the
// transaction, see writeProcs) if the writer has none yet, or if the bound
// deleted the one it had.
func (w *rowWriter) proc(c *Conn) *procRow {
	r, v := &c.Request, &c.Verdict
	k := procKey{direction: r.Direction, proto: r.Protocol, action: v.Action, reason: v.Reason, ruleID: v.RuleID, mode: v.Mode,
		pid: r.PID, uid: r.UID, identity: r.Identity, exe: r.Exe, user: r.User, cmdline: r.Cmdline,
		container: r.Container, idNote: r.IdentityNote, netns: r.Netns, unit: r.Unit, appID: r.AppID,
		parents: w.joinParents(r.Parents), containerName: r.ContainerName}
	p := w.lastProc
	if p == nil || p.key != k {
		p = w.procs[k]
	}
	if p != nil && p.tx != w.tx && p.last <= w.cutoff {
		p = nil // pruned: no row names it any more
	}
	if p == nil {
		if len(w.procs) >= procsMax {
			clear(w.procs) // the transaction's own stay in txProcs
		}
		p = &procRow{key: k, id: w.nextProc}
		w.nextProc++
		w.procs[k] = p
	}
	if p.tx != w.tx {
		p.tx = w.tx
		w.txProcs = append(w.txProcs, p)
	}
	w.lastProc = p
	return p
}

// joinParents is joinParents(ps), the last row's again if ps are its ancestors.
func (w *rowWriter) joinParents(ps []string) string {
	if len(ps) == 0 {
		return ""
	}
	if !slices.Equal(ps, w.lastParents) {
		w.lastParents = append(w.lastParents[:0], ps...) // a copy: ps may change
		w.lastJoined = joinParents(ps)
	}
	return w.lastJoined
}

// writeProcs writes the processes the transaction's rows name: the new ones, and
// the last row that names each (last_conn) of the others.
func (w *rowWriter) writeProcs() error {
	var fresh, old []*procRow
	for _, p := range w.txProcs {
		if p.last == 0 {
			fresh = append(fresh, p)
		} else {
			old = append(old, p)
		}
	}
	for len(fresh) > 0 {
		n := chunk(len(fresh))
		for _, p := range fresh[:n] {
			k := &p.key
			w.int(p.id)
			w.int(p.txLast)
			w.int(int64(k.pid))
			w.args = append(w.args, driver.NamedValue{Value: k.exe})
			w.int(int64(k.uid))
			for _, v := range [...]string{k.user, k.cmdline, k.identity.String(), k.container, k.idNote,
				k.netns, k.unit, k.appID, k.parents, k.containerName,
				k.direction.String(), k.proto.String(), k.action.String(), string(k.reason)} {
				w.args = append(w.args, driver.NamedValue{Value: v})
			}
			w.int(int64(k.ruleID))
			w.args = append(w.args, driver.NamedValue{Value: k.mode.String()})
		}
		if _, err := w.runArgs(insertProcs(n)); err != nil {
			return err
		}
		fresh = fresh[n:]
	}
	for len(old) > 0 {
		n := chunk(len(old))
		if n < procsValuesMin && !w.procsByValues {
			// A few rows: one plain UPDATE each. An UPDATE ... FROM (VALUES
			// ...) fills a temporary table first (a temporary database opened
			// and its pages allocated), which costs the writer some 100 µs per
			// statement, more than the 1-15 rows a batch's few processes take
			// one by one.
			w.int(old[0].txLast)
			w.int(old[0].id)
			if _, err := w.runArgs(`UPDATE procs SET last_conn = ? WHERE id = ?`); err != nil {
				return err
			}
			old = old[1:]
			continue
		}
		for _, p := range old[:n] {
			w.int(p.id)
			w.int(p.txLast)
		}
		if _, err := w.runArgs(updateProcs(n)); err != nil {
			return err
		}
		old = old[n:]
	}
	return nil
}

// procsValuesMin is the fewest procs rows writeProcs updates with one UPDATE
// ... FROM (VALUES ...) (see there).
const procsValuesMin = 16

// chunk is how many of n rows the next statement takes: the largest of
// insertSizes that n reaches.
func chunk(n int) int {
	for _, k := range insertSizes {
		if n >= k {
			return k
		}
	}
	return insertSizes[len(insertSizes)-1]
}

// procsSQL holds insertProcs' and updateProcs' statements by size.
var procsSQL sync.Map

// insertProcs returns an INSERT of n procs rows: arguments id, last_conn and the
// process's columns (procColumns) of each.
func insertProcs(n int) string {
	if q, ok := procsSQL.Load(n); ok {
		return q.(string)
	}
	var b strings.Builder
	b.WriteString("INSERT OR ROLLBACK INTO procs (id, last_conn")
	for _, c := range procColumns {
		b.WriteString(", " + c.name)
	}
	b.WriteString(") VALUES ")
	row := "(" + strings.Repeat("?, ", len(procColumns)+1) + "?)"
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	q := b.String()
	procsSQL.Store(n, q)
	return q
}

// updateProcs returns an UPDATE of n procs rows' last_conn: arguments the row's
// id and its value, of each.
func updateProcs(n int) string {
	if q, ok := procsSQL.Load(-n); ok {
		return q.(string)
	}
	q := "UPDATE procs SET last_conn = v.column2 FROM (VALUES " + strings.Repeat("(?, ?), ", n-1) +
		"(?, ?)) AS v WHERE procs.id = v.column1"
	procsSQL.Store(-n, q)
	return q
}

// batchSpan is what conns_batches holds of a batch: its rows' ids and times.
type batchSpan struct{ minID, maxID, minTime, maxTime int64 }

// writeSpan writes the span of the transaction's rows, if it wrote any.
func (w *rowWriter) writeSpan() error {
	if w.spanN == 0 {
		return nil
	}
	s := w.span
	w.int(s.maxID)
	w.int(s.minID)
	w.int(s.minTime)
	w.int(s.maxTime)
	_, err := w.runArgs(`INSERT OR ROLLBACK INTO conns_batches (max_id, min_id, min_time, max_time) VALUES (?, ?, ?, ?)`)
	return err
}

// closeWriter closes the writer's statements and connection.
func (h *History) closeWriter() {
	w := h.w
	if w == nil {
		return
	}
	h.w = nil
	w.conn.Raw(func(any) error {
		for _, st := range w.stmts {
			st.Close()
		}
		return nil
	})
	w.conn.Close()
}

// exec runs a statement without arguments.
func (w *rowWriter) exec(query string) error {
	_, err := w.dc.ExecContext(context.Background(), query, nil)
	return err
}

// run executes the prepared statement query (preparing it on first use) with args
// (numbered here: their Ordinal fields need not be set).
func (w *rowWriter) run(query string, args []driver.NamedValue) (driver.Result, error) {
	st := w.stmts[query]
	if st == nil {
		var err error
		if st, err = w.dc.PrepareContext(context.Background(), query); err != nil {
			return nil, err
		}
		w.stmts[query] = st
	}
	for i := range args {
		args[i].Ordinal = i + 1
	}
	return st.(driver.StmtExecContext).ExecContext(context.Background(), args)
}

// runArgs runs query with the arguments collected in w.args, and empties them.
func (w *rowWriter) runArgs(query string) (driver.Result, error) {
	r, err := w.run(query, w.args)
	clear(w.args) // let the values go
	w.args = w.args[:0]
	return r, err
}

// int and text add an argument; an empty text goes as NULL, which the statements
// turn into an empty text (ifnull): the driver copies every text it binds into
// memory of its own, which NULL spares.
func (w *rowWriter) int(v int64) {
	w.args = append(w.args, driver.NamedValue{Value: v})
}

func (w *rowWriter) text(s string) {
	var v driver.Value
	if s != "" {
		v = s
	}
	w.args = append(w.args, driver.NamedValue{Value: v})
}

// addr returns the text of a as a driver value, nil if empty (see rowWriter.addrs).
func (w *rowWriter) addr(a netip.Addr) driver.Value {
	if v, ok := w.addrs[a]; ok {
		return v
	}
	if w.addrs == nil || len(w.addrs) >= addrsMax {
		w.addrs = make(map[netip.Addr]driver.Value, 64)
	}
	var v driver.Value
	if s := addrString(a); s != "" {
		v = s
	}
	w.addrs[a] = v
	return v
}

// addrsMax bounds rowWriter.addrs.
const addrsMax = 4096

// programKey names a program in the traffic table.
type programKey struct {
	exe, user string
	uid       int32
}

type programBytes struct {
	time    time.Time
	in, out uint64
}

// programTotals are the bytes of traffic reports by program: the traffic table's
// rows of a batch.
type programTotals struct {
	programs map[programKey]*programBytes
	// last is the program of the last report added: a program's reports come
	// in runs, and comparing its key costs less than hashing it.
	lastKey programKey
	last    *programBytes
	// reports: a report was added (with bytes or not) since reset.
	reports bool
}

// add adds a report's bytes (those since its flow's previous report) to its
// program's.
func (p *programTotals) add(it *historyItem) {
	p.reports = true
	if it.deltaIn == 0 && it.deltaOut == 0 {
		return
	}
	r := &it.conn.Request
	k := programKey{exe: r.Exe, user: r.User, uid: r.UID}
	b := p.last
	if b == nil || k != p.lastKey {
		if b = p.programs[k]; b == nil {
			if p.programs == nil {
				p.programs = map[programKey]*programBytes{}
			}
			b = &programBytes{}
			p.programs[k] = b
		}
		p.lastKey, p.last = k, b
	}
	b.in += it.deltaIn
	b.out += it.deltaOut
	if it.conn.Time.After(b.time) {
		b.time = it.conn.Time
	}
}

// reset empties p.
func (p *programTotals) reset() {
	clear(p.programs)
	p.lastKey, p.last, p.reports = programKey{}, nil, false
}

// writeItems inserts the batch's connections and applies its traffic reports, in
// order, within the writer's transaction. A batch's reports add one traffic row per
// program.
func (h *History) writeItems(w *rowWriter, batch []historyItem) error {
	// Connections go in with multi-row INSERTs of insertRows rows, the rest of a
	// batch with smaller ones: one statement per row cost the writer about as much
	// as the rows themselves.
	sc := &w.scratch
	sc.reset(len(batch))
	totals := &h.totals
	reports := totals.reports // the traffic table is needed
	// A report about a connection of this same batch sets the row's totals before
	// it is inserted: one statement fewer per short connection. Only the rows
	// before the batch's last report can be its connections: the daemon's
	// batches mostly have none (rowHold merged them into their held rows), and
	// a map entry per row cost the writer more than a look for the last one.
	inBatch, applied := sc.inBatch, sc.applied
	lastReport := -1
	for i := len(batch) - 1; i >= 0; i-- {
		if batch[i].report {
			lastReport = i
			break
		}
	}
	for i := range lastReport + 1 {
		t := &batch[i].conn
		if !batch[i].report {
			inBatch[t.Request.ID] = i
			continue
		}
		reports = true
		if j, ok := inBatch[t.Request.ID]; ok && t.Request.ID != 0 {
			batch[j].conn.BytesIn, batch[j].conn.BytesOut = t.BytesIn, t.BytesOut
			batch[j].ended = batch[j].ended || batch[i].ended
			applied[i] = true
		}
	}
	if reports {
		if err := h.ensureTrafficTable(w); err != nil {
			return err
		}
	}
	// Reports about rows written before set their totals after the batch's rows
	// are in (updateBytes), the last report of each request.
	updates, pending := sc.updates, sc.pending
	// Rows are inserted in the order they were recorded, with statements of
	// insertSizes rows, each statement with the column groups that are empty in
	// all of its rows as constants (see column.group).
	rows := 0 // rows whose values are in w.rowVals
	cols, per := w.columns(), w.per
	flushRows := func() error {
		// reqs and procs are taken from the front as vals and kinds are, not
		// w.rowReqs and w.rowProcs themselves: those keep their memory for the
		// next rows (resliced from the front, they were allocated again every
		// statement).
		vals, kinds, reqs, procs := w.rowVals, w.rowKinds, w.rowReqs, w.rowProcs
		for rows > 0 {
			n := chunk(rows)
			kind := uint8(groupsAll)
			for _, k := range kinds[:n] {
				kind &= k
			}
			same := sameColumns(cols, vals[:n*per], per)
			// The shared columns' values, then the same set's (the first row's),
			// then each row's own.
			for i, col := range cols {
				if col.shared {
					w.args = append(w.args, driver.NamedValue{Value: vals[i]})
				}
			}
			for i, col := range cols {
				if col.same&same != 0 {
					w.args = append(w.args, driver.NamedValue{Value: vals[i]})
				}
			}
			for r := range n {
				row := vals[r*per : (r+1)*per]
				for i, col := range cols {
					if !col.shared && col.same&same == 0 && col.group&kind == 0 {
						w.args = append(w.args, driver.NamedValue{Value: row[i]})
					}
				}
			}
			res, err := w.runArgs(insertConns(n, kind, same, w.shape))
			if err != nil {
				return err
			}
			last, err := res.LastInsertId()
			if err != nil {
				return err
			}
			if w.spanN == 0 {
				w.span.minID = last - int64(n) + 1
			}
			w.span.maxID = last
			w.spanN += n
			w.maxConn = max(w.maxConn, last)
			w.inserted(reqs[:n], last)
			reqs = reqs[n:]
			for k, p := range procs[:n] {
				if p != nil {
					p.txLast = last - int64(n) + 1 + int64(k)
				}
			}
			procs = procs[n:]
			vals, kinds = vals[n*per:], kinds[n:]
			rows -= n
		}
		clear(w.rowVals) // let the values go
		w.rowVals, w.rowKinds = w.rowVals[:0], w.rowKinds[:0]
		w.rowReqs = w.rowReqs[:0]
		clear(w.rowProcs)
		w.rowProcs = w.rowProcs[:0]
		return nil
	}
	// add adds a connection's row, remembering where it goes if its flow may
	// still be reported.
	add := func(it *historyItem) error {
		c := &it.conn
		// Only a flow that may still be reported has its request ID written
		// (see connsOpenIndex).
		open := !it.ended && c.Verdict.Action == engine.Allow
		req := c.Request.ID
		if !open && !h.tuning.fullReqIndex {
			req = 0
		}
		var proc *procRow
		if w.shape != shapeInline {
			proc = w.proc(c)
		}
		t := c.Time.UnixNano()
		if rows == 0 && w.spanN == 0 || t < w.span.minTime {
			w.span.minTime = t
		}
		if rows == 0 && w.spanN == 0 || t > w.span.maxTime {
			w.span.maxTime = t
		}
		var procID int64
		if proc != nil {
			procID = proc.id
		}
		kind := w.values(c, h.run, req, procID)
		w.rowVals = append(w.rowVals, w.row[:per]...)
		w.rowKinds = append(w.rowKinds, kind)
		// Its rowid is remembered (rowWriter.rowids) if byte accounting is on
		// and the flow was allowed, even if it ended: a report after its end
		// (which the accountant never sends) finds it for a while as before,
		// though the row has no request ID.
		id := c.Request.ID
		if c.Verdict.Action != engine.Allow || !h.reports {
			id = 0
		}
		w.rowReqs = append(w.rowReqs, rowidOf{req: id, ended: it.ended && !h.tuning.rowidsOfEnded})
		w.rowProcs = append(w.rowProcs, proc)
		rows++
		if rows == insertSizes[0] {
			return flushRows()
		}
		return nil
	}
	for i := range batch {
		it := &batch[i]
		t := &it.conn // a report's
		if !it.report {
			if err := add(it); err != nil {
				return err
			}
			continue
		}
		r := &t.Request
		if !applied[i] {
			// The row was written in an earlier batch (or is gone: pruned, or never
			// recorded): its totals are set once the batch's rows are in, the last
			// report's of each request.
			if k, ok := pending[r.ID]; ok {
				updates[k].in, updates[k].out = t.BytesIn, t.BytesOut
				updates[k].ended = updates[k].ended || it.ended
			} else {
				pending[r.ID] = len(updates)
				updates = append(updates, bytesUpdate{r.ID, t.BytesIn, t.BytesOut, it.ended})
			}
		}
		totals.add(it)
	}
	if err := flushRows(); err != nil {
		return err
	}
	if err := w.writeProcs(); err != nil {
		return err
	}
	if !h.tuning.timeIndex {
		if err := w.writeSpan(); err != nil {
			return err
		}
	}
	sc.updates = updates // its memory, for the next batch
	if err := h.updateBytes(w, updates); err != nil {
		return err
	}
	for k, p := range totals.programs {
		w.int(p.time.UnixNano())
		w.text(k.exe)
		w.int(int64(k.uid))
		w.text(k.user)
		w.int(int64(p.in))
		w.int(int64(p.out))
		if _, err := w.runArgs(`INSERT INTO traffic (time_ns, exe, uid, user, bytes_in, bytes_out) VALUES (?, ifnull(?, ''), ?, ifnull(?, ''), ?, ?)`); err != nil {
			return err
		}
	}
	return nil
}

// bytesUpdate is a report's totals for a row written in an earlier batch.
type bytesUpdate struct {
	id      engine.RequestID
	in, out uint64
	ended   bool
}

// updateBytes sets the totals of rows written in earlier batches (a row that is
// gone matches nothing), with statements of insertSizes rows: one UPDATE per row
// cost the writer about as much as inserting it. A row the writer wrote recently
// is found by its rowid (rowWriter.rowids), others by request ID.
func (h *History) updateBytes(w *rowWriter, us []bytesUpdate) error {
	if len(us) == 0 {
		return nil
	}
	byReq := w.scratch.byReq[:0]
	byRow := w.scratch.byRow[:0] // id: the rowid
	defer func() { w.scratch.byReq, w.scratch.byRow = byReq[:0], byRow[:0] }()
	for _, u := range us {
		rowid, ok := w.rowids[u.id]
		if !ok {
			byReq = append(byReq, u)
			continue
		}
		if u.ended {
			delete(w.rowids, u.id) // no more reports
		}
		u.id = engine.RequestID(rowid)
		byRow = append(byRow, u)
	}
	byReq, byRow = w.endedRowids(byReq, byRow)
	for _, byRowid := range []bool{true, false} {
		us := byReq
		if byRowid {
			us = byRow
		}
		for len(us) > 0 {
			n := insertSizes[len(insertSizes)-1]
			for _, k := range insertSizes {
				if len(us) >= k {
					n = k
					break
				}
			}
			for _, u := range us[:n] {
				w.int(int64(u.id))
				w.int(int64(u.in))
				w.int(int64(u.out))
			}
			if !byRowid {
				w.int(h.run)
			}
			if _, err := w.runArgs(updateConns(n, byRowid)); err != nil {
				return err
			}
			h.updates.Add(uint64(n))
			us = us[n:]
		}
	}
	return nil
}

// updateSQL holds updateConns' statements by size and kind.
var updateSQL sync.Map

// updateConns returns an UPDATE of n rows' totals: arguments the row's rowid, or
// its request ID in this opening, bytes in, bytes out for each; then, by request
// ID, the run.
func updateConns(n int, byRowid bool) string {
	type key struct {
		n       int
		byRowid bool
	}
	if q, ok := updateSQL.Load(key{n, byRowid}); ok {
		return q.(string)
	}
	var b strings.Builder
	b.WriteString("UPDATE conns SET bytes_in = v.column2, bytes_out = v.column3 FROM (VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?)")
	}
	if byRowid {
		b.WriteString(") AS v WHERE conns.id = v.column1")
	} else {
		// req_id <> 0: the rows conns_open holds.
		b.WriteString(") AS v WHERE conns.req_id = v.column1 AND conns.req_id <> 0 AND conns.run_ns = ?")
	}
	q := b.String()
	updateSQL.Store(key{n, byRowid}, q)
	return q
}

// rowidsMax bounds the rows the writer remembers the rowid of (rowWriter.rowids):
// what the fast path records in more than a second under a flood.
const rowidsMax = 32768

// rowidOf is a row the writer wrote.
type rowidOf struct {
	req   engine.RequestID
	rowid int64
	// ended: the flow had ended when the row was written; its rowid is not in
	// rowWriter.rowids (see there).
	ended bool
}

// inserted notes the rows an INSERT wrote, the last with rowid last (a statement's
// rows take consecutive rowids), by request ID (0: not to remember).
func (w *rowWriter) inserted(reqs []rowidOf, last int64) {
	first := last - int64(len(reqs)) + 1
	for k, r := range reqs {
		if r.req != 0 {
			r.rowid = first + int64(k)
			w.staged = append(w.staged, r)
		}
	}
}

// endedRowids finds the rows of the reports by request ID (byReq) among the
// remembered rows whose flows had ended when written (ring), with one look
// through it, and moves those found to the reports by rowid (byRow). A report
// that ends its flow again makes its row's rowid forgotten, as rowids does.
func (w *rowWriter) endedRowids(byReq, byRow []bytesUpdate) (_, _ []bytesUpdate) {
	if w.endedN == 0 || len(byReq) == 0 {
		return byReq, byRow
	}
	want := w.scratch.wanted
	if want == nil {
		want = map[engine.RequestID]int{}
		w.scratch.wanted = want
	}
	clear(want)
	for i, u := range byReq {
		want[u.id] = i
	}
	found := 0
	for k := range w.ring {
		r := &w.ring[k]
		if !r.ended || r.req == 0 {
			continue
		}
		i, ok := want[r.req]
		if !ok {
			continue
		}
		u := &byReq[i]
		if u.ended {
			r.req = 0 // no more reports
		}
		byRow = append(byRow, bytesUpdate{id: engine.RequestID(r.rowid), in: u.in, out: u.out, ended: u.ended})
		u.id = 0 // found: not by request ID
		found++
		delete(want, r.req)
	}
	if found > 0 {
		byReq = slices.DeleteFunc(byReq, func(u bytesUpdate) bool { return u.id == 0 })
	}
	return byReq, byRow
}

// begin starts the writer's account of a transaction.
func (w *rowWriter) begin() {
	w.tx++
	clear(w.txProcs)
	w.txProcs = w.txProcs[:0]
	w.spanN = 0
}

// committed remembers the processes written, and the rowids of the rows of the transaction that committed,
// forgetting the oldest beyond rowidsMax.
func (w *rowWriter) committed() {
	for _, p := range w.txProcs {
		p.last = p.txLast // as writeProcs wrote it
	}
	clear(w.txProcs)
	w.txProcs = w.txProcs[:0]
	for _, r := range w.staged {
		if len(w.ring) < rowidsMax {
			w.ring = append(w.ring, r)
		} else {
			old := &w.ring[w.ringNext]
			if old.ended {
				w.endedN--
			} else if w.rowids[old.req] == old.rowid {
				delete(w.rowids, old.req)
			}
			*old = r
			w.ringNext = (w.ringNext + 1) % rowidsMax
		}
		if r.ended {
			w.endedN++
		} else {
			w.rowids[r.req] = r.rowid
		}
	}
	w.staged = w.staged[:0]
}

// values fills w.row with the values of c's row with request ID req (an empty
// text as nil, an integer as int64), its process being procs row proc, and
// returns the row's kind: the column groups (column.group) empty in it.
func (w *rowWriter) values(c *Conn, run int64, req engine.RequestID, proc int64) (kind uint8) {
	if w.shape == shapeInline {
		return w.inlineValues(c, run, req)
	}
	r := &c.Request
	text, num := w.boxText, w.boxInt
	w.row = [inlineCols]driver.Value{
		num(0, c.Time.UnixNano()),
		w.addr(r.Local.Addr()), num(2, int64(r.Local.Port())),
		w.addr(r.Remote.Addr()), num(4, int64(r.Remote.Port())),
		text(5, r.Host), text(6, r.HostSource), text(7, r.Note),
		num(8, run), num(9, int64(req)), num(10, int64(c.BytesIn)), num(11, int64(c.BytesOut)),
		num(12, proc),
	}
	return rowKind(connColumns, &w.row)
}

// rowKind is the kind of a row of cols with values row: the column groups all of
// whose columns are empty (nil or 0) in it.
func rowKind(cols []column, row *[inlineCols]driver.Value) uint8 {
	kind := uint8(groupsAll)
	for i, col := range cols {
		if col.group != 0 && row[i] != nil && row[i] != int64(0) {
			kind &^= col.group
		}
	}
	return kind
}

// inlineValues is values for a row that holds its process's columns
// (historyTuning.inlineProcs), in the order of inlineColumns.
func (w *rowWriter) inlineValues(c *Conn, run int64, req engine.RequestID) (kind uint8) {
	r := &c.Request
	text, num := w.boxText, w.boxInt
	w.row = [inlineCols]driver.Value{
		num(0, c.Time.UnixNano()), text(1, r.Direction.String()), text(2, r.Protocol.String()),
		w.addr(r.Local.Addr()), num(4, int64(r.Local.Port())),
		w.addr(r.Remote.Addr()), num(6, int64(r.Remote.Port())),
		num(7, int64(r.PID)), text(8, r.Exe), num(9, int64(r.UID)), text(10, r.User), text(11, r.Cmdline), text(12, r.Host),
		text(13, c.Verdict.Action.String()), text(14, string(c.Verdict.Reason)), num(15, int64(c.Verdict.RuleID)),
		text(16, r.Identity.String()), text(17, r.Container), text(18, r.IdentityNote), text(19, r.HostSource), text(20, r.Note),
		num(21, run), num(22, int64(req)), num(23, int64(c.BytesIn)), num(24, int64(c.BytesOut)), text(25, r.Netns),
		text(26, c.Verdict.Mode.String()), text(27, r.Unit), text(28, r.AppID), text(29, w.joinParents(r.Parents)),
		text(30, r.ContainerName),
	}
	return rowKind(inlineColumns, &w.row)
}

// boxText returns column i's text as a driver.Value, nil if empty. A column's
// value is mostly the one of the row before (the same program, verdict, address):
// that one's is reused, which spares allocating it again.
func (w *rowWriter) boxText(i int, s string) driver.Value {
	if s == "" {
		return nil
	}
	if v, ok := w.last[i].(string); ok && v == s {
		return w.last[i]
	}
	var v driver.Value = s
	w.last[i] = v
	return v
}

// boxInt is boxText for an integer column.
func (w *rowWriter) boxInt(i int, n int64) driver.Value {
	if v, ok := w.last[i].(int64); ok && v == n {
		return w.last[i]
	}
	var v driver.Value = n
	w.last[i] = v
	return v
}

// columns are the columns a row of w inserts, in the order of w.row.
func (w *rowWriter) columns() []column {
	if w.shape == shapeInline {
		return inlineColumns
	}
	return connColumns
}

// insertSizes are the numbers of rows the connection INSERTs take, largest first
// (SQLite allows 32766 variables per statement).
var insertSizes = []int{insertRows, 16, 4, 1}

const (
	inlineCols = 31
	insertRows = 64
)

// column is a column of conns a row inserts. A text goes as NULL when empty and
// is stored as an empty text (ifnull): the driver copies every text it binds into
// memory of its own, which NULL spares. Binding a value costs the writer about
// as much as SQLite's inserting it (the driver takes the connection's mutex
// twice per value, and copies a text into memory of its own), so a statement
// binds only what differs from row to row:
//   - A column of a group (group) is empty (or 0) in most rows of some kind: the
//     optional texts in most connections the kernel fast path records (groupTexts),
//     the request ID in rows whose flow ended before they were written (groupReq),
//     the bytes in rows whose flow has not been reported yet (groupBytes). A
//     statement has the groups empty in all of its rows as constants (see
//     rowKind). The local address and port are in no group: the fast path records
//     them too.
//   - A shared column has one value in every row the writer writes (run_ns, the
//     opening): a statement binds it once, as its first parameter (?1).
//   - A column that may be the same in all the rows of a statement (same: a bit
//     of a statement's same set, see sameColumns) is bound once when it is, as
//     a numbered parameter after the shared ones: the local address (a host
//     has few), the remote address and port (a program's connections mostly go
//     to a few servers) and the procs row (a process's connections come in
//     runs). Fast-path rows of one program to one server bind 4 values each
//     where they bound 8.
type column struct {
	name   string
	text   bool
	group  uint8 // 0: none
	shared bool
	same   uint8 // 0: none
}

// Columns that may be bound once per statement (column.same), bits of a
// statement's same set.
const (
	sameLocalIP = 1 << iota
	sameRemoteIP
	sameRemotePort
	sameProc
)

// sameColumns returns the same set of the rows vals (per values each) of
// columns cols: the columns (of those that may be, column.same) whose value is
// the same in every row. A single row has none: any would do, and one
// statement serves all.
func sameColumns(cols []column, vals []driver.Value, per int) uint8 {
	if len(vals) <= per {
		return 0
	}
	var same uint8
	for i, col := range cols {
		if col.same == 0 {
			continue
		}
		v, all := vals[i], true
		for r := i + per; r < len(vals); r += per {
			if vals[r] != v {
				all = false
				break
			}
		}
		if all {
			same |= col.same
		}
	}
	return same
}

// Column groups (column.group), bits of a row's kind.
const (
	groupTexts = 1 << iota
	groupReq
	groupBytes
	groupsAll = groupTexts | groupReq | groupBytes
)

// connColumns are the columns of conns a row inserts, in the order of
// rowWriter.values: the connection's own, and its process's procs row.
var connColumns = []column{
	{name: "time_ns"},
	{name: "local_ip", text: true, same: sameLocalIP}, {name: "local_port"},
	{name: "remote_ip", text: true, same: sameRemoteIP}, {name: "remote_port", same: sameRemotePort},
	{name: "host", text: true, group: groupTexts}, {name: "host_source", text: true, group: groupTexts},
	{name: "note", text: true, group: groupTexts},
	{name: "run_ns", shared: true}, {name: "req_id", group: groupReq},
	{name: "bytes_in", group: groupBytes}, {name: "bytes_out", group: groupBytes},
	{name: "proc", same: sameProc},
}

// inlineColumns are the columns a row holding its process's columns inserts
// (historyTuning.inlineProcs), in the order of rowWriter.inlineValues.
var inlineColumns = []column{
	{name: "time_ns"}, {name: "direction", text: true}, {name: "proto", text: true},
	{name: "local_ip", text: true}, {name: "local_port"},
	{name: "remote_ip", text: true}, {name: "remote_port"},
	{name: "pid"}, {name: "exe", text: true}, {name: "uid"}, {name: "user", text: true},
	{name: "cmdline", text: true, group: groupTexts}, {name: "host", text: true, group: groupTexts},
	{name: "verdict", text: true}, {name: "reason", text: true}, {name: "rule_id"},
	{name: "identity", text: true}, {name: "container", text: true, group: groupTexts},
	{name: "identity_note", text: true, group: groupTexts},
	{name: "host_source", text: true, group: groupTexts}, {name: "note", text: true, group: groupTexts},
	{name: "run_ns", shared: true}, {name: "req_id", group: groupReq},
	{name: "bytes_in", group: groupBytes}, {name: "bytes_out", group: groupBytes},
	{name: "netns", text: true, group: groupTexts}, {name: "mode", text: true},
	{name: "unit", text: true, group: groupTexts}, {name: "app_id", text: true, group: groupTexts},
	{name: "parents", text: true, group: groupTexts}, {name: "container_name", text: true, group: groupTexts},
}

// Rows' shapes (rowWriter.shape): what the table holds and how a row is written.
const (
	shapeProcs  = iota // a table of historySchema: the row names its procs row
	shapeMixed         // a table of inlineSchema: the row names its procs row, its own process columns empty
	shapeInline        // a table of inlineSchema, the row holding its process's columns
)

// insertSQL holds insertConns' statements by size and kind.
var insertSQL sync.Map

// insertConns returns an INSERT of n connection rows of a shape, a kind (the
// column groups it has as constants, see column) and a same set (the columns
// bound once, see sameColumns). Its parameters are the shared columns' values
// (?1...), then those of the same set, in the order of the shape's columns,
// then each row's values of the other columns, in that order. OR ROLLBACK: a row that breaks a constraint (none
// can: every column gets a value) rolls the transaction back, which the writer
// does anyway when a statement fails; with the default (ABORT) SQLite keeps a
// statement journal to undo just the failed statement, a copy of every page a
// multi-row INSERT changes first.
func insertConns(n int, kind, same uint8, shape int) string {
	type key struct {
		n, shape   int
		kind, same uint8
	}
	if q, ok := insertSQL.Load(key{n, shape, kind, same}); ok {
		return q.(string)
	}
	cols := connColumns
	if shape == shapeInline {
		cols = inlineColumns
	}
	// The shared columns first: a numbered parameter (?1) before the others,
	// which SQLite numbers on from it, in every row.
	var names, row []string
	shared := 0
	for _, col := range cols {
		if col.shared {
			shared++
			names = append(names, col.name)
			row = append(row, fmt.Sprintf("?%d", shared))
		}
	}
	for _, col := range cols {
		if col.same&same != 0 {
			shared++
			names = append(names, col.name)
			if col.text {
				row = append(row, fmt.Sprintf("ifnull(?%d, '')", shared))
			} else {
				row = append(row, fmt.Sprintf("?%d", shared))
			}
		}
	}
	for _, col := range cols {
		if col.shared || col.same&same != 0 {
			continue
		}
		names = append(names, col.name)
		switch {
		case col.group&kind != 0 && col.text:
			row = append(row, "''")
		case col.group&kind != 0:
			row = append(row, "0")
		case col.text:
			row = append(row, "ifnull(?, '')")
		default:
			row = append(row, "?")
		}
	}
	if shape == shapeMixed {
		// The columns of inlineSchema that have no default: the process's and
		// the decision's are in procs.
		names = append(names, "pid, exe, uid, user, cmdline, direction, proto, verdict, reason, rule_id")
		row = append(row, "0, '', 0, '', '', '', '', '', '', 0")
	}
	values := "(" + strings.Join(row, ", ") + ")"
	var b strings.Builder
	b.WriteString("INSERT OR ROLLBACK INTO conns (" + strings.Join(names, ", ") + ") VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(values)
	}
	q := b.String()
	insertSQL.Store(key{n, shape, kind, same}, q)
	return q
}

// ensureTrafficTable creates the traffic table and its index if they are not there.
func (h *History) ensureTrafficTable(w *rowWriter) error {
	if h.trafficTable.Load() {
		return nil
	}
	schema := trafficSchema + connsOpenIndex
	if h.tuning.fullReqIndex {
		schema = trafficSchema + legacyReqIndex
	}
	if err := w.exec(schema); err != nil {
		return fmt.Errorf("creating the traffic table: %w", err)
	}
	// Set before the commit; writeBatch looks again if the commit fails.
	h.trafficTable.Store(true)
	return nil
}

// prune deletes the oldest rows beyond the bound, with the writer's statements:
// the connections', then the processes and batches no connection left refers to.
func (h *History) prune(w *rowWriter) error {
	cutoff := w.maxConn - int64(h.maxRows)
	if err := h.pruneConns(w, cutoff); err != nil {
		return err
	}
	if cutoff > w.cutoff {
		w.int(cutoff)
		if _, err := w.runArgs(`DELETE FROM procs WHERE last_conn <= ?`); err != nil {
			return fmt.Errorf("pruning history (procs): %w", err)
		}
		if !h.tuning.timeIndex {
			w.int(cutoff)
			if _, err := w.runArgs(`DELETE FROM conns_batches WHERE max_id <= ?`); err != nil {
				return fmt.Errorf("pruning history (conns_batches): %w", err)
			}
		}
		w.cutoff = cutoff
	}
	if h.trafficTable.Load() {
		w.int(int64(h.maxRows))
		if _, err := w.runArgs(`DELETE FROM traffic WHERE id <= (SELECT MAX(id) FROM traffic) - ?`); err != nil {
			return fmt.Errorf("pruning history (traffic): %w", err)
		}
	}
	return nil
}

// pruneAhead deletes, before a batch of n connections is inserted, the oldest
// rows the bound will delete once they are in (their ids follow the largest
// written, see prune, which deletes what is left beyond the bound if they do
// not). The pages the rows leave go to the database's free list, and the
// batch's rows fill them: a transaction writes each page once, where deleting
// after inserting wrote the freed pages into the write-ahead log and the rows
// into others (test/bench's batches: 21 pages where they wrote 33).
func (h *History) pruneAhead(w *rowWriter, n int) error {
	// Only rows written already: a batch larger than the bound deletes some of
	// its own once they are in.
	return h.pruneConns(w, min(w.maxConn+int64(n)-int64(h.maxRows), w.maxConn))
}

// pruneConns deletes the connections up to id cutoff, unless it did already.
func (h *History) pruneConns(w *rowWriter, cutoff int64) error {
	if cutoff <= w.connsCutoff {
		return nil
	}
	w.int(cutoff)
	if _, err := w.runArgs(`DELETE FROM conns WHERE id <= ?`); err != nil {
		return fmt.Errorf("pruning history (conns): %w", err)
	}
	w.connsCutoff = cutoff
	return nil
}

// hasTable reports whether the database has a table of that name.
func hasTable(db *sql.DB, name string) bool {
	var n int
	err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, name).Scan(&n)
	return err == nil && n > 0
}

// prune deletes the oldest rows beyond maxRows. IDs only grow (AUTOINCREMENT), so
// the newest maxRows rows are those with id > max(id) - maxRows. The processes
// and batches of the rows deleted go with them.
func prune(db *sql.DB, maxRows int) error {
	stmts := []string{
		`DELETE FROM procs WHERE last_conn <= (SELECT MAX(id) FROM conns) - ?`,
		`DELETE FROM conns WHERE id <= (SELECT MAX(id) FROM conns) - ?`,
	}
	if hasTable(db, "conns_batches") {
		stmts = append(stmts, `DELETE FROM conns_batches WHERE max_id <= (SELECT MAX(id) FROM conns) - ?`)
	}
	if hasTable(db, "traffic") {
		stmts = append(stmts, `DELETE FROM traffic WHERE id <= (SELECT MAX(id) FROM traffic) - ?`)
	}
	for _, q := range stmts {
		if _, err := db.Exec(q, maxRows); err != nil {
			return fmt.Errorf("pruning history (%s): %w", q, err)
		}
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
	db := h.db.Load()
	if db == nil {
		return nil, errHistoryNotOpen
	}
	var rows *sql.Rows
	var err error
	if afterID > 0 {
		rows, err = h.query(db, `SELECT `+connCols+` FROM conns_view WHERE id > ? ORDER BY id LIMIT ?`, afterID, n)
	} else {
		// The newest ids from conns alone, then their rows in order: no sort of
		// the rows read.
		rows, err = h.query(db, `SELECT `+connCols+` FROM conns_view
			WHERE id IN (SELECT id FROM conns ORDER BY id DESC LIMIT ?) ORDER BY id`, n)
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return scanConns(rows)
}

// query runs the statement q on db, prepared once (see History.stmts).
func (h *History) query(db *sql.DB, q string, args ...any) (*sql.Rows, error) {
	if s, ok := h.stmts.Load(q); ok {
		return s.(*sql.Stmt).Query(args...)
	}
	s, err := db.Prepare(q)
	if err != nil {
		return nil, err
	}
	if other, loaded := h.stmts.LoadOrStore(q, s); loaded {
		s.Close()
		s = other.(*sql.Stmt)
	}
	return s.Query(args...)
}

// connCols are the columns of conns_view scanConns reads, in order.
const connCols = `id, time_ns, direction, proto, local_ip, local_port, remote_ip, remote_port,
		pid, exe, uid, user, cmdline, host, verdict, reason, rule_id, identity, container, identity_note, host_source, note, bytes_in, bytes_out, netns, mode, unit, app_id, parents, container_name`

// scanConns reads rows of connCols and closes them.
func scanConns(rows *sql.Rows) ([]Conn, error) {
	defer rows.Close()
	out := []Conn{}
	// Declared once: Scan's arguments go to the heap, each row's would too.
	var (
		c                             Conn
		timeNS, pid, uid, ruleID      int64
		bytesIn, bytesOut             int64
		localPort, remotePort         int
		dir, proto, localIP, remoteIP string
		verdict, reason, identity     string
		mode, parents                 string
	)
	for rows.Next() {
		c = Conn{}
		r := &c.Request
		if err := rows.Scan(&c.ID, &timeNS, &dir, &proto, &localIP, &localPort, &remoteIP, &remotePort,
			&pid, &r.Exe, &uid, &r.User, &r.Cmdline, &r.Host, &verdict, &reason, &ruleID,
			&identity, &r.Container, &r.IdentityNote, &r.HostSource, &r.Note, &bytesIn, &bytesOut, &r.Netns, &mode, &r.Unit, &r.AppID, &parents, &r.ContainerName); err != nil {
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
		r.Identity, _ = engine.ParseIdentity(identity) // unknown if not one of ours
		c.Verdict.Action, _ = engine.ParseAction(verdict)
		c.Verdict.Reason = engine.Reason(reason)
		c.Verdict.RuleID = engine.RuleID(ruleID)
		c.BytesIn, c.BytesOut = uint64(max(bytesIn, 0)), uint64(max(bytesOut, 0))
		c.Verdict.Mode, _ = engine.ParseMode(mode) // ask if not one of ours
		r.Parents = splitParents(parents)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return out, nil
}

// Count returns how many connections the history holds.
func (h *History) Count() (int, error) {
	db := h.db.Load()
	if db == nil {
		return 0, errHistoryNotOpen
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM conns`).Scan(&n); err != nil {
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

// joinParents stores ancestors' paths (which hold no NUL byte) each ended by a NUL.
func joinParents(ps []string) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p)
		b.WriteByte(0)
	}
	return b.String()
}

// splitParents is the inverse of joinParents.
func splitParents(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\x00"), "\x00")
}
