package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"syscall"
)

// privateHistoryFiles makes the history database at path and its -wal and -shm files
// readable by their owner only, before SQLite opens them. The database is created
// empty with mode 0600 if missing (SQLite takes an empty file as a new database), and
// SQLite's unix VFS creates the -wal and -shm files with the database file's mode;
// files left by an older latch with group or other access are chmod'ed. The history
// holds every user's connections, command lines and host names, and --state-dir may
// name a directory others may enter.
func privateHistoryFiles(path string) error {
	if runtime.GOOS == "windows" {
		return nil // the state directory's ACL protects it
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return nil // SQLite meets the full disk too and says so (the history waits for room)
	case err != nil:
		return fmt.Errorf("history %s: %w", path, err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("history %s: %w", p, err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			if err := os.Chmod(p, perm&^0o077); err != nil {
				return fmt.Errorf("history %s: making it private (mode %04o): %w", p, perm, err)
			}
		}
	}
	return nil
}
