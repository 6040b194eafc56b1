package linux

import (
	"math"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A rule change must reach allowed flows the bounded flow table has forgotten (full,
// or older than its TTL while conntrack still keeps them), judged by tuple alone.
func TestRedecideFilterReachesForgottenFlows(t *testing.T) {
	flow := func(sport, dport uint16, mark uint32) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{Mark: mark, Forward: netlink.IPTuple{
			Protocol: unix.IPPROTO_TCP, SrcIP: net.ParseIP("198.18.0.1"), DstIP: net.ParseIP("198.18.0.2"),
			SrcPort: sport, DstPort: dport,
		}}
	}
	to443 := func(r *engine.Request) bool { return r.Remote.Port() == 443 || r.Local.Port() == 443 }
	remembered := newFlowKey(unix.IPPROTO_TCP, netip.MustParseAddrPort("198.18.0.1:40001"), netip.MustParseAddrPort("198.18.0.2:443"))
	f := ctFilter{affected: to443, remembered: func(k flowKey) bool { return k == remembered }}

	if !f.MatchConntrackFlow(flow(40000, 443, MarkAllow)) {
		t.Error("a forgotten allowed flow the change affects is not re-decided")
	}
	if f.MatchConntrackFlow(flow(40000, 80, MarkAllow)) {
		t.Error("a forgotten allowed flow the change cannot affect is re-decided")
	}
	if f.MatchConntrackFlow(flow(40001, 443, MarkAllow)) {
		t.Error("a remembered flow found unaffected (by its full request) is re-decided by tuple")
	}
	if f.MatchConntrackFlow(flow(40000, 443, 0)) {
		t.Error("a flow latch did not allow is marked")
	}
	taken := ctFilter{keys: map[flowKey]*engine.Request{remembered: nil}, affected: to443, remembered: func(flowKey) bool { return false }}
	if !taken.MatchConntrackFlow(flow(40001, 443, MarkAllow)) {
		t.Error("a remembered affected flow is not re-decided")
	}
}

// An outbound datagram held in the conntrack direction reply (the peer spoke first)
// belongs to an entry whose original tuple runs from the peer: Redecide and the byte
// accounting find its request under that reading too, and only for such requests.
func TestFlowTableFindsReplyDirectionFlows(t *testing.T) {
	local, remote := netip.MustParseAddrPort("198.18.0.1:5001"), netip.MustParseAddrPort("198.18.0.2:6001")
	udp := &engine.Request{Direction: engine.Outbound, Protocol: unix.IPPROTO_UDP, Local: local, Remote: remote}
	tcp := &engine.Request{Direction: engine.Outbound, Protocol: unix.IPPROTO_TCP, Local: local, Remote: netip.MustParseAddrPort("198.18.0.2:6002")}
	tbl := newFlowTable(10, time.Hour)
	now := time.Now()
	tbl.add(udp, now)
	tbl.add(tcp, now)
	peerFirst := newFlowKey(unix.IPPROTO_UDP, remote, local)
	if tbl.get(peerFirst) != udp || tbl.get(keyOf(udp)) != udp {
		t.Error("an outbound UDP flow is not found under both conntrack readings")
	}
	if tbl.get(keyOf(tcp).reversed()) != nil {
		t.Error("a TCP flow is found under its reversed tuple (its held SYN opens the entry)")
	}
	if !localSentOriginal(keyOf(udp), udp) || localSentOriginal(peerFirst, udp) {
		t.Error("counters of an outbound flow the peer opened are not swapped")
	}
	in := &engine.Request{Direction: engine.Inbound, Protocol: unix.IPPROTO_UDP, Local: local, Remote: remote}
	if localSentOriginal(keyOf(in), in) {
		t.Error("counters of an inbound flow are not swapped")
	}
	// A rule about outbound requests only (the tuple-only readings of a forgotten
	// flow would miss it): the entry the peer opened is re-decided.
	outTo6001 := func(r *engine.Request) bool { return r.Direction == engine.Outbound && r.Remote.Port() == 6001 }
	f := ctFilter{keys: tbl.take(outTo6001, now), affected: outTo6001, remembered: tbl.has}
	entry := &netlink.ConntrackFlow{Mark: MarkAllow, Forward: netlink.IPTuple{
		Protocol: unix.IPPROTO_UDP, SrcIP: net.ParseIP("198.18.0.2"), DstIP: net.ParseIP("198.18.0.1"),
		SrcPort: 6001, DstPort: 5001,
	}}
	if !f.MatchConntrackFlow(entry) {
		t.Error("Redecide misses an allowed outbound flow the peer opened")
	}
}

// TestFullFlowTableDropsExpiredFirst: a full flow table makes room by forgetting
// the flows past their TTL before any other, also once a search that found none
// expired has been skipped for a while (flowTable.expiresFrom).
func TestFullFlowTableDropsExpiredFirst(t *testing.T) {
	tbl := newFlowTable(8, time.Hour)
	t0 := time.Now()
	remote := netip.MustParseAddrPort("198.18.0.2:443")
	flow := func(port uint16) *engine.Request {
		return &engine.Request{ID: engine.RequestID(port), Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port), Remote: remote}
	}
	for p := range uint16(8) {
		tbl.add(flow(1000+p), t0)
	}
	// Full, none expired: one arbitrary flow goes for each new one.
	g, h := flow(2000), flow(2001)
	tbl.add(g, t0.Add(10*time.Minute))
	tbl.add(h, t0.Add(20*time.Minute))
	if n := tbl.len(); n != 8 {
		t.Fatalf("%d flows after two adds to a full table of 8, want 8", n)
	}
	// The first eight expired at t0+1h: all of them go, g and h stay.
	i := flow(2002)
	tbl.add(i, t0.Add(61*time.Minute))
	if n := tbl.len(); n != 3 {
		t.Errorf("%d flows after the first eight expired, want 3", n)
	}
	for _, r := range []*engine.Request{g, h, i} {
		if got := tbl.get(keyOf(r)); got != r {
			t.Errorf("flow %v: %v, want it remembered", r.Local, got)
		}
	}
}

