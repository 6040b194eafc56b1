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
