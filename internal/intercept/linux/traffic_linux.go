package linux

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"golang.org/x/sys/unix"
)

// acctSysctl turns conntrack's byte and packet counters on for entries created after
// it is set, in the current network namespace.
const acctSysctl = "/proc/sys/net/netfilter/nf_conntrack_acct"

const (
	defaultTrafficInterval = 10 * time.Second
	defaultTrafficPoll     = 500 * time.Millisecond
	// eventDrain is how often conntrack events are read: it bounds how late a
	// flow's end is reported.
	eventDrain = 50 * time.Millisecond
	// kickDrain is how soon after TrackFlow or SocketEnded the accountant drains:
	// the fast path hands its decisions and socket ends over in bursts (one per
	// ring buffer read), and a burst's flows are read together once it is over.
	// Soon enough that a short connection's end report follows its history row
	// while the history still holds that row (one INSERT with the bytes instead of
	// an INSERT and an UPDATE).
	kickDrain = 2 * time.Millisecond
)

// Conntrack TCP states (enum tcp_conntrack) at which a flow is over: both sides
// have closed (TIME_WAIT) or it was reset (CLOSE). Its counters no longer grow but
// for the last ACKs.
const (
	ctTCPTimeWait = 7
	ctTCPClose    = 8
)

// get returns the request of the allowed flow k, or nil.
func (t *flowTable) get(k flowKey) *engine.Request {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.lookup(k); ok {
		return e.req
	}
	return nil
}

// acctFlow is what the accountant knows of one allowed flow.
type acctFlow struct {
	req *engine.Request
	// id is req.ID (set with req: setReq), compared with the flow table's
	// request without reading req, which a flow ended seconds ago no longer has
	// in the CPU's caches.
	id                      engine.RequestID
	in, out                 uint64 // at the last read
	reportedIn, reportedOut uint64
	reportedAt              time.Time
	ended                   bool
	gen                     uint64 // the poll that last saw it
	// sock: its counts are its socket's (the live counts of the kernel fast
	// path, accountant.sockets), taken when conntrack did not list it or its
	// entry was destroyed while it lived (see event); from then on they are
	// (the counts of an entry conntrack makes for it later, picking it up
	// mid-stream, began after the flow did). missed: polls in a row since its
	// socket was last listed, or since its conntrack entry was destroyed.
	sock   bool
	missed int
}

// accountant reads the counters of the flows latch allowed from conntrack and turns
// them into Traffic reports.
type accountant struct {
	flows    *flowTable
	interval time.Duration
	// list calls fn for every conntrack entry that may be an allowed flow's
	// (dumpCt: the kernel leaves out the others).
	list func(fn func(ctInfo)) error
	// sockets, if not nil, calls fn for every local TCP socket whose bytes the
	// kernel counts, with its counts so far (Config.SocketCounts): the poll
	// reports from them the flows conntrack does not list.
	sockets func(fn func(local, remote netip.AddrPort, bytes SocketBytes)) error
	// fromSockets counts the reports made from the sockets' counts (nil: not
	// counted).
	fromSockets *atomic.Uint64
	m           map[flowKey]*acctFlow
	gen         uint64
	// recent holds the ends (destroys, TIME_WAIT or CLOSE) of flows latch
	// allowed that the accountant did not know when conntrack announced them: a
	// flow the kernel's fast path allowed is registered (Backend.TrackFlow) only
	// once its decision is read from the ring buffer, tens of milliseconds after
	// the connect, and a short connection can be over by then. Kept recentKeep,
	// at most recentMax.
	recent map[flowKey]recentEnd
	// spare holds flows poll forgot, for newFlow to reuse.
	spare []*acctFlow
}

// recentEnd is the end of a flow the accountant did not know yet, and when it
// was seen.
type recentEnd struct {
	ev ctEvent
	at time.Time
}

const (
	recentKeep = 5 * time.Second
	recentMax  = 16384
)

// reusedTupleWindow: a TCP conntrack entry destroyed less than this after the
// request of the flow registered on its tuple, when that request replaced
// another on the tuple and the accountant has not seen its entry, is an older
// connection's: a new SYN on a tuple whose entry is in TIME_WAIT or CLOSE has
// conntrack destroy that entry and make another, and the destroy event may be
// read after the new flow was registered. A flow's own entry lives on at least
// 10 s after its end (nf_conntrack_tcp_timeout_close) unless something deletes
// it.
const reusedTupleWindow = 2 * time.Second

