package linux

import (
	"net/netip"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/subid"
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
// A record is made when the queue holds the query and made again when its verdict is
// given (before the query leaves): it is kept for keep from the verdict, however long
// the hold lasted (review 42). A query whose sender was not found is recorded too, as
// sent by nobody (Exe ""), in the share of the packet's uid: the queue held it, so its
// copy is credited to nobody, not to the port's later holder.
//
// The table is bounded (max records) and shared fairly among users (review 40): when
// it is full, the record dropped is the oldest of the user holding the most records,
// so one user's flood of held queries (denied ones too: records are made before the
// verdict) evicts its own records, not other users'. A user's subordinate uids
// (/etc/subuid: rootless containers) are that user's: one share (review 42). A user
// whose record was dropped before it expired is remembered for keep (lost): its
// queries that find no record are then credited to nobody (lostFor), never to
// whichever socket holds the port, since one of them may be the dropped one. The
// memory of losses is bounded (max users; the oldest mark is forgotten past that).
// Every operation is O(1) (amortized for expiry): records are on one list in the
// order made, and on one list per user; marks on one list in the order made.
type dnsSenders struct {
	mu    sync.Mutex
	m     map[dnsFlow]*dnsSender
	users map[int64]*senderUser
	// byCount[n] holds the users with n records; top is the largest n in use.
	byCount  map[int]map[int64]struct{}
	top      int
	old, new *dnsSender // all records, oldest first
	// lost: when each user last had a record dropped before it expired, on a
	// list oldest first (lostOld, lostNew); lostAny: when any user did (for
	// copies whose user is unknown).
	lost             map[int64]*lostMark
	lostOld, lostNew *lostMark
	lostAny          time.Time
	lostFree         *lostMark  // the last mark removed, reused by markLost
	free             *dnsSender // the last record removed, reused by put
	max              int
	keep             time.Duration
}

// lostMark is when user owner last had a record dropped before it expired.
type lostMark struct {
	owner      int64
	at         time.Time
	prev, next *lostMark
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
	owner    int64 // whose share the record is in (ownerOf of prog.UID)
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
	return &dnsSenders{m: make(map[dnsFlow]*dnsSender), users: make(map[int64]*senderUser),
		byCount: make(map[int]map[int64]struct{}), lost: make(map[int64]*lostMark), max: max, keep: keep}
}

// unknownOwner is the share of records whose sender's uid is not known. Owners are
// subid.Owner's full values (a uid, or subid.Unknown(start) = 1<<32|start for a range
// whose user is not found: above every uid), never truncated, so no two users share
// a share or a loss mark (review 45); -1 is none of them.
const unknownOwner = -1

// noUID is the uid a copy or packet carries when it names no user: (uid_t)-1, which
// no process has.
const noUID = 1<<32 - 1

// ownerOf is the user whose share a record of uid is in: the user whose subordinate
// uid it is (/etc/subuid), else uid itself; unknownOwner for an unknown uid (< 0, or
// (uid_t)-1). Every uid below 2^32-1 is a user, those >= 2^31 too (review 45).
func ownerOf(uid int64) int64 {
	if uid < 0 || uid >= noUID {
		return unknownOwner
	}
	return int64(subid.Owner(uint32(uid)))
}

// uidOf is the uid a Program's UID holds (its 32 bits: uids >= 2^31 are negative
// int32s), -1 if it names no user.
func uidOf(uid int32) int64 {
	if uid == -1 {
		return -1
	}
	return int64(uint32(uid))
}

// put records prog as the sender of query q (held by the queue) at now: when the
// queue holds it, and again when its verdict is given (the record is kept for keep
// from then, however long the query was held). prog with Exe "" records a query whose
// sender was not found (UID: the packet's, -1 if unknown): its copy is credited to
// nobody. Expired records are dropped first; when the table is still full, the oldest
// record of the user holding the most is dropped (and that user marked as having lost
// one).
func (t *dnsSenders) put(q *dnsname.Query, prog dnsname.Program, now time.Time) {
	owner := ownerOf(uidOf(prog.UID))
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
		var victim int64
		for o := range t.byCount[t.top] {
			victim = o
			break
		}
		t.remove(t.users[victim].old)
		t.markLost(victim, now)
	}
	if t.max <= 0 {
		t.markLost(owner, now)
		return
	}
	s := t.free
	if s != nil {
		t.free = nil
		*s = dnsSender{key: k, prog: prog, question: q.Question, owner: owner, at: now}
	} else {
		s = &dnsSender{key: k, prog: prog, question: q.Question, owner: owner, at: now}
	}
	t.m[k] = s
	s.prev = t.new
	if t.new != nil {
		t.new.next = s
	} else {
		t.old = s
	}
	t.new = s
	u := t.users[owner]
	if u == nil {
		u = &senderUser{}
		t.users[owner] = u
	}
	s.uprev = u.new
	if u.new != nil {
		u.new.unext = s
	} else {
		u.old = s
	}
	u.new = s
	t.recount(owner, u.n, u.n+1)
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
	uid := s.owner
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
func (t *dnsSenders) recount(uid int64, from, to int) {
	var spare map[int64]struct{} // an emptied set, reused (one user: no allocation)
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
				b = make(map[int64]struct{})
			}
			t.byCount[to] = b
		}
		b[uid] = struct{}{}
	}
	if to > t.top {
		t.top = to
	}
}

// markLost remembers that owner had a record dropped at now. The memory of losses
// holds at most max users (one loss each per record dropped): past that, the
// oldest mark is forgotten (expired ones go first, as they expire). No user can
// make every other user count as lost: a user's subordinate uids are one owner.
func (t *dnsSenders) markLost(owner int64, now time.Time) {
	t.lostAny = now
	for t.lostOld != nil && now.Sub(t.lostOld.at) > t.keep {
		t.unmark(t.lostOld)
	}
	m := t.lost[owner]
	if m != nil {
		t.unmark(m) // marked anew: to the list's end
	} else if len(t.lost) >= max(t.max, 1) {
		t.unmark(t.lostOld)
	}
	m, t.lostFree = t.lostFree, nil
	if m == nil {
		m = &lostMark{}
	}
	*m = lostMark{owner: owner, at: now, prev: t.lostNew}
	if t.lostNew != nil {
		t.lostNew.next = m
	} else {
		t.lostOld = m
	}
	t.lostNew = m
	t.lost[owner] = m
}

// unmark forgets mark m.
func (t *dnsSenders) unmark(m *lostMark) {
	delete(t.lost, m.owner)
	if m.prev != nil {
		m.prev.next = m.next
	} else {
		t.lostOld = m.next
	}
	if m.next != nil {
		m.next.prev = m.prev
	} else {
		t.lostNew = m.prev
	}
	t.lostFree = m
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
// the queue held whose record was not kept. The subordinate uids of a user count as
// that user's.
func (t *dnsSenders) lostFor(uid int64, now time.Time) bool {
	owner := ownerOf(uid)
	t.mu.Lock()
	defer t.mu.Unlock()
	recent := func(at time.Time) bool { return !at.IsZero() && now.Sub(at) <= t.keep }
	if owner == unknownOwner {
		return recent(t.lostAny)
	}
	m := t.lost[owner]
	return m != nil && recent(m.at)
}
