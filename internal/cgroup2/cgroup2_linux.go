// Package cgroup2 gives latch's eBPF hooks (process attribution, the fast path) the
// cgroup v2 hierarchy they attach to when the daemon's own view has no mount of it:
// `ip netns exec` and containers give a process a fresh /sys without the cgroup2
// mount, yet the hierarchy is the same, so a private mount serves for the attach
// (the links hold the cgroup, and the mount can go at once).
package cgroup2

import (
	"fmt"
	"os"

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
