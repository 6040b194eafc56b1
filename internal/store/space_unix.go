//go:build !windows

package store

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// diskSpace returns the bytes free to an unprivileged writer and the size of the
// file system holding dir.
func diskSpace(dir string) (free, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}
