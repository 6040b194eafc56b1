package fastpath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

const (
	testFastAllow    = 0x30000000
	testFastRedecide = 0x50000000
	testFastFlow     = 0x60000000
)

// markedConn connects a TCP socket with SO_MARK mark to ap and returns it.
func markedConn(t *testing.T, ap netip.AddrPort, mark int) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, mark) })
		return serr
	}}
	c, err := d.Dial("tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func sockMark(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var m int
	var gerr error
	rc.Control(func(fd uintptr) { m, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return m
}

// setSockMark gives c's socket the SO_MARK mark.
func setSockMark(t *testing.T, c *net.TCPConn, mark int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, mark) })
	if serr != nil {
		t.Fatal(serr)
	}
}

func tupleConn(c *net.TCPConn) [2]netip.AddrPort {
	return [2]netip.AddrPort{c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()}
}

// TestRedecideSockets: the TCP iterator moves the sockets marked with the fast
// path's allow (a connect's) or flow mark (an established fast socket's) to its
// decide-again mark, keeping the mark's other bits (an application's own SO_MARK
// bits), but those it is told to keep; it leaves other marks alone (none, the
// daemon's own, a reject); AllowSocket moves one socket back, and only one with
// the decide-again mark, to the flow mark (it is established). IPv4 and IPv6.
func TestRedecideSockets(t *testing.T) {
	// The iterators walk every TCP socket of the namespace: another process's
	// RedecideSockets (a test binary running beside this one) would move this
	// one's kept sockets, and this one theirs.
	ownNetns(t)
	cg, _ := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if why := fp.Notrack(); why != "" {
		t.Skipf("no TCP socket iterators: %s", why)
	}
	// Status: off until the ruleset says it keeps the flows out of conntrack.
	if s := fp.Stats(); s.TCPNotrack || s.TCPNotrackWhy == "" {
		t.Errorf("before SetNotrack: tcp_notrack %v, why %q; want off with a reason", s.TCPNotrack, s.TCPNotrackWhy)
	}
	fp.SetNotrack(errors.New("no socket match"))
	if s := fp.Stats(); s.TCPNotrack || s.TCPNotrackWhy != "no socket match" {
		t.Errorf("after a ruleset without notrack: tcp_notrack %v, why %q", s.TCPNotrack, s.TCPNotrackWhy)
	}
	fp.SetNotrack(nil)
	if s := fp.Stats(); !s.TCPNotrack || s.TCPNotrackWhy != "" {
		t.Errorf("after a ruleset with notrack: tcp_notrack %v, why %q", s.TCPNotrack, s.TCPNotrackWhy)
	}
	v4 := listen(t, "tcp4", "127.0.0.1:0")
	v6 := listen(t, "tcp6", "[::1]:0")
	// The sock_ops program (at the root cgroup) takes a fast mark no connect
	// hook of this fast path gave off a socket as it connects (a gone daemon's,
	// see send_pending), keeping the mark's other bits.
	if m := sockMark(t, markedConn(t, v4, testFastAllow|0x5)); m != 0x5 {
		t.Fatalf("socket that connected with %#x, no hook's: mark %#x, want %#x", testFastAllow|0x5, m, 0x5)
	}
	// marked gives an established socket mark (as a fast connect and the
	// daemon's moves would have).
	marked := func(ap netip.AddrPort, mark int) *net.TCPConn {
		c := markedConn(t, ap, 0)
		setSockMark(t, c, mark)
		return c
	}
	// An established fast socket (MarkFastFlow), and one with MarkFastAllow
	// still (one whose SYN is on its way has it).
	moved := []*net.TCPConn{marked(v4, testFastFlow|0x5), marked(v6, testFastFlow|0x80000000), marked(v4, testFastAllow|0x7)}
	allowV4 := moved[2]
	kept := marked(v4, testFastFlow)
	keptV6 := marked(v6, testFastFlow)
	others := map[*net.TCPConn]int{
		markedConn(t, v4, 0):          0,
		marked(v4, 0x40000000):        0x40000000,
		marked(v6, 0x20000000):        0x20000000,
		markedConn(t, v4, 0x10000001): 0x10000001,
	}
	keep := [][2]netip.AddrPort{tupleConn(kept), tupleConn(keptV6)}
	// Many more flows the daemon knows (ended ones, say) fit in the map too.
	for i := range 30000 {
		keep = append(keep, [2]netip.AddrPort{netip.MustParseAddrPort(fmt.Sprintf("198.18.%d.%d:%d", i/250, i%250, 1000+i)), netip.MustParseAddrPort("198.19.0.1:80")})
	}
	start := time.Now()
	n, err := fp.RedecideSockets(keep)
	t.Logf("RedecideSockets with %d flows to keep: %v", len(keep), time.Since(start))
	if err != nil {
		t.Fatal(err)
	}
	if n < len(moved) {
		t.Errorf("RedecideSockets moved %d sockets, want at least %d", n, len(moved))
	}
	if m := sockMark(t, moved[0]); m != testFastRedecide|0x5 {
		t.Errorf("IPv4 fast socket: mark %#x, want %#x", m, testFastRedecide|0x5)
	}
	if m := sockMark(t, moved[1]); uint32(m) != testFastRedecide|0x80000000 {
		t.Errorf("IPv6 fast socket: mark %#x, want %#x", uint32(m), testFastRedecide|0x80000000)
	}
	if m := sockMark(t, allowV4); m != testFastRedecide|0x7 {
		t.Errorf("socket with MarkFastAllow: mark %#x, want %#x", m, testFastRedecide|0x7)
	}
	for _, c := range []*net.TCPConn{kept, keptV6} {
		if m := sockMark(t, c); m != testFastFlow {
			t.Errorf("kept socket %v: mark %#x, want %#x", c.LocalAddr(), m, testFastFlow)
		}
	}
	for c, want := range others {
		if m := sockMark(t, c); m != want {
			t.Errorf("socket with mark %#x: now %#x", want, m)
		}
	}
	// Again (the last run's tuples are replaced), then without keep: the kept
	// ones move too.
	if _, err := fp.RedecideSockets(keep); err != nil {
		t.Fatal(err)
	}
	if m := sockMark(t, kept); m != testFastFlow {
		t.Errorf("kept socket after a second run: mark %#x, want %#x", m, testFastFlow)
	}
	if _, err := fp.RedecideSockets(nil); err != nil {
		t.Fatal(err)
	}
	if m := sockMark(t, kept); m != testFastRedecide {
		t.Errorf("after a run without keep: mark %#x, want %#x", m, testFastRedecide)
	}
	tp := tupleConn(moved[0])
	if ok, err := fp.AllowSocket(tp[0], tp[1]); !ok || err != nil {
		t.Fatalf("AllowSocket: %v %v", ok, err)
	}
	if m := sockMark(t, moved[0]); m != testFastFlow|0x5 {
		t.Errorf("after AllowSocket: mark %#x, want %#x", m, testFastFlow|0x5)
	}
	if m := sockMark(t, kept); m != testFastRedecide {
		t.Errorf("AllowSocket moved another socket: mark %#x", m)
	}
	if ok, err := fp.AllowSocket(tp[0], tp[1]); ok || err != nil {
		t.Errorf("AllowSocket of a socket already allowed: %v %v, want false", ok, err)
	}
	tp = tupleConn(moved[1])
	if ok, err := fp.AllowSocket(tp[0], tp[1]); !ok || err != nil {
		t.Fatalf("AllowSocket IPv6: %v %v", ok, err)
	}
	if m := sockMark(t, moved[1]); uint32(m) != testFastFlow|0x80000000 {
		t.Errorf("after AllowSocket IPv6: mark %#x", uint32(m))
	}
}

