package fastpath

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A file mounted over a running program's path (a bind mount; a systemd-sysext or
// ostree refresh mounting a new /usr over the old) leaves the running file's key
// unchanged, so it kept hitting the entries stored for the path, while attribution
// finds another file there and calls the program unverified (review29,
// TestOverMountedExecutableHitsOldEntry). So the fast path watches the mount
// tables of the host (/proc/1/mountinfo, whose namespace attribution opens paths
// in) and of the daemon (/proc/self/mountinfo, where the store checks them), which
// the kernel marks with POLLPRI at every mount or unmount. At a change it reads
// the table again and deletes the entries of the executables decisions were
// stored for (exeWatch.dropUnder) whose paths are at or under a mount that came
// or went, and drops the watches there (review33: a tmpfs over the directory
// left the path mapped to the old file's watch); mounts elsewhere (a
// container's, a BPF file system's) keep the cache. A table it cannot read bumps
// the generation (every stored decision misses from then on). Like the executables' watch it is asynchronous:
// a connect between the mount and the goroutine's handling of it still hits.
// POLLPRI does not come for every mount here (a bind mount over a file on 6.18
// went unreported now and then; the unmount after it was): the tables are read
// again every rereadEvery too, which bounds that window.

// mountWatch polls the mount tables until close.
type mountWatch struct {
	files  []*os.File
	mounts []map[string]struct{} // each file's mounts as last read (readMounts)
	stop   int                   // eventfd: close writes to it
	done   chan struct{}
	// handled counts the changes that bumped the generation (tests wait for it).
	handled atomic.Uint64
	// dead says that polling failed: changes go unseen, so nothing is stored.
	dead atomic.Bool
}

// newMountWatch opens the mount tables (those it can: /proc/1 may be hidden), reads
// them and starts the goroutine that calls changed with the mount points of the
// mounts that came or went at each change (it reports whether it dropped entries,
// and whether it failed to), and bump when it cannot tell what changed or changed
// failed. It fails if it can read none.
func newMountWatch(changed func(mountPoints []string) (dropped, failed bool), bump func()) (*mountWatch, error) {
	w := &mountWatch{stop: -1, done: make(chan struct{})}
	var errs []error
	for _, p := range []string{"/proc/1/mountinfo", "/proc/self/mountinfo"} {
		f, err := os.Open(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m, err := readMounts(f)
		if err != nil {
			f.Close()
			errs = append(errs, err)
			continue
		}
		w.files = append(w.files, f)
		w.mounts = append(w.mounts, m)
	}
	if len(w.files) == 0 {
		return nil, fmt.Errorf("fast path: watch the mount tables: %w", errors.Join(errs...))
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		w.closeFiles()
		return nil, fmt.Errorf("fast path: watch the mount tables: eventfd: %w", err)
	}
	w.stop = fd
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for _, f := range w.files {
		fds = append(fds, unix.PollFd{Fd: int32(f.Fd()), Events: unix.POLLPRI})
	}
	// The first poll of a mount table reports nothing (the file's event count
	// starts at the namespace's), so changes from here on are reported.
	go w.run(fds, changed, bump)
	return w, nil
}

// readMounts reads a mountinfo file from its start: the set of "ID MOUNTPOINT" of
// its mounts (a mount replaced by another at the same point is a change).
func readMounts(f *os.File) (map[string]struct{}, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("fast path: read %s: %w", f.Name(), err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("fast path: read %s: %w", f.Name(), err)
	}
	m := make(map[string]struct{})
	for line := range strings.Lines(string(b)) {
		fs := strings.Fields(line)
		if len(fs) < 5 {
			continue
		}
		m[fs[0]+" "+unescapeMountinfo(fs[4])] = struct{}{}
	}
	return m, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space, \011,
// \012, \134) in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// changedPoints returns the mount points of the mounts in one set and not the other.
func changedPoints(old, new map[string]struct{}) []string {
	var pts []string
	for k := range old {
		if _, ok := new[k]; !ok {
			pts = append(pts, k[strings.IndexByte(k, ' ')+1:])
		}
	}
	for k := range new {
		if _, ok := old[k]; !ok {
			pts = append(pts, k[strings.IndexByte(k, ' ')+1:])
		}
	}
	return pts
}

func (w *mountWatch) closeFiles() {
	for _, f := range w.files {
		f.Close()
	}
}

// rereadEvery is how often run reads the mount tables again without a POLLPRI.
const rereadEvery = time.Second

// run polls until the stop eventfd is written.
func (w *mountWatch) run(fds []unix.PollFd, changed func([]string) (bool, bool), bump func()) {
	defer close(w.done)
	for {
		for i := range fds {
			fds[i].Revents = 0
		}
		n, err := unix.Poll(fds, int(rereadEvery/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Cannot tell changes any more: nothing is stored from now on, and
			// every entry stored misses.
			w.dead.Store(true)
			bump()
			return
		}
		if fds[0].Revents != 0 {
			return
		}
		global := false
		var pts []string
		for i, pfd := range fds[1:] {
			if n != 0 && pfd.Revents&(unix.POLLPRI|unix.POLLERR) == 0 {
				continue
			}
			m, err := readMounts(w.files[i])
			if err != nil {
				// Cannot tell what changed: every entry misses.
				global = true
				continue
			}
			pts = append(pts, changedPoints(w.mounts[i], m)...)
			w.mounts[i] = m
		}
		dropped := false
		if len(pts) > 0 {
			var failed bool
			dropped, failed = changed(pts)
			global = global || failed
		}
		if global {
			bump()
		}
		if dropped || global {
			w.handled.Add(1)
		}
	}
}

// close stops the goroutine and closes the files.
func (w *mountWatch) close() error {
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	_, err := unix.Write(w.stop, one)
	<-w.done
	w.closeFiles()
	unix.Close(w.stop)
	if err != nil {
		return fmt.Errorf("fast path: stop the mount tables' watch: %w", err)
	}
	return nil
}
