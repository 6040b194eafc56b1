package dnsname

import (
	"net/netip"
	"testing"
	"time"
)

// BenchmarkAddFull measures recording a name into full maps (the daemon's size), as
// each address of an answer does once the cache has filled: 4 programs of 4 users
// take turns, so every add replaces an entry.
func BenchmarkAddFull(b *testing.B) {
	c := NewCache(0)
	progs := make([]Program, 4)
	for i := range progs {
		progs[i] = Program{Exe: "/usr/bin/app", Identity: 1, UID: int32(1000 + i)}
	}
	a := netip.MustParseAddr("198.18.0.0")
	for i := 0; i < 2*DefaultMaxEntries; i++ {
		a = a.Next()
		c.AddFor(progs[i%4], a, "x.example.com", time.Hour)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a = a.Next()
		c.AddFor(progs[i%4], a, "x.example.com", time.Hour)
	}
}