func newAccountant(flows *flowTable, interval time.Duration) *accountant {
	return &accountant{
		flows:    flows,
		interval: interval,
		list: func(fn func(ctInfo)) error {
			bad, err := dumpCt(ctDumpMark, ctDumpMarkMask, fn)
			if err == nil && bad > 0 {
				err = fmt.Errorf("%d conntrack entries did not decode", bad)
			}
			return err
		},
		m:      make(map[flowKey]*acctFlow),
		recent: make(map[flowKey]recentEnd),
	}
}

// remember keeps the end ev of a flow not (yet) known, for registered.
func (a *accountant) remember(ev ctEvent, now time.Time) {
	if len(a.recent) >= recentMax {
		a.forget(now)
		if len(a.recent) >= recentMax {
			return
		}
	}
	a.recent[ev.key] = recentEnd{ev: ev, at: now}
}

// forget drops the ends kept longer than recentKeep.
func (a *accountant) forget(now time.Time) {
	for k, r := range a.recent {
		if now.Sub(r.at) > recentKeep {
			delete(a.recent, k)
		}
	}
}

// socketEnded handles the end of a local TCP socket (Backend.SocketEnded): the
// key of the flow it ends, the accountant's, read once more for its counters
// (read, which defers the read), or false if it follows no such flow (one it never
// knew, or one a destroy event already ended). A socket's flow is outbound
// (local → remote) or, accepted, inbound.
//
// A new connection may reuse the 4-tuple of one whose socket ended before that
// end is read (the fast path's ring buffer is read every 50 ms; a queued flow is
// registered at its verdict): an end older than the request of the flow now
// registered on the tuple is the older socket's, and does not end the new flow
// (which would end it with the counters of its first packets and lose the rest).
// The older flow, if the accountant still follows it, ends with the counters
// read last (its conntrack entry gave way to the new one's).
//
// With endRead, it returns what it found of the flow too (endFlow), for
// endCounted: each map is looked up once per socket end.
func (a *accountant) socketEnded(e socketEnd, now time.Time) (endFlow, intercept.Traffic, int) {
	k := newFlowKey(unix.IPPROTO_TCP, e.local, e.remote)
	for range 2 {
		f := a.m[k]
		treq, untracked := a.flows.getEnd(k)
		if wantsEnd(f, treq) {
			req := treq
			if req == nil && f != nil {
				req = f.req
			}
			if e.at.IsZero() || req == nil || !e.at.Before(req.Time) {
				return endFlow{k: k, f: f, req: treq, untracked: untracked}, intercept.Traffic{}, endRead
			}
			// The end of an older socket on the tuple of req.
			if f != nil && !f.ended && f.id != req.ID && !e.at.Before(f.req.Time) {
				f.ended = true
				return endFlow{k: k}, f.report(now), endOlder
			}
			return endFlow{k: k}, intercept.Traffic{}, endNone
		}
		k = k.reversed()
	}
	return endFlow{}, intercept.Traffic{}, endNone
}

// endFlow is the flow a socket end ends (accountant.socketEnded): its key, the
// accountant's flow under it (nil if none) and the request the flow table holds
// under it (nil if none), as they were when the end was handled.
type endFlow struct {
	k   flowKey
	f   *acctFlow
	req *engine.Request
	// untracked: the table's entry is untracked (flowEntry.untracked).
	untracked bool
}

