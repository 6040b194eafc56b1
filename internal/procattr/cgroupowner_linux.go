package procattr

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/cgroup2"
)

// delegatedTo checks who could have made a system container's cgroup: whoever may
// write the cgroup it was made in. A cgroup name is the creator's choice, and
// systemd hands a cgroup subtree to a user not only in user@UID.service (which
// containerOf already labels as that user's) but in any system unit with
// Delegate=yes and User= (a CI runner, a container service run as a user): that
// user may make "docker-ID.scope" below it. So the directories from the
// hierarchy's root down to parent (the cgroup the container's cgroup is in) must
// all be root's; the first one owned by another user makes the label that user's
// ("docker@UID:ID"), which only a rule naming it so matches. label is returned as
// it is when it is already a user's, or when the hierarchy is not mounted in the
// daemon's view or its directories cannot be looked at (the name alone, as
// before).
func delegatedTo(label, controllers, parent string) string {
	rt, id, ok := strings.Cut(label, ":")
	if !ok || strings.Contains(rt, "@") {
		return label
	}
	mnt, ok := cgroupMounts()[controllerKey(controllers)]
	if !ok {
		return label
	}
	dir := mnt
	segs := strings.Split(strings.Trim(parent, "/"), "/")
	if len(segs) == 1 && segs[0] == "" {
		segs = nil
	}
	for i := -1; i < len(segs); i++ {
		if i >= 0 {
			if segs[i] == "." || segs[i] == ".." {
				return label
			}
			dir = filepath.Join(dir, segs[i])
		}
		var st unix.Stat_t
		if err := unix.Lstat(dir, &st); err != nil {
			return label
		}
		if st.Uid != 0 {
			return rt + "@" + strconv.FormatUint(uint64(st.Uid), 10) + ":" + id
		}
	}
	return label
}

// controllerKey is the key of a hierarchy in cgroupMounts: "" for cgroup v2, else
// its controllers (or name=) sorted and comma-joined.
func controllerKey(controllers string) string {
	if controllers == "" {
		return ""
	}
	cs := strings.Split(controllers, ",")
	slices.Sort(cs)
	return strings.Join(cs, ",")
}

// cgroupMounts maps each cgroup hierarchy mounted in the daemon's view at its root
// to where (the first such mount).
var cgroupMounts = sync.OnceValue(func() map[string]string {
	m := map[string]string{}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return m
	}
	defer f.Close()
	cgroup2.RootMounts(f, func(fsType, opts, dir string) bool {
		key := ""
		if fsType == "cgroup" {
			if opts == "" {
				return true // no controllers to tell it by
			}
			var cs []string
			for _, o := range strings.Split(opts, ",") {
				switch {
				case strings.HasPrefix(o, "name="):
					cs = append(cs, o)
				case strings.Contains(o, "=") || o == "rw" || o == "ro" || o == "xattr" || o == "noprefix" || o == "clone_children" || o == "cpuset_v2_mode" || o == "favordynmods" || o == "nofavordynmods":
				default:
					cs = append(cs, o)
				}
			}
			key = controllerKey(strings.Join(cs, ","))
		}
		if _, seen := m[key]; !seen {
			m[key] = dir
		}
		return true
	})
	return m
})
