package dnsname

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on how long a learned name is kept. A DNS TTL says how long a resolver may
// reuse an answer, not how long a program keeps using the address: programs connect
// again long after a 5-second TTL ran out, so short TTLs are raised to MinTTL.
const (
	DefaultMaxEntries = 65536
	MinTTL            = 60 * time.Second
	MaxTTL            = 24 * time.Hour
)

const shardCount = 16

// Cache maps IP addresses to the hostname a program asked for when it resolved them,
// twice: per program (the names that program resolved itself, see Program) and
// machine-wide (the latest name anyone resolved, the labelled fallback). Each map is
// bounded and shared out per user: an entry belongs to the user whose query taught it
// (a subordinate uid as its owner, see package subid; the latest answer for an
// address makes the machine-wide entry that user's), and when a shard is full the new
// entry replaces one of the user holding the most entries in that shard (the
// newcomer's own when it holds as many): of that user's, an expired entry or one not
// looked up since that user's clock hand last passed it (the CLOCK approximation of
// LRU, so a lookup never takes a write lock). One user's flood of answers so replaces
// only that user's names. When several names resolve to one address, the latest
// answer wins, within each map. A Cache is safe for concurrent use.
type Cache struct {
	shared table[netip.Addr]
	own    table[ownKey]
	now    func() time.Time
	feed   atomic.Pointer[feed] // the reader filling the cache, if any (see LookupWait)
}

// Program is whose names a per-program entry belongs to: the process identity the
// engine matches app rules on (its executable, whether that path is verified, its
// container) and the user it runs as. Two programs at one path but of different
// identity (a forged path next to the host's file) or user never share names. The
// zero Program (Exe "") is unknown: names it resolved are only kept machine-wide.
type Program struct {
	Exe       string
	Identity  uint8 // engine.Identity
	Container string
	UID       int32
}

// Known reports whether p names a program.
func (p Program) Known() bool { return p.Exe != "" }

type ownKey struct {
	addr netip.Addr
	prog Program
}

// feed is what a reader (ListenNFLOG) tells LookupWait: whether responses are waiting
// to be read or applied, and when a batch has been applied.
type feed struct {
	queued     func() bool // responses wait in the kernel socket
	processing atomic.Bool // a batch has been read and is being applied
	closed     atomic.Bool // the reader has stopped
	mu         sync.Mutex
	applied    chan struct{} // closed when a batch has been applied; then replaced
}

func newFeed(queued func() bool) *feed {
	return &feed{queued: queued, applied: make(chan struct{})}
}

// backlog checks the socket before the flag: the reader sets the flag before it takes
// a message out of the socket, so a response on its way is always seen by one of them.
func (f *feed) backlog() bool { return !f.closed.Load() && (f.queued() || f.processing.Load()) }

func (f *feed) wait() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

func (f *feed) batchDone() {
	f.mu.Lock()
	close(f.applied)
	f.applied = make(chan struct{})
	f.mu.Unlock()
}

// table is one bounded map of names, sharded (by address; per program, by address and
// program).
type table[K comparable] struct {
	shards [shardCount]shard[K]
}

type shard[K comparable] struct {
	mu     sync.RWMutex
	index  map[K]entry
	slots  []slotKey[K]    // which key each slot holds, and whose it is
	used   []atomic.Uint32 // per slot: looked up since its owner's hand last passed; dense, so a lookup touches one small array
	owners map[int64]*holder
	list   []*holder // owners' values, for a quick walk
	limit  int
}

// holder is the slots one user's entries take in a shard, with that user's clock hand.
type holder struct {
	owner int64
	slots []int32
	hand  int
	at    int // where in the shard's list
}

// entry is what a lookup reads: held in the map itself, so a hit is one map probe.
type entry struct {
	name    string
	expires int64 // Unix ns
	slot    int32
}

type slotKey[K comparable] struct {
	key     K
	expires int64
	h       *holder // the user whose entry it is
	pos     int32   // where in h.slots
}

func (t *table[K]) init(per int) {
	for i := range t.shards {
		t.shards[i].index = make(map[K]entry)
		t.shards[i].owners = make(map[int64]*holder)
		t.shards[i].used = make([]atomic.Uint32, per)
		t.shards[i].limit = per
	}
}

// NewCache returns a cache whose maps hold at most maxEntries addresses each
// (DefaultMaxEntries if maxEntries <= 0; rounded up to a multiple of 16): the
// machine-wide map maxEntries addresses, the per-program map maxEntries (program,
// address) pairs. Entries are spread over 16 shards that fill unevenly, so a shard may
// start evicting before the whole map is full.
func NewCache(maxEntries int) *Cache {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	per := (maxEntries + shardCount - 1) / shardCount
	c := &Cache{now: time.Now}
	c.shared.init(per)
	c.own.init(per)
	return c
}