// endCounted ends the flow k, whose socket's end e carries the socket's counters
// (the kernel counted each of its packets from the SYN on, their length from the
// IP header on, as conntrack counts them), with those counters instead of
// reading its conntrack entry once more, and returns its report. The socket's
// bytes out are the local side's: conntrack's original direction's if the
// socket's local end is the flow key's source (an outbound connection), its
// reply's otherwise (setCounters maps them to the flow's in and out).
//
// It returns false (read conntrack instead) if the socket counted fewer bytes in
// a direction than the accountant already reported for the flow from conntrack
// (a long flow's periodic reports): conntrack then saw packets the socket did
// not (one the output or input chain dropped between conntrack's hook and the
// socket's), and a report ending with the socket's counts would put the flow's
// totals below what its earlier reports summed to. The read gives conntrack's
// totals, consistent with those reports; taking the larger of the two instead
// would mix the two sources' counts of one flow per direction.
//
// ef is what socketEnded found of the flow, in the same drain.
func (a *accountant) endCounted(ef endFlow, e socketEnd, now time.Time) (intercept.Traffic, bool) {
	k, req, f := ef.k, ef.req, ef.f
	if f == nil && req == nil {
		return intercept.Traffic{}, false
	}
	ci := ctInfo{key: k, counters: true, origBytes: e.counts.Out, replBytes: e.counts.In}
	if !k.srcIs(e.local) {
		// The socket is the flow's reply side.
		ci.origBytes, ci.replBytes = e.counts.In, e.counts.Out
	}
	fresh := f == nil || f.ended && req != nil && req.ID != f.id
	if fresh && ef.untracked {
		// Its end is all there is of it (no conntrack entry, no event to
		// come): reported and forgotten at once, neither kept in a.m until the
		// next poll nor in the flow table until it fills. A late socket end
		// of it finds nothing (wantsEnd), as one of a flow a poll forgot.
		var once acctFlow
		once.reportedAt = now
		once.setReq(req)
		once.setCounters(ci)
		once.ended = true
		a.flows.forgetEnded(k, req.ID)
		return once.report(now), true
	}
	if fresh {
		// New, or a new connection on the tuple of one that ended (as observe).
		f = a.newFlow(k, f, req, now)
	} else {
		r := f.req
		if req != nil {
			r = req // decided again (as observe)
		}
		next := acctFlow{req: r}
		next.setCounters(ci)
		if next.in < f.reportedIn || next.out < f.reportedOut {
			return intercept.Traffic{}, false
		}
		f.setReq(r)
	}
	f.gen = a.gen
	f.setCounters(ci)
	f.ended = true
	if ef.untracked && req != nil && f.id == req.ID {
		a.flows.forgetEnded(k, req.ID)
	}
	return f.report(now), true
}

// maxSpareFlows bounds the accountant's spare flows (newFlow): as many as the
// flows a poll forgets at a few thousand connections a second (the map held
// them until then), so that a busy host's flows are not allocated anew (4096
// spares left four of five of them allocated at 2,500 connections a second).
const maxSpareFlows = 32768

// newFlow starts the flow of req under k, where the accountant had old (nil if
// none; a flow that ended, replaced), and returns it: in place of old, or a
// spare one the accountant forgot (poll), or a new one. Nothing but a.m holds an
// accountant's flow (a report copies what it needs).
func (a *accountant) newFlow(k flowKey, old *acctFlow, req *engine.Request, now time.Time) *acctFlow {
	f := old
	if f == nil {
		if n := len(a.spare); n > 0 {
			f, a.spare = a.spare[n-1], a.spare[:n-1]
		} else {
			f = new(acctFlow)
		}
		a.m[k] = f
	}
	*f = acctFlow{req: req, id: req.ID, reportedAt: now}
	return f
}

// setReq makes req the flow's request.
func (f *acctFlow) setReq(req *engine.Request) { f.req, f.id = req, req.ID }

// What a socket end asks of the drain (accountant.socketEnded).
const (
	endNone  = iota // nothing: no flow the accountant follows, or not its end
	endRead         // read the flow's counters once more and end it
	endOlder        // report the older flow the end ended (not the one registered now)
)

// registered handles flows just registered in the flow table outside the queue
// (keys): one whose end was already announced (remember) ends now, with the
// counters of its destroy event, or, for one that reached TIME_WAIT or CLOSE,
// with those get reads.
func (a *accountant) registered(keys []flowKey, get func(flowKey) (ctInfo, error), now time.Time) []intercept.Traffic {
	var out []intercept.Traffic
	for _, k := range keys {
		r, ok := a.recent[k]
		if !ok {
			continue
		}
		delete(a.recent, k)
		if t, ok, _ := a.event(r.ev, get, now); ok {
			out = append(out, t)
		}
	}
	return out
}

