//go:build linux

package procattr

import "testing"

// BenchmarkExeHashLookupHit is what a connection of a process whose executable is
// hashed already pays for the hash (Resolve's cached path), with 4096 cached.
func BenchmarkExeHashLookupHit(b *testing.B) {
	h := &exeHashes{done: map[hashKey]string{}, pending: map[hashKey]bool{}, sem: make(chan struct{}, maxHashing)}
	keys := make([]hashKey, 4096)
	for i := range keys {
		keys[i] = hashKey{dev: 1, ino: uint64(i + 1), size: 10}
		h.store(keys[i], "sum", uint32(i%8)) // 8 users: each within its share
	}
	i := 0
	for b.Loop() {
		if h.lookup(keys[i&4095], 1) == "" {
			b.Fatal("miss")
		}
		i += 7
	}
}
