package procattr

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hashKey identifies an executable's content without reading it: a file whose
// device, inode, modification time and size are unchanged is taken to hold the same
// bytes (a rewrite in place changes the time; a replacement the inode). A hash is
// cached under its key only if the file's change time was then at least
// hashRacyMargin old (see hashExe), so that a later rewrite within the same tick of
// a coarse clock cannot keep the key of the bytes it replaced.
type hashKey struct {
	dev, ino uint64
	mtimeNs  int64
	size     int64
	changeNs int64 // ctime too: touch -d can set mtime back, not ctime
	// fs, if not "", is the type of the file system the file is on, one whose
	// server chooses the file's attributes and bytes (untrustedFS: FUSE, NFS...):
	// such a file is never hashed (review 37: a FUSE server can keep the key and
	// serve other bytes, or never answer the read).
	fs string
}

// exeHashes caches executables' SHA-256 by hashKey. A miss queues the file for
// hashing in the background and reports "" now: the connection is decided without
// the hash (a pinned rule does not match it: latch asks rather than allows while
// hashing), and later connections get it.
//
// No one user can stop the hashing of another's programs:
//   - a file larger than maxHashBytes is not hashed at all ("unhashable": cached as
//     "", so a pinned rule never matches it; logged once);
//   - at most maxHashing files are hashed at once (sem), each account (the process's
//     real uid, or for a process in a user namespace the host uid that owns the
//     outermost one: see hashAccount) at most one of them, and accounts with waiting
//     files take the free slots in turn; an account queues at most maxQueuedPerAcct;
//   - a hash that runs over hashTimeout (a stalled read) gives its slot back; its
//     account's next file waits for it to end;
//   - a full cache evicts one entry at random (a hit costs nothing more than the
//     map lookup), and an account holding maxHashedPerAcct entries evicts one of
//     its own.
//
// done, pending and sem must be set; the rest starts at its zero value.
type exeHashes struct {
	mu      sync.Mutex
	done    map[hashKey]string // "": over maxHashBytes
	pending map[hashKey]bool   // queued or being hashed
	sem     chan struct{}      // one token per file being hashed (within hashTimeout)

	owner   map[hashKey]uint32   // the account that hashed each key in done
	perAcct map[uint32]int       // entries in done per account
	queues  map[uint32][]hashJob // waiting files per account
	ready   []uint32             // accounts with waiting files and none being hashed, in turn
	busy    map[uint32]bool      // accounts with a file being hashed (or stalled)

	loggedAt time.Time // of the last "too large to hash" warning
	unlogged int       // such files not logged since
}

type hashJob struct {
	k    hashKey
	pid  int32
	acct uint32
}

const (
	maxHashing       = 2
	maxHashedExes    = 4096
	maxHashedPerAcct = 1024
	maxQueuedPerAcct = 64
	// maxHashBytes is the largest executable latch hashes (at 1-2 GB/s, about a
	// second of one core's time); a larger one is never hashed.
	maxHashBytes   = 1 << 30
	hashTimeout    = 30 * time.Second
	hashRacyMargin = 2 * time.Second
)

var hashes = &exeHashes{done: map[hashKey]string{}, pending: map[hashKey]bool{}, sem: make(chan struct{}, maxHashing)}

// exeHashKey stats the file process d executes (with AT_STATX_DONT_SYNC: no
// request to a FUSE or network file system's server). A file on a file system
// untrustedFS names gets a key with fs set: it is unhashable.
func (d procDir) exeHashKey() (hashKey, error) {
	fstype, err := d.exeFS()
	if err != nil {
		return hashKey{}, err
	}
	var stx unix.Statx_t
	const mask = unix.STATX_INO | unix.STATX_SIZE | unix.STATX_MTIME | unix.STATX_CTIME
	if err := unix.Statx(d.fd, "exe", unix.AT_STATX_DONT_SYNC, mask, &stx); err != nil {
		return hashKey{}, fmt.Errorf("stat /proc/%d/exe: %w", d.pid, err)
	}
	k := hashKey{dev: unix.Mkdev(stx.Dev_major, stx.Dev_minor), ino: stx.Ino,
		mtimeNs: stx.Mtime.Sec*1e9 + int64(stx.Mtime.Nsec), size: int64(stx.Size),
		changeNs: stx.Ctime.Sec*1e9 + int64(stx.Ctime.Nsec)}
	if untrustedFS(fstype) {
		k.fs = fstype
		if k.fs == "" {
			k.fs = "?"
		}
	}
	return k, nil
}

func keyOf(st *unix.Stat_t) hashKey {
	return hashKey{dev: uint64(st.Dev), ino: st.Ino, mtimeNs: st.Mtim.Nano(), size: st.Size, changeNs: st.Ctim.Nano()}
}

