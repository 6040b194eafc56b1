package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAttributionCgroupFlag: --attribution-cgroup takes a cgroup v2 directory,
// which the fast path serves too unless --fast-path-cgroup says otherwise; any
// other directory, or none, is refused naming the flag.
func TestAttributionCgroupFlag(t *testing.T) {
	for _, dir := range []string{t.TempDir(), filepath.Join(t.TempDir(), "missing")} {
		_, err := parseDaemonFlags([]string{"--config", "", "--attribution-cgroup", dir})
		if err == nil || !strings.Contains(err.Error(), "--attribution-cgroup") || !strings.Contains(err.Error(), dir) {
			t.Errorf("--attribution-cgroup %s: %v; want refused, naming the flag and the directory", dir, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting a cgroup2 hierarchy needs root")
	}
	mnt := t.TempDir()
	if err := unix.Mount("cgroup2", mnt, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	o, err := parseDaemonFlags([]string{"--config", "", "--attribution-cgroup", mnt})
	if err != nil {
		t.Fatal(err)
	}
	if o.AttributionCgroup != mnt || o.FastPathCgroup != mnt {
		t.Errorf("--attribution-cgroup %s: attribution %q, fast path %q; want both the directory", mnt, o.AttributionCgroup, o.FastPathCgroup)
	}
	o, err = parseDaemonFlags([]string{"--config", "", "--attribution-cgroup", mnt, "--fast-path-cgroup", "/elsewhere"})
	if err != nil {
		t.Fatal(err)
	}
	if o.FastPathCgroup != "/elsewhere" {
		t.Errorf("--fast-path-cgroup /elsewhere with --attribution-cgroup: fast path %q", o.FastPathCgroup)
	}
}
