package fastpath

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStaleFastAllowUnsweptOutsideHooks: a socket that kept a daemon's
// MarkFastAllow and is in TCP_CLOSE when the next daemon opens (its SYN was on
// its way when the daemon died; connect(AF_UNSPEC) meanwhile) is in no TCP hash
// table, so latch_fast_sweep never sees it; only this daemon's connect hook
// clears the mark at its next connect. A socket whose cgroup the hooks do not
// serve (the hooks serve a cgroup of --fast-path-cgroup that was removed and made
// again, or another one than the daemon gone before) runs no hook: its SYN
// would leave with MarkFastAllow, which this daemon's ruleset passes while its
// lease holds; so the sock_ops program (send_pending) clears a MarkFastAllow no
// hook of this daemon gave as the SYN is built. Here the socket is the test
// process's, outside the hooks' cgroup (as a socket of a removed cgroup is); the
// sock_ops program sees it (it serves the root cgroup). The fast marks it has once connected tell the SYN's: MarkFastFlow
// is only ever given to a socket whose SYN left with MarkFastAllow.
func TestStaleFastAllowUnsweptOutsideHooks(t *testing.T) {
	ownNetns(t)
	cg, _ := testCgroup(t)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// What a dead daemon left: MarkFastAllow on a socket in TCP_CLOSE.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, testFastAllow|0x7); err != nil {
		t.Fatal(err)
	}
	fp := openTest(t, cg, Config{})
	if why := fp.Notrack(); why != "" {
		t.Skipf("no TCP socket iterators: %s", why)
	}
	if s := fp.Stats(); !s.TCPLocal {
		t.Skipf("no sock_ops program: %+v", s)
	}
	if m, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); uint32(m)&0x70000000 == testFastAllow {
		t.Logf("after Open: mark %#x (a socket in TCP_CLOSE is not swept)", uint32(m))
	}
	a := dst.Addr().As4()
	tv := unix.NsecToTimeval(int64(3 * time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: a, Port: int(dst.Port())}); err != nil {
		t.Fatalf("connect %v: %v", dst, err)
	}
	m, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
	if err != nil {
		t.Fatal(err)
	}
	if fast := uint32(m) & 0x70000000; fast == testFastAllow || fast == testFastFlow {
		t.Errorf("a connect to %v no hook of this daemon decided: mark %#x once connected, so its SYN left with the gone daemon's MarkFastAllow (passed by the ruleset under this daemon's lease); want the fast bits cleared (%#x)", dst, uint32(m), uint32(m)&^0x70000000)
	}
}
