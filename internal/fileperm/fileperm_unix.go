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
	return walkParents(path, filepath.Dir(abs))
}

// walkParents checks dir and every directory above it, from / down, as the kernel
// resolves the path: one component at a time, as lstat sees each entry. A symbolic
// link is followed one hop at a time (os.Readlink): each link on a chain must belong
// to a trusted user, and the directories holding it and those its target names are
// checked in turn, so a link in the middle of a chain that another user could
// retarget is refused too (review 37).
func walkParents(orig, dir string) error {
	todo := splitPath(filepath.Clean(dir))
	p := "/" // resolved so far: no symbolic link in it, every directory checked
	if err := checkDir(orig, p); err != nil {
		return err
	}
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			p = filepath.Dir(p) // p holds no link: ".." is its lexical parent
			continue
		}
		next := filepath.Join(p, name)
		st, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil // nobody but the owners of the directories above may create it
		}
		if err != nil {
			return fmt.Errorf("%s: checking %s: %w", orig, next, err)
		}
		if uid := ownerOf(st); uid != 0 && uid != os.Geteuid() {
			return parentError(orig, next, st, fmt.Sprintf("owned by uid %d, neither root nor the user running latch", uid))
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			if links++; links > maxLinks {
				return fmt.Errorf("%s: more than %d symbolic links on the way", orig, maxLinks)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return fmt.Errorf("%s: checking %s: %w", orig, next, err)
			}
			if filepath.IsAbs(target) {
				p = "/"
			}
			todo = append(splitPath(target), todo...)
			continue
		}
		if !st.IsDir() {
			return nil // ENOTDIR below it: nothing can be there
		}
		if err := checkDirInfo(orig, next, st); err != nil {
			return err
		}
		p = next
	}
	return nil
}

func splitPath(p string) []string {
	return strings.Split(strings.Trim(p, "/"), "/")
}

func ownerOf(st os.FileInfo) int {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid)
	}
	return -1
}

func checkDir(orig, p string) error {
	st, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("%s: checking %s: %w", orig, p, err)
	}
	return checkDirInfo(orig, p, st)
}

// checkDirInfo: the trust rule for a directory above a file: root's or the user's
// running latch, and nobody else may write it unless it is a sticky one of root's.
func checkDirInfo(orig, p string, st os.FileInfo) error {
	uid := ownerOf(st)
	if uid != 0 && uid != os.Geteuid() {
		return parentError(orig, p, st, fmt.Sprintf("owned by uid %d, neither root nor the user running latch", uid))
	}
	if st.Mode().Perm()&0o022 != 0 && (st.Mode()&fs.ModeSticky == 0 || uid != 0) {
		return parentError(orig, p, st, "group or others may write it")
	}
	return nil
}

func parentError(orig, dir string, st os.FileInfo, why string) error {
	return fmt.Errorf("%s: directory %s above it (mode %04o): %s, so they may rename or replace what is below; refusing it, as it steers the firewall (chown root and chmod go-w it)", orig, dir, st.Mode().Perm(), why)
}
