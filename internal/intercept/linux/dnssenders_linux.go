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
//
// The table is bounded (max records) and shared fairly among users (review 40): when
// it is full, the record dropped is the oldest of the user holding the most records,
// so one user's flood of held queries (denied ones too: records are made before the
// verdict) evicts its own records, not other users'. The share is per uid: a user
// with subordinate uids (rootless containers) gets one share per uid. A user whose
// record was dropped before it expired is remembered for keep (lost): its queries
// that find no record are then credited to nobody (lostFor), never to whichever
// socket holds the port, since one of them may be the dropped one. Every operation
// is O(1) (amortized for expiry): records are on one list in the order made, and on
// one list per user.
type dnsSenders struct {
	mu    sync.Mutex
	m     map[dnsFlow]*dnsSender
	users map[int32]*senderUser
	// byCount[n] holds the users with n records; top is the largest n in use.
	byCount  map[int]map[int32]struct{}
	top      int
	old, new *dnsSender // all records, oldest first
	// lost: when each user last had a record dropped before it expired;
	// lostAny: when any user did (for copies whose user is unknown).
	lost             map[int32]time.Time
	lostAny, lostAll time.Time  // lostAll: the memory of losses overflowed
	free             *dnsSender // the last record removed, reused by put
	max              int
	keep             time.Duration
}

// dnsFlow is one query's key: its sockets and id (a program may send several
// queries on one flow, such as A and AAAA, each held while the flow is new).
type dnsFlow struct {
	client, server netip.AddrPort
	id             uint16
}

type dnsSender struct {
	key      dnsFlow
	prog     dnsname.Program // Exe "": sent by a program not found (credits nobody)
	question dnsname.Question
	at       time.Time
	// prev, next: the list of all records; uprev, unext: the user's.
	prev, next, uprev, unext *dnsSender
}

// senderUser is one user's records, oldest first.
type senderUser struct {
	old, new *dnsSender
	n        int
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
	return &dnsSenders{m: make(map[dnsFlow]*dnsSender), users: make(map[int32]*senderUser),
		byCount: make(map[int]map[int32]struct{}), lost: make(map[int32]time.Time), max: max, keep: keep}
}

// put records prog as the sender of query q (held by the queue) at now: when the
// queue holds it, and again when its verdict is given (the record is kept for keep
// from then, however long the query was held). prog with Exe "" records a query whose
// sender was not found (UID: the packet's, -1 if unknown): its copy is credited to
// nobody. Expired records are dropped first; when the table is still full, the oldest
// record of the user holding the most is dropped (and that user marked as having lost
// one).
func (t *dnsSenders) put(q *dnsname.Query, prog dnsname.Program, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.old != nil && now.Sub(t.old.at) > t.keep {
		t.remove(t.old)
	}
	k := flowOf(q)
	if s := t.m[k]; s != nil {
		t.remove(s) // the same query again (a retransmission, or its verdict): recorded anew
	}
	if len(t.m) >= t.max && t.max > 0 {
		var victim int32
		for uid := range t.byCount[t.top] {
			victim = uid
			break
		}
		t.remove(t.users[victim].old)
		t.markLost(victim, now)
	}
	if t.max <= 0 {
		t.markLost(prog.UID, now)
		return
	}
	s := t.free
	if s != nil {
		t.free = nil
		*s = dnsSender{key: k, prog: prog, question: q.Question, at: now}
	} else {
		s = &dnsSender{key: k, prog: prog, question: q.Question, at: now}
	}
	t.m[k] = s
	s.prev = t.new
	if t.new != nil {
		t.new.next = s
	} else {
		t.old = s
	}
	t.new = s
	u := t.users[prog.UID]
	if u == nil {
		u = &senderUser{}
		t.users[prog.UID] = u
	}
	s.uprev = u.new
	if u.new != nil {
		u.new.unext = s
	} else {
		u.old = s
	}
	u.new = s
	t.recount(prog.UID, u.n, u.n+1)
	u.n++
}

// remove unlinks record s.
func (t *dnsSenders) remove(s *dnsSender) {
	delete(t.m, s.key)
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		t.old = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		t.new = s.prev
	}
	uid := s.prog.UID
	u := t.users[uid]
	if s.uprev != nil {
		s.uprev.unext = s.unext
	} else {
		u.old = s.unext
	}
	if s.unext != nil {
		s.unext.uprev = s.uprev
	} else {
		u.new = s.uprev
	}
	t.recount(uid, u.n, u.n-1)
	u.n--
	if u.n == 0 {
		delete(t.users, uid)
	}
	t.free = s
}

// recount moves uid from the users holding from records to those holding to (from
// and to differ by one).
func (t *dnsSenders) recount(uid int32, from, to int) {
	var spare map[int32]struct{} // an emptied set, reused (one user: no allocation)
	if from > 0 {
		b := t.byCount[from]
		delete(b, uid)
		if len(b) == 0 {
			delete(t.byCount, from)
			spare = b
			if t.top == from && to < from {
				t.top = to
			}
		}
	}
	if to > 0 {
		b := t.byCount[to]
		if b == nil {
			b = spare
			if b == nil {
				b = make(map[int32]struct{})
			}
			t.byCount[to] = b
		}
		b[uid] = struct{}{}
	}
	if to > t.top {
		t.top = to
	}
}

// markLost remembers that uid had a record dropped at now. The memory of losses is
// bounded by the number of records: past that, expired entries are dropped, and if
// none is, every user counts as having lost one (lostAll).
func (t *dnsSenders) markLost(uid int32, now time.Time) {
	t.lostAny = now
	if _, ok := t.lost[uid]; !ok && len(t.lost) >= t.max {
		for u, at := range t.lost {
			if now.Sub(at) > t.keep {
				delete(t.lost, u)
			}
		}
		if len(t.lost) >= t.max {
			clear(t.lost)
			t.lostAll = now
			return
		}
	}
	t.lost[uid] = now
}

// get returns the program recorded for query q (same sockets, id and question), if
// recorded within keep of now.
func (t *dnsSenders) get(q dnsname.Query, now time.Time) (prog dnsname.Program, ok bool) {
	prog, ok, _ = t.lookup(q, now)
	return prog, ok
}

// lookup is get, and whether a record of q is in the table at all (held): the queue
// held that query, even if its record has outlived its window (not yet swept).
func (t *dnsSenders) lookup(q dnsname.Query, now time.Time) (prog dnsname.Program, ok, held bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[flowOf(&q)]
	if s == nil || s.question != q.Question {
		return dnsname.Program{}, false, false
	}
	if now.Sub(s.at) > t.keep || now.Before(s.at) {
		return dnsname.Program{}, false, true
	}
	return s.prog, true, true
}

// lostFor reports whether a record of user uid (-1: unknown, any user) was dropped
// before it expired within keep of now: a query of that user not found may be one
// the queue held whose record was not kept.
func (t *dnsSenders) lostFor(uid int64, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	recent := func(at time.Time) bool { return !at.IsZero() && now.Sub(at) <= t.keep }
	if uid < 0 || uid > 1<<31-1 {
		return recent(t.lostAny)
	}
	if recent(t.lostAll) {
		return true
	}
	at, ok := t.lost[int32(uid)]
	return ok && recent(at)
}
