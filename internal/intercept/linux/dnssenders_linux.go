package linux

import (
	"net/netip"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
)

// dnsSenders remembers, for a short while, which program sent the first datagram
// of each UDP flow to port 53 that the queue decided: the program attribution found
// while the datagram was held. The hostname learner reads its copy of that query on
// another socket, possibly after the program got its answer and closed its socket
// (and another program bound the port); it credits the query to this record, not to
// whatever socket a lookup finds on the port then, so a quick resolver (one query,
// one answer, close) still gets its own names and no later taker of the port gets
// them. A record credits only a copy of the very query the queue held (same sockets,
// id and question), so a later program reusing the port on the still-open flow, whose
// datagrams the queue does not see, is not credited with it; such a query is
// credited to the socket a lookup finds.
type dnsSenders struct {
	mu   sync.Mutex
	m    map[dnsFlow]dnsSender
	max  int
	keep time.Duration
}

// dnsFlow is one query's key: its sockets and id (a program may send several
// queries on one flow, such as A and AAAA, each held while the flow is new).
type dnsFlow struct {
	client, server netip.AddrPort
	id             uint16
}

type dnsSender struct {
	prog     dnsname.Program
	question dnsname.Question
	at       time.Time
}

// flowOf is q's sockets as the learner keys them (IPv4 unmapped, no zone) and id.
func flowOf(q *dnsname.Query) dnsFlow {
	norm := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
	}
	return dnsFlow{norm(q.Client), norm(q.Server), q.ID}
}

// newDNSSenders returns a table of at most max records, each kept for keep.
func newDNSSenders(max int, keep time.Duration) *dnsSenders {
	return &dnsSenders{m: make(map[dnsFlow]dnsSender), max: max, keep: keep}
}

// put records prog as the sender of query q (held by the queue) at now. When the table
// is full, expired records are dropped first; if none is, the new record is not kept
// (the learner then falls back to the socket lookup alone, as without the table).
func (t *dnsSenders) put(q *dnsname.Query, prog dnsname.Program, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := flowOf(q)
	if _, ok := t.m[k]; !ok && len(t.m) >= t.max {
		for f, s := range t.m {
			if now.Sub(s.at) > t.keep {
				delete(t.m, f)
			}
		}
		if len(t.m) >= t.max {
			return
		}
	}
	t.m[k] = dnsSender{prog, q.Question, now}
}

// get returns the program recorded for query q (same sockets, id and question), if
// recorded within keep of now.
func (t *dnsSenders) get(q dnsname.Query, now time.Time) (dnsname.Program, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.m[flowOf(&q)]
	if !ok || s.question != q.Question || now.Sub(s.at) > t.keep || now.Before(s.at) {
		return dnsname.Program{}, false
	}
	return s.prog, true
}
