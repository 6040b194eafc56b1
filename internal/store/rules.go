// Package store keeps latch's state on disk: the rules file, written atomically so a
// crash at any moment leaves either the old or the new rule set, with room kept for it
// by a reserve file; the connection history in SQLite, bounded, written in batches off
// the decision path, and stopped at a free-space floor so it never takes the rules'
// room; and the lock that keeps two daemons from sharing one state directory.
package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/latchfw/latch/internal/engine"
)

// RulesFileName is the name of the rules file inside the state directory.
const RulesFileName = "rules.json"

// SaveRules writes rules to path atomically: the new content goes to a temporary file
// in the same directory, is flushed to disk, renamed over path, and the directory entry
// is flushed too. A crash at any moment leaves either the old file or the new one,
// never a partial one. The file is readable by its owner only.
func SaveRules(path string, rules []engine.Rule) error {
	data := engine.MarshalRules(rules)
	if err := WriteFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("saving rules: %w", err)
	}
	return nil
}

// LoadRules reads and strictly parses the rules file at path. A missing file is an
// empty rule set. A malformed file is an error naming the file and the offending rule
// and field; the file is left as it is.
func LoadRules(path string) ([]engine.Rule, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading rules: %w", err)
	}
	rules, err := engine.ParseRules(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rules, nil
}

// WriteFileAtomic replaces path with data so that readers, and the file system after
// a crash, see either the old content or the new, never a mix.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err = tmp.Chmod(perm); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("writing %s: flushing %s: %w", path, tmpName, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = syncDir(dir); err != nil {
		return fmt.Errorf("writing %s: flushing directory: %w", path, err)
	}
	return nil
}

// RemoveStaleTemps deletes temporary files a crashed writer left next to path. Call it
// only while no other process may be writing path (the daemon does, under its lock).
func RemoveStaleTemps(path string) error {
	matches, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	if err != nil {
		return err
	}
	for _, m := range matches {
		if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
