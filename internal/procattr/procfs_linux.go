package procattr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// procDir is an open /proc/PID directory. Every read goes through it: the kernel ties
// the handle to the process, not to the number, so once the process is gone every
// read fails, even if the pid has been given to a new process meanwhile.
type procDir struct {
	pid int32
	fd  int
}

func openProcDir(pid int32) (procDir, error) {
	if pid <= 0 {
		return procDir{fd: -1}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	fd, err := unix.Open("/proc/"+strconv.Itoa(int(pid)), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return procDir{fd: -1}, fmt.Errorf("open /proc/%d: %w", pid, err)
	}
	return procDir{pid: pid, fd: fd}, nil
}

func (d procDir) close() {
	if d.fd >= 0 {
		unix.Close(d.fd)
	}
}

// readFile reads up to len(buf) bytes of a file in the directory.
func (d procDir) readFile(name string, buf []byte) ([]byte, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /proc/%d/%s: %w", d.pid, name, err)
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read /proc/%d/%s: %w", d.pid, name, err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}

func (d procDir) readlink(name string, buf []byte) ([]byte, error) {
	n, err := unix.Readlinkat(d.fd, name, buf)
	if err != nil {
		return nil, fmt.Errorf("readlink /proc/%d/%s: %w", d.pid, name, err)
	}
	return buf[:n], nil
}

// procStat is what Resolve needs from /proc/PID/stat.
type procStat struct {
	Comm      string
	PPid      int32  // field 4: the parent's pid (0 for init and kernel threads' parent)
	StartTime uint64 // clock ticks after boot (CLOCK_BOOTTIME)
}

func (d procDir) stat() (procStat, error) {
	var buf [1024]byte
	b, err := d.readFile("stat", buf[:])
	if err != nil {
		return procStat{}, err
	}
	st, err := parseStat(b)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %w", d.pid, err)
	}
	return st, nil
}

// parseStat decodes the comm and starttime (field 22) of a /proc/PID/stat line. The
// comm may hold spaces and parentheses, so fields are counted after the last ')'.
func parseStat(b []byte) (procStat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return procStat{}, errors.New("no (comm) field")
	}
	rest := b[closing+1:]
	var ppid int32
	if f := bytes.Fields(rest); len(f) >= 2 {
		if n, err := strconv.ParseInt(string(f[1]), 10, 32); err == nil && n >= 0 {
			ppid = int32(n)
		}
	}
	// Fields after comm start at field 3 (state); starttime is field 22.
	const want = 22 - 3
	for i := 0; i < want; i++ {
		rest = bytes.TrimLeft(rest, " ")
		sp := bytes.IndexByte(rest, ' ')
		if sp < 0 {
			return procStat{}, fmt.Errorf("%d fields after comm, want more than %d", i, want)
		}
		rest = rest[sp:]
	}
	rest = bytes.TrimLeft(rest, " ")
	if sp := bytes.IndexByte(rest, ' '); sp >= 0 {
		rest = rest[:sp]
	}
	start, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("starttime field %q: %w", rest, err)
	}
	return procStat{Comm: string(b[open+1 : closing]), PPid: ppid, StartTime: start}, nil
}

// holdsSocket reports whether the process has a file descriptor for the socket
// inode, and which.
func (d procDir) holdsSocket(inode uint32, scratch *scanScratch) (fd int, ok bool) {
	found := -1
	_ = d.eachSocketFD(scratch, func(fd int, ino uint32) bool {
		if ino == inode {
			found = fd
			return false
		}
		return true
	})
	return found, found >= 0
}

// eachSocketFD calls fn for every socket descriptor of the process until fn returns
// false.
func (d procDir) eachSocketFD(scratch *scanScratch, fn func(fd int, inode uint32) bool) error {
	dfd, err := unix.Openat(d.fd, "fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /proc/%d/fd: %w", d.pid, err)
	}
	defer unix.Close(dfd)
	return eachDirent(dfd, scratch.dents[:], func(name []byte) bool {
		fd, ok := atoi(name)
		if !ok {
			return true
		}
		if scratch.limited {
			if scratch.budget <= 0 {
				return false
			}
			scratch.budget--
		}
		n, err := unix.Readlinkat(dfd, string(name), scratch.link[:])
		if err != nil {
			return true
		}
		ino, ok := parseSocketLink(scratch.link[:n])
		if !ok {
			return true
		}
		return fn(fd, ino)
	})
}

