//go:build unix

package blocklist

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestReview37MigrationFollowsMemberDirSymlink (review 37, low: needs a list a member
// added with an older latch): an older lists.json names the file a member of the API
// group gave; the daemon reads it once at start, refusing a symbolic link only as the
// last component (O_NOFOLLOW). The member owns the directories above it, so it
// replaces one of them by a symbolic link into a directory only root may read, whose
// file of the same name is then read by the daemon with root's rights and put in
// force: the member learns from its connections which names the root-only list
// holds (they are blocked), and from latch lists its count of domains or the number
// of its first bad line.
//
// Fails on main: the root-only list through the member's symlinked directory is
// loaded (1 domain, no error).
//
// Fix: do not read an older lists.json's files with root's rights: mark them "re-add
// with latch lists add" (the client reads them as the caller), or read one only if
// every user could (world-readable, every directory above searchable by all, and
// openat2 RESOLVE_NO_SYMLINKS or fileperm.CheckParents on its directory).
func TestReview37MigrationFollowsMemberDirSymlink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	state := t.TempDir()
	root := t.TempDir()
	os.Chmod(root, 0o755)
	// Root's private list.
	private := filepath.Join(root, "private")
	os.Mkdir(private, 0o700)
	os.WriteFile(filepath.Join(private, "list.txt"), []byte("secret-partner.example\n"), 0o600)
	// The member's directory: when the list was added (older latch) it held the
	// member's own list.txt; now d is a symbolic link to root's directory.
	member := filepath.Join(root, "member")
	os.Mkdir(member, 0o755)
	os.Chown(member, 65534, 65534)
	if err := os.Symlink(private, filepath.Join(member, "d")); err != nil {
		t.Fatal(err)
	}
	os.Lchown(filepath.Join(member, "d"), 65534, 65534)
	srcs := []Source{{"memberlist", filepath.Join(member, "d", "list.txt"), engine.Deny}}
	data, _ := json.Marshal(map[string]any{"version": 1, "lists": srcs})
	os.WriteFile(filepath.Join(state, FileName), data, 0o600)
	m, _ := openManager(t, state)
	ls := m.Lists()
	if len(ls) != 1 {
		t.Fatalf("lists: %+v", ls)
	}
	if ls[0].Error == "" || ls[0].Stats.Domains != 0 {
		t.Fatalf("a member's older list through its directory, a symbolic link to root's 0700 directory, was read with root's rights and is in force: %+v", ls[0])
	}
}
