//go:build unix

package fileperm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

func checkInfo(path string, st os.FileInfo) error {
	if st.Mode().Perm()&0o022 != 0 {
		return describe(path, st, "group or others may write it")
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		if s.Uid != 0 && int(s.Uid) != os.Geteuid() {
			return describe(path, st, fmt.Sprintf("owned by uid %d, neither root nor the user running latch", s.Uid))
		}
	}
	return nil
}

// maxLinks bounds the symbolic links followed on the way (as the kernel's 40).
const maxLinks = 40

func checkParents(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	links := 0
	return walkParents(path, filepath.Dir(abs), &links)
}

// walkParents checks dir and every directory above it, from / down, as lstat sees
// each entry of the path; for a symbolic link, its target's directories too.
func walkParents(orig, dir string, links *int) error {
	parts := strings.Split(strings.TrimPrefix(filepath.Clean(dir), "/"), "/")
	p := "/"
	for i := -1; i < len(parts); i++ {
		if i >= 0 {
			if parts[i] == "" {
				continue
			}
			p = filepath.Join(p, parts[i])
		}
		st, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil // nobody but the owners of the directories above may create it
		}
		if err != nil {
			return fmt.Errorf("%s: checking %s: %w", orig, p, err)
		}
		uid := -1
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			uid = int(s.Uid)
		}
		trustedOwner := uid == 0 || uid == os.Geteuid()
		if !trustedOwner {
			return parentError(orig, p, st, fmt.Sprintf("owned by uid %d, neither root nor the user running latch", uid))
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			if *links++; *links > maxLinks {
				return fmt.Errorf("%s: more than %d symbolic links on the way", orig, maxLinks)
			}
			target, err := filepath.EvalSymlinks(p)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: checking %s: %w", orig, p, err)
			}
			// The target and the directories above it.
			if err := walkParents(orig, target, links); err != nil {
				return err
			}
			continue
		}
		if st.Mode().Perm()&0o022 != 0 && (st.Mode()&fs.ModeSticky == 0 || uid != 0) {
			return parentError(orig, p, st, "group or others may write it")
		}
	}
	return nil
}

func parentError(orig, dir string, st os.FileInfo, why string) error {
	return fmt.Errorf("%s: directory %s above it (mode %04o): %s, so they may rename or replace what is below; refusing it, as it steers the firewall (chown root and chmod go-w it)", orig, dir, st.Mode().Perm(), why)
}
