package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// TestRedecideMarksEntriesConfirmedLate: a flow allowed under the old rules whose
// conntrack entry is confirmed after Redecide first read the table (a packet
// between the output chain and confirmation, a verdict sent a moment after its
// decision) is marked too, by the second read: one the flow table does not know
// yet, and one registered meanwhile with a request from before the change. A flow
// allowed again meanwhile, under the new rules, keeps its mark.
func TestRedecideMarksEntriesConfirmedLate(t *testing.T) {
	tp := newTopo(t)
	// Every UDP flow to B gets latch's allow mark, as from an allow verdict.
	rule := []string{"netns", "exec", tp.a, "iptables", "-w", "-A", "OUTPUT", "-p", "udp", "-d", addrB,
		"-j", "CONNMARK", "--set-xmark", fmt.Sprintf("%#x/%#x", MarkAllow, MarkMask)}
	if out, err := exec.Command("ip", rule...).CombinedOutput(); err != nil {
		t.Fatalf("iptables: %v: %s", err, out)
	}
	const uid = 4242
	send := func(local, remote int) *engine.Request {
		t.Helper()
		l := netip.AddrPortFrom(netip.MustParseAddr(addrA), uint16(local))
		r := netip.AddrPortFrom(netip.MustParseAddr(addrB), uint16(remote))
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(l), net.UDPAddrFromAddrPort(r))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		return &engine.Request{Direction: engine.Outbound, Protocol: unix.IPPROTO_UDP, Local: l, Remote: r, UID: uid}
	}
	// The change affects flows to port 9301 and those of uid; the tuple alone
	// (a flow the table does not know) matches only the former.
	affected := func(r *engine.Request) bool { return r.Remote.Port() == 9301 || r.UID == uid }
	b := &Backend{flows: newFlowTable(100, time.Hour), redecided: newFlowTable(100, redecidedTTL)}
	var start time.Time
	defer func(w func()) { redecideWait = w }(redecideWait)
	redecideWait = func() {
		send(5301, 9301) // not known to the flow table
		old := send(5302, 9302)
		old.Time = start.Add(-time.Millisecond) // decided under the old rules
		b.flows.add(old, time.Now())
		again := send(5303, 9303)
		again.Time = time.Now() // allowed again, under the new rules
		b.flows.add(again, time.Now())
	}
	var marks map[uint16]uint32
	if err := inNS(tp.a, func() error {
		start = time.Now()
		if _, err := b.Redecide(affected); err != nil {
			return err
		}
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return err
		}
		marks = map[uint16]uint32{}
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_UDP {
				marks[f.Forward.DstPort] = f.Mark & MarkMask
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for port, want := range map[uint16]uint32{9301: MarkRedecide, 9302: MarkRedecide, 9303: MarkAllow} {
		if got, ok := marks[port]; !ok || got != want {
			t.Errorf("flow to port %d: mark %#x (found %v), want %#x", port, got, ok, want)
		}
	}
}