// poll reads conntrack's table once and returns the reports due: a flow's first
// report after interval, then every interval while its counters change, and one with
// Ended when it closes or its entry is gone. With final, every flow not yet ended is
// reported as it stands.
func (a *accountant) poll(now time.Time, final bool) ([]intercept.Traffic, error) {
	a.gen++
	var out []intercept.Traffic
	err := a.list(func(ci ctInfo) {
		if r, ok := a.observe(ci, false, now, final); ok {
			out = append(out, r)
		}
	})
	if err != nil {
		// Not all read: an entry not seen is not an entry gone.
		return out, fmt.Errorf("list conntrack entries: %w", err)
	}
	// After conntrack's table: the flows it did not list, from their sockets.
	var sockErr error
	if a.sockets != nil && (len(a.m) > 0 || a.flows.len() > 0) {
		sockErr = a.sockets(func(local, remote netip.AddrPort, b SocketBytes) {
			if r, ok := a.observeSocket(local, remote, b, now, final); ok {
				out = append(out, r)
				if a.fromSockets != nil {
					a.fromSockets.Add(1)
				}
			}
		})
	}
	for k, f := range a.m {
		if f.gen == a.gen {
			continue
		}
		if !f.ended && (f.sock || f.missed > 0) && !final {
			if sockErr != nil {
				// Not every socket was listed: one not seen is not one gone.
				continue
			}
			if f.missed == 0 {
				// Its socket ended (or its conntrack entry was destroyed
				// while it may still count): its end, with the socket's
				// final counts, is read within eventDrain; it ends here at
				// the next poll if none came.
				f.missed++
				continue
			}
		}
		if !f.ended {
			// Gone between two reads (a UDP flow timed out, an entry was
			// deleted, a socket whose end was lost): its last counters are
			// its totals. Kept until the next poll: a socket end that comes
			// late finds it ended (wantsEnd) instead of starting it over.
			f.ended = true
			out = append(out, f.report(now))
			continue
		}
		delete(a.m, k)
		if len(a.spare) < maxSpareFlows {
			a.spare = append(a.spare, f)
		}
	}
	if sockErr != nil {
		return out, fmt.Errorf("list the sockets' byte counts: %w", sockErr)
	}
	return out, nil
}

// observeSocket takes the counts of the local TCP socket local → remote (one the
// kernel opened actively and counts, from its SYN on) for the flow of that key,
// if the accountant follows it or should and conntrack's table did not list it
// in this poll (a flow conntrack lists keeps conntrack's counts: the two are not
// mixed within a poll), and returns the report it makes due, as observe does
// for conntrack's entries. The socket's out is the local side's: conntrack's
// original direction's. A flow reported from conntrack before (its entry was
// deleted) goes on from its socket's counts once they reach what was reported,
// so that its totals never go down.
func (a *accountant) observeSocket(local, remote netip.AddrPort, b SocketBytes, now time.Time, final bool) (intercept.Traffic, bool) {
	k := newFlowKey(unix.IPPROTO_TCP, netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()))
	f := a.m[k]
	if f != nil && f.gen == a.gen && !f.sock {
		return intercept.Traffic{}, false // conntrack's
	}
	if f = a.follow(k, f, now); f == nil {
		return intercept.Traffic{}, false
	}
	f.missed = 0
	next := acctFlow{req: f.req}
	next.setCounters(ctInfo{key: k, counters: true, origBytes: b.Out, replBytes: b.In})
	if next.in < f.reportedIn || next.out < f.reportedOut {
		// Fewer than conntrack's counts reported before: wait for more.
		return intercept.Traffic{}, false
	}
	f.sock = true
	f.in, f.out = next.in, next.out
	changed := f.in != f.reportedIn || f.out != f.reportedOut
	if final || changed && now.Sub(f.reportedAt) >= a.interval*9/10 {
		return f.report(now), true
	}
	return intercept.Traffic{}, false
}

// wants reports whether k is a flow the accountant follows or should: one it
// tracks and has not seen end, or one latch allowed. Not one allowed on the tuple
// of one that ended: conntrack's events do not tell the ended flow's entry (its
// destroy, when a new connection's SYN replaced it) from the new one's.
func (a *accountant) wants(k flowKey) bool {
	if f := a.m[k]; f != nil {
		return !f.ended
	}
	return a.flows.get(k) != nil
}

// wantsEnd is wants for a socket end (and the reads the drain makes for its
// flow): a socket end is the socket's, and one of a new connection on the tuple
// of a flow that ended (another request) is wanted too (socketEnded tells the
// older socket's end by its time).
func (a *accountant) wantsEnd(k flowKey) bool {
	f := a.m[k]
	if f != nil && !f.ended {
		return true
	}
	return wantsEnd(f, a.flows.get(k))
}

// wantsEnd is accountant.wantsEnd of what the accountant (f) and the flow table
// (req) hold under a key, each nil if nothing.
func wantsEnd(f *acctFlow, req *engine.Request) bool {
	if f != nil && !f.ended {
		return true
	}
	return req != nil && (f == nil || req.ID != f.id)
}

// follow returns the flow k (f: what the accountant has under k, or nil) that
// this poll saw, made anew if it is new or a new connection on the tuple of one
// that ended; nil if latch allowed none there or it has ended.
func (a *accountant) follow(k flowKey, f *acctFlow, now time.Time) *acctFlow {
	req := a.flows.get(k)
	switch {
	case f == nil && req == nil:
		return nil
	case f == nil || f.ended && req != nil && req.ID != f.id:
		f = a.newFlow(k, f, req, now)
	case req != nil && req.ID != f.id:
		// Decided again and allowed: the same flow, its bytes from now on the
		// new decision's.
		f.setReq(req)
	}
	f.gen = a.gen
	if f.ended {
		return nil
	}
	return f
}

