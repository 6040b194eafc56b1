package fastpath

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/latchfw/latch/internal/engine"
	"golang.org/x/sys/unix"
)

// TestOtherNamespaceFastMarkKeptWithoutNetnsCookie (review2): on a kernel whose
// sock_ops programs cannot read the network namespace (before 5.15: the loader
// replaces bpf_get_netns_cookie by 0, served_ns(0) is true), a daemon's
// sock_ops program serves the sockets of every namespace. A container's latch
// (another namespace, its programs on its own cgroup, below the host's) gives a
// fast connect MarkFastAllow at TCP_CONNECT_CB; the host's program runs next
// (the kernel runs a descendant cgroup's programs first, then its ancestors'),
// finds no decision of its own for the socket, and since 7be93e5
// (send_pending) clears the container's mark: the container's fast path never
// lets a SYN pass in the kernel (each goes to its queue). Before 7be93e5 the
// socket was established with MarkFastFlow.
func TestOtherNamespaceFastMarkKeptWithoutNetnsCookie(t *testing.T) {
	parent, _ := testCgroup(t)
	mk := func(name string) (string, int) {
		dir := filepath.Join(parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd); os.Remove(dir) })
		return dir, fd
	}
	hostCg, _ := mk("host")
	ctrCg, ctrFd := mk("ctr")
	// The host's daemon, in a namespace of its own, on a kernel without the
	// namespace in sock_ops: its sock_ops program on parent (above the
	// container's cgroup).
	hostDone := make(chan *FastPath)
	go func() {
		ownNetns(t)
		fp, err := Open(Config{CgroupPath: hostCg, EndsCgroupPath: parent, noNetnsCookie: true})
		if err != nil {
			t.Errorf("Open the host's fast path: %v", err)
		}
		hostDone <- fp
	}()
	host := <-hostDone
	if host == nil {
		return
	}
	t.Cleanup(func() { host.Close() })
	if s := host.Stats(); !s.TCPLocal {
		t.Skipf("no sock_ops program: %+v", s)
	}
	// The container's daemon, in the test's namespace, on its cgroup.
	ownNetns(t)
	ctr := openTest(t, ctrCg, Config{EndsCgroupPath: ctrCg, noNetnsCookie: true})
	if err := ctr.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, ctrFd)
	allowed := listen(t, "tcp4", "127.0.0.1:0")
	runDecisions(t, ctr)
	tk := ctr.Ticket()
	if ok, err := ctr.Remember(tk, req(c, allowed), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember allow: %v %v", ok, err)
	}
	if got := c.connect(t, allowed); got != "ok 0x60000000" {
		t.Errorf("the container's fast connect to %v, with the host's fast path (another namespace) on a kernel without the namespace in sock_ops: %q, want the fast flow mark (its SYN passed by the container's MarkFastAllow)", allowed, got)
	}
}
