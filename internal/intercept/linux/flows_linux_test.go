package linux

import (
	"net"
	"net/netip"
	"testing"

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
	remembered := flowKey{proto: unix.IPPROTO_TCP,
		src: netip.MustParseAddrPort("198.18.0.1:40001"), dst: netip.MustParseAddrPort("198.18.0.2:443")}
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
	taken := ctFilter{keys: map[flowKey]struct{}{remembered: {}}, affected: to443, remembered: func(flowKey) bool { return false }}
	if !taken.MatchConntrackFlow(flow(40001, 443, MarkAllow)) {
		t.Error("a remembered affected flow is not re-decided")
	}
}
