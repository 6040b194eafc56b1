//go:build linux

package main

import "testing"

// TestDeBruijnOrder checks the paired measurement's order: every scenario's slot
// follows every scenario's (its own too) exactly once per cycle, counting across
// the cycle's end, so that what one slot leaves behind falls on all alike.
func TestDeBruijnOrder(t *testing.T) {
	for k := 1; k <= 6; k++ {
		seq := deBruijn(k)
		if len(seq) != k*k {
			t.Fatalf("k=%d: %d slots %v, want %d", k, len(seq), seq, k*k)
		}
		seen := map[[2]int]int{}
		for i := range seq {
			seen[[2]int{seq[i], seq[(i+1)%len(seq)]}]++
		}
		for a := range k {
			for b := range k {
				if seen[[2]int{a, b}] != 1 {
					t.Errorf("k=%d: %v: %d after %d %d times, want once", k, seq, b, a, seen[[2]int{a, b}])
				}
			}
		}
	}
	if got := deBruijn(2); got[0] != 0 || got[1] != 0 || got[2] != 1 || got[3] != 1 {
		t.Errorf("deBruijn(2) = %v, want A,A,B,B", got)
	}
}

// TestBootstrapCoversRatio checks the interval of the paired ratio: it holds the
// ratio of the samples' medians, and is narrow for samples this regular.
func TestBootstrapCoversRatio(t *testing.T) {
	stat := func(idx []int) float64 {
		var a, b []float64
		for _, c := range idx {
			// Cycle c: the reference near 50, the other near 60, with a
			// spread that differs from cycle to cycle.
			d := float64(c%7) - 3
			a = append(a, 50+d)
			b = append(b, 60+2*d)
		}
		return median(b) / median(a)
	}
	lo, hi := bootstrap(50, stat)
	if !(lo <= 1.2 && 1.2 <= hi) || hi-lo > 0.1 {
		t.Errorf("50 cycles: interval %.3f-%.3f, want one around 1.2 narrower than 0.1", lo, hi)
	}
	if lo, hi := bootstrap(1, stat); lo != 0 || hi != 0 {
		t.Errorf("1 cycle: interval %v-%v, want none", lo, hi)
	}
}
