package fastpath

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestRingReadersWaitInPoller: while the ring buffers are empty, Run's readers
// wait in the Go runtime's poller, not in a system call (which holds a scheduler
// slot that the runtime's monitor thread keeps taking back, waking every 20 µs to
// do so), and they still hand over every decision: the ones the programs wake
// them for (past WAKEUP_BYTES), and the few below that at the next readEvery.
func TestRingReadersWaitInPoller(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if fp.ringWait == nil {
		t.Fatal("the ring of decisions is not waited for in the poller")
	}
	if fp.endsRing != nil && fp.endsWait == nil {
		t.Fatal("the ring of socket ends is not waited for in the poller")
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
	go func() { done <- fp.Run(ctx, func(Decision) { got.Add(1) }, func(End) {}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitReading(t, fp)

	// Idle: no reader in a system call, in any of a few looks.
	buf := make([]byte, 1<<20)
	for look := range 5 {
		time.Sleep(20 * time.Millisecond)
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "[syscall") && (strings.Contains(g, "ringbuf") || strings.Contains(g, "readDecisions") || strings.Contains(g, "readEnds")) {
				t.Fatalf("look %d: a ring buffer reader waits in a system call:\n%s", look, g)
			}
		}
	}

	// Past WAKEUP_BYTES (a wakeup) and a few more (read at readEvery).
	const n = 400
	for i := range n {
		if r := c.connect(t, dst); r != "ok 0x60000000" {
			t.Fatalf("connect %d: %q, want a hit", i, r)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); got.Load() < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d decisions handed over after 10 s", got.Load(), n)
		}
	}
	if err := fp.SyncDecisions(); err != nil {
		t.Fatal(err)
	}
	if g := got.Load(); g != n {
		t.Errorf("%d decisions handed over, want %d", g, n)
	}
}
