package dnsname

import (
	"encoding/binary"
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

// Cache maps IP addresses to the hostname a program asked for when it resolved them.
// It is bounded: when a shard is full, an expired entry or one not looked up since the
// clock hand last passed it is replaced (the CLOCK approximation of LRU, so Lookup
// never takes a write lock). When several names resolve to one address, the latest
// answer wins. A Cache is safe for concurrent use.
type Cache struct {
	shards [shardCount]shard
	now    func() time.Time
	feed   atomic.Pointer[feed] // the reader filling the cache, if any (see LookupWait)
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

type shard struct {
	mu    sync.RWMutex
	index map[netip.Addr]entry
	slots []slotKey       // for the clock hand: which address each slot holds
	used  []atomic.Uint32 // per slot: looked up since the hand last passed; dense, so Lookup touches one small array
	limit int
	hand  int
}

// entry is what Lookup reads: held in the map itself, so a hit is one map probe.
type entry struct {
	name    string
	expires int64 // Unix ns
	slot    int32
}

type slotKey struct {
	addr    netip.Addr
	expires int64
}

// NewCache returns a cache that holds at most maxEntries addresses (DefaultMaxEntries
// if maxEntries <= 0; rounded up to a multiple of 16). Addresses are spread over 16
// shards that fill unevenly, so a shard may start evicting before the whole cache is
// full.
func NewCache(maxEntries int) *Cache {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	per := (maxEntries + shardCount - 1) / shardCount
	c := &Cache{now: time.Now}
	for i := range c.shards {
		c.shards[i].index = make(map[netip.Addr]entry)
		c.shards[i].used = make([]atomic.Uint32, per)
		c.shards[i].limit = per
	}
	return c
}

func keyOf(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

func (c *Cache) shardOf(a netip.Addr) *shard {
	k := a.As16()
	h := binary.LittleEndian.Uint64(k[8:]) ^ binary.LittleEndian.Uint64(k[:8])*0x9e3779b97f4a7c15
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 32
	return &c.shards[h%shardCount]
}

// Lookup returns the hostname last learned for addr, if it has not expired.
// IPv4-mapped IPv6 addresses are looked up as IPv4; zones are ignored.
func (c *Cache) Lookup(addr netip.Addr) (string, bool) {
	if !addr.IsValid() {
		return "", false
	}
	k := keyOf(addr)
	s := c.shardOf(k)
	s.mu.RLock()
	e, ok := s.index[k]
	if ok {
		if u := &s.used[e.slot]; u.Load() == 0 {
			u.Store(1)
		}
	}
	s.mu.RUnlock()
	if !ok || c.now().UnixNano() >= e.expires {
		return "", false
	}
	return e.name, true
}

// LookupWait is Lookup for a connection about to be decided. A program connects right
// after its DNS answer arrives, sometimes before the reader has applied the copy of
// that answer; so on a miss, while a reader reports responses read or queued but not
// yet applied, LookupWait waits for them, at most max. With no backlog (the usual
// miss: an address the program did not look up by DNS) it returns at once.
func (c *Cache) LookupWait(addr netip.Addr, max time.Duration) (string, bool) {
	if name, ok := c.Lookup(addr); ok {
		return name, true
	}
	f := c.feed.Load()
	if f == nil || max <= 0 {
		return "", false
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
			return c.Lookup(addr)
		}
		if name, ok := c.Lookup(addr); ok {
			return name, true
		}
	}
	return c.Lookup(addr)
}

// Add records that addr is name for ttl, clamped to MinTTL..MaxTTL. name should be in
// normalized form (see Normalize).
func (c *Cache) Add(addr netip.Addr, name string, ttl time.Duration) {
	if !addr.IsValid() || name == "" {
		return
	}
	ttl = min(max(ttl, MinTTL), MaxTTL)
	now := c.now().UnixNano()
	expires := now + int64(ttl)
	k := keyOf(addr)
	s := c.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.index[k]; ok {
		s.index[k] = entry{name, expires, e.slot}
		s.slots[e.slot].expires = expires
		s.used[e.slot].Store(1)
		return
	}
	if len(s.slots) < s.limit {
		s.slots = append(s.slots, slotKey{k, expires})
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
		delete(s.index, s.slots[i].addr)
		s.slots[i] = slotKey{k, expires}
		s.used[i].Store(0)
		s.index[k] = entry{name, expires, int32(i)}
		return
	}
}

// AddResponse records every answer of r, without asking whether r answers a query
// this host sent: Learner.Response does that.
func (c *Cache) AddResponse(r *Response) {
	for _, a := range r.Answers {
		c.Add(a.Addr, a.Name, time.Duration(a.TTL)*time.Second)
	}
}

// Len returns the number of addresses held, expired ones included until replaced.
func (c *Cache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.index)
		s.mu.RUnlock()
	}
	return n
}
