package linux

import (
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// ctInsertUDP makes a UDP conntrack entry src -> dst in namespace ns with
// mark, with conntrack(8).
func ctInsertUDP(t *testing.T, ns string, src, dst netip.AddrPort, mark uint32) {
	t.Helper()
	args := []string{"netns", "exec", ns, "conntrack", "-I", "-p", "udp", "-s", src.Addr().String(), "-d", dst.Addr().String(),
		"--sport", strconv.Itoa(int(src.Port())), "--dport", strconv.Itoa(int(dst.Port())), "--timeout", "120", "--mark", strconv.FormatUint(uint64(mark), 10)}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("conntrack %s: %v: %s", strings.Join(args[3:], " "), err, out)
	}
}

var ctMarkLineRE = regexp.MustCompile(`sport=(\d+) .*mark=(\d+)`)

// ctUDPMark returns the mark of the IPv4 UDP conntrack entry of namespace ns
// whose original source port is sport (ok false: none).
func ctUDPMark(t *testing.T, ns string, sport uint16) (mark uint32, ok bool) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L", "-f", "ipv4", "-p", "udp", "--sport", strconv.Itoa(int(sport))).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "0 flow entries") {
		t.Fatalf("conntrack -L in %s: %v: %s", ns, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if m := ctMarkLineRE.FindStringSubmatch(l); m != nil && m[1] == strconv.Itoa(int(sport)) {
			v, _ := strconv.ParseUint(m[2], 10, 32)
			return uint32(v), true
		}
	}
	return 0, false
}

// TestPinMovedReadsMark (review21, low): the receive check's report on an
// inbound UDP flow the daemon's table remembers re-marked its conntrack entry
// MarkRedecide without reading it, whatever it carried: an entry that another
// flow took since (mark 0) or a forged loopback flow's (MarkLoopbackForged,
// whose drop then no longer applied) became a flow decided again, and the
// receiving socket was recorded for it. Now the entry is read first, and only
// the bit MarkRedecide adds to MarkAllow is set (a program's own bits stay).
func TestPinMovedReadsMark(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("needs conntrack: %v", err)
	}
	tp := newTopo(t)
	local, remote := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
	b := &Backend{cfg: Config{Inbound: true, Logf: t.Logf}, flows: newFlowTable(100, time.Hour)}
	for i, c := range []struct{ mark, want uint32 }{
		{0, 0},
		{MarkLoopbackForged, MarkLoopbackForged},
		{MarkAllow, MarkRedecide},
		{MarkRedecide, MarkRedecide},
		{0x0c000000 | MarkAllow, 0x0c000000 | MarkRedecide},
	} {
		l, r := netip.AddrPortFrom(local, uint16(9260+i)), netip.AddrPortFrom(remote, uint16(9270+i))
		ctInsertUDP(t, tp.a, r, l, c.mark)
		b.flows.add(&engine.Request{ID: engine.RequestID(i + 1), Direction: engine.Inbound, Protocol: engine.UDP, Local: l, Remote: r}, time.Now())
		if err := inNS(tp.a, func() error { b.PinMoved(unix.IPPROTO_UDP, l, r, uint64(1000+i)); return nil }); err != nil {
			t.Fatal(err)
		}
		if got, ok := ctUDPMark(t, tp.a, r.Port()); !ok || got != c.want {
			t.Errorf("entry marked %#x: after the report %#x (found %v), want %#x", c.mark, got, ok, c.want)
		}
		b.receiversMu.Lock()
		_, recorded := b.receivers[newFlowKey(unix.IPPROTO_UDP, r, l)]
		b.receiversMu.Unlock()
		if want := c.want&MarkMask == MarkRedecide; recorded != want {
			t.Errorf("entry marked %#x: receiving socket recorded %v, want %v", c.mark, recorded, want)
		}
	}
}
