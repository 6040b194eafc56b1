//go:build linux

package containername

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/mountinfo"
)

// Options configure a Reader. The zero value reads the host's default locations.
type Options struct {
	// Root is the directory the runtimes' paths are under: "" is "/". Tests point it
	// at a fake tree. The root itself and its ancestors are not checked.
	Root string
	// Home returns a user's home directory (absolute); nil looks it up in the
	// account database.
	Home func(uid uint32) (string, error)
	// Interval is how often a cached state file is looked at again at most (default
	// DefaultInterval).
	Interval time.Duration
	// MaxFiles bounds how many state files are cached (default DefaultMaxFiles); the
	// least recently used is dropped beyond it.
	MaxFiles int
	// Logf, if set, is told once per version of a system runtime's state file that
	// latch refuses to trust or cannot parse (never for a missing file, and never
	// for a user's own files, which that user may rewrite at will).
	Logf func(format string, args ...any)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Defaults of Options.
const (
	DefaultInterval = time.Second
	DefaultMaxFiles = 4096
	// MaxFileSize bounds a state file latch reads; a larger one gives no names.
	MaxFileSize = 16 << 20
	// MaxUserFileSize bounds a state file of a user's own (rootless) runtime, which
	// that user may rewrite at will: each version is read and parsed again (a
	// containers.json entry is about 1 KiB, so this holds about MaxUserNames).
	MaxUserFileSize = 2 << 20
	// MaxNameLen bounds a name; a longer one is not reported.
	MaxNameLen = 255
	// MaxUserNames bounds the names kept from one state file of a user's own
	// (rootless) runtime, which that user may fill at will: the first entries of
	// the file are kept, a container beyond them gives no name. Root's files are
	// the system runtime's and are kept whole.
	MaxUserNames = 1024
)

// podmanDrivers are the containers/storage drivers whose DRIVER-containers directory
// is looked in.
var podmanDrivers = []string{"overlay", "vfs", "btrfs", "zfs"}

// Reader looks container names up. It is safe for concurrent use.
type Reader struct {
	o      Options
	mu     sync.Mutex
	files  map[string]*stateFile // by path below Root
	homes  map[uint32]string
	labels map[string]labelEntry // the answer for a label, while its files are not due
}

// labelEntry is a label's name and when the oldest state file it came from was
// checked: it holds exactly as long as looking again would find that file cached.
type labelEntry struct {
	name    string
	checked time.Time
}

// stateFile is one cached state file.
type stateFile struct {
	id         fileID
	names      map[string]string // container id → name; nil when missing or refused
	checked    time.Time         // when id was last compared with the file
	used       time.Time
	refreshing chan struct{} // non-nil while a goroutine refreshes; closed when it is done
}

// fileID is what tells one version of a file from another.
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
	uid          uint32
	mode         uint32
}

// New returns a Reader.
func New(o Options) *Reader {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Home == nil {
		o.Home = lookupHome
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Reader{o: o, files: map[string]*stateFile{}, homes: map[uint32]string{}, labels: map[string]labelEntry{}}
}

func lookupHome(uid uint32) (string, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return "", err
	}
	return u.HomeDir, nil
}

// Name returns the name of the container labelled label as procattr labels it
// ("docker:ID", "podman:ID", "docker@UID:ID", "podman@UID:ID" with a 64-digit hex
// ID), or "" if the runtime's state names none, cannot be trusted, or label is of
// another runtime.
func (r *Reader) Name(label string) string {
	if !strings.HasPrefix(label, "docker") && !strings.HasPrefix(label, "podman") {
		return ""
	}
	now := r.o.Now()
	r.mu.Lock()
	e, ok := r.labels[label]
	r.mu.Unlock()
	if ok && r.fresh(e.checked, now) {
		return e.name
	}
	name, checked := r.resolve(label, now)
	r.mu.Lock()
	if len(r.labels) >= r.o.MaxFiles {
		clear(r.labels)
	}
	r.labels[label] = labelEntry{name, checked}
	r.mu.Unlock()
	return name
}

// fresh reports whether something checked at checked needs no new look at now.
func (r *Reader) fresh(checked, now time.Time) bool {
	d := now.Sub(checked)
	return !checked.IsZero() && d >= 0 && d < r.o.Interval
}

