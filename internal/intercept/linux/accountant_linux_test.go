package linux

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"golang.org/x/sys/unix"
)

// TestAccountantReports drives the accountant with conntrack listings made up in
// the test: when it reports, what, and that a flow decided again keeps its bytes.
func TestAccountantReports(t *testing.T) {
	flows := newFlowTable(100, time.Hour)
	t0 := time.Unix(1000, 0)
	req := &engine.Request{ID: 1, Direction: engine.Outbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:40000"), Remote: netip.MustParseAddrPort("198.18.0.2:443")}
	flows.add(req, t0)
	in := &engine.Request{ID: 2, Direction: engine.Inbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:22"), Remote: netip.MustParseAddrPort("198.18.0.2:50000")}
	flows.add(in, t0)

	type entry struct {
		src, dst     string
		sport, dport uint16
		fwd, rev     uint64
		mark         uint32
		state        uint8
	}
	var table []entry
	a := newAccountant(flows, 10*time.Second)
	a.list = func(fn func(ctInfo)) error {
		for _, e := range table {
			src := netip.AddrPortFrom(netip.MustParseAddr(e.src), e.sport)
			dst := netip.AddrPortFrom(netip.MustParseAddr(e.dst), e.dport)
			fn(ctInfo{key: newFlowKey(unix.IPPROTO_TCP, src, dst), mark: e.mark,
				tcpState: e.state, hasState: true, origBytes: e.fwd, replBytes: e.rev, counters: true})
		}
		return nil
	}
	poll := func(at time.Duration) map[engine.RequestID][3]uint64 {
		t.Helper()
		rs, err := a.poll(t0.Add(at), false)
		if err != nil {
			t.Fatal(err)
		}
		got := map[engine.RequestID][3]uint64{}
		for _, r := range rs {
			ended := uint64(0)
			if r.Ended {
				ended = 1
			}
			got[r.Request.ID] = [3]uint64{r.BytesIn, r.BytesOut, ended}
			if r.DeltaIn > r.BytesIn || r.DeltaOut > r.BytesOut {
				t.Errorf("report %+v: delta above total", r)
			}
		}
		return got
	}
	const est = 3
	table = []entry{
		{"198.18.0.1", "198.18.0.2", 40000, 443, 500, 9000, MarkAllow, est},
		{"198.18.0.2", "198.18.0.1", 50000, 22, 700, 100, MarkAllow, est},
		{"198.18.0.1", "198.18.0.9", 41000, 80, 1, 1, 0, est}, // not latch's
	}
	if got := poll(time.Second); len(got) != 0 {
		t.Errorf("reports before the interval: %v", got)
	}
	table[0].fwd, table[0].rev = 1500, 90000
	got := poll(11 * time.Second)
	if got[1] != [3]uint64{90000, 1500, 0} {
		t.Errorf("outbound flow after the interval: %v, want in 90000 out 1500", got[1])
	}
	// Inbound: what the peer sent (original direction) is this host's bytes in.
	if got[2] != [3]uint64{700, 100, 0} {
		t.Errorf("inbound flow after the interval: %v, want in 700 out 100", got[2])
	}
	// Unchanged counters: no report; decided again (MarkRedecide): still tracked.
	table[1].mark = MarkRedecide
	if got := poll(22 * time.Second); len(got) != 0 {
		t.Errorf("reports without new bytes: %v", got)
	}
	// Closed: reported at once, ended; gone from conntrack: reported ended.
	table[0].state, table[0].fwd = ctTCPTimeWait, 1600
	table = table[:1]
	got = poll(23 * time.Second)
	if got[1] != [3]uint64{90000, 1600, 1} || got[2] != [3]uint64{700, 100, 1} {
		t.Errorf("ends: %v; want flow 1 closed with out 1600, flow 2 gone with its last counters", got)
	}
	if got := poll(24 * time.Second); len(got) != 0 {
		t.Errorf("reports after the end: %v", got)
	}
	// A new connection on the same tuple, newly allowed: counted from zero.
	req3 := *req
	req3.ID = 3
	flows.add(&req3, t0)
	table[0] = entry{"198.18.0.1", "198.18.0.2", 40000, 443, 60, 40, MarkAllow, ctTCPClose}
	got = poll(25 * time.Second)
	if got[3] != [3]uint64{40, 60, 1} {
		t.Errorf("new connection on a reused tuple: %v, want in 40 out 60, ended", got)
	}
}

// TestAccountantFlowEndedBeforeRegistered: a flow the kernel's fast path allowed is
// registered (TrackFlow) only once its decision is read, and a short connection can
// be over by then: its end (a destroy with the counters, or TIME_WAIT, read again)
// is kept and counted when it is registered. An end nobody registers is forgotten.
func TestAccountantFlowEndedBeforeRegistered(t *testing.T) {
	flows := newFlowTable(100, time.Hour)
	a := newAccountant(flows, 10*time.Second)
	t0 := time.Unix(1000, 0)
	tuple := func(sport uint16) flowKey {
		return newFlowKey(unix.IPPROTO_TCP, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), sport), netip.MustParseAddrPort("198.18.0.2:443"))
	}
	destroyed := ctEvent{ctInfo: ctInfo{key: tuple(40001), mark: MarkAllow, origBytes: 1_000_500, replBytes: 900, counters: true}, destroy: true}
	timeWait := ctEvent{ctInfo: ctInfo{key: tuple(40002), mark: MarkAllow, hasState: true, tcpState: ctTCPTimeWait}}
	notOurs := ctEvent{ctInfo: ctInfo{key: tuple(40003), mark: 0, origBytes: 5, counters: true}, destroy: true}
	var reads []flowKey
	get := func(k flowKey) (ctInfo, error) {
		reads = append(reads, k)
		return ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: ctTCPTimeWait, origBytes: 2000, replBytes: 300, counters: true}, nil
	}
	for _, ev := range []ctEvent{destroyed, timeWait, notOurs} {
		if _, ok, err := a.event(ev, get, t0); ok || err != nil {
			t.Fatalf("event of a flow not registered yet: reported %v, %v", ok, err)
		}
	}
	if len(reads) != 0 || len(a.recent) != 2 {
		t.Fatalf("before the registration: %d reads, %d ends kept; want 0 and 2 (not the entry latch did not allow)", len(reads), len(a.recent))
	}
	var keys []flowKey
	for i, sport := range []uint16{40001, 40002, 40003} {
		req := &engine.Request{ID: engine.RequestID(i + 1), Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), sport), Remote: netip.MustParseAddrPort("198.18.0.2:443")}
		flows.add(req, t0)
		keys = append(keys, keyOf(req))
	}
	got := map[engine.RequestID][2]uint64{}
	for _, r := range a.registered(keys, get, t0.Add(50*time.Millisecond)) {
		if !r.Ended {
			t.Errorf("report %+v: not ended", r)
		}
		got[r.Request.ID] = [2]uint64{r.BytesIn, r.BytesOut}
	}
	if got[1] != [2]uint64{900, 1_000_500} || got[2] != [2]uint64{300, 2000} || len(got) != 2 {
		t.Errorf("reports %v; want flow 1 with the destroy's counters, flow 2 with the read's", got)
	}
	if len(reads) != 1 || reads[0] != tuple(40002) || len(a.recent) != 0 {
		t.Errorf("reads %v, %d ends kept; want one read of the TIME_WAIT flow, none kept", reads, len(a.recent))
	}
	// Kept recentKeep at most.
	a.event(ctEvent{ctInfo: ctInfo{key: tuple(40004), mark: MarkAllow, counters: true}, destroy: true}, get, t0)
	a.forget(t0.Add(recentKeep + time.Second))
	if len(a.recent) != 0 {
		t.Errorf("%d ends kept after %v", len(a.recent), recentKeep)
	}
}

