package procattr

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/mountinfo"
)

// Review 37: a file on FUSE (or on a network file system) is served by a process
// (or a host) the daemon does not control. Its attributes (inode, times, size,
// nlink) and bytes are whatever that server answers, and a server that never
// answers holds the thread that asked in the kernel, uninterruptibly. So before
// anything that could send such a server a request (a stat that revalidates, an
// open, a path walk through its directories), latch asks the kernel, not the file
// system, which file system the executable is on: a statx of /proc/PID/exe with
// AT_STATX_DONT_SYNC (FUSE and NFS answer it from the kernel's cached attributes,
// and a magic link's target is not revalidated) for the id of its mount, whose type
// the kernel names (statmount by the unique id, Linux 6.8+; review 43), or else
// /proc/self/mountinfo (or the process's own, at most maxOwnTable of it, for a
// mount of another namespace). On such a file system a program is attributed by the name readlink gives
// (d_path: no request), unverified and unhashable.

// serverFSNote is the identity note of a program on a file system whose server
// latch does not ask (see untrustedFS).
const serverFSNote = "on a FUSE file system latch does not verify or hash: its server chooses what the file is (and may never answer)"

// untrustedFS reports whether fstype (a mountinfo type: "fuse.sshfs", "nfs4") is
// a file system whose files' attributes and bytes a server outside the kernel
// chooses, and which may stall whoever asks it: FUSE (any subtype, fuseblk) and
// the network file systems. An empty type (a mount latch cannot name) counts as
// such.
func untrustedFS(fstype string) bool { return mountinfo.Untrusted(fstype) }

// fsNote is the identity and hash note of a program on file system fstype.
func fsNote(fstype string) string {
	if fstype == "" {
		return "on a file system latch cannot name (a mount not in the mount table): latch does not verify or hash it"
	}
	if strings.Contains(fstype, " ") {
		// Review 44: a stacking mount (see mountinfo.StackedType).
		return "on a stacking file system (" + fstype + ") latch does not verify or hash: its layers may be on FUSE or a network file system, whose server chooses what the file is (and may never answer), or a user built it in a namespace of theirs"
	}
	if mountinfo.IsFUSE(fstype) {
		return serverFSNote + " (" + fstype + ")"
	}
	return "on a network file system (" + fstype + ") latch does not verify or hash: its server chooses what the file is (and may never answer)"
}

// mountTypes caches mount ids' file system types. Keyed by unique mount ids
// (STATX_MNT_ID_UNIQUE, never given to another mount) where the kernel gives them;
// with only the old, reusable ids nothing is cached (a later mount may take an id).
var mountTypes struct {
	sync.Mutex
	byID map[uint64]string
}

const maxMountTypes = 4096

// internalMounts are mounts no mountinfo lists but whose type latch knows: the
// kernel's internal tmpfs mount that memfds are on (shm_mnt). Keys as mountTypes'.
var internalMounts = sync.OnceValue(func() map[uint64]string {
	m := map[uint64]string{}
	fd, err := unix.MemfdCreate("latch-mnt", unix.MFD_CLOEXEC)
	if err != nil {
		return m
	}
	defer unix.Close(fd)
	var stx unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx) == nil && stx.Mask&unix.STATX_MNT_ID != 0 {
		m[stx.Mnt_id] = "tmpfs"
	}
	if statxUniqueMountID() {
		if unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID_UNIQUE, &stx) == nil && stx.Mask&unix.STATX_MNT_ID_UNIQUE != 0 {
			m[stx.Mnt_id] = "tmpfs"
		}
	}
	return m
})

