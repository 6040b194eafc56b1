package dnsname

import (
	"container/list"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/subid"
)

// How long an answer may take, and how many queries wait for one. A stub resolver
// gives up on a server after about 5 s (glibc's default timeout), so an answer later
// than AnswerWindow is one nobody waits for any more. A query waits until its first
// answer or AnswerWindow, whichever comes first; an answered query frees its place at
// once.
//
// A query that finds its client's share or the table full is not tracked (counted in
// Stats.QueriesNotTracked): its answer then teaches nothing, and no query already
// waiting is ever evicted, so a flood of queries costs the flooder its own names and
// nobody else's. A client is the local user the query's socket belongs to (the NFLOG
// copy says; a subordinate uid of /etc/subuid counts as the user owning it, see package
// subid; a query over TCP whose copy names no user, sent after its socket closed,
// counts as the user whose SYN began the connection), and every query whose copy names
// no user at all counts as one client. With MaxPendingPerClient = MaxPendingQueries/8,
// eight users must flood at once to fill the table (programs of one user share that
// user's). Memory: at most MaxPendingQueries +
// recentKept entries (measured: 5.7 MiB with both full of 243-character names).
const (
	AnswerWindow        = 5 * time.Second
	MaxPendingQueries   = 4096
	MaxPendingPerClient = 512
	// recentKept bounds how many answered or expired queries are remembered, only to
	// tell a late or duplicate answer from an unmatched one in the counters.
	recentKept = 4096
)

// Reasons a response teaches nothing: the keys of Stats.Ignored.
const (
	IgnoredUnmatched  = "unmatched"           // no query from that socket to that server with that id is waiting
	IgnoredLate       = "late"                // the query it answers waited longer than AnswerWindow
	IgnoredDuplicate  = "duplicate"           // the query it answers has had its answer
	IgnoredMismatched = "mismatched_question" // a query with that id waits, but for another question (name bytes, type or class)
	IgnoredTruncated  = "truncated"           // TC set: the client asks again over TCP, which latch does not see
	IgnoredMalformed  = "malformed"           // not a DNS response latch could read (it still answers its query, if it matched one)
	IgnoredOtherType  = "other_type"          // a question for something other than A or AAAA in class IN: nothing to learn
)

// Reasons a query is not tracked: the keys of Stats.QueriesNotTracked.
const (
	NotTrackedClientLimit = "client_limit" // its client has MaxPendingPerClient queries waiting
	NotTrackedTableFull   = "table_full"   // MaxPendingQueries queries are waiting
	NotTrackedMalformed   = "malformed"    // not a DNS query latch could read
	NotTrackedOtherType   = "other_type"   // not A or AAAA in class IN: its answer would teach nothing
)

var ignoredReasons = [...]string{IgnoredUnmatched, IgnoredLate, IgnoredDuplicate, IgnoredMismatched, IgnoredTruncated, IgnoredMalformed, IgnoredOtherType}

var notTrackedReasons = [...]string{NotTrackedClientLimit, NotTrackedTableFull, NotTrackedMalformed, NotTrackedOtherType}

// Stats is what a Learner counted since it was made; `latch status` shows it.
type Stats struct {
	Queries           uint64            `json:"queries"`             // A and AAAA queries tracked (retransmissions not counted)
	QueriesNotTracked map[string]uint64 `json:"queries_not_tracked"` // queries not tracked, by reason (NotTracked...)
	Answers           uint64            `json:"answers"`             // responses that were the first answer to a tracked query in time
	Learned           uint64            `json:"learned"`             // addresses learned from those answers
	Ignored           map[string]uint64 `json:"ignored"`             // responses that taught nothing, by reason (Ignored...)
	Pending           int               `json:"pending"`             // queries waiting for their answer now
	Names             int               `json:"names"`               // addresses labelled machine-wide now (expired ones until replaced)
	Attributed        uint64            `json:"attributed"`          // tracked queries whose program was known: their answers teach that program's own names
	OwnNames          int               `json:"own_names"`           // (program, address) names held now (expired ones until replaced)
	Overflows         uint64            `json:"overflows"`           // times copies were lost to a full socket buffer
}

// Learner learns names only from answers bound to a question this host asked: it is
// told every DNS query the host sends (Query) and every response it receives
// (Response), and records a response's addresses in its Cache only if the response is
// the first to match a waiting query on all of: the client's address and port, the
// server's address and port, the transaction id, and the question (name compared byte
// for byte as sent, so letter-case randomisation keeps its worth; type; class), no
// later than AnswerWindow after the query. Anything else is counted and teaches
// nothing. A Learner is safe for concurrent use.
type Learner struct {
	cache     *Cache
	now       func() time.Time
	attribute atomic.Pointer[func(tcp bool, q Query, uid int64) Program]
	tcp       tcpStreams

	mu        sync.Mutex
	pending   map[queryKey]*list.Element // of *waiting
	order     list.List                  // of *waiting, oldest first
	byID      map[idKey]int              // waiting queries per socket pair and id
	perClient map[clientKey]int
	recent    map[queryKey]recentQuery
	ring      []queryKey // recent's keys, oldest at ringHead once full
	ringHead  int

	queries, answers, learned, overflows, attributed atomic.Uint64
	ignored                                          [len(ignoredReasons)]atomic.Uint64
	notTracked                                       [len(notTrackedReasons)]atomic.Uint64
}

