//go:build unix

package store

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHistoryFilesMadePrivateAtOpen: a history an older latch left readable by all
// (history.db, -wal and -shm mode 0644) is made 0600 when it is opened again.
func TestHistoryFilesMadePrivateAtOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, HistoryFileName)
	h, err := OpenHistory(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Record(testConn(1)); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	files := []string{path, path + "-wal", path + "-shm"}
	for _, p := range files {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// As an older latch would leave them, while the history is open.
	h.Close()
	for _, p := range files {
		os.Chmod(p, 0o644) // the ones Close kept
	}
	h, err = OpenHistory(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Record(testConn(2)); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	for _, p := range files {
		fi, err := os.Stat(p)
		if err != nil {
			continue // SQLite removed it at close and has not made it again
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %04o after reopening, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("history.db: %v %v", fi.Mode(), err)
	}
}
