package fileperm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/mountinfo"
)

// openTrusted walks path from / with openat, never following a symbolic link, and
// checks each directory it opens (fstat: what was checked is what is used).
//
// Review 39: every component is opened with O_PATH (no open of a device, no
// OPENDIR to a FUSE server), and before anything is asked of it (fstat, a lookup
// in it) the file system it is on is told from its mount id without a request to
// that file system: a FUSE or network mount (a member's fusermount3 mount in a
// sticky directory, whose server says uid 0 and may never answer) is refused. The
// walk is mountinfo.Walk's (review 43: one walk for fileperm and containername).
// The file itself must be a regular file: only then is it opened for reading
// (through /proc/self/fd, no second lookup).
func openTrusted(path string) (*os.File, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%s: not an absolute path", path)
	}
	clean := filepath.Clean(path)
	if clean == "/" {
		return nil, fmt.Errorf("%s: a directory, not a file", path)
	}
	root, err := unix.Open("/", unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: opening /: %w", path, err)
	}
	defer unix.Close(root)
	if err := checkFS(path, "/", root); err != nil {
		return nil, err
	}
	if err := checkDirFd(path, "/", root); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	fd, err := mountinfo.Walk(root, clean, func(at string, s *unix.Stat_t, last bool) error {
		mode := s.Mode & unix.S_IFMT
		if !last {
			return checkDirStat(path, at, s)
		}
		if mode != unix.S_IFREG {
			// Not opened: opening a device acts (a watchdog starts, a tape
			// rewinds, a terminal is allocated), a FIFO may block.
			return fmt.Errorf("%s: %s, not a regular file; not opened", path, kindOf(mode))
		}
		if s.Uid != 0 && int(s.Uid) != os.Geteuid() {
			return fmt.Errorf("%s: owned by uid %d, neither root nor the user running latch", path, s.Uid)
		}
		st = *s
		return nil
	})
	if err != nil {
		var u *mountinfo.UntrustedError
		if errors.As(err, &u) {
			return nil, fmt.Errorf("%w; refusing it, as it steers the firewall", err)
		}
		return nil, err
	}
	rfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	unix.Close(fd)
	if err != nil {
		return nil, fmt.Errorf("%s: reopening it for reading: %w", path, err)
	}
	var rst unix.Stat_t
	if err := unix.Fstat(rfd, &rst); err != nil || rst.Dev != st.Dev || rst.Ino != st.Ino {
		unix.Close(rfd)
		if err == nil {
			err = errors.New("another file than the one checked")
		}
		return nil, fmt.Errorf("%s: reopening it for reading: %w", path, err)
	}
	return os.NewFile(uintptr(rfd), clean), nil
}

// checkFS refuses fd (path p) if it is on a FUSE or network file system, told
// without a request to it (see mountinfo.FSType).
func checkFS(orig, p string, fd int) error {
	t, err := mountinfo.FSType(fd)
	if err != nil {
		return fmt.Errorf("%s: checking the file system of %s: %w", orig, p, err)
	}
	if mountinfo.Untrusted(t) {
		if t == "" {
			t = "a file system no mount table names"
		}
		return fmt.Errorf("%s: %s is on %s, whose server (not the kernel) says who owns what and may never answer; refusing it, as it steers the firewall", orig, p, t)
	}
	return nil
}

// checkDirFd applies checkDirInfo's rule to the open directory fd (path p).
func checkDirFd(orig, p string, fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: checking %s: %w", orig, p, err)
	}
	return checkDirStat(orig, p, &st)
}

// checkDirStat applies checkDirInfo's rule to the directory p stat'ed as st.
func checkDirStat(orig, p string, st *unix.Stat_t) error {
	mode := st.Mode & 0o7777
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s: directory %s above it (mode %04o): owned by uid %d, neither root nor the user running latch", orig, p, mode&0o777, st.Uid)
	}
	if mode&0o022 != 0 && (mode&unix.S_ISVTX == 0 || st.Uid != 0) {
		return fmt.Errorf("%s: directory %s above it (mode %04o): group or others may write it", orig, p, mode&0o777)
	}
	return nil
}

// kindOf names a file type (S_IFMT bits) for an error.
func kindOf(mode uint32) string {
	switch mode {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	}
	return "a special file"
}
