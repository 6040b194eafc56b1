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
// another socket, possibly after the program got its answer and closed its socket,
// when a socket lookup finds nothing; it then falls back to this record, so a quick
// resolver (one query, one answer, close) still gets its own names. A live socket
// is always asked first: the record is only what the queue saw, and a later
// program on the same port would be found by its socket.
type dnsSenders struct {
	mu   sync.Mutex
	m    map[dnsFlow]dnsSender
	max  int
	keep time.Duration
}

type dnsFlow struct{ client, server netip.AddrPort }

type dnsSender struct {
	prog dnsname.Program
	at   time.Time
}

// newDNSSenders returns a table of at most max records, each kept for keep.
func newDNSSenders(max int, keep time.Duration) *dnsSenders {
	return &dnsSenders{m: make(map[dnsFlow]dnsSender), max: max, keep: keep}
}

// put records prog as the sender of the flow client → server at now. When the table
// is full, expired records are dropped first; if none is, the new record is not kept
// (the learner then falls back to the socket lookup alone, as without the table).
func (t *dnsSenders) put(client, server netip.AddrPort, prog dnsname.Program, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := dnsFlow{client, server}
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
	t.m[k] = dnsSender{prog, now}
}

// get returns the program recorded for the flow client → server, if recorded within
// keep of now.
func (t *dnsSenders) get(client, server netip.AddrPort, now time.Time) (dnsname.Program, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.m[dnsFlow{client, server}]
	if !ok || now.Sub(s.at) > t.keep || now.Before(s.at) {
		return dnsname.Program{}, false
	}
	return s.prog, true
}