// fdPointsAt reports whether /proc/PID/fd/FD is still the socket inode.
func (d procDir) fdPointsAt(fd int, inode uint32) bool {
	var link [64]byte
	n, err := unix.Readlinkat(d.fd, "fd/"+strconv.Itoa(fd), link[:])
	if err != nil {
		return false
	}
	ino, ok := parseSocketLink(link[:n])
	return ok && ino == inode
}

// parseSocketLink decodes "socket:[12345]".
func parseSocketLink(b []byte) (uint32, bool) {
	const prefix = "socket:["
	if len(b) < len(prefix)+2 || string(b[:len(prefix)]) != prefix || b[len(b)-1] != ']' {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[len(prefix):len(b)-1]), 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(v), true
}

// atoi parses a small non-negative decimal (a pid or fd) without allocating.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// eachDirent calls fn with every entry name of the open directory dfd until fn
// returns false.
func eachDirent(dfd int, buf []byte, fn func(name []byte) bool) error {
	for {
		n, err := unix.Getdents(dfd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		b := buf[:n]
		for len(b) >= 19 {
			// struct linux_dirent64: ino u64, off u64, reclen u16, type u8, name.
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < 19 || reclen > len(b) {
				return fmt.Errorf("getdents: record length %d of %d bytes", reclen, len(b))
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if !fn(name) {
				return nil
			}
			b = b[reclen:]
		}
	}
}

// scanScratch holds the buffers of one scan so a scan does not allocate per entry.
type scanScratch struct {
	dents [8192]byte
	link  [64]byte
	// limited scans stop after budget descriptors.
	limited bool
	budget  int
}

// fdRef says where a socket was last seen.
type fdRef struct {
	pid int32
	fd  int32
}

// procScanner maps socket inodes to the processes holding them by reading
// /proc/*/fd. It remembers what its last full scan saw and the processes it found
// recently (they tend to open more connections), and scans everything at most once
// per interval.
type procScanner struct {
	interval  time.Duration
	fullScans atomic.Uint64

	mu       sync.Mutex
	byInode  map[uint32]fdRef
	hot      []int32 // most recent first
	lastFull time.Time
	scratch  scanScratch
}

const (
	hotScanBudget = 4096 // descriptors read per lookup in recent processes
	hotPIDs       = 16
	maxInodeCache = 1 << 18
)

func newProcScanner(interval time.Duration) *procScanner {
	return &procScanner{interval: interval, byInode: make(map[uint32]fdRef)}
}

// find returns where the socket inode was seen. A cached answer is not checked here:
// the caller checks the fd through its own handle of the process and calls forget
// if the fd no longer points at the socket. Otherwise the processes found recently
// are scanned, then (at most once per interval) all of /proc.
func (s *procScanner) find(inode uint32) (fdRef, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if ref, ok := s.byInode[inode]; ok {
		s.touch(ref.pid)
		return ref, nil
	}
	// A process with a huge fd table must not turn every lookup into a long scan
	// (the caller is a packet read loop): the recent processes get a budget; what it
	// misses, the rate-limited full scan finds.
	s.scratch.limited, s.scratch.budget = true, hotScanBudget
	defer func() { s.scratch.limited = false }()
	for _, pid := range s.hot {
		d, err := openProcDir(pid)
		if err != nil {
			continue
		}
		fd, ok := d.holdsSocket(inode, &s.scratch)
		d.close()
		if ok {
			ref := fdRef{pid: pid, fd: int32(fd)}
			s.remember(inode, ref)
			s.touch(pid)
			return ref, nil
		}
	}
	if since := time.Since(s.lastFull); !s.lastFull.IsZero() && since < s.interval {
		return fdRef{}, fmt.Errorf("socket inode %d not in the /proc scan of %v ago (next full scan in %v): %w",
			inode, since.Round(time.Microsecond), s.interval-since, ErrNoProcess)
	}
	s.scratch.limited = false
	if err := s.fullScan(); err != nil {
		return fdRef{}, err
	}
	ref, ok := s.byInode[inode]
	if !ok {
		return fdRef{}, fmt.Errorf("socket inode %d in no /proc/*/fd: %w", inode, ErrNoProcess)
	}
	s.touch(ref.pid)
	return ref, nil
}

// holders lists every process that has the socket inode open, by reading the fd
// table of every process in /proc (no budget, no rate limit: it costs as much as a
// full scan, and runs only for a socket whose first holder is verified). It takes no
// lock: lookups of other sockets go on meanwhile.
func (s *procScanner) holders(inode uint32) ([]int32, error) {
	pids, err := listPIDs()
	if err != nil {
		return nil, err
	}
	scratch := new(scanScratch)
	var out []int32
	for _, pid := range pids {
		d, err := openProcDir(pid)
		if err != nil {
			continue // exited since readdir, or not ours to see
		}
		if _, ok := d.holdsSocket(inode, scratch); ok {
			out = append(out, pid)
		}
		d.close()
	}
	return out, nil
}

// listPIDs reads the process ids in /proc.
func listPIDs() ([]int32, error) {
	pfd, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /proc: %w", err)
	}
	defer unix.Close(pfd)
	var pids []int32
	var dents [8192]byte
	if err := eachDirent(pfd, dents[:], func(name []byte) bool {
		if pid, ok := atoi(name); ok {
			pids = append(pids, int32(pid))
		}
		return true
	}); err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	return pids, nil
}

// forget drops a cached answer that turned out wrong.
func (s *procScanner) forget(inode uint32, ref fdRef) {
	s.mu.Lock()
	if s.byInode[inode] == ref {
		delete(s.byInode, inode)
	}
	s.mu.Unlock()
}

// fullScan replaces the inode cache with every socket descriptor in /proc/*/fd.
func (s *procScanner) fullScan() error {
	s.fullScans.Add(1)
	s.lastFull = time.Now()
	pids, err := listPIDs()
	if err != nil {
		return err
	}
	byInode := make(map[uint32]fdRef, len(s.byInode))
	for _, pid := range pids {
		d, err := openProcDir(pid)
		if err != nil {
			continue // exited since readdir, or not ours to see
		}
		_ = d.eachSocketFD(&s.scratch, func(fd int, ino uint32) bool {
			if _, seen := byInode[ino]; !seen {
				byInode[ino] = fdRef{pid: pid, fd: int32(fd)}
			}
			return len(byInode) < maxInodeCache
		})
		d.close()
	}
	s.byInode = byInode
	return nil
}

func (s *procScanner) remember(inode uint32, ref fdRef) {
	if len(s.byInode) >= maxInodeCache {
		clear(s.byInode)
	}
	s.byInode[inode] = ref
}

// touch moves pid to the front of the hot list.
func (s *procScanner) touch(pid int32) {
	for i, p := range s.hot {
		if p == pid {
			copy(s.hot[1:i+1], s.hot[:i])
			s.hot[0] = pid
			return
		}
	}
	if len(s.hot) < hotPIDs {
		s.hot = append(s.hot, 0)
	}
	copy(s.hot[1:], s.hot[:len(s.hot)-1])
	s.hot[0] = pid
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's starttime, from the auxiliary
// vector (AT_CLKTCK); 100 if it cannot be read.
var clockTicks = sync.OnceValue(func() uint64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100
	}
	for len(b) >= 16 {
		k, v := binary.NativeEndian.Uint64(b), binary.NativeEndian.Uint64(b[8:])
		if k == 17 && v > 0 { // AT_CLKTCK
			return v
		}
		if k == 0 {
			break
		}
		b = b[16:]
	}
	return 100
})