// BenchmarkFlowTableFull measures registering a new flow in a flow table that is
// full (65,536 flows, none expired: a busy machine's), which forgets an
// arbitrary eighth of it every 8,192 new flows. Per op: one flow.
func BenchmarkFlowTableFull(b *testing.B) {
	const max = 65536
	tbl := newFlowTable(max, 24*time.Hour)
	local := netip.MustParseAddr("198.18.0.1")
	flow := func(i int) *engine.Request {
		return &engine.Request{ID: engine.RequestID(i + 1), Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.AddrPortFrom(local, uint16(1024+i%60000)), Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 24), byte(i >> 16)}), 443)}
	}
	reqs := make([]*engine.Request, 4*max)
	for i := range reqs {
		reqs[i] = flow(i)
	}
	now := time.Now()
	for i := range max {
		tbl.add(reqs[i], now)
	}
	i := max
	for b.Loop() {
		now = now.Add(time.Microsecond)
		tbl.add(reqs[i%len(reqs)], now)
		i++
	}
}

// TestFlowKeyRoundTrip: a flow key gives back the addresses and ports it was made
// of, tells an IPv4 address from its IPv4-mapped IPv6 form and from no address,
// and reversed swaps its ends.
func TestFlowKeyRoundTrip(t *testing.T) {
	addrs := []netip.AddrPort{
		netip.MustParseAddrPort("198.18.0.1:40000"),
		netip.MustParseAddrPort("[::ffff:198.18.0.1]:40000"),
		netip.MustParseAddrPort("[fd00::1]:443"),
		netip.MustParseAddrPort("[::]:443"),
		netip.AddrPortFrom(netip.Addr{}, 443),
		{},
	}
	seen := map[flowKey]string{}
	for _, src := range addrs {
		for _, dst := range addrs {
			k := newFlowKey(unix.IPPROTO_TCP, src, dst)
			if k.src() != src || k.dst() != dst {
				t.Errorf("newFlowKey(%v, %v) gives back %v, %v", src, dst, k.src(), k.dst())
			}
			if !k.srcIs(src) {
				t.Errorf("%v: srcIs(%v) is false", k, src)
			}
			if r := k.reversed(); r != newFlowKey(unix.IPPROTO_TCP, dst, src) || r.reversed() != k {
				t.Errorf("%v reversed: %v", k, r)
			}
			was := src.String() + " " + dst.String()
			if other, dup := seen[k]; dup {
				t.Errorf("%s and %s make the same key", was, other)
			}
			seen[k] = was
		}
	}
	if newFlowKey(unix.IPPROTO_TCP, addrs[0], addrs[2]) == newFlowKey(unix.IPPROTO_UDP, addrs[0], addrs[2]) {
		t.Error("TCP and UDP flows on one tuple make the same key")
	}
}

// TestFlowTableTTLBeyondItsClock: a TTL too long for a flow's expiry to be
// counted in nanoseconds from the table's epoch (Config.FlowTTL of
// math.MaxInt64, a caller's "never") keeps the flows as a time.Time expiry did
// (it saturated): a rule change that affects none of them, or a full table's
// search, forgets none as expired (each would lose its byte counts and its
// program for Redecide).
func TestFlowTableTTLBeyondItsClock(t *testing.T) {
	tbl := newFlowTable(4, time.Duration(math.MaxInt64))
	t0 := time.Now()
	flow := func(port uint16) *engine.Request {
		return &engine.Request{ID: engine.RequestID(port), Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port), Remote: netip.MustParseAddrPort("198.18.0.2:443")}
	}
	a := flow(1000)
	tbl.add(a, t0.Add(time.Second))
	tbl.take(func(*engine.Request) bool { return false }, t0.Add(time.Minute))
	if tbl.get(keyOf(a)) != a {
		t.Error("a flow of a table with TTL math.MaxInt64 is forgotten as expired a minute after it was added")
	}
	for p := range uint16(5) {
		tbl.add(flow(2000+p), t0.Add(2*time.Minute))
	}
	// Full at the fifth: the search for expired flows finds none, and only
	// arbitrary flows go to make room (down to 7/8 of 4), not all of them.
	if n := tbl.len(); n < 3 {
		t.Errorf("%d flows after a full table of 4 with TTL math.MaxInt64 took a fifth, want 3", n)
	}
}
