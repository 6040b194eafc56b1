package fastpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/mountinfo"
)

// The kernel's key for a program is its executable file, the file's directory and
// mount, not its name (see identify in fastpath.c). A running program renamed away
// within its directory ("prog" -> "prog.old", a self-updater's first step, or a
// renameat2(RENAME_EXCHANGE) with the new file) keeps that key, while attribution
// now names it by its new name, which the --app rule for "prog" does not match
// (review29, TestRenamedAwayExecutableHitsOldEntry). So the fast path watches,
// with inotify, every executable it stored decisions for, and when one is moved,
// deleted, linked or unlinked, or has its attributes changed (IN_MOVE_SELF,
// IN_DELETE_SELF, IN_ATTRIB; its file system unmounted, IN_UNMOUNT), or its
// directory (whose inode the key has) is moved or deleted, deletes the entries
// stored for the executables under that watch (review33: it bumped the
// generation, so any user touching a program of their own that a rule allows
// emptied every user's cache, TestReview33UserTouchDropsOthersEntries); the next
// connections are decided through the queue, which stores them again under a
// watch on the file then at the path. Only an overflow of the inotify queue (an
// event may be lost) and the bounds below bump the generation. IN_MODIFY is not
// watched: a running executable cannot be written (ETXTBSY), and a rule names a
// path, which the file changed in place still has (a rule pinned to the content,
// SHA256, turns caching off).
//
// The watches are asked of inotify at every store (review33,
// TestReview33DirSwapThenRenameAwayHitsOldEntry): inotify_add_watch returns the
// watch of the inode at the path now (the same descriptor for the same inode, a
// new one for another), so after a directory swap or a mount over the path the
// new program there gets a watch of its own, where a map from the path kept the
// old file's.
//
// inotify is asynchronous: between the rename and the daemon reading the event and
// deleting the entries (the watch goroutine; microseconds on an idle machine,
// longer under load) the renamed program's connects still hit. A decision stored
// concurrently is safe either way: the store (commit) and the event's handling
// take the same lock; an event handled after the watch was taken and before the
// commit makes the commit refuse, and one handled after it deletes what it
// stored.

// maxExeWatches bounds the watches at once (an executable takes one, and one
// more for its directory unless another executable there has it; counted against
// the kernel's per-user fs.inotify.max_user_watches), and twice Config.MaxEntries.
// At the bound the watches no decision is stored under are dropped, then the
// entries of the uid whose entries hold the most watches (per-uid fairness:
// review33, a user whose programs a rule allows could fill the bound with copies
// of one and so have every other user's decisions dropped); only if that frees
// nothing is every watch dropped and the generation bumped.
const maxExeWatches = 4096

// exeWatchMask is what a watch on an executable reports (IN_IGNORED, IN_UNMOUNT
// and IN_Q_OVERFLOW come always).
const exeWatchMask = unix.IN_MOVE_SELF | unix.IN_DELETE_SELF | unix.IN_ATTRIB

// watchState is one inotify watch (an executable or a directory).
type watchState struct {
	wd    int32
	paths map[string]struct{}   // the byPath keys that name it
	ids   map[identity]struct{} // the executables stored under it (file or directory)
}

// storedExe is an executable decisions were stored for: the watches it was
// stored under and the map keys stored.
type storedExe struct {
	path      string
	file, dir *watchState
	keys      map[fastpathFpKey]struct{}
}

// exeWatch is the fast path's inotify instance on the executables it stored
// decisions for, and the index of what was stored under each watch.
type exeWatch struct {
	f   *os.File
	raw interface {
		Control(func(fd uintptr)) error
	}
	max int
	// del deletes an entry from the verdicts map (a key not there is no error).
	del func(*fastpathFpKey) error

	mu      sync.Mutex
	byPath  map[string]*watchState // the watch a path (or dirKey+directory) had when last stored
	byWd    map[int32]*watchState
	ids     map[identity]*storedExe
	nkeys   int    // keys in ids
	maxKeys int    // bound of nkeys (the LRU map forgets keys unseen)
	epoch   uint64 // mount changes seen (dropUnder): a watch taken before one is not committed
	failed  bool   // an entry could not be deleted: the generation must be bumped

	// handled counts the events and mount changes that dropped entries (tests
	// wait for it).
	handled atomic.Uint64
}

// newExeWatch opens the inotify instance. del deletes a verdicts map entry;
// maxKeys bounds the map keys indexed.
func newExeWatch(max, maxKeys int, del func(*fastpathFpKey) error) (*exeWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("fast path: watch the executables: inotify_init1: %w", err)
	}
	f := os.NewFile(uintptr(fd), "fast path executable watch")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fast path: watch the executables: %w", err)
	}
	return &exeWatch{f: f, raw: raw, max: max, maxKeys: maxKeys, del: del,
		byPath: make(map[string]*watchState), byWd: make(map[int32]*watchState), ids: make(map[identity]*storedExe)}, nil
}

