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
// bounded: when a shard is full, an expired entry or one not looked up since the clock
// hand last passed it is replaced (the CLOCK approximation of LRU, so a lookup never
// takes a write lock). When several names resolve to one address, the latest answer
// wins, within each map. A Cache is safe for concurrent use.
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
	mu    sync.RWMutex
	index map[K]entry
	slots []slotKey[K]    // for the clock hand: which key each slot holds
	used  []atomic.Uint32 // per slot: looked up since the hand last passed; dense, so a lookup touches one small array
	limit int
	hand  int
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
}

func (t *table[K]) init(per int) {
	for i := range t.shards {
		t.shards[i].index = make(map[K]entry)
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

func (t *table[K]) add(shardIdx int, k K, name string, now, expires int64) {
	s := &t.shards[shardIdx]
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.index[k]; ok {
		s.index[k] = entry{name, expires, e.slot}
		s.slots[e.slot].expires = expires
		s.used[e.slot].Store(1)
		return
	}
	if len(s.slots) < s.limit {
		s.slots = append(s.slots, slotKey[K]{k, expires})
		s.index[k] = entry{name, expires, int32(len(s.slots) - 1)}
		return
	}
	// Two sweeps at most: the first clears every used mark it passes.
	for range 2 * len(s.slots) {
		i := s.hand
		s.hand = (s.hand + 1) % len(s.slots)
		if s.slots[i].expires > now && s.used[i].Load() != 0 {
			s.used[i].Store(0)
			continue
		}
		delete(s.index, s.slots[i].key)
		s.slots[i] = slotKey[K]{k, expires}
		s.used[i].Store(0)
		s.index[k] = entry{name, expires, int32(i)}
		return
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
// in prog's own names if prog is known, and machine-wide.
func (c *Cache) AddFor(prog Program, addr netip.Addr, name string, ttl time.Duration) {
	if !addr.IsValid() || name == "" {
		return
	}
	ttl = min(max(ttl, MinTTL), MaxTTL)
	now := c.now().UnixNano()
	expires := now + int64(ttl)
	k := keyOf(addr)
	if prog.Known() {
		c.own.add(ownShardIndex(k, prog), ownKey{k, prog}, name, now, expires)
	}
	c.shared.add(shardIndex(k), k, name, now, expires)
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