func keyOf(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

func shardIndex(a netip.Addr) int { return int(addrHash(a, 0) % shardCount) }

// ownShardIndex spreads one address's names of many programs (a CDN's address) over
// the shards too.
func ownShardIndex(a netip.Addr, p Program) int {
	return int(addrHash(a, maphash.String(progSeed, p.Exe)) % shardCount)
}

var progSeed = maphash.MakeSeed()

func addrHash(a netip.Addr, salt uint64) uint64 {
	k := a.As16()
	h := binary.LittleEndian.Uint64(k[8:]) ^ binary.LittleEndian.Uint64(k[:8])*0x9e3779b97f4a7c15 ^ salt
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 32
	return h
}

func (t *table[K]) lookup(shardIdx int, k K, now int64) (string, bool) {
	s := &t.shards[shardIdx]
	s.mu.RLock()
	e, ok := s.index[k]
	if ok {
		if u := &s.used[e.slot]; u.Load() == 0 {
			u.Store(1)
		}
	}
	s.mu.RUnlock()
	if !ok || now >= e.expires {
		return "", false
	}
	return e.name, true
}

// add records k's name for owner (the user whose query taught it).
func (t *table[K]) add(shardIdx int, k K, owner int64, name string, now, expires int64) {
	s := &t.shards[shardIdx]
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.index[k]; ok {
		s.index[k] = entry{name, expires, e.slot}
		s.slots[e.slot].expires = expires
		s.used[e.slot].Store(1)
		if s.slots[e.slot].h.owner != owner {
			s.detach(e.slot)
			s.attach(e.slot, owner)
		}
		return
	}
	if len(s.slots) < s.limit {
		i := int32(len(s.slots))
		s.slots = append(s.slots, slotKey[K]{key: k, expires: expires})
		s.attach(i, owner)
		s.index[k] = entry{name, expires, i}
		return
	}
	// Full: replace an entry of the user holding the most here, the newcomer's own
	// when it holds as many, so one user's answers replace only that user's names.
	h := s.owners[owner]
	most := 0
	if h != nil {
		most = len(h.slots)
	}
	for _, o := range s.list {
		if len(o.slots) > most {
			h, most = o, len(o.slots)
		}
	}
	if h == nil {
		return // nobody holds a slot: not while the shard is full
	}
	// That user's clock: two sweeps at most, the first clears every used mark it passes.
	for range 2 * len(h.slots) {
		if h.hand >= len(h.slots) {
			h.hand = 0
		}
		i := h.slots[h.hand]
		h.hand++
		if s.slots[i].expires > now && s.used[i].Load() != 0 {
			s.used[i].Store(0)
			continue
		}
		delete(s.index, s.slots[i].key)
		s.slots[i].key, s.slots[i].expires = k, expires
		if h.owner != owner {
			s.detach(i)
			s.attach(i, owner)
		}
		s.used[i].Store(0)
		s.index[k] = entry{name, expires, i}
		return
	}
}

// attach makes slot i owner's. s.mu is held.
func (s *shard[K]) attach(i int32, owner int64) {
	h := s.owners[owner]
	if h == nil {
		h = &holder{owner: owner, at: len(s.list)}
		s.owners[owner] = h
		s.list = append(s.list, h)
	}
	s.slots[i].h, s.slots[i].pos = h, int32(len(h.slots))
	h.slots = append(h.slots, i)
}

// detach takes slot i from its owner's list. s.mu is held.
func (s *shard[K]) detach(i int32) {
	h, pos := s.slots[i].h, s.slots[i].pos
	last := h.slots[len(h.slots)-1]
	h.slots[pos] = last
	s.slots[last].pos = pos
	h.slots = h.slots[:len(h.slots)-1]
	s.slots[i].h = nil
	if len(h.slots) == 0 {
		delete(s.owners, h.owner)
		end := s.list[len(s.list)-1]
		s.list[h.at], end.at = end, h.at
		s.list[len(s.list)-1] = nil
		s.list = s.list[:len(s.list)-1]
	}
}

func (t *table[K]) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		n += len(s.index)
		s.mu.RUnlock()
	}
	return n
}

// Lookup returns the hostname last learned machine-wide for addr, if it has not
// expired. IPv4-mapped IPv6 addresses are looked up as IPv4; zones are ignored.
func (c *Cache) Lookup(addr netip.Addr) (string, bool) {
	if !addr.IsValid() {
		return "", false
	}
	k := keyOf(addr)
	return c.shared.lookup(shardIndex(k), k, c.now().UnixNano())
}

