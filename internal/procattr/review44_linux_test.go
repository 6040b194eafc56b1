package procattr

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/mountinfo"
)

// review44OverlayOnFUSE mounts miniFUSE at a temporary directory and an
// overlayfs at another whose upper lower layer is that FUSE mount (an empty
// directory below it: overlay without an upper layer wants two). It returns the
// FUSE server and the overlay's path to "prog".
//
// An unprivileged user does the same with `unshare -Urm` (overlayfs is mountable
// in a user namespace since Linux 5.11, FUSE too, or a fusermount3 mount of theirs
// as the lower layer): the process's executable is then on a mount whose type is
// "overlay", and every read and stat of it is passed to the FUSE server.
func review44OverlayOnFUSE(t *testing.T, prog []byte) (*miniFUSE, string) {
	t.Helper()
	fuseDir, empty, merged := t.TempDir(), t.TempDir(), t.TempDir()
	fs := review39Mount(t, fuseDir, prog)
	opts := fmt.Sprintf("lowerdir=%s:%s", fuseDir, empty)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("mount overlay over FUSE (%s): %v", opts, err)
	}
	t.Cleanup(func() {
		fs.stall.Store(false)
		fs.unstall()
		unix.Unmount(merged, unix.MNT_DETACH)
	})
	return fs, filepath.Join(merged, "prog")
}