// TestDrainReadsOnlyOpenFlows: a drain reads a flow's counters once more only if
// it is still open when the events are handled: not for a flow whose CLOSE update
// is followed by its destroy in the same drain (the read would find it gone), not
// twice for one that asks twice, not for a socket end of a flow already ended or
// never allowed; a socket end ends its flow with the counters read, whatever
// conntrack's state, outbound or accepted.
func TestDrainReadsOnlyOpenFlows(t *testing.T) {
	flows := newFlowTable(100, time.Hour)
	t0 := time.Unix(1000, 0)
	out := func(id engine.RequestID, local string) *engine.Request {
		r := &engine.Request{ID: id, Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort("198.18.0.2:443")}
		flows.add(r, t0)
		return r
	}
	closedThenGone := out(1, "198.18.0.1:40001")
	socketEnded := out(2, "198.18.0.1:40002")
	twice := out(3, "198.18.0.1:40003")
	accepted := &engine.Request{ID: 4, Direction: engine.Inbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:22"), Remote: netip.MustParseAddrPort("198.18.0.2:50000")}
	flows.add(accepted, t0)

	ev := func(r *engine.Request, state uint8, destroy bool) ctEvent {
		return ctEvent{ctInfo: ctInfo{key: keyOf(r), mark: MarkAllow, tcpState: state, hasState: true, origBytes: 1000, replBytes: 50, counters: destroy}, destroy: destroy}
	}
	events := []ctEvent{
		ev(closedThenGone, ctTCPClose, false),
		ev(closedThenGone, 0, true),
		ev(twice, ctTCPTimeWait, false),
	}
	end := func(local, remote string) socketEnd {
		return socketEnd{local: netip.MustParseAddrPort(local), remote: netip.MustParseAddrPort(remote)}
	}
	ends := []socketEnd{
		end("198.18.0.1:40002", "198.18.0.2:443"), // socketEnded: read, ended
		end("198.18.0.1:40001", "198.18.0.2:443"), // ended by its destroy: not read
		end("198.18.0.1:40003", "198.18.0.2:443"), // twice: read once
		end("198.18.0.1:40009", "198.18.0.2:443"), // never allowed: not read
		end("198.18.0.1:22", "198.18.0.2:50000"),  // accepted: read under the inbound key
	}
	var asked []flowKey
	getMany := func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
		for _, k := range keys {
			asked = append(asked, k)
			// ESTABLISHED: the kernel reported the socket's end before the
			// reset went out.
			fn(k, ctInfo{key: k, mark: MarkAllow, tcpState: 3, hasState: true, origBytes: 7000, replBytes: 300, counters: true}, nil)
		}
	}
	a := newAccountant(flows, 10*time.Second)
	var dr drainer
	rs, lost, bad := a.drain(&dr, func(fn func(ctEvent)) (bool, int, error) {
		for _, e := range events {
			fn(e)
		}
		return false, 0, nil
	}, func() []flowKey { return nil }, func() []socketEnd { return ends }, getMany, nil, t0.Add(time.Second), func(err error) {
		if err != nil {
			t.Error(err)
		}
	})
	if lost || bad != 0 {
		t.Errorf("lost %v, bad %d", lost, bad)
	}
	want := map[flowKey]bool{keyOf(socketEnded): true, keyOf(twice): true, keyOf(accepted): true}
	if len(asked) != len(want) {
		t.Errorf("read %v, want %d reads: %v", asked, len(want), want)
	}
	for _, k := range asked {
		if !want[k] {
			t.Errorf("read %v, which needs no read", k)
		}
	}
	got := map[engine.RequestID]bool{}
	for _, r := range rs {
		if !r.Ended {
			t.Errorf("report %+v: want ended", r)
		}
		got[r.Request.ID] = true
	}
	for _, r := range []*engine.Request{closedThenGone, socketEnded, twice, accepted} {
		if !got[r.ID] {
			t.Errorf("flow %d (%v) not reported ended; reports %+v", r.ID, keyOf(r), rs)
		}
	}
	if len(rs) != 4 {
		t.Errorf("%d reports, want 4: %+v", len(rs), rs)
	}
}

