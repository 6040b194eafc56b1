package procattr

import (
	"bytes"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// procEntry is what Resolve knows about one live process. Its open /proc/PID
// handle is tied to that process: when the process exits, reads through it fail even
// if the pid is reused, so an entry can never describe another process.
type procEntry struct {
	dir        procDir
	startTicks uint64 // /proc/PID/stat starttime
	exe        string // as readlink gave it, " (deleted)" included
	file       fileID // the file the process executes (see exeFileID)
	exeMnt     uint64 // the mount it was executed through (see exeFileID)
	exeOldMnt  uint64 // that mount's old id, for ExeFile (see exeOldMountID)
	ident      identity
	cmdline    string
	comm       string
	unit       string   // systemd system unit (unitOf)
	appID      string   // flatpak/snap app id (appIDOf)
	parents    []string // ancestors' verified executables (parentsOf)
	hashKey    hashKey  // the executable's content key (exehash_linux.go)
	// startNs and execID, once bound (non-zero), are the identity an eBPF record of
	// this process and image carries (connRecord.StartNs, ExecID). Guarded by the
	// cache's mu.
	startNs, execID uint64
}

// procCache keeps procEntries of processes that own connections, so the hot path
// costs one stat of /proc/PID/exe (is it alive, does it still run the same file?)
// instead of reading stat and cmdline and verifying the executable for every
// connection.
//
// An entry's dir handle is used under mu's read lock and closed only under its write
// lock.
type procCache struct {
	mu    sync.RWMutex
	byPID map[int32]*procEntry
	max   int
}

func newProcCache(max int) *procCache {
	return &procCache{byPID: make(map[int32]*procEntry), max: max}
}

// live returns the cached entry of pid if its process is still alive and still runs
// the same executable file through the same mount (device and inode: a name would
// not do, since an exec of another file under the same name, in another mount
// namespace, keeps the name; the mount, since the same file run again through a
// mount of its own namespace may no longer verify), and, if the entry is
// verified, the host's file at its path is still that file (see stillNamed). A
// dead entry, one that exec'd another file, or one whose verification no longer
// holds is dropped, so that load looks at the process afresh.
func (c *procCache) live(pid int32) (*procEntry, bool) {
	c.mu.RLock()
	e, ok := c.byPID[pid]
	alive := false
	if ok {
		id, nlink, mnt, err := e.dir.exeFileID()
		alive = err == nil && id == e.file && mnt == e.exeMnt && (nlink != 0 || !e.verified()) && e.stillNamed()
	}
	c.mu.RUnlock()
	if ok && !alive {
		c.drop(e)
		return nil, false
	}
	return e, ok
}

// identified returns the cached entry bound (see bind) to the process and image
// that pid, startNs and execID identify. A process's start time never repeats
// with its pid, and its exec id changes with every execve, so the entry
// describes exactly the process that made the record, whether or not it is
// still alive. A verified entry costs one look at its path (stillNamed); one
// that no longer verifies is dropped.
func (c *procCache) identified(pid int32, startNs, execID uint64) (*procEntry, bool) {
	if startNs == 0 {
		return nil, false
	}
	c.mu.RLock()
	e, ok := c.byPID[pid]
	ok = ok && e.startNs == startNs && e.execID == execID
	named := ok && e.stillNamed()
	c.mu.RUnlock()
	if ok && !named {
		c.drop(e)
		return nil, false
	}
	return e, ok
}

// verified reports whether e's executable was verified when e was loaded.
func (e *procEntry) verified() bool { return e.ident.status == engine.IdentityVerified }

// stillNamed reports whether e's identity still holds as far as its path goes:
// for a verified entry, the host's file at e.exe is still the file e's process
// runs (which is then still linked), as verifyExe found when e was loaded.
// The file renamed away (a self-updater's prog -> prog.old) or deleted, and
// perhaps another put at the path, the process is no longer the program at
// that path (review 35: a cached entry kept being called verified at it). An
// entry that is not verified cannot become so by a change on the host's file
// system: it holds.
//
// The check walks the path as verifyExe did (hostFileID: mountinfo.Open, one
// openat2 where the path stays on one mount, a statx and a close): review 35's
// cheaper single statx of the path walked into whatever was mounted on the
// way, and a FUSE server a user mounted over a directory of the path held the
// queue reader on a request it never answered (review 39).
func (e *procEntry) stillNamed() bool {
	if !e.verified() {
		return true
	}
	host, err := hostFileID(e.exe)
	return err == nil && host == e.file
}

// bind ties e to the identity an eBPF record carries, once the record has been
// shown to be of e's process (see Resolver.viaEBPF). It refuses a start time that
// does not agree with the one /proc gave for e.
func (c *procCache) bind(e *procEntry, startNs, execID uint64) {
	if startNs == 0 || startNs/(uint64(time.Second)/clockTicks()) != e.startTicks {
		return
	}
	c.mu.Lock()
	if c.byPID[e.dir.pid] == e {
		e.startNs, e.execID = startNs, execID
	}
	c.mu.Unlock()
}

// load reads pid's process afresh and caches it.
func (c *procCache) load(pid int32) (*procEntry, error) {
	d, err := openProcDir(pid)
	if err != nil {
		return nil, err
	}
	e, err := readEntry(d)
	if err != nil {
		d.close()
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.byPID[pid]; ok {
		if old.startTicks == e.startTicks && old.exe == e.exe && old.file == e.file && old.ident == e.ident {
			// Another Resolve loaded the same process meanwhile: keep its entry,
			// which callers may hold.
			d.close()
			return old, nil
		}
		old.dir.close()
	}
	if len(c.byPID) >= c.max {
		c.evictLocked()
	}
	c.byPID[pid] = e
	return e, nil
}

// get returns the live cached entry of pid, or loads it.
func (c *procCache) get(pid int32) (*procEntry, error) {
	if e, ok := c.live(pid); ok {
		return e, nil
	}
	return c.load(pid)
}

// fdPointsAt reports whether e's process has the socket inode open as fd. False if e
// is no longer cached (its handle may be closed).
func (c *procCache) fdPointsAt(e *procEntry, fd int, inode uint32) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byPID[e.dir.pid] == e && e.dir.fdPointsAt(fd, inode)
}

// holdsSocket reports whether e's process has the socket inode open. False if e is no
// longer cached (its handle may be closed).
func (c *procCache) holdsSocket(e *procEntry, inode uint32) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.byPID[e.dir.pid] != e {
		return false
	}
	var scratch scanScratch
	_, ok := e.dir.holdsSocket(inode, &scratch)
	return ok
}

