package dnsname

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTestCache(n int) (*Cache, *fakeClock) {
	clk := &fakeClock{}
	clk.ns.Store(time.Date(2026, 11, 21, 15, 0, 0, 0, time.UTC).UnixNano())
	c := NewCache(n)
	c.now = clk.now
	return c, clk
}

func TestCacheTTL(t *testing.T) {
	c, clk := newTestCache(0)
	short := netip.MustParseAddr("198.18.5.5")
	long := netip.MustParseAddr("2001:2::5")
	c.Add(short, "www.example.com", 5*time.Second) // raised to MinTTL
	c.Add(long, "v6.example.com", 7*24*time.Hour)  // cut to MaxTTL
	clk.advance(59 * time.Second)
	if name, ok := c.Lookup(short); !ok || name != "www.example.com" {
		t.Fatalf("after 59s with a 5s TTL: %q %v, want www.example.com (minimum TTL 60s)", name, ok)
	}
	// An IPv4-mapped address is the IPv4 address.
	if name, ok := c.Lookup(netip.AddrFrom16(short.As16())); !ok || name != "www.example.com" {
		t.Errorf("mapped lookup: %q %v", name, ok)
	}
	clk.advance(time.Second)
	if name, ok := c.Lookup(short); ok {
		t.Errorf("after 60s: still %q", name)
	}
	clk.advance(24*time.Hour - 61*time.Second)
	if _, ok := c.Lookup(long); !ok {
		t.Errorf("before 24h: gone")
	}
	clk.advance(2 * time.Second)
	if name, ok := c.Lookup(long); ok {
		t.Errorf("after 24h: still %q", name)
	}
	// A newer answer replaces the name and the expiry.
	c.Add(short, "a.example.com", time.Hour)
	c.Add(short, "b.example.com", time.Hour)
	if name, _ := c.Lookup(short); name != "b.example.com" {
		t.Errorf("latest answer: %q, want b.example.com", name)
	}
}

func TestCacheBounded(t *testing.T) {
	c, _ := newTestCache(1024)
	hot := netip.MustParseAddr("198.18.0.1")
	c.Add(hot, "hot.example.com", time.Hour)
	base := netip.MustParseAddr("198.19.0.0")
	a := base
	for i := 0; i < 50_000; i++ {
		a = a.Next()
		c.Add(a, "cold.example.com", time.Hour)
		if i%100 == 0 {
			c.Lookup(hot) // looked up often: the clock hand spares it
		}
	}
	if n := c.Len(); n > 1024 {
		t.Fatalf("Len %d over the bound 1024", n)
	}
	if name, ok := c.Lookup(hot); !ok || name != "hot.example.com" {
		t.Errorf("an address looked up between insertions was evicted")
	}
	if name, ok := c.Lookup(a); !ok || name != "cold.example.com" {
		t.Errorf("the newest address is missing")
	}
	if _, ok := c.Lookup(base.Next()); ok {
		t.Errorf("the oldest cold address survived 50,000 insertions into 1024 slots")
	}
}

func TestCacheResponseAndConcurrency(t *testing.T) {
	c := NewCache(0)
	r, err := ParseMessage(buildResponse(1, 0, question("www.example.com", typeA), []testRR{
		rrCNAME("www.example.com", "e1.cdn.net", 300),
		rrA("e1.cdn.net", "198.18.5.5", 1),
	}))
	if err != nil {
		t.Fatal(err)
	}
	c.AddResponse(r)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := netip.MustParseAddr("198.18.100.0")
			for i := 0; i < 2000; i++ {
				a = a.Next()
				c.Add(a, "x.example.com", time.Minute)
				c.Lookup(a)
			}
		}()
	}
	wg.Wait()
	if name, ok := c.Lookup(netip.MustParseAddr("198.18.5.5")); !ok || name != "www.example.com" {
		t.Errorf("Lookup(198.18.5.5) = %q %v, want www.example.com", name, ok)
	}
}

// BenchmarkLookup measures hits in a cache holding 32,768 addresses, from all CPUs.
func BenchmarkLookup(b *testing.B) {
	c := NewCache(0)
	addrs := benchAddrs(DefaultMaxEntries / 2) // shards fill unevenly: a full cache evicts some
	for _, a := range addrs {
		c.Add(a, "www.example.com", time.Hour)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := c.Lookup(addrs[i&(len(addrs)-1)]); !ok {
				b.Fatal("miss")
			}
			i += 7919
		}
	})
}

// BenchmarkLookupOneMap is the baseline: the same entries and expiry check in one map
// behind one RWMutex.
func BenchmarkLookupOneMap(b *testing.B) {
	var mu sync.RWMutex
	m := map[netip.Addr]entry{}
	addrs := benchAddrs(DefaultMaxEntries / 2)
	exp := time.Now().Add(time.Hour).UnixNano()
	for i, a := range addrs {
		m[a] = entry{"www.example.com", exp, int32(i)}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			mu.RLock()
			e, ok := m[addrs[i&(len(addrs)-1)]]
			mu.RUnlock()
			if !ok || time.Now().UnixNano() >= e.expires {
				b.Fatal("miss")
			}
			i += 7919
		}
	})
}

func benchAddrs(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	a := netip.MustParseAddr("198.18.0.0")
	for i := range out {
		a = a.Next()
		out[i] = a
	}
	return out
}

// BenchmarkParsePacket parses a CNAME-chain response with two addresses in an IPv4
// packet, as ListenNFLOG does for each response.
func BenchmarkParsePacket(b *testing.B) {
	pkt := fuzzSeeds()[3]
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, err := ParsePacket(pkt); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLookupWait checks that LookupWait waits only while a reader reports a backlog,
// returns as soon as the answer is applied, and gives up after max.
func TestLookupWait(t *testing.T) {
	c := NewCache(0)
	addr := netip.MustParseAddr("198.18.5.5")
	start := time.Now()
	if _, ok := c.LookupWait(addr, time.Second); ok || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("no reader: LookupWait hit or waited %v", time.Since(start))
	}

	var queued atomic.Bool
	f := newFeed(queued.Load)
	c.feed.Store(f)
	start = time.Now()
	if _, ok := c.LookupWait(addr, time.Second); ok || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("no backlog: LookupWait hit or waited %v", time.Since(start))
	}

	queued.Store(true)
	go func() {
		time.Sleep(20 * time.Millisecond)
		f.processing.Store(true)
		queued.Store(false)
		c.Add(addr, "www.example.com", time.Minute)
		f.processing.Store(false)
		f.batchDone()
	}()
	if name, ok := c.LookupWait(addr, 5*time.Second); !ok || name != "www.example.com" {
		t.Fatalf("backlog: LookupWait = %q %v, want the name applied meanwhile", name, ok)
	}

	queued.Store(true) // a backlog that never drains: bounded by max
	start = time.Now()
	if _, ok := c.LookupWait(netip.MustParseAddr("198.18.6.6"), 50*time.Millisecond); ok {
		t.Fatal("stuck backlog: hit")
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 2*time.Second {
		t.Errorf("stuck backlog: waited %v, want about 50ms", d)
	}
}