// TestAccountantEndsFlowsWhoseEndWasLost: a flow whose socket end never reached
// the accountant (the ring buffer was full, or the socket was connected before the
// state callback was on) and whose conntrack entry is in TIME_WAIT or CLOSE is
// ended by the next read of the table, with the counters it lists; one whose
// entry is gone by then ends with the counters of the read before.
func TestAccountantEndsFlowsWhoseEndWasLost(t *testing.T) {
	flows := newFlowTable(100, time.Hour)
	t0 := time.Unix(1000, 0)
	var reqs []*engine.Request
	for i := range 3 {
		r := &engine.Request{ID: engine.RequestID(i + 1), Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(40000+i)), Remote: netip.MustParseAddrPort("198.18.0.2:443")}
		flows.add(r, t0)
		reqs = append(reqs, r)
	}
	table := map[flowKey]ctInfo{}
	for i, r := range reqs {
		table[keyOf(r)] = ctInfo{key: keyOf(r), mark: MarkAllow, hasState: true, tcpState: 3, origBytes: uint64(1000 * (i + 1)), replBytes: 10, counters: true}
	}
	a := newAccountant(flows, 10*time.Second)
	a.list = func(fn func(ctInfo)) error {
		for _, ci := range table {
			fn(ci)
		}
		return nil
	}
	if _, err := a.poll(t0.Add(time.Second), false); err != nil {
		t.Fatal(err)
	}
	// Flow 1 reset (CLOSE), flow 2 closed (TIME_WAIT), flow 3's entry gone.
	k1, k2, k3 := keyOf(reqs[0]), keyOf(reqs[1]), keyOf(reqs[2])
	c1, c2 := table[k1], table[k2]
	c1.tcpState, c1.origBytes = ctTCPClose, 1500
	c2.tcpState = ctTCPTimeWait
	table[k1], table[k2] = c1, c2
	delete(table, k3)
	rs, err := a.poll(t0.Add(11*time.Second), false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[engine.RequestID]uint64{}
	for _, r := range rs {
		if !r.Ended {
			t.Errorf("report %+v: want ended", r)
		}
		got[r.Request.ID] = r.BytesOut
	}
	if want := map[engine.RequestID]uint64{1: 1500, 2: 2000, 3: 3000}; len(got) != len(want) || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Errorf("ends %v, want %v", got, want)
	}
}

