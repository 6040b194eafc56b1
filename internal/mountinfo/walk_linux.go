package mountinfo

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// UntrustedError says that a walk met a mount of a file system latch does not
// enter (see Untrusted).
type UntrustedError struct {
	Path   string // the path walked
	At     string // the directory (or file) on that mount, as far as the walk got
	FSType string // its type ("" if no mount table names it)
}

func (e *UntrustedError) Error() string {
	t := e.FSType
	if t == "" {
		t = "a file system no mount table names"
	}
	return fmt.Sprintf("%s: %s is on %s, whose server latch does not ask (it may never answer)", e.Path, e.At, t)
}

// uniqueIDs says whether statx gives mounts' unique ids (STATX_MNT_ID_UNIQUE,
// Linux 6.8+), which no later mount takes.
var uniqueIDs = sync.OnceValue(func() bool {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, "/", 0, unix.STATX_MNT_ID_UNIQUE, &stx)
	return err == nil && stx.Mask&unix.STATX_MNT_ID_UNIQUE != 0
})

// types caches mounts' file system types: by unique id where the kernel gives
// them (never reused); else by old id, forgotten at every change of the mount
// tables watched (changed).
var types struct {
	sync.Mutex
	byID    map[uint64]string
	watched []int // /proc/self/mountinfo, /proc/1/mountinfo, open for poll
	opened  bool
}

const maxTypes = 4096

// changedLocked reports whether a watched mount table changed since the last
// call (poll gives POLLPRI once per change). Call with types held.
func changedLocked() bool {
	if !types.opened {
		types.opened = true
		for _, p := range []string{"/proc/self/mountinfo", "/proc/1/mountinfo"} {
			if fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
				types.watched = append(types.watched, fd)
			}
		}
		return true
	}
	if len(types.watched) == 0 {
		return true
	}
	fds := make([]unix.PollFd, len(types.watched))
	for i, fd := range types.watched {
		fds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLPRI}
	}
	n, err := unix.Poll(fds, 0)
	return err != nil || n > 0
}

// FSType returns the type of the file system fd (any descriptor, O_PATH too) is
// on, without a request to that file system: "" where no mount table (the
// daemon's, then process 1's) names its mount.
func FSType(fd int) (string, error) { return fsType(fd, 0) }

// fsType is FSType checking stacking mounts' layers (see StackedType) at
// nesting depth depth.
func fsType(fd, depth int) (string, error) {
	const flags = unix.AT_EMPTY_PATH | unix.AT_STATX_DONT_SYNC
	var stx unix.Statx_t
	var key uint64
	uniq := uniqueIDs()
	if uniq {
		if err := unix.Statx(fd, "", flags, unix.STATX_MNT_ID_UNIQUE, &stx); err != nil {
			return "", fmt.Errorf("statx: %w", err)
		}
		if stx.Mask&unix.STATX_MNT_ID_UNIQUE == 0 {
			uniq = false
		} else {
			key = stx.Mnt_id
			types.Lock()
			t, ok := types.byID[key]
			types.Unlock()
			if ok {
				return t, nil
			}
		}
	}
	if uniq {
		// Review 43: the kernel names the type of a mount by its unique id
		// (statmount, Linux 6.8+): no mount table is read, whatever its size.
		// A mount of process 1's namespace (the daemon in one of its own) is
		// asked of that namespace.
		t, _, dev, err := statmountDev(key, 0, false)
		var ns uint64
		if errors.Is(err, unix.ENOENT) {
			var nerr error
			if ns, nerr = hostNamespace(); nerr == nil {
				t, _, dev, err = statmountDev(key, ns, false)
			}
		}
		switch {
		case err == nil:
			if !Stacking(t) && !Untrusted(t) {
				// Review 46: a block device over a file or a server.
				t = blockType(dev[0], dev[1], t)
			}
			if Stacking(t) {
				// Review 44: an overlay is its layers.
				t = stackedType(key, ns, t, depth)
				if depth > 0 {
					return t, nil
				}
			}
			types.Lock()
			if types.byID == nil || len(types.byID) >= maxTypes {
				types.byID = map[uint64]string{}
			}
			types.byID[key] = t
			types.Unlock()
			return t, nil
		case errors.Is(err, unix.ENOENT):
			return "", nil // in no namespace the daemon looks in
		}
		// No statmount (or a refused one): the mount tables.
	}
	// The old id, which mountinfo lists (the descriptor holds its mount: the id
	// is that mount's between the two statx).
	if err := unix.Statx(fd, "", flags, unix.STATX_MNT_ID, &stx); err != nil {
		return "", fmt.Errorf("statx: %w", err)
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return "", errors.New("statx: the kernel gives no mount id")
	}
	old := stx.Mnt_id
	if !uniq {
		key = old
	}
	types.Lock()
	defer types.Unlock()
	if !uniq {
		if changedLocked() {
			types.byID = nil
		} else if t, ok := types.byID[key]; ok {
			return t, nil
		}
	}
	t, ok := lookup(old)
	if !ok {
		return "", nil
	}
	if Stacking(t) && !RootMount(old) {
		// Review 44: no statmount to tell its layers.
		t += " over layers latch cannot tell"
	} else if !Stacking(t) && !Untrusted(t) {
		// Review 46: the file's device (a btrfs subvolume's is its own,
		// anonymous: the device below is not checked there).
		t = blockType(stx.Dev_major, stx.Dev_minor, t)
	}
	if types.byID == nil || len(types.byID) >= maxTypes {
		types.byID = map[uint64]string{}
	}
	types.byID[key] = t
	return t, nil
}

