package fastpath

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// readWithRingbufReader has fp's Run read both rings with ringbuf.Reader, as
// where newRingWait failed (Open then leaves ringWait and endsWait nil).
func readWithRingbufReader(fp *FastPath) {
	for _, w := range []*ringWait{fp.ringWait, fp.endsWait} {
		if w != nil {
			w.close()
		}
	}
	fp.ringWait, fp.endsWait = nil, nil
}

// TestRingReadersFallbackEndsAndClose (review8): with the ringbuf.Reader
// fallback (ringbufReader) for both rings, every socket end of the connections
// the fast path allowed is handed over, each after its decision (readEnds
// flushes the decisions' reader, whose wait then returns), and Close while
// both readers wait ends Run without an error. TestRingReadersFallback covers
// the decisions alone.
func TestRingReadersFallbackEndsAndClose(t *testing.T) {
	ownNetns(t)
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	readWithRingbufReader(fp)
	if st := fp.Stats(); !st.TCPEnds || !st.TCPLocal {
		t.Fatalf("stats %+v: want the sock_ops program and socket ends", st)
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
	type record struct {
		d *Decision
		e *End
	}
	records := make(chan record, 4096)
	done := make(chan error, 1)
	go func() {
		done <- fp.Run(context.Background(), func(d Decision) { records <- record{d: &d} }, func(e End) {
			if e.Remote == dst {
				records <- record{e: &e}
			}
		})
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			fp.Close()
			<-done
		}
	})
	waitReading(t, fp)
	const n = 50
	for i := range n {
		connectLocal(t, c, dst, i%2 == 0)
	}
	decided := map[netip.AddrPort]bool{}
	for ended := 0; ended < n; {
		select {
		case r := <-records:
			if r.d != nil {
				decided[r.d.Local] = true
				continue
			}
			if !decided[r.e.Local] {
				t.Fatalf("the end of %v -> %v came before its decision", r.e.Local, r.e.Remote)
			}
			delete(decided, r.e.Local)
			ended++
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d ends read: %+v", ended, n, fp.Stats())
		}
	}
	if st := fp.Stats(); st.RingLost != 0 || st.EndsLost != 0 {
		t.Errorf("stats %+v: want nothing lost", st)
	}
	time.Sleep(20 * time.Millisecond) // into the waits for records
	stopped = true
	if err := fp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still running 5 s after Close")
	}
}