// TestSocketEndOfReusedTuple: a new connection that reuses the 4-tuple of one
// whose socket ended before that end reached the accountant (the fast path's ring
// buffer is read every 50 ms; a queued flow is registered at its verdict, at once)
// keeps its accounting: the old socket's end does not end the new flow with the
// counters of its first packets (losing the rest), and ends the old flow, if the
// accountant follows it, with its last counters. The new flow's own end then
// reports its totals.
func TestSocketEndOfReusedTuple(t *testing.T) {
	t0 := time.Unix(1000, 0)
	local, remote := "198.18.0.1:40001", "198.18.0.2:443"
	req := func(id engine.RequestID, at time.Time) *engine.Request {
		return &engine.Request{ID: id, Time: at, Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote)}
	}
	for _, known := range []bool{true, false} {
		t.Run(map[bool]string{true: "old flow read before", false: "old flow never read"}[known], func(t *testing.T) {
			flows := newFlowTable(100, time.Hour)
			a := newAccountant(flows, 10*time.Second)
			old := req(1, t0)
			flows.add(old, t0)
			k := keyOf(old)
			entry := ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 900, replBytes: 40, counters: true}
			if known {
				a.list = func(fn func(ctInfo)) error { fn(entry); return nil }
				if _, err := a.poll(t0.Add(time.Second), false); err != nil {
					t.Fatal(err)
				}
			}
			// The old socket ends (reset: no TIME_WAIT) and a new connection
			// from the same port is allowed and registered before the end is read.
			endAt := t0.Add(2 * time.Second)
			renewed := req(2, endAt.Add(100*time.Microsecond))
			flows.add(renewed, renewed.Time)
			// The new flow's conntrack entry: its SYN so far.
			entry = ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: 1, origBytes: 60, counters: true}
			drain := func(ends []socketEnd, now time.Time) []intercept.Traffic {
				var dr drainer
				rs, _, _ := a.drain(&dr, func(func(ctEvent)) (bool, int, error) { return false, 0, nil },
					func() []flowKey { return nil }, func() []socketEnd { return ends },
					func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
						for _, k := range keys {
							fn(k, entry, nil)
						}
					}, nil, now, func(err error) {
						if err != nil {
							t.Error(err)
						}
					})
				return rs
			}
			end := func(at time.Time) socketEnd {
				return socketEnd{local: netip.MustParseAddrPort(local), remote: netip.MustParseAddrPort(remote), at: at}
			}
			rs := drain([]socketEnd{end(endAt)}, endAt.Add(30*time.Millisecond))
			for _, r := range rs {
				if r.Request.ID == renewed.ID {
					t.Fatalf("the old socket's end reported the new flow: %+v", r)
				}
			}
			if known && (len(rs) != 1 || rs[0].Request.ID != old.ID || !rs[0].Ended || rs[0].BytesOut != 900 || rs[0].BytesIn != 40) {
				t.Errorf("reports %+v, want the old flow ended with 900 bytes out, 40 in", rs)
			}
			if !known && len(rs) != 0 {
				t.Errorf("reports %+v, want none", rs)
			}
			// The new flow carries data, then its socket ends.
			entry = ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: ctTCPTimeWait, origBytes: 5000, replBytes: 70000, counters: true}
			rs = drain([]socketEnd{end(endAt.Add(time.Second))}, endAt.Add(time.Second+30*time.Millisecond))
			if len(rs) != 1 || rs[0].Request.ID != renewed.ID || !rs[0].Ended || rs[0].BytesOut != 5000 || rs[0].BytesIn != 70000 {
				t.Errorf("reports %+v, want the new flow ended with 5000 bytes out, 70000 in", rs)
			}
		})
	}
}