// hostNamespace is the id of process 1's mount namespace (see NamespaceID).
var hostNamespace = sync.OnceValues(func() (uint64, error) {
	fd, err := unix.Open("/proc/1/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return NoteNamespace(fd)
})

// lookup finds the old mount id in the daemon's mount table, then in process
// 1's (the host's, where the daemon runs in a mount namespace of its own).
func lookup(old uint64) (string, bool) {
	for _, p := range []string{"/proc/self/mountinfo", "/proc/1/mountinfo"} {
		if b, err := readFile(p); err == nil {
			if t, ok := TypeOf(b, old); ok {
				return t, true
			}
		}
	}
	return "", false
}

// readFile reads a proc file, at most 16 MiB of it.
func readFile(name string) ([]byte, error) { return ReadMax(unix.AT_FDCWD, name, 16<<20) }

// ReadMax reads the file name (relative to the directory dir, or AT_FDCWD) with
// plain reads, as proc files are read, and at most max bytes of it: a longer
// file is an error.
func ReadMax(dir int, name string, max int) ([]byte, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 16<<10)
	for len(buf) <= max {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
	return nil, fmt.Errorf("%s: over %d bytes", name, max)
}

// checkFD returns an *UntrustedError if fd is on a file system latch does not
// enter (or whose type cannot be told).
func checkFD(fd int, path, at string) error { return checkAt(fd, path, at, 0) }

// checkAt is checkFD at stacking depth depth (see fsType).
func checkAt(fd int, path, at string, depth int) error {
	t, err := fsType(fd, depth)
	if err != nil {
		return fmt.Errorf("%s: the file system of %s: %w", path, at, err)
	}
	if Untrusted(t) {
		return &UntrustedError{Path: path, At: at, FSType: t}
	}
	return nil
}

// slash is an O_PATH descriptor of the daemon's root directory, and whether its
// file system is one latch enters (the descriptor holds the mount: it does not
// change).
var slash func() (int, error)

func init() { slash = sync.OnceValues(openSlash) }

func openSlash() (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /: %w", err)
	}
	if err := checkFD(fd, "/", "/"); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// roots remembers the root descriptors found on a trusted file system (a root
// a caller keeps open for the life of the process, as procattr's host root).
var roots sync.Map // int -> struct{}

// Open opens path, relative to the directory root (AT_FDCWD: the daemon's root
// directory; a path is taken as relative to root either way), with O_PATH and
// without following any symbolic link (ELOOP), and without looking into any
// directory on a file system Untrusted names (an *UntrustedError): each mount
// the walk enters is told by its mount id (FSType) before anything is looked up
// in it, and the file itself must be on such a mount too. No component may be
// "..". root must stay open as long as the process runs (its check is
// remembered) unless it is AT_FDCWD.
//
// The walk asks openat2 (RESOLVE_NO_XDEV) for as much of the path as stays on
// one mount, and steps one component (openat O_PATH, which sends the mounted
// file system no request) where it crosses a mount point; a kernel without
// openat2 steps through every component.
func Open(root int, path string) (int, error) { return open(root, path, 0) }

// open is Open checking stacking mounts at depth depth (see fsType); at a depth
// above 0 root is checked anew (it is not kept).
func open(root int, path string, depth int) (int, error) {
	return openAt(root, path, depth, false)
}

// linkError is what openAt with follow returns for a symbolic link on the way:
// At is the path up to and including the link (on a mount whose type was
// checked), Rest what follows it, Target what the link says.
type linkError struct {
	At, Rest, Target string
}

func (e *linkError) Error() string {
	return fmt.Sprintf("%s is a symbolic link to %s", e.At, e.Target)
}

// The lookups Open makes (a test counts the components they resolve).
var (
	openat2 = unix.Openat2
	openat  = unix.Openat
)

// openAt is open; with follow, a symbolic link on the way (on a mount already
// checked) is read through its O_PATH descriptor (readlinkat, no walk into
// its target) and reported as a *linkError instead of ELOOP.
func openAt(root int, path string, depth int, follow bool) (int, error) {
	rest := strings.TrimLeft(path, "/")
	if rest == "" {
		rest = "."
	}
	if !plain(rest) {
		return -1, fmt.Errorf("%s: %w (a path with an empty or \"..\" component)", path, unix.EINVAL)
	}
	dir := root
	if root == unix.AT_FDCWD {
		fd, err := slash()
		if err != nil {
			return -1, err
		}
		dir = fd
	} else if depth > 0 {
		if err := checkAt(root, path, "the root it is walked from", depth); err != nil {
			return -1, err
		}
	} else if _, ok := roots.Load(root); !ok {
		if err := checkFD(root, path, "the root it is walked from"); err != nil {
			return -1, err
		}
		roots.Store(root, struct{}{})
	}
	own := false // dir is the walk's to close
	closeDir := func() {
		if own {
			unix.Close(dir)
		}
	}
	noOpenat2 := false
	dirMnt, haveMnt := uint64(0), false // dir's mount id, once known
	for rest != "" {
		if !noOpenat2 {
			how := unix.OpenHow{
				Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
				Resolve: unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_BENEATH,
			}
			fd, err := openat2(dir, rest, &how)
			switch {
			case err == nil:
				// All on dir's mount, which was checked.
				closeDir()
				if follow {
					// O_PATH|O_NOFOLLOW opens a trailing link itself.
					_, mode, err := mountOf(fd)
					if err != nil {
						unix.Close(fd)
						return -1, fmt.Errorf("%s: statx: %w", path, err)
					}
					if mode == unix.S_IFLNK {
						target, err := readlinkFD(fd)
						unix.Close(fd)
						if err != nil {
							return -1, fmt.Errorf("%s: readlink: %w", path, err)
						}
						return -1, &linkError{At: strings.TrimSuffix(path, "/"), Target: target}
					}
				}
				return fd, nil
			case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) && !own:
				// No openat2 (Linux before 5.6, or a seccomp filter that
				// refuses it): one component at a time.
				noOpenat2 = true
			case errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EAGAIN) ||
				follow && errors.Is(err, unix.ELOOP):
				// A mount point on the way (or a rename raced the walk):
				// step through components up to the next mount crossed.
			default:
				closeDir()
				return -1, err
			}
		}
		if !haveMnt {
			var err error
			if dirMnt, _, err = mountOf(dir); err != nil {
				closeDir()
				return -1, fmt.Errorf("%s: statx: %w", path, err)
			}
			haveMnt = true
		}
		// Review 43: step one component at a time (openat O_PATH, which sends the
		// mounted file system no request) until one is on another mount than its
		// directory, whose type is checked; only then is openat2 asked for the
		// rest again. Each component is looked up once per crossing at most: a
		// walk is linear in the path's length however deep the mount is.
		for rest != "" {
			name := rest
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				name, rest = rest[:i], rest[i+1:]
			} else {
				rest = ""
			}
			fd, err := openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			closeDir()
			if err != nil {
				return -1, err
			}
			dir, own = fd, true
			at := strings.TrimSuffix(path[:len(path)-len(rest)], "/")
			mnt, mode, err := mountOf(fd)
			if err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("%s: statx %s: %w", path, at, err)
			}
			crossed := mnt != dirMnt
			if crossed {
				if err := checkAt(fd, path, at, depth); err != nil {
					unix.Close(fd)
					return -1, err
				}
				dirMnt = mnt
			}
			switch {
			case mode == unix.S_IFLNK && follow:
				target, err := readlinkFD(fd)
				unix.Close(fd)
				if err != nil {
					return -1, fmt.Errorf("%s: readlink %s: %w", path, at, err)
				}
				return -1, &linkError{At: at, Rest: rest, Target: target}
			case mode == unix.S_IFLNK:
				unix.Close(fd)
				return -1, unix.ELOOP
			case mode != unix.S_IFDIR && rest != "":
				unix.Close(fd)
				return -1, unix.ENOTDIR
			}
			if crossed && !noOpenat2 {
				break
			}
		}
	}
	return dir, nil
}