// observe takes what conntrack says of one entry (gone: it was destroyed) and
// returns the report it makes due, if any.
func (a *accountant) observe(ci ctInfo, gone bool, now time.Time, final bool) (intercept.Traffic, bool) {
	// A flow being decided again (MarkRedecide) is still the flow it was.
	m := ci.mark & MarkMask
	if m != MarkAllow && m != MarkRedecide {
		return intercept.Traffic{}, false
	}
	k := ci.key
	f := a.m[k]
	if f == nil && m != MarkAllow {
		return intercept.Traffic{}, false
	}
	if f != nil && f.sock && !f.ended {
		// Its socket's counts are its counts (see acctFlow.sock); its end
		// comes with its socket's.
		return intercept.Traffic{}, false
	}
	if f = a.follow(k, f, now); f == nil {
		return intercept.Traffic{}, false
	}
	f.setCounters(ci)
	closed := gone || ci.hasState && (ci.tcpState == ctTCPTimeWait || ci.tcpState == ctTCPClose)
	changed := f.in != f.reportedIn || f.out != f.reportedOut
	switch {
	case closed:
		f.ended = true
		return f.report(now), true
	case final || changed && now.Sub(f.reportedAt) >= a.interval*9/10:
		// 9/10: a read of the table every interval comes a little early or late.
		return f.report(now), true
	}
	return intercept.Traffic{}, false
}

// event handles a conntrack event: a destroyed entry ends its flow with the
// counters the event carries; a TCP flow reaching TIME_WAIT or CLOSE is read once
// more (events other than destroys carry no counters) and ends.
func (a *accountant) event(ev ctEvent, get func(flowKey) (ctInfo, error), now time.Time) (intercept.Traffic, bool, error) {
	if !a.wants(ev.key) {
		// One latch allowed whose flow is not known: perhaps registered in a
		// moment (see recent).
		if a.m[ev.key] == nil && ev.mark&MarkMask == MarkAllow &&
			(ev.destroy || ev.hasState && (ev.tcpState == ctTCPTimeWait || ev.tcpState == ctTCPClose)) {
			a.remember(ev, now)
		}
		return intercept.Traffic{}, false, nil
	}
	if ev.destroy {
		req, prev := a.flows.getReplaced(ev.key)
		if ev.key.proto == unix.IPPROTO_TCP && req != nil && prev != nil && !req.Time.IsZero() && now.Sub(req.Time) < reusedTupleWindow {
			if f := a.m[ev.key]; f == nil || f.id != req.ID {
				// The entry of an older connection on the tuple, which the new
				// one's SYN replaced (conntrack kills an entry in TIME_WAIT or
				// CLOSE for a new SYN): its counters are the older flow's (the
				// accountant's, or the one the new request replaced in the flow
				// table).
				if f == nil || f.ended {
					if f != nil && f.id == prev.ID {
						return intercept.Traffic{}, false, nil
					}
					f = &acctFlow{req: prev, id: prev.ID, reportedAt: now}
				}
				f.setCounters(ev.ctInfo)
				f.ended = true
				return f.report(now), true, nil
			}
		}
		if a.sockets != nil && ev.key.proto == unix.IPPROTO_TCP {
			if f := a.m[ev.key]; f != nil && !f.ended && (req == nil || req.ID == f.id) {
				// Its socket may still be counting (an entry deleted under a
				// live flow): the next poll goes on from the socket's counts,
				// or ends the flow with these if the socket is not listed
				// either (missed). Its socket's end ends it meanwhile. An
				// entry conntrack makes for it again (its next packet, picked
				// up mid-stream) is not its count.
				if !f.sock {
					f.setCounters(ev.ctInfo)
				}
				f.sock = true
				f.missed = max(f.missed, 1)
				return intercept.Traffic{}, false, nil
			}
		}
		r, ok := a.observe(ev.ctInfo, true, now, false)
		return r, ok, nil
	}
	if !ev.hasState || ev.tcpState != ctTCPTimeWait && ev.tcpState != ctTCPClose {
		return intercept.Traffic{}, false, nil
	}
	ci, err := get(ev.key)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			// Gone already: its destroy event follows, with the counters.
			return intercept.Traffic{}, false, nil
		}
		return intercept.Traffic{}, false, err
	}
	r, ok := a.observe(ci, false, now, false)
	return r, ok, nil
}

