//go:build linux

package procattr

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestReview34HugeExecutablesKeepHashing (review 34, medium-low): executables are
// hashed at most two at a time, each to its end, however large. Any local user can
// make an executable of any apparent size (a program with terabytes of holes after
// it: exec does not mind, reading the holes costs the daemon SHA-256 over zeros at
// about 1-2 GB/s) and run two of them: both hashing slots are taken for minutes, and
// meanwhile no other program's file is hashed, so every pinned rule of every user
// whose program is not in the cache stops matching and latch asks (or, unanswered,
// applies --default). One user's files must not stop the hashing of another's
// (bound the size hashed, hash per user fairly, or give up after a time).
func TestReview34HugeExecutablesKeepHashing(t *testing.T) {
	prog, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip("needs /bin/sleep")
	}
	dir := t.TempDir()
	mk := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, prog, 0o755); err != nil {
			t.Fatal(err)
		}
		if size > 0 {
			if err := os.Truncate(p, size); err != nil {
				t.Skipf("cannot make a sparse file: %v", err)
			}
		}
		return p
	}
	run := func(path string) int32 {
		cmd := exec.Command(path, "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return int32(cmd.Process.Pid)
	}
	h := &exeHashes{done: map[hashKey]string{}, pending: map[hashKey]bool{}, sem: make(chan struct{}, maxHashing)}
	key := func(pid int32) hashKey {
		t.Helper()
		d, err := openProcDir(pid)
		if err != nil {
			t.Fatal(err)
		}
		defer d.close()
		k, err := d.exeHashKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	// The hostile user's two programs, 64 GiB each (holes).
	for _, name := range []string{"huge1", "huge2"} {
		pid := run(mk(name, 64<<30))
		h.lookup(key(pid), pid)
	}
	time.Sleep(200 * time.Millisecond)
	// Another user's program, a normal size.
	pid := run(mk("small", 0))
	k := key(pid)
	deadline := time.Now().Add(5 * time.Second)
	for h.lookup(k, pid) == "" {
		if time.Now().After(deadline) {
			t.Fatalf("a %d-byte executable was not hashed within 5 s while two 64 GiB (sparse) ones of another user were", len(prog))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
