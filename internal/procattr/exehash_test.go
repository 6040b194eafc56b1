package procattr

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkHashFile200MB measures the first hash of a 200 MB executable (what a
// pinned rule costs once per file version; it runs off the verdict path).
func BenchmarkHashFile200MB(b *testing.B) {
	path := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for range 200 {
		f.Write(buf)
	}
	f.Close()
	b.SetBytes(200 << 20)
	for b.Loop() {
		if _, err := HashFile(path); err != nil {
			b.Fatal(err)
		}
	}
}
