//go:build unix

package store

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReview34HistoryFilesPrivate (review 34, low: needs a state directory others may
// enter): every file latch writes in the state directory is mode 0600 but the
// history, which SQLite created with its default 0644 (history.db, -wal, -shm). The
// state directory is 0700 when latch or the package creates it, but --state-dir may
// name an existing directory (mkdir'd 0755 by hand or by configuration management):
// then every local user could read every user's connections, command lines and
// host names. The history holds the most private data of all; it must be 0600 too.
func TestReview34HistoryFilesPrivate(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-state-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	h, err := OpenHistory(filepath.Join(dir, HistoryFileName), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Record(testConn(1)); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %04o in a 0755 state directory; other users may read it", e.Name(), fi.Mode().Perm())
		}
	}
}