// tcpReq is request id, made at at, for the same outbound TCP 4-tuple each time.
func tcpReq(id engine.RequestID, at time.Time) *engine.Request {
	return &engine.Request{ID: id, Time: at, Direction: engine.Outbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:40001"), Remote: netip.MustParseAddrPort("198.18.0.2:443")}
}

// TestDestroyOfEndedFlowSpareNewFlow: a flow its socket's end ended, whose
// conntrack entry is destroyed when a new connection's SYN reuses the tuple (the
// entry was in TIME_WAIT), does not end the new flow with the old entry's
// counters when that destroy event is read after the new flow was registered.
func TestDestroyOfEndedFlowSpareNewFlow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	flows := newFlowTable(100, time.Hour)
	a := newAccountant(flows, 10*time.Second)
	old := tcpReq(1, t0)
	flows.add(old, t0)
	k := keyOf(old)
	oldEntry := ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: ctTCPTimeWait, origBytes: 900, replBytes: 40, counters: true}
	var events []ctEvent
	var entry ctInfo
	drain := func(ends []socketEnd, now time.Time) []intercept.Traffic {
		var dr drainer
		rs, _, _ := a.drain(&dr, func(fn func(ctEvent)) (bool, int, error) {
			for _, e := range events {
				fn(e)
			}
			return false, 0, nil
		}, func() []flowKey { return nil }, func() []socketEnd { return ends },
			func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
				for _, k := range keys {
					fn(k, entry, nil)
				}
			}, nil, now, func(err error) {
				if err != nil {
					t.Error(err)
				}
			})
		events = nil
		return rs
	}
	end := func(at time.Time) socketEnd {
		return socketEnd{local: old.Local, remote: old.Remote, at: at}
	}
	entry = oldEntry
	if rs := drain([]socketEnd{end(t0.Add(time.Second))}, t0.Add(time.Second+time.Millisecond)); len(rs) != 1 || rs[0].Request.ID != old.ID || !rs[0].Ended {
		t.Fatalf("reports %+v, want the old flow ended", rs)
	}
	renewed := tcpReq(2, t0.Add(70*time.Second))
	flows.add(renewed, renewed.Time)
	events = []ctEvent{{ctInfo: oldEntry, destroy: true}}
	if rs := drain(nil, renewed.Time.Add(40*time.Millisecond)); len(rs) != 0 {
		t.Errorf("the old entry's destroy reported %+v, want nothing", rs)
	}
	entry = ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 5000, replBytes: 70000, counters: true}
	rs := drain([]socketEnd{end(renewed.Time.Add(time.Second))}, renewed.Time.Add(time.Second+time.Millisecond))
	if len(rs) != 1 || rs[0].Request.ID != renewed.ID || !rs[0].Ended || rs[0].BytesOut != 5000 || rs[0].BytesIn != 70000 {
		t.Errorf("reports %+v, want the new flow ended with 5000 bytes out, 70000 in", rs)
	}
}

