package procattr

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/containername"
)

// TestReview43ContainerNameThroughUserFUSE (review 43, finding 1, high: the
// stall review 39 fixed for program paths, by another walk the fix missed):
// procEntry.process looks the container name up at every resolution
// (containerNames.Name, synchronous, on the queue reader's thread), and for a
// user's own container ("docker@UID:ID", "podman@UID:ID": a label rootless
// containers choose themselves through their cgroup's name) containername
// reads that user's state file under their home
// (~/.local/share/docker/containers/ID/config.v2.json,
// ~/.local/share/containers/storage/…) with its own openTrusted: plain openat,
// fstat and open/read, no mountinfo check, no AT_STATX_DONT_SYNC. The user
// mounts a FUSE file system of theirs at ~/.local (fusermount3 on a directory
// they own, allow_other as review 37/39's model) and runs a process labelled
// as their container: the daemon's fstat of the FUSE root is a GETATTR to the
// user's server, which never answers. The queue reader waits uninterruptibly.
//
// Fails on the current code: Name has not returned after 3 s.
//
// Suggested: walk the runtime state paths with mountinfo.Open (or the same
// per-component O_PATH + mountinfo.FSType check fileperm.OpenTrusted got) and
// refuse FUSE/network mounts before any fstat or open; or look names up off
// the resolution path (a background refresh whose stall costs no verdict).
//
// Run: go test -count=1 -run TestReview43ContainerNameThroughUserFUSE ./internal/procattr/ (as root)
func TestReview43ContainerNameThroughUserFUSE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	const uid = 4243
	home := "/home/u"
	local := filepath.Join(root, home, ".local")
	if err := os.MkdirAll(local, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(root, home), uid, uid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(local, uid, uid); err != nil {
		t.Fatal(err)
	}
	fs := review39Mount(t, local, []byte("x")) // the user's FUSE mount over ~/.local
	r := containername.New(containername.Options{
		Root: root,
		Home: func(u uint32) (string, error) { return home, nil },
	})
	id := strings.Repeat("ab", 32)
	fs.stall.Store(true)
	if !review39Returns(t, fs, func() { r.Name("docker@4243:" + id) }) {
		t.Errorf("the container name of a user's own container (docker@%d:%s) has not been looked up after 3 s: the daemon walked the user's home through their FUSE mount at ~/.local (fstat: a GETATTR its server never answers); a queue reader would be stuck", uid, id)
	}
	fs.stall.Store(true)
	if !review39Returns(t, fs, func() { r.Name("podman@4243:" + id) }) {
		t.Errorf("the container name of a user's own podman container has not been looked up after 3 s: the daemon walked ~/.local/share/containers through the user's FUSE mount")
	}
}
