package procattr

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/mountinfo"
)

// TestReview44OverlaySymlinkLayerOnFUSE: the overlay layer check follows
// symbolic links (Docker's overlay2 names layers l/SHORTID, links to
// ../ID/diff), so a root-made overlay whose lower layer is a link (on a trusted
// file system) into a FUSE mount is "overlay over fuse", untrusted: its program
// is unverified with a note that says FUSE, and attributing it does not wait on
// the FUSE server (which stalls GETATTR here).
//
// Fails on the code before: a trailing link was opened as itself (O_PATH|
// O_NOFOLLOW) and taken for a layer on the link's (trusted) file system, so
// the overlay was trusted and the program verified.
//
// Run: go test -count=1 -run TestReview44OverlaySymlinkLayerOnFUSE ./internal/procattr/ (as root)
func TestReview44OverlaySymlinkLayerOnFUSE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE and overlay")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	fuseDir, links, empty, merged := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	fs := review39Mount(t, fuseDir, orig)
	// A relative link, as Docker's, through a second (absolute) one.
	if err := os.Symlink(fuseDir, filepath.Join(links, "abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("./abs", filepath.Join(links, "L")); err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("lowerdir=%s:%s", filepath.Join(links, "L"), empty)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("mount overlay over FUSE (%s): %v", opts, err)
	}
	t.Cleanup(func() {
		fs.stall.Store(false)
		fs.unstall()
		unix.Unmount(merged, unix.MNT_DETACH)
	})
	prog := filepath.Join(merged, "prog")
	cmd := startOnFUSE(t, prog)
	d, err := openProcDir(int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	fs.stall.Store(true)
	var typ string
	if !review39Returns(t, fs, func() { typ, err = d.exeFS() }) {
		t.Fatalf("exeFS of a program on an overlay whose layer links into a stalled FUSE mount has not returned after 3 s")
	}
	if err == nil && !mountinfo.Untrusted(typ) {
		t.Errorf("exeFS of a program on an overlay whose lower layer is a link into FUSE: %q, trusted; want untrusted", typ)
	}
	var e *procEntry
	if !review39Returns(t, fs, func() { e, err = readEntry(d) }) {
		t.Fatalf("attribution of a program on an overlay whose layer links into a stalled FUSE mount has not returned after 3 s")
	}
	if err == nil && (e.ident.status == engine.IdentityVerified || !strings.Contains(e.ident.note, "FUSE")) {
		t.Errorf("a program on overlay over a link into FUSE attributed as %q, %v (%q): want unverified with a note that says FUSE", e.exe, e.ident.status, e.ident.note)
	}
}
