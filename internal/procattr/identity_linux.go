package procattr

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/containername"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/mountinfo"
)

// fileID is the identity of a file: device and inode.
type fileID struct{ dev, ino uint64 }

// exeFileID stats the file the process executes. /proc/PID/exe is a magic link: the
// kernel follows it to the executable itself (mm->exe_file), whatever mount
// namespace, root or name the process sees it under, and whether or not it is
// still linked. nlink is 0 for a deleted file and for a memfd. mnt is the id of the
// mount the process executed the file through, of the kind the eBPF hooks record
// (connRecord.ExeMnt): its unique id where uniqueMountIDs, else the old one; 0
// where the kernel does not tell it.
func (d procDir) exeFileID() (id fileID, nlink, mnt uint64, err error) {
	var stx unix.Statx_t
	mask, mntMask := uint32(unix.STATX_MNT_ID), uint32(unix.STATX_MNT_ID)
	if uniqueMountIDs() {
		mask, mntMask = unix.STATX_MNT_ID_UNIQUE, unix.STATX_MNT_ID_UNIQUE
	}
	// AT_STATX_DONT_SYNC: the kernel's cached attributes; FUSE and NFS send their
	// server no request for them (review 37: one that never answers would hold
	// this thread). Local file systems give the same either way.
	err = unix.Statx(d.fd, "exe", unix.AT_STATX_DONT_SYNC, unix.STATX_INO|unix.STATX_NLINK|int(mask), &stx)
	if errors.Is(err, unix.ENOSYS) {
		var st unix.Stat_t
		if err := unix.Fstatat(d.fd, "exe", &st, 0); err != nil {
			return fileID{}, 0, 0, fmt.Errorf("stat /proc/%d/exe: %w", d.pid, err)
		}
		return fileID{uint64(st.Dev), st.Ino}, uint64(st.Nlink), 0, nil
	}
	if err != nil {
		return fileID{}, 0, 0, fmt.Errorf("stat /proc/%d/exe: %w", d.pid, err)
	}
	if stx.Mask&mntMask != 0 {
		mnt = stx.Mnt_id
	}
	return fileID{unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino}, uint64(stx.Nlink), mnt, nil
}

// exeOldMountID is the old, reusable id (STATX_MNT_ID) of the mount the
// process executes file through, which the fast path's kernel program reads
// (engine.FileID.Mnt); 0 where the kernel does not tell it or the process no
// longer runs file. Where uniqueMountIDs exeFileID gives the unique id
// instead; else it is mnt, and no statx is made.
func (d procDir) exeOldMountID(file fileID, mnt uint64) uint64 {
	if !uniqueMountIDs() {
		return mnt
	}
	var stx unix.Statx_t
	if unix.Statx(d.fd, "exe", unix.AT_STATX_DONT_SYNC, unix.STATX_INO|unix.STATX_MNT_ID, &stx) != nil ||
		stx.Mask&unix.STATX_MNT_ID == 0 || (fileID{unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino}) != file {
		return 0
	}
	return stx.Mnt_id
}

// hostRoot is the host's file system: the root of process 1 (init, in the daemon's
// pid namespace), whose mount namespace is the host's even when the daemon runs in
// one of its own (systemd's PrivateTmp= or ProtectHome=, `ip netns exec`). Where it
// cannot be opened, the daemon's own root.
var hostRoot = sync.OnceValues(func() (fd int, ns string) { return openRoot("/proc/1") })

