package linux

import (
	"sync"
	"testing"
	"time"
)

// TestStatsCountKernelDrops: KernelDropped, status's headline, is what the kernel
// says it dropped for the queue: queue full plus socket buffer full.
func TestStatsCountKernelDrops(t *testing.T) {
	b, err := New(DefaultConfig())
	if err != nil {
		t.Skipf("no firewall to build a backend on: %v", err)
	}
	if st := b.Stats(); st.KernelDropped != 0 {
		t.Errorf("a backend that never ran counts %d kernel drops", st.KernelDropped)
	}
	b.lastQueue.Store(&queueStatus{Queue: DefaultQueue, Dropped: 3_449_000, UserDropped: 1_000})
	st := b.Stats()
	if st.KernelDropped != 3_450_000 || st.Extra["queue_dropped"] != 3_449_000 || st.Extra["queue_user_dropped"] != 1_000 {
		t.Errorf("kernel dropped 3449000 (queue full) + 1000 (socket full); Stats says %d (%v)", st.KernelDropped, st.Extra)
	}
}

// TestQueueFullCountedAsKernelDrops fills the kernel's queue for real: a decider that
// holds every connection for 20 s, and 12,000 SYNs from 24 clients, more than the
// queue's 8,192 places. The kernel drops what does not fit (fail-closed: nothing
// reaches the server), and the backend's KernelDropped counts those drops, where
// status used to say "overflows 0".
func TestQueueFullCountedAsKernelDrops(t *testing.T) {
	const clients, perClient = 24, 500
	tp := newTopo(t)
	server := listenTCP(t, tp, 9005)
	d := startDaemon(t, tp, "*=deny@20s", "LATCH_TEST_QUIET=1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcome := map[string]int{}
	for range clients {
		wg.Go(func() {
			res, err := burst(tp, 9005, perClient, 2*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				outcome["error: "+err.Error()]++
				return
			}
			for k, v := range res {
				outcome[k] += v
			}
		})
	}
	wg.Wait()
	t.Logf("%d connects: %v", clients*perClient, outcome)
	st := d.stop()
	t.Logf("stats: kernel dropped %d, extra %v", st.KernelDropped, st.Extra)
	if outcome["connected"] != 0 || server.accepted.Load() != 0 {
		t.Errorf("%d connections completed, %d accepted, while every one was held", outcome["connected"], server.accepted.Load())
	}
	qd, ud := st.Extra["queue_dropped"], st.Extra["queue_user_dropped"]
	if qd == 0 {
		t.Fatalf("%d SYNs held at once never filled the queue: queue_dropped 0 (%v)", clients*perClient, st.Extra)
	}
	if st.KernelDropped != qd+ud {
		t.Errorf("KernelDropped %d, want queue_dropped %d + queue_user_dropped %d", st.KernelDropped, qd, ud)
	}
}