type idKey struct {
	client, server netip.AddrPort
	id             uint16
	tcp            bool
}

type queryKey struct {
	idKey
	q Question
}

// clientKey is whose share a query counts against: a user id (the owner of a
// subordinate one), or -1 for every query whose copy names no user.
type clientKey struct {
	uid int64
}

// clientOf is the client a query sent by user uid (-1: unknown) counts as. Any source
// address is not one: a user may send from any of 127.0.0.0/8.
func clientOf(uid int64) clientKey {
	if uid < 0 || uid > math.MaxUint32 {
		return clientKey{uid: -1}
	}
	return clientKey{uid: int64(subid.Owner(uint32(uid)))}
}

type waiting struct {
	key    queryKey
	client clientKey
	prog   Program // who asked; zero: unknown
	at     time.Time
}

type recentQuery struct {
	answered bool // else expired unanswered
}

// NewLearner returns a Learner that records what it learns in cache.
func NewLearner(cache *Cache) *Learner {
	return &Learner{
		cache:     cache,
		now:       time.Now,
		pending:   make(map[queryKey]*list.Element),
		byID:      make(map[idKey]int),
		perClient: make(map[clientKey]int),
		recent:    make(map[queryKey]recentQuery),
	}
}

// SetAttributor makes the Learner ask fn, for each query it is about to track, which
// program sent it (from the query's socket: q's client and server address and port,
// IPv4 unmapped and without zone, its id and question, and the sending user, -1 if
// unknown; tcp for DNS over TCP). The answer to a query whose program is known
// teaches that program's own names as well as the machine-wide ones. fn runs on the
// reader's goroutine before the query's answer is read, while the asking socket still
// waits for it; it should be quick. Without one, every name is machine-wide only.
func (l *Learner) SetAttributor(fn func(tcp bool, q Query, uid int64) Program) {
	if fn == nil {
		l.attribute.Store(nil)
		return
	}
	l.attribute.Store(&fn)
}

// Cache returns the cache the Learner fills.
func (l *Learner) Cache() *Cache { return l.cache }

func reasonIndex(list []string, r string) int {
	for i, x := range list {
		if x == r {
			return i
		}
	}
	panic("dnsname: unknown reason " + r)
}

func (l *Learner) ignore(reason string) (int, string) {
	l.ignored[reasonIndex(ignoredReasons[:], reason)].Add(1)
	return 0, reason
}

func (l *Learner) notTrack(reason string) (bool, string) {
	l.notTracked[reasonIndex(notTrackedReasons[:], reason)].Add(1)
	return false, reason
}

// Query records the DNS query in pkt (an IPv4 or IPv6 packet this host sends to UDP
// port 53), sent from a socket of user uid (-1: unknown), as waiting for its answer.
// It reports whether the query is tracked and, if not, why (a NotTracked... reason).
// The same query again (a retransmission: same sockets, id and question) restarts its
// AnswerWindow.
func (l *Learner) Query(pkt []byte, uid int64) (bool, string) {
	q, err := ParseQueryPacket(pkt)
	if err != nil {
		return l.notTrack(NotTrackedMalformed)
	}
	return l.query(q, uid, false)
}