// resolve looks label up in its runtime's state files; checked is when the oldest
// file it looked in was last checked (now for a label of no runtime's).
func (r *Reader) resolve(label string, now time.Time) (name string, checked time.Time) {
	rt, id, ok := strings.Cut(label, ":")
	if !ok || !IsID(id) {
		return "", now
	}
	owner := uint32(0)
	if name, uid, ok := strings.Cut(rt, "@"); ok {
		n, err := strconv.ParseUint(uid, 10, 32)
		if err != nil || n == 0 {
			return "", now
		}
		rt, owner = name, uint32(n)
	}
	if rt != "docker" && rt != "podman" {
		return "", now
	}
	// podman's graph root, then its run root (a transient store keeps its
	// containers there).
	var bases [2]string
	switch {
	case owner == 0 && rt == "docker":
		return r.lookup("/var/lib/docker/containers/"+id+"/config.v2.json", owner, id, parseDocker)
	case owner == 0:
		bases = [2]string{"/var/lib/containers/storage", "/run/containers/storage"}
	default:
		home, ok := r.home(owner)
		if !ok {
			return "", now
		}
		if rt == "docker" {
			return r.lookup(home+"/.local/share/docker/containers/"+id+"/config.v2.json", owner, id, parseDocker)
		}
		bases = [2]string{home + "/.local/share/containers/storage", "/run/user/" + strconv.FormatUint(uint64(owner), 10) + "/containers"}
	}
	checked = now
	parse := parsePodman
	if owner != 0 {
		parse = parseUserPodman
	}
	for _, base := range bases {
		for _, d := range podmanDrivers {
			for _, f := range []string{"containers.json", "volatile-containers.json"} {
				n, c := r.lookup(base+"/"+d+"-containers/"+f, owner, id, parse)
				if c.Before(checked) {
					checked = c
				}
				if n != "" {
					return n, checked
				}
			}
		}
	}
	return "", checked
}

// home is uid's home directory, cached; false if it has none latch uses.
func (r *Reader) home(uid uint32) (string, bool) {
	r.mu.Lock()
	h, ok := r.homes[uid]
	r.mu.Unlock()
	if !ok {
		var err error
		if h, err = r.o.Home(uid); err != nil || !filepath.IsAbs(h) {
			h = ""
		}
		r.mu.Lock()
		if len(r.homes) >= r.o.MaxFiles {
			clear(r.homes)
		}
		r.homes[uid] = h
		r.mu.Unlock()
	}
	return h, h != "" && h != "/"
}

// lookup returns id's name in the state file at path, refreshing the cached file
// when it is due, and when the file was last checked.
func (r *Reader) lookup(path string, owner uint32, id string, parse func([]byte, string) map[string]string) (string, time.Time) {
	now := r.o.Now()
	r.mu.Lock()
	f := r.files[path]
	if f == nil {
		r.evict()
		f = &stateFile{}
		r.files[path] = f
	}
	f.used = now
	if wait := f.refreshing; wait != nil && f.checked.IsZero() {
		// Nothing cached yet: wait for the first read.
		r.mu.Unlock()
		<-wait
		r.mu.Lock()
	}
	if f.refreshing != nil || r.fresh(f.checked, now) {
		n, c := f.names[id], f.checked
		r.mu.Unlock()
		return n, c
	}
	done := make(chan struct{})
	f.refreshing = done
	old := f.id
	r.mu.Unlock()

	newID, names, changed := r.refresh(path, owner, old, parse)

	r.mu.Lock()
	f.refreshing = nil
	close(done)
	f.checked = now
	if changed {
		f.id, f.names = newID, names
	}
	n := f.names[id]
	r.mu.Unlock()
	return n, now
}

// evict drops the least recently used file when the cache is full. r.mu is held.
func (r *Reader) evict() {
	if len(r.files) < r.o.MaxFiles {
		return
	}
	var oldest string
	var t time.Time
	for p, f := range r.files {
		if f.refreshing != nil {
			continue
		}
		if oldest == "" || f.used.Before(t) {
			oldest, t = p, f.used
		}
	}
	delete(r.files, oldest)
}

// refresh opens the file at path if it is trusted and, when it is another version
// than old, reads and parses it. changed is false when the version is old's.
func (r *Reader) refresh(path string, owner uint32, old fileID, parse func([]byte, string) map[string]string) (id fileID, names map[string]string, changed bool) {
	fd, id, err := openTrusted(r.o.Root, path, owner)
	if err != nil {
		if id != old && owner == 0 && r.o.Logf != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			r.o.Logf("container names: %s: %v (no names from it)", path, err)
		}
		return id, nil, id != old
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if id == old {
		return id, nil, false
	}
	limit := maxSize(owner)
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(data)) > limit {
		err = fmt.Errorf("larger than %d bytes", limit)
	}
	if err == nil {
		if names = parse(data, filepath.Base(filepath.Dir(path))); names == nil {
			err = errors.New("not the runtime's JSON")
		}
	}
	if err != nil {
		if owner == 0 && r.o.Logf != nil {
			r.o.Logf("container names: %s: %v (no names from it)", path, err)
		}
		return id, map[string]string{}, true
	}
	return id, names, true
}

