package linux

import (
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
)

// TestUntrackedFlowForgottenAtItsEnd: with notrack on, a TCP flow the fast path
// allowed (TrackFlow) is reported at its socket's end with the socket's counts,
// and then no longer remembered (the stats' flows_remembered goes back to 0: the
// table holds the flows that may go on, not thousands that ended). A flow to port
// 53 (tracked with the DNS log), one of a ruleset without notrack, and a newer
// connection on the tuple of an older socket that ends late are still
// remembered, and reported as before.
func TestUntrackedFlowForgottenAtItsEnd(t *testing.T) {
	local := netip.MustParseAddr("198.18.0.1")
	server := netip.MustParseAddr("198.18.0.2")
	counts := SocketBytes{Out: 100, In: 200}
	t0 := time.Now()
	var id engine.RequestID
	request := func(lport, rport uint16, at time.Time) *engine.Request {
		id++
		return &engine.Request{ID: id, Time: at, Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.AddrPortFrom(local, lport), Remote: netip.AddrPortFrom(server, rport),
			PID: 42, UID: 1000, Exe: "/usr/bin/curl", Identity: engine.IdentityVerified}
	}
	setup := func(notrack bool) (*Backend, func() []intercept.Traffic) {
		be := &Backend{
			cfg:      Config{OnTraffic: func([]intercept.Traffic) {}},
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
		drain := func() []intercept.Traffic {
			rs, _, _ := a.drain(&dr, func(func(ctEvent)) (bool, int, error) { return false, 0, nil },
				be.tracked.take, be.ends.take,
				func(keys []flowKey, fn func(flowKey, ctInfo, error)) {
					t.Fatalf("the drain read %d conntrack entries; the socket ends carried their counts", len(keys))
				}, nil, t0.Add(time.Second), func(err error) {
					if err != nil {
						t.Fatal(err)
					}
				})
			out := append([]intercept.Traffic(nil), rs...)
			return out
		}
		return be, drain
	}
	// What the stats report as flows_remembered.
	remembered := func(be *Backend) int { return be.flows.len() }
	wantEnds := func(t *testing.T, rs []intercept.Traffic, ids ...engine.RequestID) {
		t.Helper()
		if len(rs) != len(ids) {
			t.Fatalf("%d reports %+v, want %d", len(rs), rs, len(ids))
		}
		for i, r := range rs {
			if r.Request.ID != ids[i] || !r.Ended || r.BytesOut != 100 || r.BytesIn != 200 || r.DeltaOut != 100 || r.DeltaIn != 200 {
				t.Errorf("report %d: request %d, ended %v, bytes out %d in %d (delta %d %d); want request %d ended with 100 out and 200 in",
					i, r.Request.ID, r.Ended, r.BytesOut, r.BytesIn, r.DeltaOut, r.DeltaIn, ids[i])
			}
		}
	}

	t.Run("notrack", func(t *testing.T) {
		be, drain := setup(true)
		var ids []engine.RequestID
		for p := range uint16(3) {
			req := request(40000+p, 443, t0)
			be.TrackFlow(req)
			ids = append(ids, req.ID)
		}
		dns := request(40100, 53, t0)
		be.TrackFlow(dns)
		if n := remembered(be); n != 4 {
			t.Fatalf("flows_remembered %d after 4 connects, want 4", n)
		}
		for p := range uint16(3) {
			be.SocketEnded(netip.AddrPortFrom(local, 40000+p), netip.AddrPortFrom(server, 443), t0.Add(time.Millisecond), &counts)
		}
		be.SocketEnded(dns.Local, dns.Remote, t0.Add(time.Millisecond), &counts)
		wantEnds(t, drain(), append(ids, dns.ID)...)
		if n := remembered(be); n != 1 {
			t.Errorf("flows_remembered %d after the sockets ended, want 1 (the flow to port 53, which conntrack tracks)", n)
		}
		if be.flows.get(keyOf(dns)) != dns {
			t.Errorf("the flow to port 53 is not remembered under its request")
		}
	})

	t.Run("tracked", func(t *testing.T) {
		be, drain := setup(false)
		req := request(40000, 443, t0)
		be.TrackFlow(req)
		be.SocketEnded(req.Local, req.Remote, t0.Add(time.Millisecond), &counts)
		wantEnds(t, drain(), req.ID)
		if n := remembered(be); n != 1 {
			t.Errorf("flows_remembered %d after the socket ended without notrack, want 1 (its conntrack entry lives on)", n)
		}
	})

	t.Run("older socket's late end", func(t *testing.T) {
		be, drain := setup(true)
		old := request(40000, 443, t0)
		be.TrackFlow(old)
		newer := request(40000, 443, t0.Add(10*time.Millisecond))
		be.TrackFlow(newer)
		// The older socket's end, read after the newer connection's decision.
		be.SocketEnded(old.Local, old.Remote, t0.Add(5*time.Millisecond), &counts)
		if rs := drain(); len(rs) != 0 {
			t.Errorf("reports %+v for the older socket's end; want none (the newer flow goes on)", rs)
		}
		if be.flows.get(keyOf(newer)) != newer {
			t.Fatalf("the newer connection is not remembered after the older socket's end")
		}
		be.SocketEnded(newer.Local, newer.Remote, t0.Add(20*time.Millisecond), &counts)
		wantEnds(t, drain(), newer.ID)
		if n := remembered(be); n != 0 {
			t.Errorf("flows_remembered %d after both ended, want 0", n)
		}
	})
}