func (l *Learner) query(q *Query, uid int64, tcp bool) (bool, string) {
	if q.Question.Class != classIN || q.Question.Type != typeA && q.Question.Type != typeAAAA {
		return l.notTrack(NotTrackedOtherType)
	}
	key := queryKey{idKey{keyAP(q.Client), keyAP(q.Server), q.ID, tcp}, q.Question}
	client := clientOf(uid)
	var prog Program
	if fn := l.attribute.Load(); fn != nil {
		prog = (*fn)(tcp, Query{Client: key.client, Server: key.server, ID: q.ID, Question: q.Question}, uid)
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	if e, ok := l.pending[key]; ok {
		w := e.Value.(*waiting)
		w.at = now
		if prog.Known() {
			w.prog = prog
		}
		l.order.MoveToBack(e)
		return true, ""
	}
	if l.perClient[client] >= MaxPendingPerClient {
		return l.notTrack(NotTrackedClientLimit)
	}
	if len(l.pending) >= MaxPendingQueries {
		return l.notTrack(NotTrackedTableFull)
	}
	l.pending[key] = l.order.PushBack(&waiting{key, client, prog, now})
	if prog.Known() {
		l.attributed.Add(1)
	}
	l.byID[key.idKey]++
	l.perClient[client]++
	l.queries.Add(1)
	return true, ""
}

// Response handles the DNS response in pkt (an IPv4 or IPv6 packet this host
// receives from UDP port 53). If it is the first answer to a waiting query, the query
// stops waiting and, unless the response is truncated or malformed, its addresses are
// recorded in the cache. It returns how many addresses were learned, and why none
// were (an Ignored... reason) when the response matched no waiting query or could
// not teach.
func (l *Learner) Response(pkt []byte) (int, string) {
	r, err := parseResponsePacket(pkt)
	return l.response(r, err, false)
}

func (l *Learner) response(r *Response, err error, tcp bool) (int, string) {
	if r == nil {
		return l.ignore(IgnoredMalformed)
	}
	key := queryKey{idKey{keyAP(r.Client), keyAP(r.Server), r.ID, tcp}, Question{r.QName, r.QType, r.QClass}}
	now := l.now()
	l.mu.Lock()
	l.expire(now)
	e, matched := l.pending[key]
	var prog Program
	var client clientKey
	if matched {
		w := e.Value.(*waiting)
		prog, client = w.prog, w.client
		l.remove(w, true)
	}
	reason := ""
	switch {
	case matched:
	case l.byID[key.idKey] > 0:
		reason = IgnoredMismatched
	case l.recent[key].answered:
		reason = IgnoredDuplicate
	default:
		if _, ok := l.recent[key]; ok {
			reason = IgnoredLate
		}
	}
	l.mu.Unlock()
	switch {
	case err != nil:
		return l.ignore(IgnoredMalformed)
	case reason != "":
		return l.ignore(reason)
	case !matched && (r.QClass != classIN || r.QType != typeA && r.QType != typeAAAA):
		return l.ignore(IgnoredOtherType)
	case !matched:
		return l.ignore(IgnoredUnmatched)
	case r.Truncated:
		return l.ignore(IgnoredTruncated)
	}
	l.answers.Add(1)
	for _, a := range r.Answers {
		l.cache.addBy(client.uid, prog, a.Addr, a.Name, time.Duration(a.TTL)*time.Second)
	}
	l.learned.Add(uint64(len(r.Answers)))
	return len(r.Answers), ""
}

// keyAP drops what does not identify a socket: an IPv4-mapped form, a zone.
func keyAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// expire ends the wait of queries older than AnswerWindow. l.mu is held.
func (l *Learner) expire(now time.Time) {
	for e := l.order.Front(); e != nil; e = l.order.Front() {
		w := e.Value.(*waiting)
		if now.Sub(w.at) <= AnswerWindow {
			return
		}
		l.remove(w, false)
	}
}

// remove ends a query's wait and remembers how. l.mu is held.
func (l *Learner) remove(w *waiting, answered bool) {
	l.order.Remove(l.pending[w.key])
	delete(l.pending, w.key)
	if l.byID[w.key.idKey]--; l.byID[w.key.idKey] <= 0 {
		delete(l.byID, w.key.idKey)
	}
	if l.perClient[w.client]--; l.perClient[w.client] <= 0 {
		delete(l.perClient, w.client)
	}
	if _, ok := l.recent[w.key]; !ok {
		if len(l.ring) < recentKept {
			l.ring = append(l.ring, w.key)
		} else {
			delete(l.recent, l.ring[l.ringHead])
			l.ring[l.ringHead] = w.key
			l.ringHead = (l.ringHead + 1) % recentKept
		}
	}
	l.recent[w.key] = recentQuery{answered: answered}
}

// noteOverflow counts copies lost to a full socket buffer.
func (l *Learner) noteOverflow() { l.overflows.Add(1) }

// Stats returns the counters, and the queries waiting now.
func (l *Learner) Stats() Stats {
	s := Stats{
		Queries:           l.queries.Load(),
		QueriesNotTracked: make(map[string]uint64, len(notTrackedReasons)),
		Answers:           l.answers.Load(),
		Learned:           l.learned.Load(),
		Ignored:           make(map[string]uint64, len(ignoredReasons)),
		Names:             l.cache.Len(),
		Attributed:        l.attributed.Load(),
		OwnNames:          l.cache.OwnLen(),
		Overflows:         l.overflows.Load(),
	}
	for i, r := range ignoredReasons {
		s.Ignored[r] = l.ignored[i].Load()
	}
	for i, r := range notTrackedReasons {
		s.QueriesNotTracked[r] = l.notTracked[i].Load()
	}
	l.mu.Lock()
	l.expire(l.now())
	s.Pending = len(l.pending)
	l.mu.Unlock()
	return s
}
