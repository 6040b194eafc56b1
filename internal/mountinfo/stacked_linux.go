package mountinfo

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Review 44: a stacking file system (overlay, ecryptfs, shiftfs, aufs) passes
// stats, lookups and reads of its files to the mounts of its layers: an overlay
// whose lower layer is a FUSE mount is served by that FUSE server, and stalls
// when it does not answer. Any user can build one (`unshare -Urm`: overlay and
// FUSE both mount in a user namespace). So a stacking mount is trusted only
//   - where its mount namespace belongs to the daemon's (the host's) user
//     namespace (root made it: Docker's overlay2, a live system's root), and
//   - each of its layers (overlay's lowerdir, upperdir, workdir, from statmount's
//     mount options, Linux 6.11+) is found, by Open from the host's root
//     following symbolic links (openLayer), on a file system latch trusts (a nested stacking mount checked the same way,
//     to a depth of maxStackDepth);
//   - or it is the mount of the daemon's or process 1's root directory.
// Any other is refused: its type is given as "<type> <why>" (a type with a
// space, which Untrusted names).

// maxStackDepth bounds the nesting of stacking mounts checked (overlay over
// overlay ...).
const maxStackDepth = 2

// nsGetUserns is NS_GET_USERNS, _IO(0xb7, 0x1).
const nsGetUserns = 0xb701

// Stacking reports whether fstype is a file system that passes its files'
// stats and reads to other mounts (its layers).
func Stacking(fstype string) bool {
	switch fstype {
	case "overlay", "ecryptfs", "shiftfs", "aufs", "wrapfs":
		return true
	}
	return false
}

// StackedType returns fstype (a stacking type, see Stacking) if latch trusts
// the mount whose unique id is mnt, in the mount namespace nsID (0: the
// caller's), and otherwise fstype with why it does not ("overlay over
// fuse.sshfs"), which Untrusted names.
func StackedType(mnt, nsID uint64, fstype string) string {
	return stackedType(mnt, nsID, fstype, 0)
}

// rootMounts are the mount ids (unique and old: the kernel keeps them apart) of
// the daemon's and process 1's root directories.
var rootMounts = sync.OnceValue(func() map[uint64]bool {
	m := map[uint64]bool{}
	for _, p := range []string{"/", "/proc/1/root"} {
		for _, mask := range []int{unix.STATX_MNT_ID_UNIQUE, unix.STATX_MNT_ID} {
			var stx unix.Statx_t
			if unix.Statx(unix.AT_FDCWD, p, unix.AT_STATX_DONT_SYNC, mask, &stx) == nil && stx.Mask&uint32(mask) != 0 {
				m[stx.Mnt_id] = true
			}
		}
	}
	return m
})

// RootMount reports whether mnt (a unique or old mount id) is the mount of the
// daemon's or process 1's root directory.
func RootMount(mnt uint64) bool { return rootMounts()[mnt] }

// hostUserns is the inode of the daemon's user namespace (the host's: no user
// without privilege there mounts in a mount namespace it owns, but FUSE through
// fusermount3, which Untrusted names).
var hostUserns = sync.OnceValues(func() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
})

// hostOwned reports whether the mount namespace nsID (0: the daemon's) belongs
// to the host's user namespace.
func hostOwned(nsID uint64) bool {
	host, err := hostUserns()
	if err != nil {
		return false
	}
	if nsID == 0 {
		return true
	}
	// A mount namespace is named by its id; its owner is found through a
	// descriptor of it, which only a process in it gives: the caller passes
	// the process's namespace (see procattr), found again here by pid.
	owner, ok := nsOwners.Load(nsID)
	return ok && owner.(uint64) == host
}

// nsOwners maps mount namespace ids to their owning user namespaces' inodes
// (NoteNamespace).
var nsOwners sync.Map

// NoteNamespace records the owner of the mount namespace nsfd (an open
// /proc/PID/ns/mnt) and returns its id, for StackedType.
func NoteNamespace(nsfd int) (uint64, error) {
	id, err := NamespaceID(nsfd)
	if err != nil {
		return 0, err
	}
	if _, ok := nsOwners.Load(id); ok {
		return id, nil
	}
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(nsfd), nsGetUserns, 0)
	if e != 0 {
		return id, nil // owner unknown: stacking mounts there are refused
	}
	var st unix.Stat_t
	err = unix.Fstat(int(r), &st)
	unix.Close(int(r))
	if err == nil {
		nsOwners.Store(id, st.Ino)
	}
	return id, nil
}

