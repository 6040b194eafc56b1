package store

import (
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFlushUnderConstantLoad: producers record faster than the writer writes
// (the queue is never empty, and drops are counted), and a Flush made meanwhile
// returns while the load goes on, with the connection recorded before it in the
// database: a query (the API flushes first) answers during a flood instead of
// waiting for its end. Then everything recorded is accounted for: written or
// counted as dropped, each connection once.
func TestFlushUnderConstantLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, 200_000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const producers = 4
	// The load is bounded in time and count; Flush must come back well before.
	const loadFor, perProducer = 10 * time.Second, 50_000_000
	conns := make([]Conn, 64)
	for i := range conns {
		conns[i] = fastPathConn(i)
	}
	var (
		stop     atomic.Bool
		loadOn   atomic.Bool
		ok, full atomic.Uint64
		wg       sync.WaitGroup
	)
	loadOn.Store(true)
	start := time.Now()
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perProducer && !stop.Load() && time.Since(start) < loadFor; i++ {
				c := &conns[(i+p)%len(conns)]
				switch err := h.RecordDecision(c.Time, &c.Request, c.Verdict); err {
				case nil:
					ok.Add(1)
				case ErrHistoryFull:
					full.Add(1)
				default:
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); loadOn.Store(false) }()
	defer func() { stop.Store(true); wg.Wait() }()

	// The load is on once the queue has overflowed (the writer is behind).
	for full.Load() == 0 && loadOn.Load() {
		time.Sleep(time.Millisecond)
	}
	marker := fastPathConn(1)
	marker.Request.Exe = "/usr/bin/marker"
	var err2 error
	for {
		if err2 = h.Record(marker); err2 != ErrHistoryFull || !loadOn.Load() {
			break
		}
		full.Add(1) // counted as dropped too
		time.Sleep(100 * time.Microsecond)
	}
	if err2 != nil {
		t.Fatalf("recording the marker: %v", err2)
	}
	t0, before := time.Now(), h.Stats().Recorded
	h.Flush()
	during, after := loadOn.Load(), h.Stats().Recorded
	t.Logf("Flush took %s, %d rows written meanwhile", time.Since(t0), after-before)
	// Straight from the database: Count and Recent do not flush.
	var n int
	if err := h.db.Load().QueryRow(`SELECT COUNT(*) FROM conns_view WHERE exe = '/usr/bin/marker'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if !during {
		t.Errorf("Flush returned only after the load ended (%s; %d recorded, %d dropped)",
			time.Since(start).Round(time.Millisecond), ok.Load(), full.Load())
	} else if n != 1 { // (after the load, the bound may have pruned it)
		t.Errorf("after Flush the marker recorded before it is in %d rows, want 1", n)
	}
	stop.Store(true)
	wg.Wait()
	h.Flush()
	st := h.Stats()
	if st.Dropped != full.Load() || st.Recorded+st.Failed != ok.Load()+1 || st.Failed != 0 {
		t.Errorf("stats %+v; producers had %d recorded (and the marker), %d dropped: %s", st, ok.Load(), full.Load(), h.LastError())
	}
}

// TestCloseDuringBurst: Close while producers record: every connection whose
// Record returned nil is in the history once reopened, each once; those
// refused as full are counted as dropped; after Close, Record says the history
// is closed and changes nothing.
func TestCloseDuringBurst(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFileName)
	h, err := OpenHistory(path, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	const producers, perProducer = 3, 200_000
	var (
		ok, full, closed atomic.Uint64
		wg               sync.WaitGroup
		started          = make(chan struct{}, producers)
	)
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started <- struct{}{}
			for i := range perProducer {
				c := fastPathConn(p*perProducer + i)
				c.Request.PID = int32(p*perProducer + i) // names the row
				switch err := h.Record(c); err {
				case nil:
					ok.Add(1)
				case ErrHistoryFull:
					full.Add(1)
				case ErrHistoryClosed:
					closed.Add(1)
				default:
					t.Error(err)
				}
			}
		}()
	}
	for range producers {
		<-started
	}
	// Close once 20,000 are written, or sooner if the producers are done first
	// (a loaded machine's writer may keep up with so few that the queue takes
	// the rest as full: then the test skips below), and after 2 minutes at most.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for deadline := time.Now().Add(2 * time.Minute); ok.Load() < 20_000 && time.Now().Before(deadline); {
		select {
		case <-done:
			deadline = time.Now()
		case <-time.After(time.Millisecond):
		}
	}
	st0 := h.Stats()
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	st := h.Stats()
	if closed.Load() == 0 {
		t.Skip("the producers were done before Close")
	}
	if st.Dropped != full.Load() || st.Recorded != ok.Load() || st.Failed != 0 {
		t.Errorf("stats %+v (before Close %+v); producers had %d recorded, %d dropped, %d refused as closed",
			st, st0, ok.Load(), full.Load(), closed.Load())
	}
	h, err = OpenHistory(path, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var rows, pids int
	if err := h.db.Load().QueryRow(`SELECT COUNT(*), COUNT(DISTINCT pid) FROM conns_view`).Scan(&rows, &pids); err != nil {
		t.Fatal(err)
	}
	if uint64(rows) != ok.Load() || pids != rows {
		t.Errorf("reopened: %d rows of %d distinct connections; %d were recorded", rows, pids, ok.Load())
	}
}

// TestSameColumnsRandomRuns: runs of rows in which the columns a statement may
// bind once (addresses, remote port, procs row) change at random places, with
// the values that look alike but are stored differently (no address and
// 0.0.0.0, an IPv4 address and its IPv4-mapped form, which is stored as the
// IPv4 one, an IPv6 address with and without a zone, port 0), each row stored
// with its own values.
func TestSameColumnsRandomRuns(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addrs := []netip.Addr{{}, netip.IPv4Unspecified(), netip.MustParseAddr("198.18.0.1"),
		netip.MustParseAddr("::ffff:198.18.0.1"), netip.MustParseAddr("fd00::1"),
		netip.MustParseAddr("fd00::1%veth0"), netip.MustParseAddr("198.18.0.2")}
	ports := []uint16{0, 443, 9000}
	rng := rand.New(rand.NewPCG(1, 2))
	type want struct {
		local, remote string
		port          int
		pid           int
	}
	var wants []want
	i := 0
	for range 400 {
		// A run: a base row, and a few rows that change a column at random.
		base := fastPathConn(i)
		l, r, p := addrs[rng.IntN(len(addrs))], addrs[rng.IntN(len(addrs))], ports[rng.IntN(len(ports))]
		pid := 3000 + rng.IntN(3)
		n := 1 + rng.IntN(90)
		for k := range n {
			c := base
			c.Time = c.Time.Add(time.Duration(k) * time.Microsecond)
			rl, rr, rp, rpid := l, r, p, pid
			if rng.IntN(8) == 0 {
				switch rng.IntN(4) {
				case 0:
					rl = addrs[rng.IntN(len(addrs))]
				case 1:
					rr = addrs[rng.IntN(len(addrs))]
				case 2:
					rp = ports[rng.IntN(len(ports))]
				case 3:
					rpid = 3000 + rng.IntN(3)
				}
			}
			c.Request.Local = netip.AddrPortFrom(rl, c.Request.Local.Port())
			c.Request.Remote = netip.AddrPortFrom(rr, rp)
			c.Request.PID = int32(rpid)
			if err := h.Record(c); err != nil {
				t.Fatal(err)
			}
			wants = append(wants, want{addrString(rl), addrString(rr), int(rp), rpid})
			i++
		}
		if rng.IntN(3) == 0 {
			h.Flush() // statements of other sizes
		}
	}
	h.Flush()
	rows, err := h.db.Load().Query(`SELECT local_ip, remote_ip, remote_port, pid FROM conns_view ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	k := 0
	for ; rows.Next(); k++ {
		var g want
		if err := rows.Scan(&g.local, &g.remote, &g.port, &g.pid); err != nil {
			t.Fatal(err)
		}
		if k < len(wants) && g != wants[k] {
			t.Fatalf("row %d: %+v, want %+v", k, g, wants[k])
		}
	}
	if k != len(wants) {
		t.Fatalf("%d rows, want %d", k, len(wants))
	}
}
