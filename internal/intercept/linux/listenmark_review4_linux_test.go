package linux

import (
	"strconv"
	"testing"
)

// TestVerdictMarkedListenerInbound (review4): 7f4263f lets an untracked SYN
// with a verdict's mark (MarkAllow, MarkReject) skip LATCH-IN's queue rule. A
// listener whose own mark has MarkAllow's (or MarkReject's) value under
// MarkMask must not make the peer's SYN carry that mark past the queue: the
// raw table's LATCH-RAW-SK keeps only the fast values of --restore-skmark's
// copy (others are set back to 0, the packet tracked), so the SYN is held and
// decided as any (reject refused, allow connected, each held): were MarkAllow
// left on it, LATCH-IN's verdict rule would pass it unheld (held[9203] == 0).
// Passes on the current code (the fix is sound on this count). Not
// MarkReject's value: such a listener's SYN-ACK carries its mark (ir_mark)
// and LATCH-OUT resets it, so an allowed connect times out, before 7f4263f
// too (an application mark colliding with MarkReject: fails closed).
func TestVerdictMarkedListenerInbound(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		for _, mark := range []uint32{MarkAllow, 0x1d6f6c65} {
			t.Run(fw+"/"+strconv.FormatUint(uint64(mark), 16), func(t *testing.T) {
				testFastMarkedListener(t, fw, mark)
			})
		}
	}
}
