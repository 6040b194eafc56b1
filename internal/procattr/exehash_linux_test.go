//go:build linux

package procattr

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func newExeHashes() *exeHashes {
	return &exeHashes{done: map[hashKey]string{}, pending: map[hashKey]bool{}, sem: make(chan struct{}, maxHashing)}
}

// startExe runs path 60 as uid (0: as the test), killed at the test's end.
func startExe(t *testing.T, path string, uid uint32, attr *syscall.SysProcAttr) (int32, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(path, "60")
	if attr != nil {
		cmd.SysProcAttr = attr
	} else if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s as uid %d: %v", path, uid, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return int32(cmd.Process.Pid), cmd
}

func exeKey(t *testing.T, pid int32) hashKey {
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

// openTempDir is a temporary directory other users can run programs from.
func openTempDir(t *testing.T) string {
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	return dir
}

// TestExeHashFairPerUser: one user's programs (many large ones) take at most one of
// the two hashing slots, so another user's program is hashed at once rather than
// after them.
func TestExeHashFairPerUser(t *testing.T) {
	prog, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip("needs /bin/sleep")
	}
	dir := openTempDir(t)
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
	var big []string
	for _, n := range []string{"a1", "a2", "a3"} {
		big = append(big, mk(n, 256<<20))
	}
	small := mk("b", 0)
	time.Sleep(hashRacyMargin + 100*time.Millisecond) // files changed just now are not cached
	h := newExeHashes()
	var bigKeys []hashKey
	for _, p := range big {
		pid, _ := startExe(t, p, 61001, nil)
		k := exeKey(t, pid)
		bigKeys = append(bigKeys, k)
		h.lookup(k, pid)
	}
	pid, _ := startExe(t, small, 61002, nil)
	k := exeKey(t, pid)
	deadline := time.Now().Add(20 * time.Second)
	for h.lookup(k, pid) == "" {
		if time.Now().After(deadline) {
			t.Fatal("uid 61002's program was not hashed within 20 s while uid 61001's three 256 MiB ones were queued")
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.mu.Lock()
	n := 0
	for _, bk := range bigKeys {
		if h.done[bk] != "" {
			n++
		}
	}
	h.mu.Unlock()
	if n > 0 {
		t.Fatalf("uid 61002's program was hashed only after %d of uid 61001's, which should hold one of the two slots at a time", n)
	}
}

// TestExeHashOverCapNeverMatches: a file over maxHashBytes is never hashed, so it has
// no hash (a pinned rule never matches), and is not read (it is known at once).
func TestExeHashOverCapNeverMatches(t *testing.T) {
	p := filepath.Join(t.TempDir(), "huge")
	prog, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip("needs /bin/sleep")
	}
	os.WriteFile(p, prog, 0o755)
	if err := os.Truncate(p, maxHashBytes+1); err != nil {
		t.Skipf("cannot make a sparse file: %v", err)
	}
	h := newExeHashes()
	pid, _ := startExe(t, p, 0, nil)
	k := exeKey(t, pid)
	if s := h.lookup(k, pid); s != "" {
		t.Fatalf("hash of a file over the cap: %q", s)
	}
	h.mu.Lock()
	s, ok := h.done[k]
	pending := h.pending[k]
	h.mu.Unlock()
	if !ok || s != "" || pending {
		t.Fatalf("a file over the cap is not known as unhashable at once: cached %v %q, pending %v", ok, s, pending)
	}
	if n := h.note(k); n != fmt.Sprintf("%d bytes, over the %d latch hashes", maxHashBytes+1, maxHashBytes) {
		t.Fatalf("note of a file over the cap: %q", n)
	}
}

// TestExeHashCacheEvictsOne: a full cache evicts one entry, not all; one account
// filling its share evicts its own entries, not others'.
func TestExeHashCacheEvictsOne(t *testing.T) {
	h := newExeHashes()
	key := func(i int) hashKey { return hashKey{dev: 1, ino: uint64(i + 1), size: 10} }
	for i := range maxHashedExes {
		h.store(key(i), "sum", uint32(i%8))
	}
	h.store(key(maxHashedExes), "sum", 99)
	n := 0
	for i := range maxHashedExes + 1 {
		if h.lookup(key(i), 1) == "sum" {
			n++
		}
	}
	if n != maxHashedExes || h.lookup(key(maxHashedExes), 1) != "sum" {
		t.Fatalf("a full cache of %d holds %d after one more (the new one: %v)", maxHashedExes, n, h.lookup(key(maxHashedExes), 1) != "")
	}

	h = newExeHashes()
	for i := range 100 {
		h.store(key(i), "victim", uint32(i%4))
	}
	for i := range 3 * maxHashedPerAcct {
		h.store(key(1000+i), "flood", 7)
	}
	for i := range 100 {
		if h.done[key(i)] != "victim" {
			t.Fatalf("account 7 storing %d hashes evicted another account's entry %d", 3*maxHashedPerAcct, i)
		}
	}
	if h.perAcct[7] != maxHashedPerAcct {
		t.Fatalf("account 7 holds %d entries, want its share %d", h.perAcct[7], maxHashedPerAcct)
	}
}

// TestExeHashRewrittenInPlace: a program rewritten in place (same size, mtime set
// back) is hashed anew, even within the same second on a file system whose times
// have whole seconds (ext4 with 128-byte inodes), where the rewrite keeps every
// field of the key: the old hash must not be given to the new bytes.
func TestExeHashRewrittenInPlace(t *testing.T) {
	prog, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip("needs /bin/sleep")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4")
	}
	tmp := t.TempDir()
	img, mnt := filepath.Join(tmp, "img"), filepath.Join(tmp, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-I", "128", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	p := filepath.Join(mnt, "prog")
	if err := os.WriteFile(p, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	patched := append([]byte(nil), prog...)
	patched[len(patched)-1] ^= 0xff // a byte of the section headers' area: still runs
	sum := sha256.Sum256(patched)
	want := hex.EncodeToString(sum[:])

	for attempt := 0; ; attempt++ {
		// Start just after a second begins so that all happens within it.
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
		os.WriteFile(p, prog, 0o755)
		st0, _ := os.Stat(p)
		h := newExeHashes()
		pid, cmd := startExe(t, p, 0, nil)
		k1 := exeKey(t, pid)
		for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end) && h.lookup(k1, pid) == ""; {
			time.Sleep(5 * time.Millisecond)
		}
		cmd.Process.Kill()
		cmd.Wait()
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt(patched[len(patched)-1:], int64(len(patched)-1))
		f.Close()
		os.Chtimes(p, st0.ModTime(), st0.ModTime())
		pid, _ = startExe(t, p, 0, nil)
		k2 := exeKey(t, pid)
		if k2 != k1 {
			if attempt < 3 {
				continue // the second ended meanwhile
			}
			t.Skip("could not rewrite the file within the second it was written")
		}
		deadline := time.Now().Add(3*hashRacyMargin + 2*time.Second)
		for {
			s := h.lookup(k2, pid)
			if s == want {
				return
			}
			if s != "" {
				t.Fatalf("the rewritten program has the hash of its old bytes (%s), not %s", s, want)
			}
			if time.Now().After(deadline) {
				t.Fatal("the rewritten program was never hashed")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestHashAccountUserNamespace: a process in a user namespace is charged to the uid
// that made the namespace, not to its (subordinate) host uid.
func TestHashAccountUserNamespace(t *testing.T) {
	pid, _ := startExe(t, "/bin/sleep", 0, &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 1}},
	})
	if a := hashAccount(pid); a != uint32(os.Getuid()) {
		t.Fatalf("a process of host uid 200000 in a user namespace root made is charged to uid %d, want %d", a, os.Getuid())
	}
	pid, _ = startExe(t, "/bin/sleep", 61003, nil)
	if a := hashAccount(pid); a != 61003 {
		t.Fatalf("a process of uid 61003 is charged to uid %d", a)
	}
}
