package linux

import (
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
)

// BenchmarkFastFlow measures what the backend does in user space for one TCP
// connection the kernel's fast path allowed, outside the kernel: its
// registration (TrackFlow: the flow table, the accountant's queue), its socket's
// end with the socket's counts (SocketEnded), the accountant's drain that ends
// the flow with them and reports it, and the accountant's periodic read of the
// table (every 10 s of a bench's pace), conntrack listing nothing (notrack). The
// connections cycle over 28,000 local ports to one server, as a client's
// ephemeral ports do, so that the flow table and the accountant hold tens of
// thousands of flows, most of them ended; their decisions and ends come in
// bursts of 32, as the fast path's ring buffers hand them over. Per op: one
// connection. Sub-benchmarks: "tracked", the ruleset without notrack (the
// table keeps the ended flows until it fills), and "notrack", with it (an
// untracked flow is forgotten at its socket's end).
func BenchmarkFastFlow(b *testing.B) {
	b.Run("tracked", func(b *testing.B) { benchFastFlow(b, false) })
	b.Run("notrack", func(b *testing.B) { benchFastFlow(b, true) })
}

// noSocketMarks is a SocketMarks that marks nothing (Backend.notrackOn asks only
// that there is one).
type noSocketMarks struct{}

func (noSocketMarks) SyncDecisions() error                                   { return nil }
func (noSocketMarks) RedecideSockets(keep [][2]netip.AddrPort) (int, error)  { return 0, nil }
func (noSocketMarks) AllowSocket(local, remote netip.AddrPort) (bool, error) { return true, nil }

// setNotrack has be's ruleset keep the fast path's TCP flows out of conntrack
// (Backend.notrackOn), as an installed one with notrack does.
func setNotrack(be *Backend) {
	be.cfg.FastSockets = noSocketMarks{}
	var none error
	be.notrackErr.Store(&none)
}

func benchFastFlow(b *testing.B, notrack bool) {
	reports := 0
	be := &Backend{
		cfg: Config{OnTraffic: func(rs []intercept.Traffic) {
			for _, r := range rs {
				if !r.Ended || r.BytesOut != 100 || r.BytesIn != 200 {
					b.Fatalf("report %+v, want an end with 100 bytes out and 200 in", r)
				}
			}
			reports += len(rs)
		}},
		flows:    newFlowTable(65536, 24*time.Hour),
		acctKick: make(chan struct{}, 1),
	}
	be.running.Store(true)
	if notrack {
		setNotrack(be)
	}
	a := newAccountant(be.flows, 10*time.Second)
	a.list = func(func(ctInfo)) error { return nil }
	var dr drainer
	noEvents := func(func(ctEvent)) (bool, int, error) { return false, 0, nil }
	noGets := func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
		b.Fatalf("the drain read %d conntrack entries; the socket ends carried their counts", len(keys))
	}
	logErr := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	local := netip.MustParseAddr("198.18.0.1")
	remote := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), 443)
	const burst, ports, pollEvery = 32, 28000, 70000
	counts := SocketBytes{Out: 100, In: 200}
	reqs := make([]engine.Request, burst)
	var id engine.RequestID
	now := time.Now()
	n := 0
	flush := func() {
		// The decisions of a burst, then their sockets' ends (the fast path hands
		// an end over after the decisions read before it).
		for i := range n {
			tracked := reqs[i]
			be.TrackFlow(&tracked)
		}
		for i := range n {
			be.SocketEnded(reqs[i].Local, reqs[i].Remote, reqs[i].Time.Add(time.Millisecond), &counts)
		}
		rs, _, _ := a.drain(&dr, noEvents, be.tracked.take, be.ends.take, noGets, nil, now, logErr)
		be.cfg.OnTraffic(rs)
		clear(rs)
		dr.reports = rs[:0] // as Backend.account reuses it
		n = 0
	}
	for i := 0; b.Loop(); i++ {
		id++
		now = now.Add(100 * time.Microsecond)
		reqs[n] = engine.Request{ID: id, Time: now, Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.AddrPortFrom(local, uint16(32768+i%ports)), Remote: remote, PID: 42, UID: 1000,
			Exe: "/usr/bin/curl", User: "someone", Identity: engine.IdentityVerified}
		if n++; n == burst {
			flush()
		}
		if i%pollEvery == pollEvery-1 {
			if _, err := a.poll(now, false); err != nil {
				b.Fatal(err)
			}
		}
	}
	flush()
	if reports != int(id) {
		b.Fatalf("%d reports for %d connections", reports, id)
	}
}