// openRoot opens the root directory of the process at procDir ("/proc/1") and names
// its mount namespace; where it cannot, AT_FDCWD and the daemon's own namespace.
func openRoot(procDir string) (fd int, ns string) {
	// Reading the process's namespace link needs the same access as following its
	// root; a sandbox that denies it leaves the daemon's own view.
	ns, err := os.Readlink(procDir + "/ns/mnt")
	if err == nil {
		fd, err = unix.Open(procDir+"/root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if err == nil {
		var st unix.Stat_t
		if err = unix.Fstatat(fd, "", &st, unix.AT_EMPTY_PATH); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		ns, _ = os.Readlink("/proc/self/ns/mnt")
		return unix.AT_FDCWD, ns
	}
	return fd, ns
}

// hostRootID is the device and inode of the host's root directory (see hostRoot);
// zero if it cannot be read, which no process's root matches.
var hostRootID = sync.OnceValue(func() fileID {
	root, _ := hostRoot()
	var st unix.Stat_t
	var err error
	if root == unix.AT_FDCWD {
		err = unix.Stat("/", &st)
	} else {
		err = unix.Fstatat(root, "", &st, unix.AT_EMPTY_PATH)
	}
	if err != nil {
		return fileID{}
	}
	return fileID{uint64(st.Dev), st.Ino}
})

// hostUserNS names the initial user namespace: process 1's (in the daemon's pid
// namespace), or where its link cannot be read the daemon's own.
var hostUserNS = sync.OnceValue(func() string {
	if ns, err := os.Readlink("/proc/1/ns/user"); err == nil {
		return ns
	}
	ns, _ := os.Readlink("/proc/self/ns/user")
	return ns
})

// hostFileID stats path in the host's file system (see hostRoot) without following
// any symbolic link: the executable's name the kernel gives is already resolved, so
// a symlink on the way would name another file than the process's.
func hostFileID(path string) (fileID, error) {
	root, _ := hostRoot()
	return fileIDIn(root, path)
}

// fileIDIn is hostFileID in the file system whose root is the directory root
// (AT_FDCWD: the daemon's own).
func fileIDIn(root int, path string) (fileID, error) {
	// The walk (mountinfo.Open) follows no symbolic link and enters no mount of
	// a file system whose server latch does not control (review 39: a user's
	// FUSE mount over a directory of the path would otherwise hold the daemon's
	// thread on a request its server never answers): it fails with a
	// *mountinfo.UntrustedError there. The file is looked at with
	// AT_STATX_DONT_SYNC (its own mount was checked; a local file system answers
	// the same either way).
	fd, err := mountinfo.Open(root, path)
	if err != nil {
		return fileID{}, err
	}
	defer unix.Close(fd)
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE|unix.STATX_INO, &stx); err != nil {
		return fileID{}, err
	}
	if uint32(stx.Mode)&unix.S_IFMT != unix.S_IFREG {
		return fileID{}, fmt.Errorf("not a regular file (mode %o)", stx.Mode)
	}
	return fileID{unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino}, nil
}

// identity is what verification found about a process's executable.
type identity struct {
	status    engine.Identity
	container string
	note      string
}