// TestSyncDecisions: SyncDecisions fails while Run does not read; with Run, a
// decision the kernel recorded before the call has been handed to Run's
// callback when it returns (without it, the reader reads every readEvery).
func TestSyncDecisions(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if err := fp.SyncDecisions(); err == nil {
		t.Error("SyncDecisions without Run: no error")
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember: %v %v", ok, err)
	}
	var got atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- fp.Run(ctx, func(Decision) { got.Add(1) }, nil) }()
	defer func() { cancel(); <-done }()
	waitReading(t, fp)
	for i := 0; i < 20; i++ {
		if r := c.connect(t, dst); r != "ok 0x60000000" {
			t.Fatalf("connect %d: %q, want a hit", i, r)
		}
		if err := fp.SyncDecisions(); err != nil {
			t.Fatal(err)
		}
		if n := got.Load(); n != int64(i+1) {
			t.Fatalf("after connect %d and SyncDecisions: %d decisions handed over, want %d", i, n, i+1)
		}
	}
}

// TestOpenSweepsGoneDaemonsFastAllow: a socket whose SYN was on its way when
// its daemon died keeps MarkFastAllow, and may connect anywhere meanwhile
// (connect(AF_UNSPEC), then a connect no hook decides). The ruleset of the
// daemon started next lets a SYN with that mark pass while its own lease
// holds, so Open moves every such socket of its namespace to
// MarkFastRedecide (the queue decides its next packet), other bits kept;
// other marks stay (an established fast socket's MarkFastFlow lets no SYN
// pass). IPv4 and IPv6.
func TestOpenSweepsGoneDaemonsFastAllow(t *testing.T) {
	ownNetns(t)
	cg, _ := testCgroup(t)
	v4 := listen(t, "tcp4", "127.0.0.1:0")
	v6 := listen(t, "tcp6", "[::1]:0")
	// No fast path serves this namespace yet: the marks stay as given.
	swept := map[*net.TCPConn]int{
		markedConn(t, v4, testFastAllow|0x7):        testFastRedecide | 0x7,
		markedConn(t, v6, testFastAllow|0x80000000): testFastRedecide | 0x80000000,
	}
	kept := map[*net.TCPConn]int{
		markedConn(t, v4, 0):                0,
		markedConn(t, v4, testFastFlow|0x5): testFastFlow | 0x5,
		markedConn(t, v6, 0x20000000):       0x20000000,
		markedConn(t, v4, testFastRedecide): testFastRedecide,
		markedConn(t, v4, 0x10000001):       0x10000001,
	}
	fp := openTest(t, cg, Config{})
	if why := fp.Notrack(); why != "" {
		t.Skipf("no TCP socket iterators: %s", why)
	}
	for c, want := range swept {
		if m := sockMark(t, c); uint32(m) != uint32(want) {
			t.Errorf("socket %v left with a gone daemon's MarkFastAllow: mark %#x after Open, want %#x", tupleConn(c), uint32(m), uint32(want))
		}
	}
	for c, want := range kept {
		if m := sockMark(t, c); uint32(m) != uint32(want) {
			t.Errorf("socket %v: mark %#x after Open, want it kept (%#x)", tupleConn(c), uint32(m), uint32(want))
		}
	}
	if s := fp.Stats(); s.LeaseSwept != len(swept) || s.LeaseSweepWhy != "" {
		t.Errorf("Stats: lease_swept %d, lease_sweep_why %q; want %d, none", s.LeaseSwept, s.LeaseSweepWhy, len(swept))
	}
}
