//go:build linux

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestFastMarkUnsweptNotPassedByTheNextDaemon: a socket that kept a dead
// daemon's MarkFastAllow (its SYN on its way when the daemon was killed) and
// whose next connect failed before its SYN (no route) is in TCP_CLOSE, in no
// TCP hash table: the next daemon's sweep (latch_fast_sweep) does not see it.
// Its mark is then cleared only by a connect hook of that daemon. Here the next
// daemon's hooks serve another cgroup than the dead one's (--fast-path-cgroup
// changed; a served cgroup removed and made again is the same to the kernel):
// the socket's connect to a destination no rule allows runs no hook, and its SYN
// would leave with MarkFastAllow, which the ruleset passes under the new lease
// (it did, before the sock_ops program cleared a mark no hook of this daemon
// gave): it is held and refused.
func TestFastMarkUnsweptNotPassedByTheNextDaemon(t *testing.T) {
	n := NewNet(t)
	server := n.ServerIP
	if out, err := n.Exec(n.Client, "ip", "route", "add", "unreachable", "198.19.255.0/24"); err != nil {
		t.Fatalf("an unreachable route in the client's namespace: %v: %s", err, out)
	}
	w := fastConnectOnItsWay(t, n, server, "iptables", 8337)
	d, tk, srv, in := w.d, w.tk, w.srv, w.in
	other := w.cg + "-next"
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 250 && os.Remove(other) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	killDaemon(t, n, d)
	time.Sleep(500 * time.Millisecond)
	// Disconnected, and a connect that fails before its SYN: TCP_CLOSE, mark kept.
	r := tk.say(t, fmt.Sprintf("reopen %d 198.19.255.1:9", in))
	t.Logf("reopen to an unreachable address: %+v", r)
	if !strings.Contains(r.Error, "mark 0x30000000") {
		t.Fatalf("the socket does not keep the dead daemon's MarkFastAllow: %+v", r)
	}
	d2 := startFastPathDaemon(t, n, other, "--fail", "closed")
	if !d2.fastPath(t).Lease {
		t.Fatalf("the next daemon's ruleset does not check the lease: %+v", d2.fastPath(t))
	}
	notConnected(t, tk, srv, fmt.Sprintf("reopen %d %s:8338", in, server), "a socket left with a dead daemon's MarkFastAllow in TCP_CLOSE (unswept) connected to an unruled destination under the next daemon's lease")
}
