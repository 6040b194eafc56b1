//go:build unix

package fileperm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckTrusted(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "latch.toml")
	os.WriteFile(p, []byte("x"), 0o644)
	if err := CheckTrusted(p); err != nil {
		t.Fatalf("0644, owned by us: %v", err)
	}
	for _, mode := range []os.FileMode{0o666, 0o646, 0o664} {
		os.Chmod(p, mode)
		if err := CheckTrusted(p); err == nil || !strings.Contains(err.Error(), "may write") {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	os.Chmod(p, 0o644)
	if os.Geteuid() == 0 {
		os.Chown(p, 65534, 65534)
		if err := CheckTrusted(p); err == nil || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("owned by nobody: %v", err)
		}
	}
	if err := CheckTrusted(filepath.Join(dir, "none")); !os.IsNotExist(err) {
		t.Errorf("missing: %v", err)
	}
}

// TestCheckParents: every directory above a trusted file counts (review 34): one that
// another user owns or may write lets them rename the file's directory away or put
// another in its place. A sticky directory of root's (/tmp) is fine; a symbolic link
// on the way is checked, and its target's directories.
func TestCheckParents(t *testing.T) {
	base := t.TempDir() // below /tmp: sticky and root's
	os.Chmod(base, 0o755)
	mk := func(parts ...string) string {
		p := filepath.Join(append([]string{base}, parts...)...)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := mk("etc", "latch")
	if err := CheckParents(filepath.Join(good, "latch.toml")); err != nil {
		t.Errorf("below root's 0755 directories: %v", err)
	}
	if err := CheckParents(filepath.Join(good, "missing", "rules.d", "x.json")); err != nil {
		t.Errorf("missing directories below trusted ones: %v", err)
	}
	if err := CheckParents("relative-file"); err != nil {
		t.Errorf("relative path in the working directory: %v", err)
	}
	gw := mk("gw", "latch")
	os.Chmod(filepath.Dir(gw), 0o775)
	if err := CheckParents(filepath.Join(gw, "latch.toml")); err == nil || !strings.Contains(err.Error(), "group or others may write") {
		t.Errorf("group-writable grandparent: %v", err)
	}
	ow := mk("ow")
	os.Chmod(ow, 0o757)
	if err := CheckParents(filepath.Join(ow, "rules.d", "x.json")); err == nil {
		t.Error("other-writable parent of a missing directory: no error")
	}
	if os.Geteuid() != 0 {
		return
	}
	nobody := mk("nobody", "latch")
	os.Chown(filepath.Dir(nobody), 65534, 65534)
	if err := CheckParents(filepath.Join(nobody, "latch.toml")); err == nil || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("grandparent owned by uid 65534: %v", err)
	}
	// A sticky directory another user owns: they may rename anything in it.
	sticky := mk("sticky", "latch")
	os.Chmod(filepath.Dir(sticky), 0o777|os.ModeSticky)
	if err := CheckParents(filepath.Join(sticky, "latch.toml")); err != nil {
		t.Errorf("sticky 1777 directory of root's: %v", err)
	}
	os.Chown(filepath.Dir(sticky), 65534, 65534)
	if err := CheckParents(filepath.Join(sticky, "latch.toml")); err == nil {
		t.Error("sticky directory owned by uid 65534: no error")
	}
	// A link of uid 65534's in root's sticky directory: they may point it elsewhere.
	os.Chown(filepath.Dir(sticky), 0, 0)
	link := filepath.Join(filepath.Dir(sticky), "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	os.Lchown(link, 65534, 65534)
	if err := CheckParents(filepath.Join(link, "latch.toml")); err == nil || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("symbolic link owned by uid 65534: %v", err)
	}
	// root's link to a directory below one of uid 65534's.
	os.Lchown(link, 0, 0)
	if err := CheckParents(filepath.Join(link, "latch.toml")); err != nil {
		t.Errorf("root's link to a trusted directory: %v", err)
	}
	link2 := filepath.Join(good, "link2")
	if err := os.Symlink(nobody, link2); err != nil {
		t.Fatal(err)
	}
	if err := CheckParents(filepath.Join(link2, "latch.toml")); err == nil || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("root's link to a directory below uid 65534's: %v", err)
	}
}