// exeFS returns the type of the file system of the file process d executes ("" if
// no mount table names its mount), without a request to that file system.
func (d procDir) exeFS() (string, error) {
	const dontSync = unix.AT_STATX_DONT_SYNC
	var stx unix.Statx_t
	uniq := statxUniqueMountID()
	var key uint64
	var file fileID
	if uniq {
		if err := unix.Statx(d.fd, "exe", dontSync, unix.STATX_INO|unix.STATX_MNT_ID_UNIQUE, &stx); err != nil {
			return "", fmt.Errorf("stat /proc/%d/exe: %w", d.pid, err)
		}
		if stx.Mask&unix.STATX_MNT_ID_UNIQUE == 0 {
			uniq = false
		} else {
			key, file = stx.Mnt_id, fileID{unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino}
			if t, ok := internalMounts()[key]; ok {
				return t, nil
			}
			mountTypes.Lock()
			t, ok := mountTypes.byID[key]
			mountTypes.Unlock()
			if ok {
				return t, nil
			}
		}
	}
	if uniq {
		// Review 43: the kernel names the mount's type by its unique id
		// (statmount, Linux 6.8+), in the daemon's namespace, else in the
		// process's own: no mount table is read (a user may make their
		// namespace's hundreds of MiB).
		t, err := statmountType(d, key)
		switch {
		case err == nil:
			// Review 46: a file system on a loop device over FUSE ...
			t = mountinfo.BlockType(stx.Dev_major, stx.Dev_minor, t)
			rememberMountType(key, t)
			return t, nil
		case errors.Is(err, unix.ENOENT):
			return "", nil // in neither namespace (a detached mount)
		}
		// No statmount, or none across namespaces: the mount tables.
	}
	// The old id, which mountinfo lists.
	if err := unix.Statx(d.fd, "exe", dontSync, unix.STATX_INO|unix.STATX_MNT_ID, &stx); err != nil {
		return "", fmt.Errorf("stat /proc/%d/exe: %w", d.pid, err)
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return "", fmt.Errorf("stat /proc/%d/exe: the kernel gives no mount id", d.pid)
	}
	old := stx.Mnt_id
	if uniq && (fileID{unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino}) != file {
		return "", fmt.Errorf("stat /proc/%d/exe: the process executed another file meanwhile", d.pid)
	}
	if !uniq {
		if t, ok := internalMounts()[old]; ok {
			return t, nil
		}
	}
	t, ok := mountTypeIn(d, old)
	if !ok {
		return "", nil
	}
	if mountinfo.Stacking(t) && !mountinfo.RootMount(old) {
		// Review 44: no statmount to tell its layers.
		t += " over layers latch cannot tell"
	}
	t = mountinfo.BlockType(stx.Dev_major, stx.Dev_minor, t)
	if uniq {
		// The process's executable holds its mount: the old id read above is
		// still that mount's (it cannot have been freed and taken meanwhile).
		rememberMountType(key, t)
	}
	return t, nil
}

// rememberMountType caches t as the type of the mount whose unique id is key
// (the whole cache is dropped when full).
func rememberMountType(key uint64, t string) {
	mountTypes.Lock()
	defer mountTypes.Unlock()
	if mountTypes.byID == nil || len(mountTypes.byID) >= maxMountTypes {
		mountTypes.byID = map[uint64]string{}
	}
	mountTypes.byID[key] = t
}

// statmountType asks the kernel the type of the mount whose unique id is mnt: in
// the daemon's namespace, then in process d's (an error wrapping ENOENT if in
// neither; mountinfo.ErrNoStatmount, or the ioctl's error, where the kernel
// cannot tell).
//
// Review 44: a stacking mount (overlay) is named with why latch does not trust
// it, if it does not (see mountinfo.StackedType).
func statmountType(d procDir, mnt uint64) (string, error) {
	t, err := mountinfo.StatmountType(mnt, 0)
	if !errors.Is(err, unix.ENOENT) {
		if err == nil && mountinfo.Stacking(t) {
			t = mountinfo.StackedType(mnt, 0, t)
		}
		return t, err
	}
	fd, err := unix.Openat(d.fd, "ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("/proc/%d/ns/mnt: %w", d.pid, err)
	}
	ns, err := mountinfo.NoteNamespace(fd)
	unix.Close(fd)
	if err != nil {
		return "", fmt.Errorf("/proc/%d/ns/mnt: %w", d.pid, err)
	}
	t, err = mountinfo.StatmountType(mnt, ns)
	if err == nil && mountinfo.Stacking(t) {
		t = mountinfo.StackedType(mnt, ns, t)
	}
	return t, err
}

// maxOwnTable bounds the mount table of a process's own namespace read where
// the kernel cannot name a mount by id (before Linux 6.8, or 6.11 for another
// namespace): a larger table is not read, and the program's file system is one
// latch cannot name (unverified, unhashable), as a user who made it chose.
const maxOwnTable = 256 << 10

// mountTypeIn looks the old mount id up in the daemon's mount table, then in the
// mount table of process d (a mount of another namespace).
func mountTypeIn(d procDir, old uint64) (string, bool) {
	if b, err := readAll(unix.AT_FDCWD, "/proc/self/mountinfo"); err == nil {
		if t, ok := mountinfoType(b, old); ok {
			return t, true
		}
	}
	if b, err := mountinfo.ReadMax(d.fd, "mountinfo", maxOwnTable); err == nil {
		if t, ok := mountinfoType(b, old); ok {
			return t, true
		}
	}
	return "", false
}

// readAll reads a (proc) file, at most 16 MiB of it.
func readAll(dir int, name string) ([]byte, error) { return mountinfo.ReadMax(dir, name, 16<<20) }

// mountinfoType finds the line of mount id in a mountinfo and returns its file
// system type (see mountinfo.TypeOf).
func mountinfoType(b []byte, id uint64) (string, bool) { return mountinfo.TypeOf(b, id) }