// setCounters takes the counters of the flow's conntrack entry ci, if it carries
// them, as the flow's bytes in and out.
func (f *acctFlow) setCounters(ci ctInfo) {
	if !ci.counters {
		return
	}
	f.in, f.out = ci.replBytes, ci.origBytes
	if !localSentOriginal(ci.key, f.req) {
		f.in, f.out = f.out, f.in
	}
}

func (f *acctFlow) report(now time.Time) intercept.Traffic {
	t := intercept.Traffic{Request: f.req, BytesIn: f.in, BytesOut: f.out, Ended: f.ended, Time: now}
	// Counters only grow; a flow's entry replaced under the same tuple starts over.
	if f.in >= f.reportedIn {
		t.DeltaIn = f.in - f.reportedIn
	} else {
		t.DeltaIn = f.in
	}
	if f.out >= f.reportedOut {
		t.DeltaOut = f.out - f.reportedOut
	} else {
		t.DeltaOut = f.out
	}
	f.reportedIn, f.reportedOut, f.reportedAt = f.in, f.out, now
	return t
}

// account runs the accountant until ctx is done, then reports once more. Flow ends
// come from conntrack events at once; the table is read every TrafficInterval for
// long-lived flows (and for ends an overflowing event socket lost). Without events
// (the socket cannot be opened) the table is read every TrafficPoll instead.
//
// evfd is a conntrack event socket openCtEvents opened before the ruleset was in
// place (conntrack entries made while nobody listens never report events), or -1.
func (b *Backend) account(ctx context.Context, evfd int) {
	interval := b.cfg.TrafficInterval
	if interval <= 0 {
		interval = defaultTrafficInterval
	}
	a := newAccountant(b.flows, interval)
	a.sockets, a.fromSockets = b.cfg.SocketCounts, &b.trafficFromSockets
	var lastErr string
	logErr := func(err error) {
		if err != nil && err.Error() != lastErr {
			b.cfg.Logf("byte accounting: %v", err)
		}
		if err != nil {
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
	}
	hand := func(rs []intercept.Traffic) {
		b.trafficReports.Add(uint64(len(rs)))
		if len(rs) > 0 {
			b.cfg.OnTraffic(rs)
		}
	}

	// With events, the socket is drained every eventDrain: one wake-up per period
	// instead of one per event (a TCP flow makes five), and the table is read every
	// interval. Without, the table is read every TrafficPoll.
	poll := interval
	var getter *ctGetter
	err := errors.New("the event socket could not be opened")
	if evfd >= 0 {
		getter, err = openCtGetter()
		if err != nil {
			unix.Close(evfd)
		}
	}
	var drainC <-chan time.Time
	var reader *ctEventReader
	if err != nil {
		b.cfg.Logf("byte accounting: no conntrack events (%v): reading the table every %v instead", err, b.trafficPoll(interval))
		poll = b.trafficPoll(interval)
	} else {
		defer getter.close()
		defer unix.Close(evfd)
		reader = &ctEventReader{fd: evfd}
		dt := time.NewTicker(eventDrain)
		defer dt.Stop()
		drainC = dt.C
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	// A kick (kickAccountant) drains kickDrain later, once per burst.
	kick := time.NewTimer(time.Hour)
	kick.Stop()
	defer kick.Stop()
	var kickC <-chan struct{}
	if reader != nil {
		kickC = b.acctKick
	}
	var dr drainer
	drain := func() {
		rs, lost, bad := a.drain(&dr, reader.drain, b.tracked.take, b.ends.take, getter.getMany, &b.ctGets, time.Now(), logErr)
		if lost {
			b.trafficEventsLost.Add(1)
		}
		b.malformed.Add(uint64(bad))
		hand(rs)
		// OnTraffic keeps none of it (Config.OnTraffic): the next drain reuses it.
		clear(rs)
		dr.reports = rs[:0]
	}
	kicked := false
	for {
		select {
		case <-kickC:
			if !kicked {
				kicked = true
				kick.Reset(kickDrain)
			}
		case <-kick.C:
			kicked = false
			// Before the drain takes what waits: what is added after it
			// kicks again.
			b.acctKicked.Store(false)
			drain()
		case <-drainC:
			drain()
		case now := <-t.C:
			if reader != nil {
				drain()
			} else {
				b.tracked.take() // the table read finds them
				b.ends.take()
			}
			a.forget(now)
			rs, err := a.poll(now, false)
			logErr(err)
			hand(rs)
		case <-ctx.Done():
			if reader != nil {
				drain()
			}
			rs, err := a.poll(time.Now(), true)
			logErr(err)
			hand(rs)
			return
		}
	}
}

// drainer is what the accountant's drains reuse from one to the next.
type drainer struct {
	// reports, if not nil, is where the next drain appends its reports (the
	// caller reuses the slice it handed over).
	reports []intercept.Traffic
	toRead  []flowKey
	closing map[flowKey]bool
	seen    map[flowKey]struct{}
}

// drain handles what happened since the last drain: the conntrack events events
// reads, then the flows registered outside the queue (tracked), then the local
// TCP sockets that ended (ends). A flow that reached TIME_WAIT or CLOSE, or whose
// socket ended, is read once more for its counters (getMany): those reads wait for
// the end of the drain, go to conntrack in batches, and are not made for a flow
// that ended meanwhile (its destroy event came later in the same drain). A flow
// whose socket ended ends with that read whatever conntrack's state: its entry
// may not have seen the last packet yet (the kernel reports the end before it
// sends a reset). It returns the reports due, whether events were lost and how
// many did not decode. A socket end that carries the socket's counters ends its
// flow with them (endCounted), without a read. gets, if not nil, counts the
// entries read.
func (a *accountant) drain(d *drainer, events func(func(ctEvent)) (bool, int, error), tracked func() []flowKey, ends func() []socketEnd,
	getMany func([]flowKey, func(flowKey, ctInfo, error)), gets *atomic.Uint64, now time.Time, logErr func(error)) (rs []intercept.Traffic, lost bool, bad int) {
	if d.closing == nil {
		d.closing, d.seen = make(map[flowKey]bool), make(map[flowKey]struct{})
	}
	rs, d.reports = d.reports, nil
	d.toRead = d.toRead[:0]
	clear(d.closing)
	later := func(k flowKey) (ctInfo, error) {
		d.toRead = append(d.toRead, k)
		return ctInfo{}, errReadLater
	}
	lost, bad, err := events(func(ev ctEvent) {
		r, ok, err := a.event(ev, later, now)
		if !errors.Is(err, errReadLater) {
			logErr(err)
		}
		if ok {
			rs = append(rs, r)
		}
	})
	logErr(err)
	// After the events: a flow registered since, whose end came before it was,
	// is in a.recent now (one registered before was known to them).
	rs = append(rs, a.registered(tracked(), later, now)...)
	// After the registrations: the fast path reports a connection's decision
	// before its socket's end.
	for _, e := range ends() {
		switch ef, r, what := a.socketEnded(e, now); what {
		case endRead:
			if e.counted {
				if r, ok := a.endCounted(ef, e, now); ok {
					rs = append(rs, r)
					continue
				}
			}
			d.toRead = append(d.toRead, ef.k)
			d.closing[ef.k] = true
		case endOlder:
			rs = append(rs, r)
		}
	}
	d.toRead = a.stillOpen(d.toRead, d.seen)
	if len(d.toRead) == 0 {
		return rs, lost, bad
	}
	if gets != nil {
		gets.Add(uint64(len(d.toRead)))
	}
	getMany(d.toRead, func(k flowKey, ci ctInfo, err error) {
		switch {
		case errors.Is(err, unix.ENOENT):
			// Gone already: its destroy event follows, with the counters.
		case err != nil:
			logErr(err)
		default:
			if r, ok := a.observe(ci, d.closing[k], now, false); ok {
				rs = append(rs, r)
			}
		}
	})
	return rs, lost, bad
}

// stillOpen drops from keys, in place, the flows that already ended (a destroy
// event later in the same drain ended the flow whose CLOSE update asked for a
// read: the read would find the entry gone) and the keys asked for twice (seen,
// emptied first, holds them).
func (a *accountant) stillOpen(keys []flowKey, seen map[flowKey]struct{}) []flowKey {
	clear(seen)
	out := keys[:0]
	for _, k := range keys {
		if !a.wantsEnd(k) {
			continue
		}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		out = append(out, k)
	}
	return out
}

// socketEnd is a local TCP socket's end (SocketEnded).
type socketEnd struct {
	local, remote netip.AddrPort
	at            time.Time // zero: not known
	counted       bool      // counts holds the socket's counts
	counts        SocketBytes
}

// SocketEnded says that the local TCP socket from local to remote moved to
// TCP_CLOSE at time at (Config.SocketEnds): the byte accountant ends its flow, if
// it follows one, with the socket's counts if bytes is not nil, or else with the
// counters it reads from conntrack once more, and reports its end (within
// eventDrain). An end from before the request of the flow registered on the tuple
// now is an older socket's, and leaves that flow alone. An end that finds the
// accountant's queue full is dropped: the periodic read of the table ends the
// flow (TIME_WAIT, CLOSE), or its destroy event does.
func (b *Backend) SocketEnded(local, remote netip.AddrPort, at time.Time, bytes *SocketBytes) {
	if b.cfg.OnTraffic == nil || !b.running.Load() {
		return
	}
	end := socketEnd{local: netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), remote: netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()), at: at}
	if bytes != nil {
		// Copied: the caller's need not live on the heap.
		end.counted, end.counts = true, *bytes
	}
	if !b.ends.add(end) {
		b.socketEndsLost.Add(1)
		return
	}
	b.socketEnds.Add(1)
	b.kickAccountant()
}