// TestReview44OverlayOverFUSEVerified (review 44, finding 1, high: review 37's
// fail-open, and its stall, through an overlay): mountinfo.Untrusted, which
// exeFS and every mount check of the review 43 fixes rely on, names FUSE (by
// statmount's FS_TYPE "fuse"/"fuseblk", any subtype) and the network file
// systems, but not a stacking file system over them. An overlayfs whose lower
// layer is a FUSE mount is type "overlay", trusted: readEntry attributes the
// program as *verified* (an empty note), so exact-path app rules match a file
// whose bytes and attributes the user's FUSE server chooses, and the daemon
// stats, opens and reads it through overlay, i.e. asks the FUSE server (the
// stall of review 37 is one unanswered request away; this test stalls only
// GETATTR, which readEntry happened not to send here). The repository's own
// review 37 comment already suggested "overlay over them".
//
// Fails on the current code: the program is attributed verified, with no note
// (and exeFS says "overlay", trusted).
//
// Suggested: for an overlay mount, tell the lower and upper layers' file systems
// too (statmount STATMOUNT_MNT_OPTS gives lowerdir/upperdir paths, not mounts, so
// a path walk is no answer); simplest safe answer: treat "overlay" (and other
// stacking types: ecryptfs, shiftfs) mounted in a namespace other than the host's
// as Untrusted, or any overlay the daemon did not find at start.
//
// Run: go test -count=1 -run TestReview44OverlayOverFUSEVerified ./internal/procattr/ (as root)
func TestReview44OverlayOverFUSEVerified(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE and overlay")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	fs, prog := review44OverlayOnFUSE(t, orig)
	cmd := startOnFUSE(t, prog)
	d, err := openProcDir(int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	if typ, err := d.exeFS(); err != nil || mountinfo.Untrusted(typ) {
		t.Logf("exeFS: %q, %v (already untrusted)", typ, err)
	} else {
		t.Logf("exeFS of a program on overlay over FUSE: %q, trusted", typ)
	}
	fs.stall.Store(true)
	var e *procEntry
	if !review39Returns(t, fs, func() { e, err = readEntry(d) }) {
		t.Errorf("attribution of a process whose executable is on an overlay over a FUSE mount that does not answer GETATTR has not returned after 3 s: a queue reader would be stuck")
		return
	}
	if err == nil && (e.ident.status == engine.IdentityVerified || !strings.Contains(e.ident.note, "FUSE")) {
		t.Errorf("a program on overlay over FUSE attributed as %q, %v (%q): want unverified with a note that says FUSE", e.exe, e.ident.status, e.ident.note)
	}
}

// TestReview44OverlayOverFUSEHashesServerBytes (review 44, finding 1, the
// fail-open half): with the server answering, a program on an overlay over FUSE
// gets a hash of the bytes the FUSE server chose to serve the daemon's own open
// (review 37: the server may serve other bytes to the next exec under the same
// attributes), i.e. it is hashable where a program on the FUSE mount itself is
// not.
//
// Fails on the current code: exeHashKey gives the file no "unhashable" note.
//
// Run: go test -count=1 -run TestReview44OverlayOverFUSEHashesServerBytes ./internal/procattr/ (as root)
func TestReview44OverlayOverFUSEHashesServerBytes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE and overlay")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	_, prog := review44OverlayOnFUSE(t, orig)
	cmd := startOnFUSE(t, prog)
	d, err := openProcDir(int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	done := make(chan struct{})
	var k hashKey
	go func() { k, err = d.exeHashKey(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("exeHashKey did not return within 5 s")
	}
	if err != nil {
		t.Fatalf("exeHashKey: %v", err)
	}
	if hashes.note(k) == "" {
		t.Errorf("a program on overlay over a user's FUSE mount is hashable (no note): its bytes are whatever the FUSE server serves the daemon; want it unhashable as on the FUSE mount itself")
	}
}

// TestReview44OverlayOverFUSEKeepsHashForNewBytes (review 44, finding 1, the
// whole review 37 attack through an overlay, which an unprivileged user can
// mount in `unshare -Urm` over their own FUSE mount): the first program's bytes
// are hashed, the FUSE server then serves other bytes of the same size under the
// same attributes; overlay passes its lower layer's inode number and times
// through, the key is the same, and the second program gets the first one's
// hash: a rule pinned to that hash matches whatever the user's server serves.
//
// Fails on the current code: the second program gets the first program's hash.
//
// Run: go test -count=1 -run TestReview44OverlayOverFUSEKeepsHashForNewBytes ./internal/procattr/ (as root)
func TestReview44OverlayOverFUSEKeepsHashForNewBytes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE and overlay")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	fs, prog := review44OverlayOnFUSE(t, orig)
	hashOf := func(pid int) (hashKey, string) {
		d, err := openProcDir(int32(pid))
		if err != nil {
			t.Fatal(err)
		}
		defer d.close()
		k, err := d.exeHashKey()
		if err != nil {
			t.Fatal(err)
		}
		if hashes.note(k) != "" {
			return k, hashes.lookup(k, int32(pid))
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if s := hashes.lookup(k, int32(pid)); s != "" {
				return k, s
			}
		}
		return k, ""
	}
	p1 := startOnFUSE(t, prog)
	k1, h1 := hashOf(p1.Process.Pid)
	p1.Process.Kill()
	p1.Wait()

	other := bytes.Clone(orig)
	other[len(other)-1] ^= 0xff
	fs.data.Store(&other)
	osum := sha256.Sum256(other)
	p2 := startOnFUSE(t, prog)
	k2, h2 := hashOf(p2.Process.Pid)
	exe, err := readAll(unix.AT_FDCWD, fmt.Sprintf("/proc/%d/exe", p2.Process.Pid))
	if err != nil || !bytes.Equal(exe, other) {
		t.Fatalf("the second program's file does not hold the new bytes (%v): the overlay kept the old ones", err)
	}
	t.Logf("keys equal: %v; hashes %q, %q", k1 == k2, h1, h2)
	if h1 != "" && h2 == h1 {
		t.Fatalf("a program on overlay over FUSE whose bytes hash to %x got the hash %s of the bytes the file held before: a rule pinned to that hash matches it", osum, h1)
	}
	if h1 != "" || h2 != "" {
		t.Errorf("programs on overlay over FUSE got hashes %q and %q: the FUSE server chooses the bytes latch reads and the attributes it keys them by", h1, h2)
	}
}

// TestReview44WalkThroughOverlayOverFUSE (review 44, finding 1 in the host's
// walks; low where only root can mount an overlay in the host's namespace, e.g.
// a tool that overlays a user's directory, or ecryptfs's setuid
// mount.ecryptfs_private over a user's FUSE directory, the same gap for another
// stacking type): mountinfo.Walk checks each component's mount type, finds
// "overlay", trusted, then fstats it, which overlay passes to its FUSE lower
// layer as a GETATTR (no AT_STATX_DONT_SYNC in fstat): a server that never
// answers holds the walker (fileperm's OpenTrusted, containername's Name)
// uninterruptibly.
//
// Fails on the current code: Walk has not returned after 3 s.
//
// Run: go test -count=1 -run TestReview44WalkThroughOverlayOverFUSE ./internal/procattr/ (as root)
func TestReview44WalkThroughOverlayOverFUSE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE and overlay")
	}
	fs, prog := review44OverlayOnFUSE(t, []byte("example.com\n"))
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	fs.stall.Store(true)
	var werr error
	if !review39Returns(t, fs, func() {
		var fd int
		if fd, werr = mountinfo.Walk(root, prog, nil); werr == nil {
			unix.Close(fd)
		}
	}) {
		t.Errorf("mountinfo.Walk(%s) through an overlay over a FUSE mount whose server does not answer GETATTR has not returned after 3 s", prog)
		return
	}
	if werr == nil {
		t.Errorf("mountinfo.Walk(%s) walked into an overlay over FUSE: want an *UntrustedError", prog)
	}
}
