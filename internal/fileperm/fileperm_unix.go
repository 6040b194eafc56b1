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

	"golang.org/x/sys/unix"
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

// openTrusted walks path from / with openat, never following a symbolic link, and
// checks each directory it opens (fstat: what was checked is what is used).
func openTrusted(path string) (*os.File, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%s: not an absolute path", path)
	}
	clean := filepath.Clean(path)
	parts := splitPath(clean)
	if clean == "/" {
		return nil, fmt.Errorf("%s: a directory, not a file", path)
	}
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	dir, err := unix.Open("/", dirFlags, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: opening /: %w", path, err)
	}
	p := "/"
	for i, name := range parts {
		if err := checkDirFd(path, p, dir); err != nil {
			unix.Close(dir)
			return nil, err
		}
		next := filepath.Join(p, name)
		last := i == len(parts)-1
		flags := dirFlags
		if last {
			flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY
		}
		fd, err := unix.Openat(dir, name, flags, 0)
		if err != nil {
			var lst unix.Stat_t
			if (errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR)) &&
				unix.Fstatat(dir, name, &lst, unix.AT_SYMLINK_NOFOLLOW) == nil && lst.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = fmt.Errorf("%s is a symbolic link, which is not followed here", next)
			}
			unix.Close(dir)
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		unix.Close(dir)
		if last {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
				unix.Close(fd)
				return nil, fmt.Errorf("%s: owned by uid %d, neither root nor the user running latch", path, st.Uid)
			}
			return os.NewFile(uintptr(fd), clean), nil
		}
		dir, p = fd, next
	}
	panic("unreachable")
}

// checkDirFd applies checkDirInfo's rule to the open directory fd (path p).
func checkDirFd(orig, p string, fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: checking %s: %w", orig, p, err)
	}
	mode := st.Mode & 0o7777
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s: directory %s above it (mode %04o): owned by uid %d, neither root nor the user running latch", orig, p, mode&0o777, st.Uid)
	}
	if mode&0o022 != 0 && (mode&unix.S_ISVTX == 0 || st.Uid != 0) {
		return fmt.Errorf("%s: directory %s above it (mode %04o): group or others may write it", orig, p, mode&0o777)
	}
	return nil
}
