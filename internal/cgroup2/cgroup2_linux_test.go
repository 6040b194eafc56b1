package cgroup2

import (
	"strings"
	"testing"
)

func TestParseMount(t *testing.T) {
	const hybrid = `23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	got, err := ParseMount(strings.NewReader(hybrid))
	if err != nil || got != "/sys/fs/cgroup/unified" {
		t.Errorf("hybrid: %q, %v", got, err)
	}
	// A bind mount of a sub-cgroup is not the root; a path with an escaped space.
	const nested = `50 23 0:38 /user.slice /mnt/sub rw - cgroup2 cgroup2 rw
51 23 0:38 / /mnt/cg\0402 rw - cgroup2 cgroup2 rw
`
	got, err = ParseMount(strings.NewReader(nested))
	if err != nil || got != "/mnt/cg 2" {
		t.Errorf("nested: %q, %v", got, err)
	}
	// A temporary mount of the hierarchy listed before the system's is not taken.
	const temporary = `44 26 0:37 / /tmp/latch-bench-1/cgroup2 rw - cgroup2 cgroup2 rw
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
45 26 0:37 / /tmp/other rw - cgroup2 cgroup2 rw
`
	got, err = ParseMount(strings.NewReader(temporary))
	if err != nil || got != "/sys/fs/cgroup/unified" {
		t.Errorf("temporary mount first: %q, %v; want the system's", got, err)
	}
	if _, err := ParseMount(strings.NewReader("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n")); err == nil {
		t.Error("v1 only: no error")
	}
}

func TestRootMounts(t *testing.T) {
	const info = `23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 /sub /mnt/sub rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	var got []string
	if err := RootMounts(strings.NewReader(info), func(fsType, opts, dir string) bool {
		got = append(got, fsType+" "+opts+" "+dir)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"cgroup rw,cpu,cpuacct /sys/fs/cgroup/cpu,cpuacct", "cgroup2 rw /sys/fs/cgroup/unified"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("RootMounts: %q, want %q", got, want)
	}
}
