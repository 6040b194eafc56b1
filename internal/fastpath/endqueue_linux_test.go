package fastpath

import (
	"net/netip"
	"testing"
)

// queuedEnd is a socket end from port to 443 at boot time at, for endQueue tests.
func queuedEnd(port uint16, at uint64) rawEnd {
	return rawEnd{e: End{Local: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), 443)}, at: at}
}

// TestEndQueueOrder: the ends readDecisions takes from the queue, a few at a
// time as decisions pass them (before), interleaved with batches readEnds adds,
// come out in the order they went in, each once, and len and before count what
// waits at the moment.
func TestEndQueueOrder(t *testing.T) {
	q := &endQueue{taken: make(chan struct{}, 1)}
	next, want := uint64(1), uint64(1) // the next end's time to add, and to take
	add := func(n int) {
		batch := make([]rawEnd, n)
		for i := range batch {
			batch[i] = queuedEnd(uint16(1024+next%60000), next)
			next++
		}
		q.add(batch)
	}
	var buf []rawEnd
	take := func(n int) {
		t.Helper()
		if got := q.before(want + uint64(n) - 1); got != n {
			t.Fatalf("before(%d) = %d with ends from %d to %d waiting, want %d", want+uint64(n)-1, got, want, next-1, n)
		}
		buf = q.take(n, buf[:0])
		if len(buf) != n {
			t.Fatalf("took %d ends, want %d", len(buf), n)
		}
		for _, r := range buf {
			if r.at != want || r.e.Local.Port() != uint16(1024+want%60000) {
				t.Fatalf("took the end of port %d at %d, want port %d at %d", r.e.Local.Port(), r.at, 1024+want%60000, want)
			}
			want++
		}
		if got, waiting := q.len(), int(next-want); got != waiting {
			t.Fatalf("len() = %d, want %d", got, waiting)
		}
	}
	for round := range 200 {
		add(1 + round%37)
		// Part of it, leaving some for after the next batch.
		for q.len() > 3 {
			take(1 + round%3)
		}
		if round%5 == 0 {
			take(q.len()) // all of it
		}
	}
	take(q.len())
	if q.len() != 0 || q.before(next) != 0 {
		t.Fatalf("len() = %d, before = %d after everything was taken", q.len(), q.before(next))
	}
	if want != next {
		t.Fatalf("took ends up to %d, added up to %d", want-1, next-1)
	}
}

// BenchmarkEndQueue measures what handing the socket ends over costs, the way
// Run does: readEnds adds a batch of 340 ends (about what one wake-up of its
// ring buffer reads), and readDecisions takes them 3 at a time (those that the
// decisions it read since passed: before). Per op: one take of 3 ends.
func BenchmarkEndQueue(b *testing.B) {
	q := &endQueue{taken: make(chan struct{}, 1)}
	const batch, step = 340, 3
	ends := make([]rawEnd, batch)
	for i := range ends {
		ends[i] = queuedEnd(uint16(1024+i), 0)
	}
	var buf []rawEnd
	at := uint64(0)
	for b.Loop() {
		if q.len() == 0 {
			for i := range ends {
				at++
				ends[i].at = at
			}
			q.add(ends)
		}
		// The time of the decision read: past the next step ends.
		n := q.before(at - uint64(q.len()) + step)
		if buf = q.take(n, buf[:0]); len(buf) == 0 {
			b.Fatal("took nothing")
		}
		select {
		case <-q.taken:
		default:
		}
	}
}
