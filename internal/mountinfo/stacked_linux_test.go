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
