package linux

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"golang.org/x/sys/unix"
)

// liveAcct is an accountant whose conntrack table and sockets the test makes up.
type liveAcct struct {
	t       *testing.T
	a       *accountant
	t0      time.Time
	table   map[flowKey]ctInfo
	sockets map[flowKey]SocketBytes
	sockErr error
	dr      drainer
}

func newLiveAcct(t *testing.T, flows *flowTable, t0 time.Time) *liveAcct {
	l := &liveAcct{t: t, a: newAccountant(flows, 10*time.Second), t0: t0, table: map[flowKey]ctInfo{}, sockets: map[flowKey]SocketBytes{}}
	l.a.list = func(fn func(ctInfo)) error {
		for _, ci := range l.table {
			fn(ci)
		}
		return nil
	}
	l.a.sockets = func(fn func(local, remote netip.AddrPort, b SocketBytes)) error {
		for k, b := range l.sockets {
			fn(k.src(), k.dst(), b)
		}
		return l.sockErr
	}
	return l
}

// report is what a test compares of a Traffic report.
type report struct {
	in, out uint64
	ended   bool
}

func reportsOf(t *testing.T, rs []intercept.Traffic) map[engine.RequestID]report {
	t.Helper()
	got := map[engine.RequestID]report{}
	for _, r := range rs {
		if _, dup := got[r.Request.ID]; dup {
			t.Errorf("two reports of flow %d: %+v", r.Request.ID, rs)
		}
		got[r.Request.ID] = report{r.BytesIn, r.BytesOut, r.Ended}
		if r.DeltaIn > r.BytesIn || r.DeltaOut > r.BytesOut {
			t.Errorf("report %+v: delta above total", r)
		}
	}
	return got
}

func (l *liveAcct) poll(at time.Duration) map[engine.RequestID]report {
	l.t.Helper()
	rs, err := l.a.poll(l.t0.Add(at), false)
	if err != nil && !errors.Is(err, l.sockErr) {
		l.t.Fatal(err)
	}
	return reportsOf(l.t, rs)
}

// end hands the accountant the end of the socket of k, with its counts.
func (l *liveAcct) end(k flowKey, b SocketBytes, at time.Duration) map[engine.RequestID]report {
	l.t.Helper()
	rs, _, _ := l.a.drain(&l.dr, func(func(ctEvent)) (bool, int, error) { return false, 0, nil }, func() []flowKey { return nil },
		func() []socketEnd {
			return []socketEnd{{local: k.src(), remote: k.dst(), at: l.t0.Add(at), counted: true, counts: b}}
		},
		func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
			for _, k := range keys {
				if ci, ok := l.table[k]; ok {
					fn(k, ci, nil)
				} else {
					fn(k, ctInfo{}, unix.ENOENT)
				}
			}
		}, nil, l.t0.Add(at), func(err error) {
			if err != nil {
				l.t.Error(err)
			}
		})
	return reportsOf(l.t, rs)
}

func outReq(id engine.RequestID, local, remote string) *engine.Request {
	return &engine.Request{ID: id, Direction: engine.Outbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote)}
}

// TestAccountantSocketCounts: flows conntrack does not list are reported from
// their sockets' live counts as conntrack's are (the first report after the
// interval, then every interval while they change; the socket's out is the
// flow's out); a flow conntrack lists keeps conntrack's counts; a socket no
// longer listed ends its flow with its socket end's final counts, or with its
// last counts one poll later if no end comes, never twice.
func TestAccountantSocketCounts(t *testing.T) {
	flows := newFlowTable(100, time.Hour)
	t0 := time.Unix(1000, 0)
	r1 := outReq(1, "198.18.0.1:40001", "198.18.0.2:443") // no conntrack entry
	r2 := outReq(2, "198.18.0.1:40002", "198.18.0.2:443") // no conntrack entry, its end lost
	r3 := outReq(3, "198.18.0.1:40003", "198.18.0.2:443") // conntrack lists it
	for _, r := range []*engine.Request{r1, r2, r3} {
		flows.add(r, t0)
	}
	k1, k2, k3 := keyOf(r1), keyOf(r2), keyOf(r3)
	l := newLiveAcct(t, flows, t0)
	// A socket of a flow latch did not allow: ignored.
	l.sockets[newFlowKey(unix.IPPROTO_TCP, netip.MustParseAddrPort("198.18.0.1:40009"), netip.MustParseAddrPort("198.18.0.2:443"))] = SocketBytes{Out: 1, In: 1}
	l.sockets[k1] = SocketBytes{Out: 100, In: 2000}
	l.sockets[k2] = SocketBytes{Out: 50, In: 60}
	l.sockets[k3] = SocketBytes{Out: 7, In: 8}
	l.table[k3] = ctInfo{key: k3, mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 300, replBytes: 400, counters: true}
	if got := l.poll(time.Second); len(got) != 0 {
		t.Fatalf("reports before the interval: %v", got)
	}
	l.sockets[k1] = SocketBytes{Out: 1000, In: 20000}
	l.sockets[k2] = SocketBytes{Out: 500, In: 600}
	got := l.poll(11 * time.Second)
	if want := (map[engine.RequestID]report{1: {20000, 1000, false}, 2: {600, 500, false}, 3: {400, 300, false}}); len(got) != 3 || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Fatalf("after the interval: %v, want %v (flow 3 with conntrack's counts)", got, want)
	}
	// Unchanged: no report; changed: reported again.
	if got := l.poll(21 * time.Second); len(got) != 0 {
		t.Fatalf("reports without new bytes: %v", got)
	}
	l.sockets[k1] = SocketBytes{Out: 1500, In: 30000}
	if got := l.poll(31 * time.Second); len(got) != 1 || got[1] != (report{30000, 1500, false}) {
		t.Fatalf("flow 1 moved: %v", got)
	}
	// Both sockets end: neither is listed. The poll waits for their ends.
	delete(l.sockets, k1)
	delete(l.sockets, k2)
	if got := l.poll(41 * time.Second); len(got) != 0 {
		t.Fatalf("ended at the poll before their socket ends came: %v", got)
	}
	// Flow 1's end comes, with the final counts.
	if got := l.end(k1, SocketBytes{Out: 1600, In: 30100}, 41*time.Second+time.Millisecond); len(got) != 1 || got[1] != (report{30100, 1600, true}) {
		t.Fatalf("flow 1's socket end: %v, want ended with its counts", got)
	}
	// Flow 2's end was lost: it ends at the next poll with its last counts;
	// flow 1 is not reported again.
	if got := l.poll(51 * time.Second); len(got) != 1 || got[2] != (report{600, 500, true}) {
		t.Fatalf("the poll after: %v, want flow 2 ended with its last counts only", got)
	}
	// Flow 2's end comes late after all: nothing more.
	if got := l.end(k2, SocketBytes{Out: 700, In: 800}, 52*time.Second); len(got) != 0 {
		t.Fatalf("a late end reported a flow again: %v", got)
	}
	if got := l.poll(61 * time.Second); len(got) != 0 {
		t.Fatalf("reports after the ends: %v", got)
	}
}

