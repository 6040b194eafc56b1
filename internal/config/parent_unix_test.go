//go:build unix

package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestApplyFileRefusesUntrustedParent (review 34, as for the managed rules): the
// configuration file is root's and 0644, but a directory above it belongs to another
// user, who may rename the directory with the file away and put one with their own
// latch.toml ("fail = open") in its place. The file is refused, and no flag is set.
func TestApplyFileRefusesUntrustedParent(t *testing.T) {
	base := t.TempDir()
	os.Chmod(base, 0o755)
	parent := filepath.Join(base, "etc")
	dir := filepath.Join(parent, "latch")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "latch.toml")
	if err := os.WriteFile(p, []byte("inbound = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newTestFlags()
	if _, err := ApplyFile(f.fs, p, nil); err != nil || !*f.inbound {
		t.Fatalf("below trusted directories: %v, inbound %v", err, *f.inbound)
	}
	// A group others are in may write the parent.
	os.Chmod(parent, 0o775)
	f = newTestFlags()
	if _, err := ApplyFile(f.fs, p, nil); err == nil || !strings.Contains(err.Error(), parent) || *f.inbound {
		t.Errorf("group-writable parent: %v, inbound %v; want it refused, naming %s", err, *f.inbound, parent)
	}
	os.Chmod(parent, 0o755)
	if os.Geteuid() != 0 {
		return
	}
	if err := os.Chown(parent, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	f = newTestFlags()
	if _, err := ApplyFile(f.fs, p, nil); err == nil || !strings.Contains(err.Error(), "uid 65534") || *f.inbound {
		t.Errorf("parent owned by uid 65534: %v, inbound %v; want it refused", err, *f.inbound)
	}
}