// LookupFor returns the hostname prog itself last resolved addr to (own true), or
// else the one last learned machine-wide (own false), if either has not expired.
func (c *Cache) LookupFor(prog Program, addr netip.Addr) (name string, own, ok bool) {
	if !addr.IsValid() {
		return "", false, false
	}
	k := keyOf(addr)
	now := c.now().UnixNano()
	if prog.Known() {
		if name, ok := c.own.lookup(ownShardIndex(k, prog), ownKey{k, prog}, now); ok {
			return name, true, true
		}
	}
	name, ok = c.shared.lookup(shardIndex(k), k, now)
	return name, false, ok
}

// LookupWait is Lookup for a connection about to be decided. A program connects right
// after its DNS answer arrives, sometimes before the reader has applied the copy of
// that answer; so on a miss, while a reader reports responses read or queued but not
// yet applied, LookupWait waits for them, at most max. With no backlog (the usual
// miss: an address the program did not look up by DNS) it returns at once.
func (c *Cache) LookupWait(addr netip.Addr, max time.Duration) (string, bool) {
	name, _, ok := c.lookupWait(Program{}, addr, max)
	return name, ok
}

// LookupForWait is LookupFor with LookupWait's wait: on a miss of prog's own name it
// waits, at most max, while copies of responses are on their way, and then falls back
// to the machine-wide name.
func (c *Cache) LookupForWait(prog Program, addr netip.Addr, max time.Duration) (name string, own, ok bool) {
	return c.lookupWait(prog, addr, max)
}

func (c *Cache) lookupWait(prog Program, addr netip.Addr, max time.Duration) (string, bool, bool) {
	// Waits for the best answer there can be: the program's own when it is known.
	lookup := func() (string, bool, bool) {
		if prog.Known() {
			return c.LookupFor(prog, addr)
		}
		name, ok := c.Lookup(addr)
		return name, false, ok
	}
	best := func(name string, own, ok bool) bool { return ok && (own || !prog.Known()) }
	if name, own, ok := lookup(); best(name, own, ok) {
		return name, own, ok
	}
	f := c.feed.Load()
	if f == nil || max <= 0 {
		return lookup()
	}
	var timer *time.Timer
	for f.backlog() {
		applied := f.wait()
		if !f.backlog() { // applied between the check and taking the channel
			break
		}
		if timer == nil {
			timer = time.NewTimer(max)
			defer timer.Stop()
		}
		select {
		case <-applied:
		case <-timer.C:
			return lookup()
		}
		if name, own, ok := lookup(); best(name, own, ok) {
			return name, own, ok
		}
	}
	return lookup()
}

// Add records machine-wide that addr is name for ttl, clamped to MinTTL..MaxTTL.
// name should be in normalized form (see Normalize).
func (c *Cache) Add(addr netip.Addr, name string, ttl time.Duration) {
	c.AddFor(Program{}, addr, name, ttl)
}

// AddFor records that prog resolved addr to name, for ttl clamped to MinTTL..MaxTTL:
// in prog's own names if prog is known, and machine-wide. Both count against the
// share of prog's user (an unknown program's against one share of all unknown ones).
func (c *Cache) AddFor(prog Program, addr netip.Addr, name string, ttl time.Duration) {
	owner := int64(-1)
	if prog.Known() && prog.UID != -1 { // else no user; UID holds a uid's 32 bits
		owner = clientOf(int64(uint32(prog.UID))).uid
	}
	c.addBy(owner, prog, addr, name, ttl)
}

// addBy is AddFor on the share of owner (a clientOf user, -1 for unknown).
func (c *Cache) addBy(owner int64, prog Program, addr netip.Addr, name string, ttl time.Duration) {
	if !addr.IsValid() || name == "" {
		return
	}
	ttl = min(max(ttl, MinTTL), MaxTTL)
	now := c.now().UnixNano()
	expires := now + int64(ttl)
	k := keyOf(addr)
	if prog.Known() {
		c.own.add(ownShardIndex(k, prog), ownKey{k, prog}, owner, name, now, expires)
	}
	c.shared.add(shardIndex(k), k, owner, name, now, expires)
}

// AddResponse records every answer of r, without asking whether r answers a query
// this host sent: Learner.Response does that.
func (c *Cache) AddResponse(r *Response) {
	for _, a := range r.Answers {
		c.Add(a.Addr, a.Name, time.Duration(a.TTL)*time.Second)
	}
}

// Len returns the number of addresses held machine-wide, expired ones included until
// replaced.
func (c *Cache) Len() int { return c.shared.len() }

// OwnLen returns the number of (program, address) names held, expired ones included
// until replaced.
func (c *Cache) OwnLen() int { return c.own.len() }