// errWatchesFull says that the watches (or the keys indexed) reached their bound
// and nothing could be freed for this uid: the caller drops them all and bumps
// the generation.
var errWatchesFull = errors.New("fast path: the executable watches reached their bound")

// watched is what watch took: the executable's and its directory's watches as
// they were, for commit.
type watched struct {
	file, dir *watchState
	epoch     uint64
}

// watch makes sure the file at path, and its directory, are watched (the kernel's
// key has the directory's inode, not its name: a running program whose directory
// is renamed keeps it too), asking inotify each time for the watch of the inode
// at the path now. It returns errWatchesFull at the bound (when nothing could be
// freed for uid), and an error when inotify refuses (fs.inotify.max_user_watches
// reached, the path gone): then the decision must not be stored.
//
// Review 39: the path is walked by mountinfo.Open (no symbolic link followed, no
// FUSE or network mount entered: a user's FUSE mount over a directory of the
// path would otherwise hold the daemon on a request its server never answers),
// and inotify is given the descriptors it opened (/proc/self/fd/N: no lookup).
func (w *exeWatch) watch(path string, uid uint32) (watched, error) {
	fd, err := mountinfo.Open(unix.AT_FDCWD, path)
	if err != nil {
		return watched{}, notWalkable(path, err)
	}
	defer unix.Close(fd)
	dfd, err := mountinfo.Open(unix.AT_FDCWD, filepath.Dir(path))
	if err != nil {
		return watched{}, notWalkable(filepath.Dir(path), err)
	}
	defer unix.Close(dfd)
	w.mu.Lock()
	defer w.mu.Unlock()
	file, err := w.addLocked(path, path, fd, exeWatchMask, uid)
	if err != nil {
		return watched{}, err
	}
	dir, err := w.addLocked(dirKey+filepath.Dir(path), filepath.Dir(path), dfd, dirWatchMask, uid)
	if err != nil {
		return watched{}, err
	}
	if w.byWd[file.wd] != file {
		// Making room for the directory's watch dropped the file's.
		return watched{}, fmt.Errorf("fast path: watch %s: its watch was dropped to make room for its directory's", path)
	}
	return watched{file: file, dir: dir, epoch: w.epoch}, nil
}

// errNotWalkable says that the path goes through a symbolic link or a FUSE or
// network mount (mountinfo.Open): no verified program's name does (verification
// walks it the same way), so the decision is not stored, and that is no error.
var errNotWalkable = errors.New("fast path: the executable's path goes through a symbolic link or a FUSE or network mount")

// notWalkable wraps mountinfo.Open's error for path: errNotWalkable where it says
// the path is not walked.
func notWalkable(path string, err error) error {
	var u *mountinfo.UntrustedError
	if errors.Is(err, unix.ELOOP) || errors.As(err, &u) {
		return fmt.Errorf("%w: %s: %w", errNotWalkable, path, err)
	}
	return fmt.Errorf("fast path: watch %s: %w", path, err)
}

// dirKey marks a directory's key in byPath (a mount point starts with "/").
const dirKey = "dir:"

// dirWatchMask is what a watch on an executable's directory reports: the
// directory itself moved or deleted, not its entries.
const dirWatchMask = unix.IN_MOVE_SELF | unix.IN_DELETE_SELF | unix.IN_ONLYDIR

// addLocked adds (or finds) the watch of the inode at path now, open as target
// (an O_PATH descriptor), and names it by key. Call with mu held.
func (w *exeWatch) addLocked(key, path string, target int, mask uint32, uid uint32) (*watchState, error) {
	var wd int
	var werr error
	if err := w.raw.Control(func(fd uintptr) {
		// IN_MASK_ADD: an inode that is also watched in another role keeps
		// its mask.
		wd, werr = unix.InotifyAddWatch(int(fd), "/proc/self/fd/"+strconv.Itoa(target), mask|unix.IN_MASK_ADD)
	}); err != nil {
		werr = err
	}
	if werr != nil {
		return nil, fmt.Errorf("fast path: watch %s: inotify_add_watch: %w", path, werr)
	}
	st := w.byWd[int32(wd)]
	if st == nil {
		if len(w.byWd) >= w.max && !w.makeRoomLocked(uid) {
			w.rmLocked(int32(wd))
			return nil, errWatchesFull
		}
		st = &watchState{wd: int32(wd), paths: make(map[string]struct{}), ids: make(map[identity]struct{})}
		w.byWd[st.wd] = st
	}
	if old := w.byPath[key]; old != st {
		if old != nil {
			// Another inode at the path now (a directory swapped, a mount
			// over it): the old one keeps its watch while entries are
			// stored under it.
			delete(old.paths, key)
			if len(old.paths) == 0 && len(old.ids) == 0 {
				w.dropLocked(old, true)
			}
		}
		w.byPath[key] = st
		st.paths[key] = struct{}{}
	}
	return st, nil
}

