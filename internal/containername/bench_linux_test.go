package containername

import (
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkNameLookup: what naming a container costs a verdict, against the cheapest
// cache there could be (a map under a mutex), in interleaved rounds (order reversed
// every other round), printing each round's ratio and the median. Cases: a docker
// container with a name (cached), and a docker label on a host without docker.
func BenchmarkNameLookup(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (the fake state is root's)")
	}
	root := b.TempDir()
	os.Chmod(root, 0o755)
	dir := root + "/var/lib/docker/containers/" + idA
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	os.WriteFile(dir+"/config.v2.json", []byte(`{"ID":"`+idA+`","Name":"/web-1"}`), 0o600)
	for _, tc := range []struct{ name, root string }{{"named", root}, {"no-runtime", b.TempDir()}} {
		b.Run(tc.name, func(b *testing.B) {
			r := New(Options{Root: tc.root})
			label := "docker:" + idA
			r.Name(label)
			var mu sync.Mutex
			base := map[string]string{label: "web-1"}
			const n = 200_000
			var sink string
			baseline := func() time.Duration {
				t0 := time.Now()
				for i := 0; i < n; i++ {
					mu.Lock()
					sink = base[label]
					mu.Unlock()
				}
				return time.Since(t0)
			}
			lookup := func() time.Duration {
				t0 := time.Now()
				for i := 0; i < n; i++ {
					sink = r.Name(label)
				}
				return time.Since(t0)
			}
			var ratios []float64
			for round := 0; round < 6; round++ {
				var tb, tl time.Duration
				if round%2 == 0 {
					tb, tl = baseline(), lookup()
				} else {
					tl, tb = lookup(), baseline()
				}
				ratios = append(ratios, float64(tl)/float64(tb))
				b.Logf("round %d: map %.1f ns, Name %.1f ns, ratio %.2f", round, float64(tb)/n, float64(tl)/n, ratios[round])
			}
			_ = sink
			slices.Sort(ratios)
			med := (ratios[2] + ratios[3]) / 2
			b.Logf("median ratio Name/map %.2f", med)
			b.ReportMetric(med, "ratio")
			for i := 0; i < b.N; i++ {
				sink = r.Name(label)
			}
		})
	}
}
