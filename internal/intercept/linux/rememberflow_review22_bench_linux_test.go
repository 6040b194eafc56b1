package linux

import (
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// BenchmarkRememberFlow (review22): what 7c698bd added to every allowed flow's
// registration (the queue's allows, the fast path's TrackFlow): the flow
// table's add alone ("add"), rememberFlow outside the 3 min after a rule change
// took flows ("outside": an atomic load and a time compare more), and inside
// them ("inside": also a lock and a delete on Backend.redecided). The rounds
// alternate in one run (-benchtime, -count), so the machine's drift hits all.
func BenchmarkRememberFlow(b *testing.B) {
	reqs := make([]*engine.Request, 4096)
	for i := range reqs {
		reqs[i] = &engine.Request{ID: engine.RequestID(i + 1), Direction: engine.Outbound, Protocol: engine.TCP,
			Local:  netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(10000+i)),
			Remote: netip.MustParseAddrPort("198.18.0.2:443")}
	}
	for round := 0; round < 3; round++ {
		for _, mode := range []string{"add", "outside", "inside"} {
			b.Run(mode, func(b *testing.B) {
				be := &Backend{flows: newFlowTable(65536, time.Hour), redecided: newFlowTable(65536, redecidedTTL)}
				now := time.Now()
				if mode == "inside" {
					be.redecidedUntil.Store(now.Add(time.Hour).UnixNano())
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					r := reqs[i%len(reqs)]
					if mode == "add" {
						be.flows.addFlow(r, now, false)
					} else {
						be.rememberFlow(r, now, false)
					}
				}
			})
		}
	}
}
