// Package cgroup2 gives latch's eBPF hooks (process attribution, the fast path) the
// cgroup v2 hierarchy they attach to when the daemon's own view has no mount of it:
// `ip netns exec` and containers give a process a fresh /sys without the cgroup2
// mount, yet the hierarchy is the same, so a private mount serves for the attach
// (the links hold the cgroup, and the mount can go at once).
package cgroup2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// MountPrivate mounts the cgroup v2 hierarchy on a new temporary directory named
// after prefix, and returns the directory; Unmount undoes it.
func MountPrivate(prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("mount cgroup2 on %s: %w", dir, err)
	}
	return dir, nil
}

// Unmount undoes MountPrivate.
func Unmount(dir string) {
	unix.Unmount(dir, unix.MNT_DETACH)
	os.Remove(dir)
}

// Root returns a directory where the cgroup v2 hierarchy's root is mounted: the
// mount Find finds, else a private mount (MountPrivate, named after prefix) made for
// an attach. release undoes what Root did: nothing, or Unmount.
func Root(prefix string) (dir string, release func(), err error) {
	if dir, err = Find(); err == nil {
		return dir, func() {}, nil
	}
	dir, merr := MountPrivate(prefix)
	if merr != nil {
		return "", nil, fmt.Errorf("%w; mounting one failed: %v", err, merr)
	}
	return dir, func() { Unmount(dir) }, nil
}

// Find finds where the cgroup v2 hierarchy is mounted (e.g. /sys/fs/cgroup,
// or /sys/fs/cgroup/unified on hybrid systems).
func Find() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return ParseMount(f)
}

// ParseMount returns the mount point of a cgroup2 file system whose root is the
// hierarchy's root ("/") in mountinfo: the first under /sys/fs/cgroup (the
// system's, which stays), else the first. Another mount of the hierarchy (a
// tool's or a test's, in /tmp) may go away while latch uses it.
func ParseMount(f io.Reader) (string, error) {
	dir := ""
	err := RootMounts(f, func(fsType, _, mnt string) bool {
		if fsType != "cgroup2" {
			return true
		}
		system := mnt == "/sys/fs/cgroup" || strings.HasPrefix(mnt, "/sys/fs/cgroup/")
		if dir == "" || system {
			dir = mnt
		}
		return !system
	})
	switch {
	case err != nil:
		return "", err
	case dir == "":
		return "", errors.New("no cgroup2 file system mounted (/proc/self/mountinfo)")
	}
	return dir, nil
}

// RootMounts calls fn, in mountinfo's order, for each cgroup (v1) or cgroup2 file
// system in mountinfo f that is mounted at its hierarchy's root ("/"), with its type,
// its super options (v1's name the controllers) and its mount point (unescaped),
// until fn returns false.
func RootMounts(f io.Reader, fn func(fsType, superOpts, dir string) bool) error {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
		// 42 31 0:39 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, postFields := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(postFields) < 1 || fields[3] != "/" || (postFields[0] != "cgroup2" && postFields[0] != "cgroup") {
			continue
		}
		opts := ""
		if len(postFields) >= 3 {
			opts = postFields[2]
		}
		if !fn(postFields[0], opts, UnescapeMountPath(fields[4])) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	return nil
}

// UnescapeMountPath undoes mountinfo's octal escapes (\040 for space and so on).
func UnescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			o := s[i+1 : i+4]
			if o[0] >= '0' && o[0] <= '3' && o[1] >= '0' && o[1] <= '7' && o[2] >= '0' && o[2] <= '7' {
				b.WriteByte((o[0]-'0')<<6 | (o[1]-'0')<<3 | (o[2] - '0'))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
