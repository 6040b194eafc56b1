package engine

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

var benchSizes = []int{10, 1000, 10000, 100000}

// benchSetup compiles a realistic mix of n rules (see realisticRules) and a pool of
// requests aimed half at rules, half at random.
func benchSetup(n int) (*matcher, []*Request) {
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	rules := realisticRules(rng, n)
	return compile(rules), realisticRequests(rng, rules, 4096)
}

// BenchmarkMatch measures the indexed matcher: ns/op is one evaluation.
func BenchmarkMatch(b *testing.B) {
	for _, n := range benchSizes {
		m, reqs := benchSetup(n)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			matched := 0
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if m.match(reqs[i&4095], t0) != nil {
					matched++
				}
				i++
			}
			b.ReportMetric(float64(matched)/float64(i), "matched/op")
		})
	}
}

// BenchmarkLinearScan is the baseline: the same rules and requests, scanned in
// precedence order without an index.
func BenchmarkLinearScan(b *testing.B) {
	for _, n := range benchSizes {
		m, reqs := benchSetup(n)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			matched := 0
			i := 0
			for b.Loop() {
				if m.matchLinear(reqs[i&4095], t0) != nil {
					matched++
				}
				i++
			}
			b.ReportMetric(float64(matched)/float64(i), "matched/op")
		})
	}
}

// BenchmarkDecideRule measures Engine.Decide for requests a rule answers, at 100,000
// rules, from parallel goroutines (the backends' view).
func BenchmarkDecideRule(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 7))
	rules := realisticRules(rng, 100000)
	for i := range rules {
		rules[i].Expires = time.Time{}
	}
	rules = append(rules, Rule{ID: 100001, Action: Allow}) // every request is decided by a rule
	e, err := New(Config{Default: Deny, Now: func() time.Time { return t0 }}, rules)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	reqs := realisticRequests(rng, rules, 4096)
	verdict := func(Verdict) {}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			e.Decide(reqs[i&4095], verdict)
			i++
		}
	})
}

// BenchmarkCompile measures rebuilding the matcher, which every rule change does.
func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		rules := realisticRules(rand.New(rand.NewPCG(1, 1)), n)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			for b.Loop() {
				compile(rules)
			}
		})
	}
}

// BenchmarkMatchMiss measures the worst case: requests of known applications (their
// exact and glob buckets exist) to an address no rule names, so every stage of the
// index is searched. Compare with BenchmarkLinearScanMiss.
func BenchmarkMatchMiss(b *testing.B) {
	benchMiss(b, func(m *matcher, req *Request) bool { return m.match(req, t0) != nil })
}

// BenchmarkLinearScanMiss is BenchmarkMatchMiss without the index.
func BenchmarkLinearScanMiss(b *testing.B) {
	benchMiss(b, func(m *matcher, req *Request) bool { return m.matchLinear(req, t0) != nil })
}

func benchMiss(b *testing.B, match func(*matcher, *Request) bool) {
	for _, n := range benchSizes {
		m, reqs := benchSetup(n)
		for i, r := range reqs {
			miss := *r
			// 2001:db8:ff::/48 is outside every rule's remote (see randAddr6).
			miss.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 15: byte(i)}), 47000)
			reqs[i] = &miss
		}
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			matched, i := 0, 0
			for b.Loop() {
				if match(m, reqs[i&4095]) {
					matched++
				}
				i++
			}
			b.ReportMetric(float64(matched)/float64(i), "matched/op")
		})
	}
}