// readlinkFD returns the target of the symbolic link fd (an O_PATH descriptor
// of the link itself), at most PATH_MAX bytes.
func readlinkFD(fd int) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return "", err
	}
	if n >= len(buf) {
		return "", unix.ENAMETOOLONG
	}
	if n == 0 {
		return "", unix.ENOENT
	}
	return string(buf[:n]), nil
}

// mountOf returns the mount id of fd (the unique one where the kernel gives it)
// and its file type (S_IFMT bits), from a statx with AT_STATX_DONT_SYNC (no
// request to the file system).
func mountOf(fd int) (uint64, uint32, error) {
	mask := uint32(unix.STATX_TYPE | unix.STATX_MNT_ID)
	if uniqueIDs() {
		mask = unix.STATX_TYPE | unix.STATX_MNT_ID_UNIQUE
	}
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, int(mask), &stx); err != nil {
		return 0, 0, err
	}
	if stx.Mask&(unix.STATX_MNT_ID|unix.STATX_MNT_ID_UNIQUE) == 0 {
		return 0, 0, errors.New("the kernel gives no mount id")
	}
	return stx.Mnt_id, uint32(stx.Mode) & unix.S_IFMT, nil
}

// plain reports whether the relative path p has no empty and no ".." component.
func plain(p string) bool {
	for p != "" {
		name := p
		if i := strings.IndexByte(p, '/'); i >= 0 {
			name, p = p[:i], p[i+1:]
			if p == "" {
				return false // a trailing slash
			}
		} else {
			p = ""
		}
		if name == "" || name == ".." {
			return false
		}
	}
	return true
}