// openTrusted opens root+path for reading if every directory from root down is owned
// by root or owner and writable by no one else, and the file is a regular file owned
// by owner, writable by no one else, no larger than maxSize(owner); no symbolic link is
// followed. On an error, id is still the version found (zero if none), so a file
// refused once is not looked at again until it changes.
//
// Review 43: the walk is mountinfo.Walk's (as fileperm's): each component is opened
// with O_PATH and its file system told from its mount id before anything is asked of
// it, so a FUSE or network mount on the way (a user's own at ~/.local, whose server
// may never answer) is refused without a request to it: no name from there. The
// file is opened for reading (through /proc/self/fd) only once it is known to be a
// regular file of the right size.
func openTrusted(root, path string, owner uint32) (fd int, id fileID, err error) {
	for _, c := range strings.Split(strings.Trim(path, "/"), "/") {
		if c == "" || c == "." || c == ".." {
			return -1, fileID{}, fmt.Errorf("path %q: not a plain path", path)
		}
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fileID{}, err
	}
	defer unix.Close(rfd)
	var st unix.Stat_t
	pfd, err := mountinfo.Walk(rfd, path, func(at string, s *unix.Stat_t, last bool) error {
		if !last {
			if s.Uid != 0 && s.Uid != owner || s.Mode&0o022 != 0 {
				return fmt.Errorf("directory %s (owner %d, mode %o): %w", at, s.Uid, s.Mode&0o7777, errUntrusted)
			}
			return nil
		}
		st = *s
		return nil
	})
	if err != nil {
		return -1, fileID{}, err
	}
	defer unix.Close(pfd)
	id = fileID{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim, uid: st.Uid, mode: st.Mode}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = fmt.Errorf("not a regular file (mode %o): %w", st.Mode, errUntrusted)
	case st.Uid != owner:
		err = fmt.Errorf("owned by uid %d, not %d: %w", st.Uid, owner, errUntrusted)
	case st.Mode&0o022 != 0:
		err = fmt.Errorf("writable by group or others (mode %o): %w", st.Mode&0o7777, errUntrusted)
	case st.Size > maxSize(owner):
		err = fmt.Errorf("%d bytes, more than %d", st.Size, maxSize(owner))
	}
	if err != nil {
		return -1, id, err
	}
	fd, err = unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, id, err
	}
	var rst unix.Stat_t
	if err := unix.Fstat(fd, &rst); err != nil || rst.Dev != st.Dev || rst.Ino != st.Ino {
		unix.Close(fd)
		if err == nil {
			err = errors.New("another file than the one checked")
		}
		return -1, id, err
	}
	return fd, id, nil
}

var errUntrusted = errors.New("not trusted")

// maxSize is the largest state file latch reads of owner's: MaxFileSize for root's
// runtime, MaxUserFileSize for a user's own.
func maxSize(owner uint32) int64 {
	if owner != 0 {
		return MaxUserFileSize
	}
	return MaxFileSize
}

// parseDocker reads a docker config.v2.json; dir is its directory's name, the
// container's id. nil if it is not such a file.
func parseDocker(data []byte, dir string) map[string]string {
	var c struct {
		ID   string  `json:"ID"`
		Name *string `json:"Name"`
	}
	if err := json.Unmarshal(data, &c); err != nil || c.Name == nil {
		return nil
	}
	names := map[string]string{}
	// The file in the container's directory is that container's: an ID inside that
	// says otherwise is not believed.
	if c.ID == "" || c.ID == dir {
		if n := strings.TrimPrefix(*c.Name, "/"); validName(n) {
			names[dir] = n
		}
	}
	return names
}

// parsePodman reads a containers/storage containers.json: an array of containers
// with "id" and "names". nil if it is not such a file.
func parsePodman(data []byte, _ string) map[string]string {
	return parsePodmanMax(data, 0)
}

// parseUserPodman is parsePodman for a user's own file: at most MaxUserNames names,
// the first ones.
func parseUserPodman(data []byte, _ string) map[string]string {
	return parsePodmanMax(data, MaxUserNames)
}

// parsePodmanMax is parsePodman keeping the first max names (0: all).
func parsePodmanMax(data []byte, max int) map[string]string {
	if !bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("[")) {
		return nil
	}
	var cs []struct {
		ID    string   `json:"id"`
		Names []string `json:"names"`
	}
	if err := json.Unmarshal(data, &cs); err != nil {
		return nil
	}
	size := len(cs)
	if max > 0 && size > max {
		size = max
	}
	names := make(map[string]string, size)
	for _, c := range cs {
		if max > 0 && len(names) >= max {
			break
		}
		if IsID(c.ID) && len(c.Names) > 0 && validName(c.Names[0]) {
			names[c.ID] = c.Names[0]
		}
	}
	return names
}

// validName reports whether n is a name latch reports: 1 to MaxNameLen bytes. Its
// bytes are otherwise kept as they are (text output escapes them).
func validName(n string) bool {
	return n != "" && len(n) <= MaxNameLen
}

// IsID reports whether s is a 64-digit lower-case hex id, as docker, podman,
// containerd and CRI-O name containers.
func IsID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
