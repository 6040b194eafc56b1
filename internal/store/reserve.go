package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/latchfw/latch/internal/engine"
)

// ReserveFileName is the file in the state directory that keeps room for the rules
// file: it is allocated before the history is opened, and given up only to save rules
// on a full disk.
const ReserveFileName = "rules.reserve"

// MinReserve is the smallest reserve: room for a rules file of a few dozen rules
// written next to the old one.
const MinReserve = 16 << 10

// ReserveSize is the reserve a rules file of rulesSize bytes needs: a new file of the
// same size and more is written next to it before the old one goes, so twice its size
// and a block, at least MinReserve, in whole 4 KiB blocks.
func ReserveSize(rulesSize int64) int64 {
	n := max(MinReserve, 2*rulesSize+4096)
	return (n + 4095) &^ 4095
}

// Reserve keeps room for the rules file on the state directory's file system, so
// that rules can always be saved, even after the history or anything else filled
// the disk. It is a file of zeros, really allocated (written, not sparse), that
// SaveRules deletes when a save fails, before trying again, and then allocates again.
type Reserve struct {
	path string

	mu      sync.Mutex
	size    int64 // allocated now; 0 while released
	want    int64
	lastErr string
}

// ReserveStats is what status shows of the reserve.
type ReserveStats struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`  // bytes held now; 0: none
	Want  int64  `json:"want"`  // bytes it should hold
	Error string `json:"error"` // why it holds less than it should, or ""
}

// OpenReserve allocates (or keeps, or grows) the reserve file of dir to size bytes.
// It always returns a usable Reserve; the error says why it holds less than size
// (no room: the disk was full before it existed), and SaveRules then works without
// it, as before.
func OpenReserve(dir string, size int64) (*Reserve, error) {
	r := &Reserve{path: filepath.Join(dir, ReserveFileName), want: size}
	if fi, err := os.Stat(r.path); err == nil {
		r.size = fi.Size()
	}
	if err := r.fill(); err != nil {
		return r, err
	}
	return r, nil
}

// fill grows the file to r.want, writing zeros so the file system allocates every
// block. A failure leaves the file at the size it could reach, which still counts.
// Called with r.mu held or before r is shared.
func (r *Reserve) fill() error {
	if r.size >= r.want {
		r.lastErr = ""
		return nil
	}
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return r.failed(err)
	}
	defer f.Close()
	// Block by block: a write larger than the room left may fail as a whole.
	zeros := make([]byte, 4096)
	off := r.size
	for off < r.want {
		n, err := f.WriteAt(zeros[:min(int64(len(zeros)), r.want-off)], off)
		off += int64(n)
		if err != nil {
			r.size = off
			f.Truncate(off)
			return r.failed(err)
		}
	}
	if err := f.Sync(); err != nil {
		r.size = off
		return r.failed(err)
	}
	r.size, r.lastErr = off, ""
	return nil
}

func (r *Reserve) failed(err error) error {
	err = fmt.Errorf("rules reserve %s: holds %d of %d bytes: %w", r.path, r.size, r.want, err)
	r.lastErr = err.Error()
	return err
}

// release deletes the reserve file, freeing its room. Called with r.mu held.
func (r *Reserve) release() {
	if err := os.Remove(r.path); err == nil || errors.Is(err, fs.ErrNotExist) {
		r.size = 0
	}
}

// SaveRules saves rules to path like the package's SaveRules. If that fails (a full
// disk) while the reserve holds room, the reserve is given up and the save tried
// again; then the reserve is allocated again, as far as the room left allows. After
// a save the reserve grows with the rules file.
func (r *Reserve) SaveRules(path string, rules []engine.Rule) error {
	data := engine.MarshalRules(rules)
	r.mu.Lock()
	defer r.mu.Unlock()
	err := WriteFileAtomic(path, data, 0o600)
	if err != nil && r.size > 0 {
		r.release()
		err = WriteFileAtomic(path, data, 0o600)
	}
	r.want = max(r.want, ReserveSize(int64(len(data))))
	r.fill() // its error is kept for Stats
	if err != nil {
		return fmt.Errorf("saving rules: %w", err)
	}
	return nil
}

// Stats returns the reserve's state.
func (r *Reserve) Stats() ReserveStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return ReserveStats{Path: r.path, Size: r.size, Want: r.want, Error: r.lastErr}
}