// TestAccountantSocketCountsAfterConntrack: a flow reported from conntrack whose
// entry is deleted while it lives (its destroy event, or just gone from the
// table) goes on from its socket's counts, whose totals never go below what was
// reported (it waits while the socket counted less); after the destroy, an entry
// conntrack makes for it again mid-stream is not its count; a read of the
// sockets that failed ends no flow it did not list.
func TestAccountantSocketCountsAfterConntrack(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, how := range []string{"destroy event", "gone from the table"} {
		t.Run(how, func(t *testing.T) {
			flows := newFlowTable(100, time.Hour)
			r := outReq(1, "198.18.0.1:40001", "198.18.0.2:443")
			flows.add(r, t0)
			k := keyOf(r)
			l := newLiveAcct(t, flows, t0)
			ci := ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 1000, replBytes: 5000, counters: true}
			l.table[k] = ci
			l.sockets[k] = SocketBytes{Out: 10, In: 10} // ignored: conntrack lists it
			l.poll(time.Second)
			if got := l.poll(11 * time.Second); got[1] != (report{5000, 1000, false}) {
				t.Fatalf("conntrack's report: %v", got)
			}
			delete(l.table, k)
			if how == "destroy event" {
				ci.origBytes, ci.replBytes = 1100, 5100
				if r, ok, err := l.a.event(ctEvent{ctInfo: ci, destroy: true}, nil, t0.Add(12*time.Second)); ok || err != nil {
					t.Fatalf("the destroy of a live flow's entry reported %+v (%v)", r, err)
				}
			}
			if how == "destroy event" {
				// Conntrack picks the flow up again mid-stream (a new
				// entry, its counts from then on): not the flow's counts.
				l.table[k] = ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 50, replBytes: 60, counters: true}
			}
			// The socket counted fewer than conntrack's report: no report yet.
			l.sockets[k] = SocketBytes{Out: 990, In: 6000}
			if got := l.poll(21 * time.Second); len(got) != 0 {
				t.Fatalf("a report below what was reported: %v", got)
			}
			l.sockets[k] = SocketBytes{Out: 2000, In: 7000}
			if got := l.poll(31 * time.Second); got[1] != (report{7000, 2000, false}) {
				t.Fatalf("from the socket: %v", got)
			}
			// A failed read of the sockets: the flow is not ended.
			delete(l.sockets, k)
			l.sockErr = errors.New("test: no sockets")
			for i := range 3 {
				if got := l.poll(time.Duration(41+10*i) * time.Second); len(got) != 0 {
					t.Fatalf("the poll after a failed read of the sockets: %v", got)
				}
			}
			l.sockErr = nil
			l.sockets[k] = SocketBytes{Out: 3000, In: 8000}
			if got := l.poll(71 * time.Second); got[1] != (report{8000, 3000, false}) {
				t.Fatalf("from the socket again: %v", got)
			}
			if got := l.end(k, SocketBytes{Out: 3100, In: 8100}, 72*time.Second); got[1] != (report{8100, 3100, true}) {
				t.Fatalf("its end: %v", got)
			}
		})
	}
	// A destroy of a flow whose socket is not listed either: it ends at the
	// next poll with the destroy's counters.
	t.Run("destroy, no socket", func(t *testing.T) {
		flows := newFlowTable(100, time.Hour)
		r := outReq(1, "198.18.0.1:40001", "198.18.0.2:443")
		flows.add(r, t0)
		k := keyOf(r)
		l := newLiveAcct(t, flows, t0)
		ci := ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 1000, replBytes: 5000, counters: true}
		l.table[k] = ci
		l.poll(time.Second)
		delete(l.table, k)
		ci.origBytes = 1200
		l.a.event(ctEvent{ctInfo: ci, destroy: true}, nil, t0.Add(2*time.Second))
		if got := l.poll(11 * time.Second); len(got) != 1 || got[1] != (report{5000, 1200, true}) {
			t.Fatalf("the next poll: %v, want ended with the destroy's counters", got)
		}
	})
}