// Walk opens path below the directory root (a path is taken as relative to root)
// one component at a time with openat O_PATH|O_NOFOLLOW, and returns an O_PATH
// descriptor of its last component. Before anything is asked of a component (a
// stat, a lookup in it) the file system it is on is told without a request to it
// (FSType): one Untrusted names is refused (an *UntrustedError), so the walk never
// waits on a FUSE or network file system's server; root's is checked the same way.
// visit is called for each component with its path so far, an fstat of it and
// whether it is the last one; an error from it ends the walk (returned as is). A
// symbolic link on the way is refused (ELOOP), as is a non-directory before the
// end (ENOTDIR) and an empty, "." or ".." component (EINVAL).
//
// Walk is for callers that check every directory on the way (fileperm,
// containername); Open is the cheaper walk that checks only file systems.
func Walk(root int, path string, visit func(at string, st *unix.Stat_t, last bool) error) (int, error) {
	rest := strings.Trim(path, "/")
	if rest == "" || !plain(rest) || strings.Contains("/"+rest+"/", "/./") {
		return -1, fmt.Errorf("%s: %w (not a plain path to a file)", path, unix.EINVAL)
	}
	if err := checkFD(root, path, "the root it is walked from"); err != nil {
		return -1, err
	}
	dir, own := root, false
	at := ""
	for rest != "" {
		name := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			name, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		at += "/" + name
		fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if own {
			unix.Close(dir)
		}
		if err != nil {
			return -1, fmt.Errorf("%s: %s: %w", path, at, err)
		}
		dir, own = fd, true
		if err := checkFD(fd, path, at); err != nil {
			unix.Close(fd)
			return -1, err
		}
		// Review 44: a statx with AT_STATX_DONT_SYNC, not fstat: a stacking
		// file system checked above asks its layers nothing more for it.
		st, err := statDontSync(fd)
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: stat %s: %w", path, at, err)
		}
		last := rest == ""
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %s is a symbolic link, which is not followed here: %w", path, at, unix.ELOOP)
		case unix.S_IFDIR:
		default:
			if !last {
				unix.Close(fd)
				return -1, fmt.Errorf("%s: %s: %w", path, at, unix.ENOTDIR)
			}
		}
		if visit != nil {
			if err := visit(at, st, last); err != nil {
				unix.Close(fd)
				return -1, err
			}
		}
	}
	return dir, nil
}

// statDontSync stats fd (AT_EMPTY_PATH) with AT_STATX_DONT_SYNC, in a Stat_t.
func statDontSync(fd int) (*unix.Stat_t, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_BASIC_STATS, &stx); err != nil {
		return nil, err
	}
	st := &unix.Stat_t{
		Ino:  stx.Ino,
		Mode: uint32(stx.Mode),
		Uid:  stx.Uid,
		Gid:  stx.Gid,
		Size: int64(stx.Size),
		Atim: unix.NsecToTimespec(stx.Atime.Sec*1e9 + int64(stx.Atime.Nsec)),
		Mtim: unix.NsecToTimespec(stx.Mtime.Sec*1e9 + int64(stx.Mtime.Nsec)),
		Ctim: unix.NsecToTimespec(stx.Ctime.Sec*1e9 + int64(stx.Ctime.Nsec)),
	}
	// Field types that differ between architectures.
	set(&st.Dev, unix.Mkdev(stx.Dev_major, stx.Dev_minor))
	set(&st.Rdev, unix.Mkdev(stx.Rdev_major, stx.Rdev_minor))
	set(&st.Nlink, uint64(stx.Nlink))
	return st, nil
}

func set[T ~uint32 | ~uint64](dst *T, v uint64) { *dst = T(v) }