// rmLocked removes watch wd from the kernel.
func (w *exeWatch) rmLocked(wd int32) {
	w.raw.Control(func(fd uintptr) { unix.InotifyRmWatch(int(fd), uint32(wd)) })
}

// makeRoomLocked frees watches at the bound: those no decision is stored under
// (a store that did not happen), else every entry of the uid whose entries hold
// the most watches, which may be uid itself. It reports whether one was freed.
func (w *exeWatch) makeRoomLocked(uid uint32) bool {
	n := len(w.byWd)
	w.dropIdleLocked()
	if len(w.byWd) < n {
		return true
	}
	held := make(map[uint32]int)
	for _, st := range w.byWd {
		uids := make(map[uint32]struct{})
		for id := range st.ids {
			for k := range w.ids[id].keys {
				uids[k.Uid] = struct{}{}
			}
		}
		for u := range uids {
			held[u]++
		}
	}
	victim, most := uid, held[uid]
	for u, c := range held {
		if c > most {
			victim, most = u, c
		}
	}
	if most == 0 {
		return false
	}
	w.dropUIDLocked(victim)
	w.dropIdleLocked()
	return len(w.byWd) < n
}

// dropIdleLocked drops the watches no decision is stored under.
func (w *exeWatch) dropIdleLocked() {
	for _, st := range w.byWd {
		if len(st.ids) == 0 {
			w.dropLocked(st, true)
		}
	}
}

// dropUIDLocked deletes every entry of uid, and the watches left with no entry.
func (w *exeWatch) dropUIDLocked(uid uint32) {
	for id, s := range w.ids {
		for k := range s.keys {
			if k.Uid == uid {
				w.delKeyLocked(&k)
				delete(s.keys, k)
				w.nkeys--
			}
		}
		if len(s.keys) == 0 {
			w.forgetLocked(id, s)
		}
	}
}

// dropMostKeysLocked deletes every entry of the uid with the most keys indexed.
func (w *exeWatch) dropMostKeysLocked() {
	n := make(map[uint32]int)
	for _, s := range w.ids {
		for k := range s.keys {
			n[k.Uid]++
		}
	}
	victim, most := uint32(0), 0
	for u, c := range n {
		if c > most {
			victim, most = u, c
		}
	}
	if most > 0 {
		w.dropUIDLocked(victim)
	}
}

// takeFailed reports whether an entry could not be deleted since the last
// call (the caller bumps the generation).
func (w *exeWatch) takeFailed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	f := w.failed
	w.failed = false
	return f
}

// delKeyLocked deletes a map entry. A failure leaves it to hit: the caller of
// the handler bumps the generation (failed).
func (w *exeWatch) delKeyLocked(k *fastpathFpKey) {
	if err := w.del(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		w.failed = true
	}
}

// forgetLocked unindexes id (its keys already deleted), and drops the watches
// left with nothing stored under them and no path naming them (one a path
// names stays for the next store there, until the bound: makeRoomLocked).
func (w *exeWatch) forgetLocked(id identity, s *storedExe) {
	delete(w.ids, id)
	for _, st := range []*watchState{s.file, s.dir} {
		delete(st.ids, id)
		if len(st.ids) == 0 && len(st.paths) == 0 && w.byWd[st.wd] == st {
			w.dropLocked(st, true)
		}
	}
}

// dropLocked forgets watch st: the entries of every executable stored under it
// are deleted. rm says whether to remove the watch from the kernel (not after
// IN_IGNORED: it is gone).
func (w *exeWatch) dropLocked(st *watchState, rm bool) {
	if w.byWd[st.wd] != st {
		return
	}
	delete(w.byWd, st.wd)
	for p := range st.paths {
		if w.byPath[p] == st {
			delete(w.byPath, p)
		}
	}
	for id := range st.ids {
		s := w.ids[id]
		if s == nil {
			continue
		}
		for k := range s.keys {
			w.delKeyLocked(&k)
		}
		w.nkeys -= len(s.keys)
		s.keys = nil
		delete(st.ids, id)
		w.forgetLocked(id, s)
	}
	if rm {
		w.rmLocked(st.wd)
	}
}