// lookup returns the hash of the file with key k, or "" while it is not known (or
// never will be: the file is over maxHashBytes); a miss queues the file process pid
// executes for hashing.
func (h *exeHashes) lookup(k hashKey, pid int32) string {
	if k.fs != "" {
		return "" // never hashed (see hashKey.fs)
	}
	h.mu.Lock()
	if s, ok := h.done[k]; ok {
		h.mu.Unlock()
		return s
	}
	if h.pending[k] || k == (hashKey{}) {
		h.mu.Unlock()
		return ""
	}
	h.mu.Unlock()
	acct := hashAccount(pid) // off the lock: it reads /proc
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.done[k]; ok || h.pending[k] {
		return h.done[k]
	}
	if k.size > maxHashBytes {
		h.store(k, "", acct)
		// Logged once per file, and at most once a second (a user can make such
		// files as fast as exec runs them): the question says it anyway.
		if now := time.Now(); now.Sub(h.loggedAt) >= time.Second {
			exe, _ := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe")
			slog.Warn("procattr: executable too large to hash: a rule pinned to a hash never matches it",
				"exe", exe, "pid", pid, "size", k.size, "max", int64(maxHashBytes), "not_logged_before", h.unlogged)
			h.loggedAt, h.unlogged = now, 0
		} else {
			h.unlogged++
		}
		return ""
	}
	h.enqueue(hashJob{k: k, pid: pid, acct: acct})
	return ""
}

// note says why the file of key k has no hash for good ("" if it may have one):
// it is over maxHashBytes, or on a file system untrustedFS names.
func (h *exeHashes) note(k hashKey) string {
	if k.fs == "?" {
		return fsNote("")
	}
	if k.fs != "" {
		return fsNote(k.fs)
	}
	h.mu.Lock()
	s, ok := h.done[k]
	h.mu.Unlock()
	if !ok || s != "" {
		return ""
	}
	return fmt.Sprintf("%d bytes, over the %d latch hashes", k.size, int64(maxHashBytes))
}

// store caches sum as the hash of k, hashed for acct, evicting one entry if the
// cache (or acct's part of it) is full. Under mu.
func (h *exeHashes) store(k hashKey, sum string, acct uint32) {
	if h.owner == nil {
		h.owner, h.perAcct = map[hashKey]uint32{}, map[uint32]int{}
	}
	if _, ok := h.done[k]; ok {
		h.done[k] = sum
		return
	}
	// A map's range starts at a random place: the first key it gives is the one
	// evicted.
	if h.perAcct[acct] >= maxHashedPerAcct {
		for ok, a := range h.owner {
			if a == acct {
				h.evict(ok)
				break
			}
		}
	} else if len(h.done) >= maxHashedExes {
		for ok := range h.done {
			h.evict(ok)
			break
		}
	}
	h.done[k] = sum
	h.owner[k] = acct
	h.perAcct[acct]++
}

func (h *exeHashes) evict(k hashKey) {
	delete(h.done, k)
	if a, ok := h.owner[k]; ok {
		delete(h.owner, k)
		if h.perAcct[a]--; h.perAcct[a] <= 0 {
			delete(h.perAcct, a)
		}
	}
}

// enqueue queues j behind its account's other files (dropping it if that queue is
// full: a later connection queues it again) and starts what may start. Under mu.
func (h *exeHashes) enqueue(j hashJob) {
	if h.queues == nil {
		h.queues, h.busy = map[uint32][]hashJob{}, map[uint32]bool{}
	}
	q := h.queues[j.acct]
	if len(q) >= maxQueuedPerAcct {
		return
	}
	h.pending[j.k] = true
	h.queues[j.acct] = append(q, j)
	if len(q) == 0 && !h.busy[j.acct] {
		h.ready = append(h.ready, j.acct)
	}
	h.dispatch()
}

// dispatch starts the first waiting file of each ready account, in turn, while
// slots are free. Under mu.
func (h *exeHashes) dispatch() {
	for len(h.ready) > 0 {
		select {
		case h.sem <- struct{}{}:
		default:
			return
		}
		a := h.ready[0]
		h.ready = h.ready[1:]
		q := h.queues[a]
		j := q[0]
		if len(q) == 1 {
			delete(h.queues, a)
		} else {
			h.queues[a] = q[1:]
		}
		h.busy[a] = true
		go h.run(j)
	}
}

