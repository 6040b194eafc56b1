//go:build linux

package managed

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReview34ParentWritableRefused (review 34, low: needs a badly set up parent):
// the managed rules' directory and each file are checked (fileperm, "as sshd's
// StrictModes does"), but not the directories above it. Whoever may write the parent
// (here it belongs to uid 65534) may rename rules.d away, which Load takes as "no
// managed rules" without an error, or put a link in its place to another root-owned
// directory: the administrator's managed deny rules are gone. StrictModes checks every
// directory up to the root; Load must refuse a rules directory below one another user
// may change.
func TestReview34ParentWritableRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the parent to another user")
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	parent := filepath.Join(base, "etc-latch")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(parent, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "rules.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "10-corp.json", `{"version": 1, "rules": [{"remote": "198.18.0.0/15", "action": "deny"}]}`)
	rules, err := Load(dir)
	if err == nil {
		t.Errorf("Load of a rules directory whose parent uid 65534 owns: %d rules, no error; want it refused", len(rules))
	}
	// What uid 65534 may do there: move rules.d away. The managed rules are gone,
	// silently.
	os.Rename(dir, dir+".away")
	if rules, err := Load(dir); err == nil && len(rules) == 0 {
		t.Logf("after the owner of the parent renamed rules.d: %d rules, no error", len(rules))
	}
}