// commit indexes key, stored for executable id at path under the watches t,
// and calls put to store it, unless an event on either watch or a mount change
// was handled since watch took them (then the entry might be stale: nothing is
// stored, and commit reports false). An event handled later deletes it.
func (w *exeWatch) commit(t watched, id identity, path string, key fastpathFpKey, put func() error) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.byWd[t.file.wd] != t.file || w.byWd[t.dir.wd] != t.dir || w.epoch != t.epoch {
		return false, nil
	}
	s := w.ids[id]
	if s != nil && (s.file != t.file || s.dir != t.dir) {
		// The same executable under other watches (stored through
		// another path): stored again under these.
		for k := range s.keys {
			w.delKeyLocked(&k)
		}
		w.nkeys -= len(s.keys)
		s.keys = nil
		w.forgetLocked(id, s)
		if w.byWd[t.file.wd] != t.file || w.byWd[t.dir.wd] != t.dir {
			return false, nil
		}
		s = nil
	}
	have := false
	if s != nil {
		_, have = s.keys[key]
	}
	if !have && w.nkeys >= w.maxKeys {
		// The uid with the most keys indexed loses its entries (the LRU
		// map forgot many of them), as at the watches' bound.
		w.dropMostKeysLocked()
		if w.nkeys >= w.maxKeys || w.byWd[t.file.wd] != t.file || w.byWd[t.dir.wd] != t.dir {
			return false, errWatchesFull
		}
		if s = w.ids[id]; s != nil && (s.file != t.file || s.dir != t.dir) {
			return false, nil
		}
	}
	if s == nil {
		s = &storedExe{path: path, file: t.file, dir: t.dir, keys: make(map[fastpathFpKey]struct{})}
		w.ids[id] = s
		t.file.ids[id] = struct{}{}
		t.dir.ids[id] = struct{}{}
	}
	if _, ok := s.keys[key]; !ok {
		s.keys[key] = struct{}{}
		w.nkeys++
	}
	if err := put(); err != nil {
		return false, err
	}
	return true, nil
}

// under reports whether path p (or a dirKey one) is at or under one of the
// mount points.
func under(p string, mountPoints []string) bool {
	p = strings.TrimPrefix(p, dirKey)
	for _, mp := range mountPoints {
		if mp == "/" || p == mp || strings.HasPrefix(p, mp) && p[len(mp)] == '/' {
			return true
		}
	}
	return false
}

// covers reports whether a mount at mountPoint is at or above the path of a
// watched executable (or of its directory).
func (w *exeWatch) covers(mountPoint string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for p := range w.byPath {
		if under(p, []string{mountPoint}) {
			return true
		}
	}
	for _, s := range w.ids {
		if under(s.path, []string{mountPoint}) {
			return true
		}
	}
	return false
}

// dropUnder deletes the entries of every executable stored at or under one of
// mountPoints, and drops the watches of paths there, after mounts there came or
// went (mountwatch_linux.go); any mount change makes the watches taken before it
// not commit (a store between the mount and its handling is then refused or
// deleted). It reports whether it deleted any, and whether one could not be
// deleted (the caller bumps the generation).
func (w *exeWatch) dropUnder(mountPoints []string) (dropped, failed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.epoch++
	for id, s := range w.ids {
		if under(s.path, mountPoints) {
			for k := range s.keys {
				w.delKeyLocked(&k)
			}
			w.nkeys -= len(s.keys)
			s.keys = nil
			w.forgetLocked(id, s)
			dropped = true
		}
	}
	for p, st := range w.byPath {
		if under(p, mountPoints) {
			w.dropLocked(st, true)
		}
	}
	failed, w.failed = w.failed, false
	return dropped, failed
}

// dropAll forgets every watch and the index (the caller bumps the generation).
func (w *exeWatch) dropAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.raw.Control(func(fd uintptr) {
		for wd := range w.byWd {
			unix.InotifyRmWatch(int(fd), uint32(wd))
		}
	})
	clear(w.byWd)
	clear(w.byPath)
	clear(w.ids)
	w.nkeys = 0
	w.epoch++
}

// close closes the inotify instance (run returns).
func (w *exeWatch) close() error { return w.f.Close() }

// run reads the events until close: an event on a watch deletes the entries
// stored under it; bump is called once for each read that carried an overflow
// of the queue (which may have lost one) or whose entries could not all be
// deleted.
func (w *exeWatch) run(bump func()) {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		dropped, global := false, false
		w.mu.Lock()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				global = true
				continue
			}
			if st := w.byWd[ev.Wd]; st != nil {
				w.dropLocked(st, ev.Mask&unix.IN_IGNORED == 0)
				dropped = true
			}
		}
		if w.failed {
			global, w.failed = true, false
		}
		w.mu.Unlock()
		if global {
			w.dropAll()
			bump()
		}
		if dropped || global {
			w.handled.Add(1)
		}
	}
}

// statxSafe is statx of path in the daemon's file system, walked by
// mountinfo.Open (no symbolic link followed, no FUSE or network mount entered:
// review 39).
func statxSafe(path string, mask int, stx *unix.Statx_t) error {
	fd, err := mountinfo.Open(unix.AT_FDCWD, path)
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, mask, stx); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	return nil
}