// verifyExe decides how far exe, the name /proc/PID/exe gives (as readlink returned
// it, " (deleted)" included), can be trusted. It is verified only if the host's file
// at that path is the file the process executes (id, nlink from exeFileID): a path
// is a string the process's own mount namespace (bind mounts, pivot_root, a chroot
// over a moved mount) or a deleted file's last name produced, while the device and
// inode are the kernel's, so equality means the host's path names this very
// program. Any trick that runs another file under the path fails the comparison.
func verifyExe(d procDir, exe string, id fileID, nlink uint64) identity {
	// A process in a user namespace of its own is never verified (below). A process
	// in a mount namespace of its own may see other files at the host's paths. In the initial user namespace only root can make one (systemd's
	// ProtectSystem= services, `ip netns exec`): its mounts are trusted. In another
	// user namespace any user can, and bind a file of theirs over the loader or a
	// library the host's program maps: the executable is the host's, the code that
	// runs is not.
	//
	// A root of its own (chroot, which root of a user namespace may call) does the
	// same without a mount namespace: a file opened before the chroot and executed
	// through its descriptor is the host's, its loader is found in the new root.
	var nsBuf [64]byte
	mntNS, mntErr := d.readlink("ns/mnt", nsBuf[:])
	_, hostNS := hostRoot()
	ownMounts := mntErr == nil && string(mntNS) != hostNS
	userNSWhy := func() string {
		if inInitialUserNS(d) {
			return ""
		}
		if ownMounts {
			return "runs in a user namespace with its own mounts: its libraries and loader may not be the host's"
		}
		// DONT_SYNC: a root on FUSE is not asked either.
		var stx unix.Statx_t
		if err := unix.Statx(d.fd, "root", unix.AT_STATX_DONT_SYNC, unix.STATX_INO, &stx); err != nil ||
			(fileID{unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino}) != hostRootID() {
			return "runs in a user namespace with its own root: its libraries and loader may not be the host's"
		}
		// The host's mounts and root, but a user namespace of its own: there it holds
		// CAP_CHECKPOINT_RESTORE, which lets it point its executable (/proc/PID/exe)
		// at any program it may run (prctl PR_SET_MM_MAP with exe_fd) while running
		// code of its own.
		// A process in the host's user namespace may have had the same done to it
		// by a child it cloned with CLONE_VM | CLONE_NEWUSER (the memory is shared):
		// /proc does not tell it, the eBPF record's ExeFlags does (exeNotExecuted,
		// checked in viaEBPF before this identity is used).
		return "runs in a user namespace of its own, where it may name another program as its executable"
	}
	var why string
	switch {
	case nlink == 0 && strings.HasPrefix(exe, "/memfd:"):
		why = "the executable is a memfd (an anonymous file in memory), which no path names"
	case nlink == 0:
		why = "the executable was deleted or replaced since the process started"
	case !strings.HasPrefix(exe, "/"):
		why = "the executable has no path on the host"
	case exeOnUntrustedFS(d, &why):
		// Review 37: no path walk to a file a server outside the kernel serves
		// (each lookup there is a request it may never answer).
	default:
		host, err := hostFileID(exe)
		var untrusted *mountinfo.UntrustedError
		switch {
		case err == nil && host == id:
			if why = userNSWhy(); why == "" {
				return identity{status: engine.IdentityVerified}
			}
		case err == nil:
			why = "the host's file at this path is another file than the one the process runs"
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			why = "no file has this path on the host"
		case errors.Is(err, unix.ELOOP):
			why = "the path goes through a symbolic link on the host"
		case errors.As(err, &untrusted):
			// Review 39: a FUSE or network mount on the way (a user's over a
			// directory of the path): not entered.
			t := untrusted.FSType
			if t == "" {
				t = "a file system no mount table names"
			}
			why = "the path on the host goes through a FUSE or network file system (" + t + " at " + untrusted.At + "), which latch does not enter or verify: its server chooses what is there (and may never answer)"
		default:
			why = fmt.Sprintf("the host's file at this path cannot be checked: %v", err)
		}
	}
	// A process in another mount namespace than the host's, in a container
	// runtime's cgroup, is the container's program: its path means something inside
	// the container only.
	if !ownMounts {
		return identity{status: engine.IdentityUnverified, note: why}
	}
	var cgBuf [8192]byte
	if cg, err := d.readFile("cgroup", cgBuf[:]); err == nil {
		if c, controllers, parent := containerAt(cg); c != "" {
			c = delegatedTo(c, controllers, parent)
			return identity{status: engine.IdentityContainer, container: c,
				note: "the process runs in container " + c + " (another mount namespace): the path is the container's, not the host's"}
		}
	}
	return identity{status: engine.IdentityUnverified, note: why + " (the process runs in another mount namespace)"}
}

// exeOnUntrustedFS reports whether process d's executable is on a file system
// latch does not ask (see untrustedFS), and if so sets *why to say so.
func exeOnUntrustedFS(d procDir, why *string) bool {
	fstype, err := d.exeFS()
	if err != nil {
		*why = fmt.Sprintf("the executable's file system cannot be told: %v", err)
		return true
	}
	if !untrustedFS(fstype) {
		return false
	}
	*why = fsNote(fstype)
	return true
}

// inInitialUserNS reports whether the process is in the initial user namespace (see
// hostUserNS); false if its link cannot be read.
func inInitialUserNS(d procDir) bool {
	var buf [64]byte
	ns, err := d.readlink("ns/user", buf[:])
	return err == nil && string(ns) == hostUserNS()
}

// containerOf finds a container in the contents of /proc/PID/cgroup (cgroup v1 and
// v2 lines "ID:CONTROLLERS:PATH") and returns it as "RUNTIME:ID", or "". It knows
// the cgroup names of docker (systemd and cgroupfs drivers), podman, containerd
// (CRI), CRI-O, Kubernetes pods, LXC/LXD and systemd-machined (nspawn) containers.
// A cgroup name is chosen by whoever may create the cgroup (rootless containers
// create theirs), so the result is a label only: it never makes a path trusted.
func containerOf(cgroup []byte) string {
	c, _, _ := containerAt(cgroup)
	return c
}

// containerAt is containerOf that also says where the label was found: the
// hierarchy's controllers as the line names them ("" for cgroup v2, "cpu,cpuacct",
// "name=systemd") and the path of the cgroup the container's cgroup was made in
// (its parent), so that its owner can be looked at (see delegatedTo).
func containerAt(cgroup []byte) (label, controllers, parent string) {
	for _, line := range strings.Split(string(cgroup), "\n") {
		// The path is everything after the second colon (v1 controller lists hold
		// no colon; a path may).
		i := strings.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := strings.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		if c, parent := containerOfPath(line[i+1+j+1:]); c != "" {
			return c, line[i+1 : i+1+j], parent
		}
	}
	return "", "", ""
}

