package mountinfo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStackedHostOverlayTrusted: an overlay root made in the daemon's namespace
// over layers on trusted file systems stays trusted (review 44's fix refuses
// only overlays over FUSE or network layers, or a user namespace's).
func TestStackedHostOverlayTrusted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount overlay")
	}
	lower, upper, work, merged := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(lower, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Skipf("mount overlay: %v", err)
	}
	defer unix.Unmount(merged, unix.MNT_DETACH)
	fd, err := Open(unix.AT_FDCWD, filepath.Join(merged, "f"))
	if err != nil {
		t.Fatalf("Open through a host overlay over trusted layers: %v", err)
	}
	typ, err := FSType(fd)
	unix.Close(fd)
	if err != nil || typ != "overlay" {
		t.Errorf("FSType of a file on a host overlay over trusted layers: %q, %v; want \"overlay\"", typ, err)
	}
}

func TestOverlayLayers(t *testing.T) {
	got := overlayLayers(`rw,lowerdir=/a:/b\072c::/d,upperdir=/u\040x,workdir=/w,redirect_dir=on`)
	want := "/a|/b:c|/d|/u x|/w"
	if strings.Join(got, "|") != want {
		t.Errorf("overlayLayers: %q, want %q", strings.Join(got, "|"), want)
	}
	if overlayLayers(`lowerdir=/a\9`) != nil {
		t.Error("a bad escape read as a path")
	}
}

// TestStackedOverlaySymlinkLayersTrusted: Docker's overlay2 (and
// containers/storage) name lower layers l/SHORTID, symbolic links to
// ../ID/diff; an overlay root made over such links to directories on a trusted
// file system (here a tmpfs) is still trusted, "overlay", where the layer check
// refused every symbolic link before (ELOOP: Docker's programs unverified).
func TestStackedOverlaySymlinkLayersTrusted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs and overlay")
	}
	base := t.TempDir()
	if err := unix.Mount("tmpfs", base, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(base, unix.MNT_DETACH)
	for _, d := range []string{"l", "id1/diff", "id2/diff", "up", "work", "merged", "abs"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(base, "id1/diff/f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// l/A: relative, as Docker's; l/B: absolute, through another link (abs/x).
	if err := os.Symlink("../id1/diff", filepath.Join(base, "l/A")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "abs/x"), filepath.Join(base, "l/B")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../id2", filepath.Join(base, "abs/x")); err != nil {
		t.Fatal(err)
	}
	merged := filepath.Join(base, "merged")
	opts := "lowerdir=" + filepath.Join(base, "l/A") + ":" + filepath.Join(base, "l/B/diff") +
		",upperdir=" + filepath.Join(base, "up") + ",workdir=" + filepath.Join(base, "work")
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("mount overlay (%s): %v", opts, err)
	}
	defer unix.Unmount(merged, unix.MNT_DETACH)
	fd, err := Open(unix.AT_FDCWD, filepath.Join(merged, "f"))
	if err != nil {
		t.Fatalf("Open through a host overlay over symbolic-link layers: %v", err)
	}
	typ, err := FSType(fd)
	unix.Close(fd)
	if err != nil || typ != "overlay" {
		t.Errorf("FSType of a file on a host overlay whose layers are symbolic links to a tmpfs: %q, %v; want \"overlay\"", typ, err)
	}
}

// TestOpenLayerLinks: openLayer follows relative and absolute links, lexically,
// bounded (a loop is an error, not a hang), and refuses relative layer paths;
// Open itself still refuses the links.
func TestOpenLayerLinks(t *testing.T) {
	base := t.TempDir()
	if err := os.MkdirAll(filepath.Join(base, "a/b/x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"rel": "a/b", "abs": filepath.Join(base, "a"), "up": "a/../a/b/../b",
		"loop": "loop", "chain": "rel",
	} {
		if err := os.Symlink(target, filepath.Join(base, link)); err != nil {
			t.Fatal(err)
		}
	}
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	want := inode(t, mustOpen(t, filepath.Join(base, "a/b")))
	for _, p := range []string{"rel", "abs/b", "up", "chain", "a/b"} {
		fd, err := openLayer(root, filepath.Join(base, p), 1)
		if err != nil {
			t.Errorf("openLayer(%s): %v", p, err)
			continue
		}
		if got := inode(t, fd); got != want {
			t.Errorf("openLayer(%s): inode %d, want %d (a/b)", p, got, want)
		}
		unix.Close(fd)
	}
	for _, p := range []string{filepath.Join(base, "loop"), filepath.Join(base, "missing"), "relative/path"} {
		if fd, err := openLayer(root, p, 1); err == nil {
			unix.Close(fd)
			t.Errorf("openLayer(%s) succeeded, want an error", p)
		}
	}
	if fd, err := Open(unix.AT_FDCWD, filepath.Join(base, "rel/x")); err == nil {
		unix.Close(fd)
		t.Errorf("Open follows a symbolic link, want ELOOP")
	}
	if fd, err := Open(unix.AT_FDCWD, filepath.Join(base, "rel")); err == nil {
		if inode(t, fd) == want {
			t.Errorf("Open follows a trailing symbolic link, want the link itself")
		}
		unix.Close(fd)
	}
}

func mustOpen(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}