// handover is a bounded list one goroutine adds to and the accountant takes
// whole, reusing the slice it took the time before.
type handover[T any] struct {
	mu          sync.Mutex
	items, last []T
}

// add appends x unless maxTracked items wait, and reports whether it did.
func (h *handover[T]) add(x T) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.items) >= maxTracked {
		return false
	}
	h.items = append(h.items, x)
	return true
}

// take returns what was added since the last call; the result is valid until the
// next call.
func (h *handover[T]) take() []T {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.items) == 0 {
		return nil
	}
	items := h.items
	h.items = h.last[:0]
	h.last = items
	return items
}

// maxTracked bounds the flows registered by TrackFlow, and the socket ends, that
// wait for the accountant.
const maxTracked = 65536

// TrackFlow registers a flow that was allowed without the queue (by the kernel's
// fast path) as an allow verdict from the queue registers its flow: Redecide knows
// its request, and the byte accountant counts its bytes for req (its history row,
// Request.ID), along the way and at its end. req must be outbound, with the flow's
// local and remote address and port; anything else is ignored.
func (b *Backend) TrackFlow(req *engine.Request) {
	if req.Direction != engine.Outbound || !req.Local.IsValid() || !req.Remote.IsValid() || req.Local.Port() == 0 {
		return
	}
	// Untracked if the ruleset keeps the fast path's TCP flows out of
	// conntrack (Notrack): its socket's end is then the last word on it. Not
	// to or from port 53, which notrack leaves tracked with the DNS log.
	untracked := req.Protocol == engine.TCP && req.Remote.Port() != 53 && req.Local.Port() != 53 && b.notrackOn()
	k := keyOf(req) // once: the table's key and the accountant's
	b.rememberFlowKey(k, req, time.Now(), untracked)
	if b.cfg.OnTraffic == nil {
		return
	}
	// After the table: the accountant looks for an end it saw before this.
	b.tracked.add(k)
	// A TCP flow whose socket's end is reported (SocketEnds, without
	// conntrack's update events) needs no drain of its own: its end kicks the
	// accountant, whose drain registers the flows queued before the ends it
	// takes, and until then the drain every eventDrain registers it. A kick per
	// burst of the fast path's decisions woke the accountant once more per
	// burst, besides its ends' (a tenth of the daemon's CPU per fast-path
	// connect went to waking and draining).
	if req.Protocol != engine.TCP || b.ctUpdates.Load() {
		b.kickAccountant()
	}
}

