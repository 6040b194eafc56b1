package procattr

import (
	"strings"

	"github.com/latchfw/latch/internal/engine"
)

// cgroupV2Path returns the path of the cgroup v2 line ("0::PATH") of /proc/PID/cgroup.
func cgroupV2Path(cgroup []byte) string {
	for _, line := range strings.Split(string(cgroup), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

// unitOf returns the systemd system unit a process runs in, from its cgroup v2 path:
// under /system.slice (and its sub-slices) the first segment that names a service,
// scope or socket unit ("/system.slice/nginx.service" -> "nginx.service"). Only root
// creates cgroups there (a service with Delegate= gets its own subtree, below its
// unit's segment), so a user cannot put a process in another unit. User units
// (user.slice) are not taken: a user may create any cgroup name there.
func unitOf(cgroup []byte) string {
	segs := strings.Split(strings.TrimPrefix(cgroupV2Path(cgroup), "/"), "/")
	if len(segs) < 2 || segs[0] != "system.slice" {
		return ""
	}
	for _, s := range segs[1:] {
		if strings.HasSuffix(s, ".slice") {
			continue
		}
		if isUnit(s) {
			return s
		}
		return ""
	}
	return ""
}

func isUnit(s string) bool {
	r := engine.Rule{Action: engine.Allow, Unit: s}
	return r.Validate() == nil
}

// appIDOf returns the flatpak or snap app id a process runs as, from its cgroup v2
// path: flatpak's "app-flatpak-ID-NUMBER.scope" and snap's "snap.NAME.APP-UUID.scope"
// or "snap.NAME.APP.service". The names are chosen by whoever creates the cgroup (the
// user's session for both), so an app id is a label among one user's programs.
func appIDOf(cgroup []byte) string {
	segs := strings.Split(cgroupV2Path(cgroup), "/")
	for k := len(segs) - 1; k >= 0; k-- {
		s := segs[k]
		if rest, ok := strings.CutPrefix(s, "app-flatpak-"); ok && strings.HasSuffix(rest, ".scope") {
			rest = strings.TrimSuffix(rest, ".scope")
			if i := strings.LastIndexByte(rest, '-'); i > 0 && isDigits(rest[i+1:]) && isAppID(rest[:i]) {
				return rest[:i]
			}
		}
		if rest, ok := strings.CutPrefix(s, "snap."); ok && (strings.HasSuffix(rest, ".scope") || strings.HasSuffix(rest, ".service")) {
			if name, _, ok := strings.Cut(rest, "."); ok && isAppID(name) {
				return name
			}
		}
	}
	return ""
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isAppID(s string) bool {
	r := engine.Rule{Action: engine.Allow, AppID: s, User: "0"}
	return r.Validate() == nil
}

// parentsOf returns the executables of the process ppid and its ancestors, parent
// first, up to engine.MaxParentDepth: each verified as the process's own (verifyExe),
// "" where it is not (or where the process is gone), so that a forged ancestor path
// matches no --parent rule. It stops at pid 1's parent (0). An ancestor whose
// executable a CLONE_VM child named with prctl(PR_SET_MM) (review28's
// neighbour) is not told here: /proc does not show it, and ancestors have no
// eBPF record (exeNotExecuted); open.
func parentsOf(ppid int32) []string {
	var out []string
	var buf [4096]byte
	for pid := ppid; pid > 0 && len(out) < engine.MaxParentDepth; {
		d, err := openProcDir(pid)
		if err != nil {
			break
		}
		st, err := d.stat()
		exe := ""
		if err == nil {
			if file, nlink, _, ferr := d.exeFileID(); ferr == nil {
				if name, lerr := d.readlink("exe", buf[:]); lerr == nil {
					if verifyExe(d, string(name), file, nlink).status == engine.IdentityVerified {
						exe = string(name)
					}
				}
			}
		}
		d.close()
		if err != nil {
			break
		}
		out = append(out, exe)
		pid = st.PPid
	}
	return out
}