// TestDestroyOfReplacedEntry: a new connection's SYN on a tuple whose conntrack
// entry is in TIME_WAIT or CLOSE has conntrack destroy that entry; its destroy
// event, read after the new flow was registered, ends the older flow with the
// counters it carries (whether the accountant followed it or not) and leaves the
// new flow alone, which its own socket end then ends with its own counters.
func TestDestroyOfReplacedEntry(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, known := range []bool{true, false} {
		t.Run(map[bool]string{true: "old flow read before", false: "old flow never read"}[known], func(t *testing.T) {
			flows := newFlowTable(100, time.Hour)
			a := newAccountant(flows, 10*time.Second)
			old := tcpReq(1, t0)
			flows.add(old, t0)
			k := keyOf(old)
			if known {
				a.list = func(fn func(ctInfo)) error {
					fn(ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 500, replBytes: 20, counters: true})
					return nil
				}
				if _, err := a.poll(t0.Add(time.Second), false); err != nil {
					t.Fatal(err)
				}
			}
			// Reset at t0+2s (its end lost, or older than what follows), and
			// reopened from the same port: the old entry, in CLOSE, is destroyed.
			renewed := tcpReq(2, t0.Add(2*time.Second))
			flows.add(renewed, renewed.Time)
			destroyed := ctEvent{ctInfo: ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: ctTCPClose, origBytes: 900, replBytes: 40, counters: true}, destroy: true}
			r, ok, err := a.event(destroyed, func(flowKey) (ctInfo, error) { t.Fatal("read"); return ctInfo{}, nil }, renewed.Time.Add(40*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			if ok && r.Request.ID == renewed.ID {
				t.Fatalf("the replaced entry's destroy reported the new flow: %+v", r)
			}
			// Known or not (the request the flow table replaced).
			if !ok || r.Request.ID != old.ID || !r.Ended || r.BytesOut != 900 || r.BytesIn != 40 || r.DeltaOut != 900 || r.DeltaIn != 40 {
				t.Errorf("report %+v (%v), want the old flow ended with 900 bytes out, 40 in", r, ok)
			}
			var dr drainer
			rs, _, _ := a.drain(&dr, func(func(ctEvent)) (bool, int, error) { return false, 0, nil },
				func() []flowKey { return nil },
				func() []socketEnd {
					return []socketEnd{{local: old.Local, remote: old.Remote, at: renewed.Time.Add(time.Second)}}
				},
				func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
					for _, k := range keys {
						fn(k, ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: ctTCPTimeWait, origBytes: 5000, replBytes: 70000, counters: true}, nil)
					}
				}, nil, renewed.Time.Add(time.Second+time.Millisecond), func(err error) {
					if err != nil {
						t.Error(err)
					}
				})
			if len(rs) != 1 || rs[0].Request.ID != renewed.ID || !rs[0].Ended || rs[0].BytesOut != 5000 || rs[0].BytesIn != 70000 {
				t.Errorf("reports %+v, want the new flow ended with 5000 bytes out, 70000 in", rs)
			}
		})
	}
}

// TestDestroyOfShortFlowBeforeReuseRegistered: the destroy of a short flow's
// entry (a new connection's SYN replaced it) read before that new connection is
// registered ends the short flow, the one registered, with its counters.
func TestDestroyOfShortFlowBeforeReuseRegistered(t *testing.T) {
	t0 := time.Unix(1000, 0)
	flows := newFlowTable(100, time.Hour)
	a := newAccountant(flows, 10*time.Second)
	short := tcpReq(1, t0)
	flows.add(short, t0)
	destroyed := ctEvent{ctInfo: ctInfo{key: keyOf(short), mark: MarkAllow, hasState: true, tcpState: ctTCPClose, origBytes: 900, replBytes: 40, counters: true}, destroy: true}
	r, ok, err := a.event(destroyed, func(flowKey) (ctInfo, error) { t.Fatal("read"); return ctInfo{}, nil }, t0.Add(300*time.Millisecond))
	if err != nil || !ok || r.Request.ID != short.ID || !r.Ended || r.BytesOut != 900 || r.BytesIn != 40 {
		t.Errorf("report %+v (%v, %v), want the short flow ended with 900 bytes out, 40 in", r, ok, err)
	}
}