// kickAccountant has the accountant drain within kickDrain, once for a burst of
// calls: it does not wait, and only the first call of a burst (until that drain)
// sends the accountant anything (each send would wake it).
func (b *Backend) kickAccountant() {
	if b.acctKicked.Load() || b.acctKicked.Swap(true) {
		return
	}
	select {
	case b.acctKick <- struct{}{}:
	default:
	}
}

// errReadLater is what the accountant's read of an entry answers while the reads
// of a drain are put off to its end (getMany).
var errReadLater = errors.New("read later")

// trafficPoll is how often the table is read without conntrack events.
func (b *Backend) trafficPoll(interval time.Duration) time.Duration {
	if b.cfg.TrafficPoll > 0 {
		return b.cfg.TrafficPoll
	}
	return min(defaultTrafficPoll, interval)
}

// enableAccounting sets nf_conntrack_acct to 1 and returns a function that puts
// back the value it had.
func enableAccounting() (restore func(), err error) {
	old, err := os.ReadFile(acctSysctl)
	if err != nil {
		return nil, fmt.Errorf("byte accounting: read %s: %w", acctSysctl, err)
	}
	if strings.TrimSpace(string(old)) == "1" {
		return func() {}, nil
	}
	if err := os.WriteFile(acctSysctl, []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("byte accounting: set %s to 1: %w", acctSysctl, err)
	}
	return func() { os.WriteFile(acctSysctl, old, 0o644) }, nil
}