// run hashes j's file. Its slot is given back when it ends or after hashTimeout,
// whichever comes first; its account stays busy until it ends.
func (h *exeHashes) run(j hashJob) {
	freed := false // under mu
	release := func() {
		if !freed {
			freed = true
			<-h.sem
			h.dispatch()
		}
	}
	t := time.AfterFunc(hashTimeout, func() {
		h.mu.Lock()
		release()
		h.mu.Unlock()
	})
	sum, err := hashExe(j.pid, j.k, time.Now())
	t.Stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.pending, j.k)
	switch {
	case err == nil:
		h.store(j.k, sum, j.acct)
	case errors.Is(err, errTooLarge):
		h.store(j.k, "", j.acct)
	}
	delete(h.busy, j.acct)
	if len(h.queues[j.acct]) > 0 {
		h.ready = append(h.ready, j.acct)
	}
	if freed {
		h.dispatch()
	} else {
		release()
	}
}

var (
	errTooLarge = errors.New("executable larger than the hash limit")
	errChanged  = errors.New("executable changed while it was hashed")
	errRacy     = errors.New("executable changed too recently to cache its hash")
)

// hashExe hashes the file process pid executes, through /proc/PID/exe (the file
// itself, whatever its name), if it still is the file of key k, before and after
// reading it. A file changed less than hashRacyMargin before start is not cached
// (errRacy): a coarse clock could give a rewrite after the hash the same times.
func hashExe(pid int32, k hashKey, start time.Time) (string, error) {
	name := "/proc/" + strconv.Itoa(int(pid)) + "/exe"
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", name, err)
	}
	if keyOf(&st) != k {
		return "", errChanged // the next connection hashes again
	}
	if k.size > maxHashBytes {
		return "", errTooLarge
	}
	hw := sha256.New()
	n, err := io.Copy(hw, io.LimitReader(f, maxHashBytes+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	if n > maxHashBytes {
		return "", errTooLarge
	}
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", name, err)
	}
	if keyOf(&st) != k || n != k.size {
		return "", errChanged
	}
	if st.Ctim.Nano() > start.Add(-hashRacyMargin).UnixNano() {
		return "", errRacy
	}
	return hex.EncodeToString(hw.Sum(nil)), nil
}

// hashAccount is whom hashing the executable of process pid is charged to: the
// host uid owning the outermost user namespace the process is in below the
// daemon's (one user's subordinate uids are that user's), else its real uid.
// Unknown: 0, shared by all unknown processes.
func hashAccount(pid int32) uint32 {
	d, err := openProcDir(pid)
	if err != nil {
		return 0
	}
	defer d.close()
	if uid, ok := usernsOwner(d); ok {
		return uid
	}
	var buf [4096]byte
	b, err := d.readFile("status", buf[:])
	if err != nil {
		return 0
	}
	uid, ok := realUID(b)
	if !ok {
		return 0
	}
	return uid
}

// realUID parses the real uid from a /proc/PID/status.
func realUID(status []byte) (uint32, bool) {
	const tag = "\nUid:\t"
	for i := 0; i+len(tag) <= len(status); i++ {
		if string(status[i:i+len(tag)]) != tag {
			continue
		}
		j := i + len(tag)
		e := j
		for e < len(status) && status[e] >= '0' && status[e] <= '9' {
			e++
		}
		u, err := strconv.ParseUint(string(status[j:e]), 10, 32)
		return uint32(u), err == nil
	}
	return 0, false
}

// ioctls on namespace files (linux/nsfs.h).
const (
	nsGetParent   = 0xb702 // _IO(0xb7, 0x2)
	nsGetOwnerUID = 0xb704 // _IO(0xb7, 0x4)
)

// usernsOwner returns the uid (in the daemon's user namespace) that created the
// outermost user namespace below the daemon's that process d is in; false if d is in
// the daemon's own (or it cannot tell).
func usernsOwner(d procDir) (uint32, bool) {
	var self unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &self); err != nil {
		return 0, false
	}
	fd, err := unix.Openat(d.fd, "ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	for range 40 { // user namespaces nest at most 32 deep
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Ino == self.Ino && st.Dev == self.Dev {
			unix.Close(fd)
			return 0, false
		}
		parent, err := unix.IoctlRetInt(fd, nsGetParent)
		if err != nil {
			unix.Close(fd)
			return 0, false
		}
		var pst unix.Stat_t
		if err := unix.Fstat(parent, &pst); err != nil {
			unix.Close(parent)
			unix.Close(fd)
			return 0, false
		}
		if pst.Ino == self.Ino && pst.Dev == self.Dev {
			unix.Close(parent)
			var uid uint32
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetOwnerUID, uintptr(unsafe.Pointer(&uid)))
			unix.Close(fd)
			return uid, errno == 0
		}
		unix.Close(fd)
		fd = parent
	}
	unix.Close(fd)
	return 0, false
}
