package dnsname

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// BenchmarkPerProgramLookup measures the name lookup on the verdict path with 100,000
// per-program names (2,000 programs × 50 addresses; the same addresses machine-wide),
// in interleaved rounds against the baseline measured in the same run: the
// machine-wide lookup that was the whole cost before names were kept per program.
// Reported: ns per own hit (LookupFor), ns per miss of the program's own names that
// falls back to the machine-wide name, ns per machine-wide hit (baseline), and heap
// bytes per name held.
func BenchmarkPerProgramLookup(b *testing.B) {
	const programs, perProgram = 2000, 50
	const names = programs * perProgram
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := NewCache(1 << 17) // room for 100,000 in shards that fill unevenly
	progs := make([]Program, programs)
	addrs := make([]netip.Addr, perProgram)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
	}
	for p := range progs {
		progs[p] = Program{Exe: fmt.Sprintf("/usr/lib/app%04d/bin/app%04d", p, p), Identity: 1, UID: 1000}
		for i, a := range addrs {
			// Addresses are shared between programs (CDNs): each program's own name.
			c.AddFor(progs[p], a, fmt.Sprintf("h%d.app%04d.example.com", i, p), time.Hour)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if got := c.OwnLen(); got < names*99/100 {
		b.Fatalf("holds %d own names, want about %d", got, names)
	}
	stranger := Program{Exe: "/usr/bin/stranger", Identity: 1, UID: 1000}
	const perRound = 1 << 16
	var own, miss, shared time.Duration
	var n int
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		t0 := time.Now()
		for i := range perRound {
			if _, isOwn, ok := c.LookupFor(progs[(i*7919)%programs], addrs[i%perProgram]); !ok || !isOwn {
				b.Fatal("own miss")
			}
		}
		t1 := time.Now()
		for i := range perRound {
			if _, isOwn, ok := c.LookupFor(stranger, addrs[i%perProgram]); !ok || isOwn {
				b.Fatal("fallback miss")
			}
		}
		t2 := time.Now()
		for i := range perRound {
			if _, ok := c.Lookup(addrs[i%perProgram]); !ok {
				b.Fatal("shared miss")
			}
		}
		t3 := time.Now()
		own += t1.Sub(t0)
		miss += t2.Sub(t1)
		shared += t3.Sub(t2)
		n += perRound
	}
	b.StopTimer()
	b.ReportMetric(float64(own.Nanoseconds())/float64(n), "ns/own-hit")
	b.ReportMetric(float64(miss.Nanoseconds())/float64(n), "ns/own-miss+shared")
	b.ReportMetric(float64(shared.Nanoseconds())/float64(n), "ns/shared-baseline")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(c.OwnLen()+c.Len()), "B/name")
	b.ReportMetric(0, "ns/op")
}
