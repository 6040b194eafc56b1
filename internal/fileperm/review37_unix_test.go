//go:build unix

package fileperm

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReview37ChainedSymlinkUnchecked (review 37, low: needs a symbolic link chain
// an admin made): CheckParents checks a symbolic link on the way and the directories
// of its final target (filepath.EvalSymlinks), but not the links in between nor the
// directories holding them. /etc/latch (root's link) -> ~user/l (the user's link)
// -> /real passes; the user may then point l at any root-owned directory it likes,
// and the next load takes it: an empty one (/var/empty) for the managed rules
// directory drops the admin's managed deny rules at the next reload; for the config
// file another root-owned config.
//
// Fails on main: CheckParents returns nil.
//
// Fix: resolve one link at a time (os.Readlink), checking each link's owner and the
// directories holding it, as the kernel walks the path; or open the directory with
// openat2 RESOLVE_NO_SYMLINKS after resolving.
func TestReview37ChainedSymlinkUnchecked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	root := t.TempDir()
	os.Chmod(root, 0o755)
	real := filepath.Join(root, "real")
	os.Mkdir(real, 0o755)
	home := filepath.Join(root, "home")
	os.Mkdir(home, 0o755)
	os.Chown(home, 65534, 65534)
	userLink := filepath.Join(home, "l")
	if err := os.Symlink(real, userLink); err != nil {
		t.Fatal(err)
	}
	os.Lchown(userLink, 65534, 65534)
	etc := filepath.Join(root, "etc")
	os.Mkdir(etc, 0o755)
	if err := os.Symlink(userLink, filepath.Join(etc, "latch")); err != nil {
		t.Fatal(err)
	}
	if err := CheckParents(filepath.Join(etc, "latch", "config.toml")); err == nil {
		t.Fatalf("a path through root's link to a link of uid 65534 in its own directory passed CheckParents: that user may retarget it")
	}
}