func (c *procCache) drop(e *procEntry) {
	c.mu.Lock()
	if c.byPID[e.dir.pid] == e {
		delete(c.byPID, e.dir.pid)
		e.dir.close()
	}
	c.mu.Unlock()
}

// evictLocked closes the entries of processes that are gone, or all entries if every
// one is alive.
func (c *procCache) evictLocked() {
	var buf [1]byte
	for pid, e := range c.byPID {
		if _, err := unix.Readlinkat(e.dir.fd, "exe", buf[:]); err != nil {
			e.dir.close()
			delete(c.byPID, pid)
		}
	}
	if len(c.byPID) < c.max {
		return
	}
	for pid, e := range c.byPID {
		e.dir.close()
		delete(c.byPID, pid)
	}
}

func (c *procCache) close() {
	c.mu.Lock()
	for pid, e := range c.byPID {
		e.dir.close()
		delete(c.byPID, pid)
	}
	c.mu.Unlock()
}

// readEntry reads stat, exe and cmdline through d, and verifies the executable (see
// verifyExe).
func readEntry(d procDir) (*procEntry, error) {
	st, err := d.stat()
	if err != nil {
		return nil, err
	}
	// The file first, then its name: verification compares the host's file at the
	// name with this file, so a name read after an exec can only fail to verify, or
	// verify what the host calls this very file.
	file, nlink, mnt, err := d.exeFileID()
	if err != nil {
		return nil, err
	}
	var buf [4096]byte
	exe, err := d.readlink("exe", buf[:])
	if err != nil {
		return nil, err
	}
	e := &procEntry{dir: d, startTicks: st.StartTime, comm: st.Comm, exe: string(exe), file: file, exeMnt: mnt,
		exeOldMnt: d.exeOldMountID(file, mnt)}
	e.ident = verifyExe(d, e.exe, file, nlink)
	cmd, err := d.readFile("cmdline", buf[:])
	if err != nil {
		return nil, err
	}
	e.cmdline = formatCmdline(cmd)
	var cgBuf [8192]byte
	if cg, err := d.readFile("cgroup", cgBuf[:]); err == nil {
		e.unit, e.appID = unitOf(cg), appIDOf(cg)
	}
	e.parents = parentsOf(st.PPid)
	e.hashKey, _ = d.exeHashKey()
	return e, nil
}

// process fills p's process fields from e.
func (e *procEntry) process(p *Process) {
	p.PID = e.dir.pid
	p.Exe = e.exe
	if e.ident.status != engine.IdentityVerified {
		// A verified path is the host's name of the file, even if it ends in
		// " (deleted)"; otherwise the kernel's suffix says the file is gone, which
		// the identity note says.
		p.Exe = trimDeleted(e.exe)
	}
	p.Identity, p.Container, p.IdentityNote = e.ident.status, e.ident.container, e.ident.note
	if p.Container != "" {
		// Looked up at every resolution (a cached map lookup), so a renamed
		// container shows its new name without the process being looked at again.
		p.ContainerName = containerNames.Name(p.Container)
	}
	p.Cmdline = e.cmdline
	p.Unit, p.AppID, p.Parents = e.unit, e.appID, e.parents
	p.ExeSHA256 = hashes.lookup(e.hashKey, e.dir.pid)
	if p.ExeSHA256 == "" {
		p.ExeHashNote = hashes.note(e.hashKey)
	}
	p.ExeFile = engine.FileID{Dev: e.file.dev, Ino: e.file.ino, Mnt: e.exeOldMnt}
	p.Comm = e.comm
}

func trimDeleted(exe string) string {
	const suffix = " (deleted)"
	if len(exe) > len(suffix) && exe[len(exe)-len(suffix):] == suffix {
		return exe[:len(exe)-len(suffix)]
	}
	return exe
}

// formatCmdline joins NUL-separated arguments with spaces.
func formatCmdline(b []byte) string {
	b = bytes.TrimRight(b, "\x00")
	out := make([]byte, len(b))
	for i, ch := range b {
		if ch == 0 {
			ch = ' '
		}
		out[i] = ch
	}
	return string(out)
}
