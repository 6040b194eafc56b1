package fastpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
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
// directory (whose inode the key has) is moved or deleted, bumps the
// generation (as ModeChanged does): every stored decision misses from then on and
// the next connections are decided through the queue, which stores them again
// under a watch on the file then at the path. IN_MODIFY is not watched: a running
// executable cannot be written (ETXTBSY), and a rule names a path, which the file
// changed in place still has (a rule pinned to the content, SHA256, turns caching
// off).
//
// inotify is asynchronous: between the rename and the daemon reading the event and
// bumping the generation (the watch goroutine; microseconds on an idle machine,
// longer under load) the renamed program's connects still hit. A decision the
// store worker stores in that window carries a ticket older than the bump and
// misses after it.

// maxExeWatches bounds the watches at once (an executable takes one, and one
// more for its directory unless another executable there has it; counted against
// the kernel's per-user fs.inotify.max_user_watches), and twice Config.MaxEntries. At the
// bound every watch is dropped and the generation bumped: decisions are then
// stored again, each under a new watch.
const maxExeWatches = 4096

// exeWatchMask is what a watch on an executable reports (IN_IGNORED, IN_UNMOUNT
// and IN_Q_OVERFLOW come always).
const exeWatchMask = unix.IN_MOVE_SELF | unix.IN_DELETE_SELF | unix.IN_ATTRIB

// exeWatch is the fast path's inotify instance on the executables it stored
// decisions for.
type exeWatch struct {
	f   *os.File
	raw interface {
		Control(func(fd uintptr)) error
	}
	max int

	mu     sync.Mutex
	byPath map[string]int32
	byWd   map[int32][]string

	// handled counts the events that bumped the generation (tests wait for it).
	handled atomic.Uint64
}

// newExeWatch opens the inotify instance.
func newExeWatch(max int) (*exeWatch, error) {
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
	return &exeWatch{f: f, raw: raw, max: max, byPath: make(map[string]int32), byWd: make(map[int32][]string)}, nil
}

// errWatchesFull says that the watches reached their bound.
var errWatchesFull = errors.New("fast path: the executable watches reached their bound")

// watch makes sure the file at path, and its directory, are watched (the kernel's
// key has the directory's inode, not its name: a running program whose directory
// is renamed keeps it too). It returns errWatchesFull at the bound (the caller
// drops them all and bumps the generation), and an error when inotify refuses
// (fs.inotify.max_user_watches reached, the path gone): then the decision must not
// be stored.
func (w *exeWatch) watch(path string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.addLocked(path, path, exeWatchMask); err != nil {
		return err
	}
	return w.addLocked(dirKey+filepath.Dir(path), filepath.Dir(path), dirWatchMask)
}

// dirKey marks a directory's key in byPath (a mount point starts with "/": covers
// ignores them).
const dirKey = "dir:"

// dirWatchMask is what a watch on an executable's directory reports: the
// directory itself moved or deleted, not its entries.
const dirWatchMask = unix.IN_MOVE_SELF | unix.IN_DELETE_SELF | unix.IN_ONLYDIR

// addLocked adds a watch on path under key unless there is one. Call with mu held.
func (w *exeWatch) addLocked(key, path string, mask uint32) error {
	if _, ok := w.byPath[key]; ok {
		return nil
	}
	if len(w.byPath) >= w.max {
		return errWatchesFull
	}
	var wd int
	var werr error
	if err := w.raw.Control(func(fd uintptr) {
		// IN_MASK_ADD: a directory that is also watched for another executable
		// keeps its mask.
		wd, werr = unix.InotifyAddWatch(int(fd), path, mask|unix.IN_MASK_ADD)
	}); err != nil {
		werr = err
	}
	if werr != nil {
		return fmt.Errorf("fast path: watch %s: inotify_add_watch: %w", path, werr)
	}
	w.byPath[key] = int32(wd)
	w.byWd[int32(wd)] = append(w.byWd[int32(wd)], key)
	return nil
}

// drop forgets watch wd and reports whether it was one of the executables' (an
// IN_IGNORED for a watch drop or dropAll removed is not). rm says whether to
// remove the watch from the kernel (not after IN_IGNORED: it is gone).
func (w *exeWatch) drop(wd int32, rm bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	paths, ok := w.byWd[wd]
	if !ok {
		return false
	}
	delete(w.byWd, wd)
	for _, p := range paths {
		delete(w.byPath, p)
	}
	if rm {
		w.raw.Control(func(fd uintptr) { unix.InotifyRmWatch(int(fd), uint32(wd)) })
	}
	return true
}

// covers reports whether a mount at mountPoint is at or above the path of a
// watched executable.
func (w *exeWatch) covers(mountPoint string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if mountPoint == "/" {
		return len(w.byPath) > 0
	}
	for p := range w.byPath {
		if p == mountPoint || strings.HasPrefix(p, mountPoint) && p[len(mountPoint)] == '/' {
			return true
		}
	}
	return false
}

// dropAll forgets every watch.
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
}

// close closes the inotify instance (run returns).
func (w *exeWatch) close() error { return w.f.Close() }

// run reads the events until close, and calls bump once for each read that
// carried an event on a watched executable (or an overflow of the queue, which
// may have lost one).
func (w *exeWatch) run(bump func()) {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		changed := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			switch {
			case ev.Mask&unix.IN_Q_OVERFLOW != 0:
				w.dropAll()
				changed = true
			case w.drop(ev.Wd, ev.Mask&unix.IN_IGNORED == 0):
				changed = true
			}
		}
		if changed {
			bump()
			w.handled.Add(1)
		}
	}
}