func stackedType(mnt, nsID uint64, fstype string, depth int) string {
	if rootMounts()[mnt] {
		return fstype
	}
	if !hostOwned(nsID) {
		return fstype + " in a user namespace"
	}
	if fstype != "overlay" {
		return fstype + " over layers latch does not check"
	}
	if depth >= maxStackDepth {
		return fstype + " over stacked layers nested too deep"
	}
	_, opts, err := StatmountOpts(mnt, nsID)
	if err != nil {
		return fstype + " over layers latch cannot tell"
	}
	layers := overlayLayers(opts)
	if len(layers) == 0 {
		return fstype + " over layers latch cannot tell"
	}
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fstype + " over layers latch cannot tell"
	}
	defer unix.Close(root)
	for _, l := range layers {
		fd, err := openLayer(root, l, depth+1)
		if err != nil {
			if u, ok := err.(*UntrustedError); ok && u.FSType != "" {
				return fstype + " over " + u.FSType
			}
			return fstype + " over a layer latch cannot find (" + l + ")"
		}
		unix.Close(fd)
	}
	return fstype
}

// maxLayerLinks bounds the symbolic links openLayer follows for one layer.
const maxLayerLinks = 8

// openLayer is open for an overlay layer path, which must be absolute (a
// relative one is relative to the directory the mounter was in: latch cannot
// tell which), following symbolic links (Docker's overlay2 and containers/storage
// name layers by l/SHORTID links to ../ID/diff): the link is read on its
// checked mount, its target resolved lexically against the link's directory,
// and the walk starts over from root with the result, each walk checking every
// mount it enters as open does; at most maxLayerLinks links, each path at most
// PATH_MAX bytes.
func openLayer(root int, layer string, depth int) (int, error) {
	if !strings.HasPrefix(layer, "/") {
		return -1, fmt.Errorf("%s: %w (a relative layer path)", layer, unix.EINVAL)
	}
	p := layer
	for links := 0; ; links++ {
		fd, err := openAt(root, p, depth, true)
		var l *linkError
		if !errors.As(err, &l) {
			return fd, err
		}
		if links == maxLayerLinks {
			return -1, fmt.Errorf("%s: over %d symbolic links: %w", layer, maxLayerLinks, unix.ELOOP)
		}
		next := l.Target
		if !strings.HasPrefix(next, "/") {
			next = path.Dir("/"+l.At) + "/" + next
		}
		if l.Rest != "" {
			next += "/" + l.Rest
		}
		if len(next) > unix.PathMax {
			return -1, fmt.Errorf("%s: %w", layer, unix.ENAMETOOLONG)
		}
		p = path.Clean(next)
	}
}

// overlayLayers returns the layer paths an overlay's mount options name
// (lowerdir's, upperdir, workdir, datadir), unescaped; nil if an option is one
// latch cannot read or trust:
//   - a layer with a backslash in it (after the kernel's octal escapes are
//     undone): overlay takes "\" as an escape of the next character ("\:" a
//     colon inside a lowerdir path), which latch does not parse (review 46);
//   - lowerdir+ and datadir+ (the new mount API, one layer each): a layer given
//     there by descriptor (FSCONFIG_SET_FD) is shown as its path from the
//     mounter's root ("/" for a detached clone of a FUSE mount), which the
//     options do not tell from a layer given by path (review 46). The classic
//     form "lowerdir=a:b" (containerd, Docker, podman) stays checked.
func overlayLayers(opts string) []string {
	var out []string
	for _, o := range strings.Split(opts, ",") {
		k, v, ok := strings.Cut(o, "=")
		if !ok {
			continue
		}
		switch k {
		case "lowerdir", "upperdir", "workdir", "datadir":
		case "lowerdir+", "datadir+":
			return nil
		default:
			continue
		}
		for _, p := range strings.Split(v, ":") {
			if p == "" {
				continue // "::" before data-only layers
			}
			u, ok := unescape(p)
			if !ok || strings.Contains(u, `\`) {
				return nil
			}
			out = append(out, u)
		}
	}
	return out
}

// unescape undoes the kernel's octal escapes ("\040") of a mount option.
func unescape(s string) (string, bool) {
	if !strings.Contains(s, `\`) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", false
		}
		n, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(n))
		i += 3
	}
	return b.String(), true
}
