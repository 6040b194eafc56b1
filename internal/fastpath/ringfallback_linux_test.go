package fastpath

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestRingReadersFallback: where the rings cannot be waited for in the poller
// (newRingWait failed: Open then leaves ringWait and endsWait nil), Run reads
// them with ringbuf.Reader as before, and still hands over every decision
// (past WAKEUP_BYTES, and the few below it at readEvery: without ended no
// queued end flushes the reader), and SyncDecisions still returns. The path is
// otherwise not run by any test.
func TestRingReadersFallback(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	for _, w := range []*ringWait{fp.ringWait, fp.endsWait} {
		if w != nil {
			w.close()
		}
	}
	fp.ringWait, fp.endsWait = nil, nil
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
	go func() {
		done <- fp.Run(ctx, func(Decision) { got.Add(1) }, nil)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitReading(t, fp)
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