func containerOfPath(path string) (label, parent string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	c, k := containerOfSegs(segs)
	if c == "" {
		return "", ""
	}
	parent = "/" + strings.Join(segs[:k], "/")
	// A container found inside a user's own systemd tree (user@UID.service, which
	// systemd delegates to that user) is one that user's programs may have named
	// themselves, rootless containers included: its runtime says whose tree it is in
	// ("podman@1000:ID"), so that it is never taken for a system container of the
	// same id or name (engine: only a rule naming that label matches it). Only the
	// segments above the container count: below it, names are the container's own
	// (a "user@1000.service" a system container made is not user 1000's tree).
	for _, s := range segs[:k] {
		if uid, ok := strings.CutPrefix(s, "user@"); ok {
			if uid, ok = strings.CutSuffix(uid, ".service"); ok && isDecimal(uid) {
				rt, id, _ := strings.Cut(c, ":")
				return rt + "@" + uid + ":" + id, parent
			}
		}
	}
	return c, parent
}

// isDecimal reports whether s is 1 to 10 ASCII digits.
func isDecimal(s string) bool {
	if len(s) == 0 || len(s) > 10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// containerOfSegs finds the outermost container in a cgroup path's segments and
// the index of its segment. Outermost, not innermost: a container whose cgroup is
// delegated to it (LXD, nspawn, podman running systemd, docker with CAP_SYS_ADMIN
// in a cgroup namespace of its own) names the cgroups below its own, so a
// "docker-ID.scope" inside it is its root's claim, not the host runtime's.
func containerOfSegs(segs []string) (string, int) {
	for k := 0; k < len(segs); k++ {
		s := segs[k]
		parent := ""
		if k > 0 {
			parent = segs[k-1]
		}
		for _, p := range []struct{ prefix, runtime string }{
			{"docker-", "docker"},
			{"libpod-", "podman"},
			{"cri-containerd-", "containerd"},
			{"crio-", "cri-o"},
		} {
			if id, ok := strings.CutPrefix(s, p.prefix); ok {
				id = strings.TrimSuffix(id, ".scope")
				if containername.IsID(id) { // not libpod-conmon-ID, crio-conmon-ID
					return p.runtime + ":" + id, k
				}
			}
		}
		if containername.IsID(s) {
			switch {
			case parent == "docker":
				return "docker:" + s, k
			case strings.HasPrefix(parent, "pod") || slices.ContainsFunc(segs, func(s string) bool { return strings.Contains(s, "kubepods") }):
				return "kubernetes:" + s, k
			case parent == "libpod_parent" || strings.HasPrefix(parent, "libpod"):
				return "podman:" + s, k
			}
		}
		if name, ok := strings.CutPrefix(s, "lxc.payload."); ok && isName(name) {
			return "lxc:" + name, k
		}
		if parent == "lxc" && isName(s) {
			return "lxc:" + s, k
		}
		if name, ok := strings.CutPrefix(s, "machine-"); ok && parent == "machine.slice" && strings.HasSuffix(name, ".scope") {
			if name = unescapeSystemd(strings.TrimSuffix(name, ".scope")); isName(name) {
				return "machine:" + name, k
			}
		}
		if name, ok := strings.CutPrefix(s, "systemd-nspawn@"); ok && strings.HasSuffix(name, ".service") {
			if name = unescapeSystemd(strings.TrimSuffix(name, ".service")); isName(name) {
				return "machine:" + name, k
			}
		}
	}
	return "", -1
}

// isName reports whether s is a container name latch shows: 1 to 64 letters,
// digits, '.', '_' or '-' (a name is the cgroup's, which its creator chose: one that
// is not this plain is not taken, so no output has to escape it).
func isName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// unescapeSystemd undoes systemd's "\xNN" unit name escaping (machine names with a
// '-' are escaped as \x2d).
func unescapeSystemd(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			var v byte
			if _, err := fmt.Sscanf(s[i+2:i+4], "%02x", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// containerNames reads docker's and podman's names of the containers containerOf
// finds, from the runtimes' state in the daemon's own view of the file system (the
// packaged unit leaves /var/lib and /home readable).
var containerNames = containername.New(containername.Options{
	Logf: func(format string, args ...any) { slog.Warn(fmt.Sprintf(format, args...)) },
})