// TestSocketEndWithCounts: a socket end that carries the socket's counts ends its
// flow with them, without reading conntrack: an outbound flow's bytes out are
// the socket's out; a flow the accountant already reported more bytes of (from
// conntrack, along the way) than the socket counted is read instead, and ends
// with conntrack's counters, so that no report's delta goes wrong; an end of an
// older socket on a reused tuple still ends only the older flow.
func TestSocketEndWithCounts(t *testing.T) {
	flows := newFlowTable(100, time.Hour)
	t0 := time.Unix(1000, 0)
	out := func(id engine.RequestID, local string, at time.Time) *engine.Request {
		r := &engine.Request{ID: id, Direction: engine.Outbound, Protocol: engine.TCP, Time: at,
			Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort("198.18.0.2:443")}
		flows.add(r, at)
		return r
	}
	counted := out(1, "198.18.0.1:40001", t0)
	behind := out(2, "198.18.0.1:40002", t0)
	a := newAccountant(flows, 10*time.Second)
	// behind was reported along the way with 9000 bytes out, 400 in.
	if r, ok := a.observe(ctInfo{key: keyOf(behind), mark: MarkAllow, hasState: true, tcpState: 3, origBytes: 9000, replBytes: 400, counters: true}, false, t0.Add(20*time.Second), true); !ok || r.BytesOut != 9000 {
		t.Fatalf("report along the way %+v (%v)", r, ok)
	}
	var asked []flowKey
	drain := func(ends []socketEnd, now time.Time) []intercept.Traffic {
		var dr drainer
		var gets atomic.Uint64
		rs, _, _ := a.drain(&dr, func(func(ctEvent)) (bool, int, error) { return false, 0, nil },
			func() []flowKey { return nil }, func() []socketEnd { return ends },
			func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
				for _, k := range keys {
					asked = append(asked, k)
					fn(k, ctInfo{key: k, mark: MarkAllow, hasState: true, tcpState: ctTCPTimeWait, origBytes: 9100, replBytes: 450, counters: true}, nil)
				}
			}, &gets, now, func(err error) {
				if err != nil {
					t.Error(err)
				}
			})
		if gets.Load() != uint64(len(asked)) {
			t.Errorf("gets counted %d, %d read", gets.Load(), len(asked))
		}
		return rs
	}
	endOf := func(r *engine.Request, at time.Time, out, in uint64) socketEnd {
		return socketEnd{local: r.Local, remote: r.Remote, at: at, counted: true, counts: SocketBytes{Out: out, In: in}}
	}
	rs := drain([]socketEnd{endOf(counted, t0.Add(30*time.Second), 70_000, 3_000), endOf(behind, t0.Add(30*time.Second), 8_000, 300)}, t0.Add(31*time.Second))
	if len(asked) != 1 || asked[0] != keyOf(behind) {
		t.Errorf("read %v, want only the flow its socket counted less of than was reported (%v)", asked, keyOf(behind))
	}
	got := map[engine.RequestID]intercept.Traffic{}
	for _, r := range rs {
		got[r.Request.ID] = r
	}
	if r := got[counted.ID]; !r.Ended || r.BytesOut != 70_000 || r.BytesIn != 3_000 || r.DeltaOut != 70_000 || r.DeltaIn != 3_000 {
		t.Errorf("counted flow's report %+v: want ended with the socket's 70000 bytes out and 3000 in", r)
	}
	if r := got[behind.ID]; !r.Ended || r.BytesOut != 9100 || r.BytesIn != 450 || r.DeltaOut != 100 || r.DeltaIn != 50 {
		t.Errorf("flow behind its reports: report %+v, want ended with conntrack's 9100 out, 450 in (deltas 100, 50)", r)
	}
	if len(rs) != 2 {
		t.Errorf("%d reports, want 2: %+v", len(rs), rs)
	}
	// A new connection on counted's tuple (allowed after the old socket ended):
	// the old socket's end, read late, does not end it, counted or not.
	asked = nil
	renewed := out(3, "198.18.0.1:40001", t0.Add(40*time.Second))
	if rs := drain([]socketEnd{endOf(counted, t0.Add(39*time.Second), 70_000, 3_000)}, t0.Add(41*time.Second)); len(rs) != 0 || len(asked) != 0 {
		t.Errorf("the old socket's end made reports %+v and reads %v of the new flow", rs, asked)
	}
	// Its own end, counted, ends it with its own counts.
	rs = drain([]socketEnd{endOf(renewed, t0.Add(42*time.Second), 500, 200)}, t0.Add(43*time.Second))
	if len(rs) != 1 || rs[0].Request.ID != renewed.ID || !rs[0].Ended || rs[0].BytesOut != 500 || rs[0].BytesIn != 200 || len(asked) != 0 {
		t.Errorf("the new flow's end: reports %+v, reads %v; want it ended with 500 out, 200 in, no read", rs, asked)
	}
}
