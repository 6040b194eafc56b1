package procattr

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// miniFUSE is the least FUSE server that serves one executable file "prog" whose
// attributes (inode, size, times) it chooses and whose bytes it may change at any
// time, as any FUSE server may (fusermount3 is setuid root on most desktops, and
// an unprivileged user may mount FUSE inside a user namespace).
type miniFUSE struct {
	f     *os.File
	attrT time.Time
	data  atomic.Pointer[[]byte]
	// stall: GETATTR requests get no answer (until the file system is unmounted).
	stall atomic.Bool
	// stalled are the requests not answered (their unique ids), answered with EIO
	// by unstall.
	mu      sync.Mutex
	stalled []uint64
	wg      sync.WaitGroup
}

const (
	fuseLookup      = 1
	fuseForget      = 2
	fuseGetattr     = 3
	fuseOpen        = 14
	fuseRead        = 15
	fuseRelease     = 18
	fuseInit        = 26
	fuseOpendir     = 27
	fuseReaddir     = 28
	fuseReleasedir  = 29
	fuseInterrupt   = 36
	fuseBatchForget = 42
)

func mountMiniFUSE(t *testing.T, dir string, prog []byte, attrT time.Time) *miniFUSE {
	t.Helper()
	// A blocking descriptor, read by a thread of its own: one os.OpenFile makes
	// pollable fails reads with "not pollable" once the mount has taken it (f.Fd
	// below), and the server stopped with the INIT request unanswered.
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	f := os.NewFile(uintptr(fd), "/dev/fuse")
	m := &miniFUSE{f: f, attrT: attrT}
	m.data.Store(&prog)
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", f.Fd())
	if err := unix.Mount("latchtest", dir, "fuse", 0, opts); err != nil {
		f.Close()
		t.Skipf("mount fuse: %v", err)
	}
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(func() {
		// A request the server has read is waited for uninterruptibly (not even
		// SIGKILL ends it): answer what was stalled, or this process never exits.
		m.unstall()
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", dir, err)
		}
		// The server's read ends (ENODEV) once the connection is gone; only then
		// close f: a close while a blocking read holds f is deferred to that read's
		// end, and would then close whatever file the next test opened under the
		// same number (the next test's /dev/fuse: its INIT never answered, its
		// first exec waiting for ever).
		done := make(chan struct{})
		go func() { m.wg.Wait(); close(done) }()
		select {
		case <-done:
			f.Close()
		case <-time.After(5 * time.Second):
			t.Logf("the FUSE server did not stop within 5 s (its /dev/fuse left open)")
		}
	})
	return m
}

// unstall stops stalling GETATTR and answers the stalled requests with EIO.
func (m *miniFUSE) unstall() {
	m.stall.Store(false)
	m.mu.Lock()
	ids := m.stalled
	m.stalled = nil
	m.mu.Unlock()
	for _, u := range ids {
		hdr := make([]byte, 16)
		binary.LittleEndian.PutUint32(hdr[0:], 16)
		eio := -int32(syscall.EIO)
		binary.LittleEndian.PutUint32(hdr[4:], uint32(eio))
		binary.LittleEndian.PutUint64(hdr[8:], u)
		m.f.Write(hdr)
	}
}

func (m *miniFUSE) attr(b []byte, ino uint64) {
	ne := binary.LittleEndian
	ne.PutUint64(b[0:], ino)
	mode := uint32(syscall.S_IFDIR | 0o755)
	size := uint64(0)
	if ino == 2 {
		mode = syscall.S_IFREG | 0o755
		size = uint64(len(*m.data.Load()))
	}
	ne.PutUint64(b[8:], size)
	ne.PutUint64(b[16:], (size+511)/512)
	sec := uint64(m.attrT.Unix())
	ne.PutUint64(b[24:], sec) // atime
	ne.PutUint64(b[32:], sec) // mtime
	ne.PutUint64(b[40:], sec) // ctime: the server's to say
	ne.PutUint32(b[60:], mode)
	ne.PutUint32(b[64:], 1) // nlink
	ne.PutUint32(b[80:], 4096)
}

func (m *miniFUSE) serve() {
	defer m.wg.Done()
	ne := binary.LittleEndian
	buf := make([]byte, 1<<20+8192)
	for {
		n, err := m.f.Read(buf)
		if err != nil {
			if err == syscall.EINTR || err == syscall.ENOENT {
				continue
			}
			return
		}
		in := buf[:n]
		op := ne.Uint32(in[4:])
		unique := ne.Uint64(in[8:])
		node := ne.Uint64(in[16:])
		arg := in[40:]
		var out []byte
		errno := int32(0)
		switch op {
		case fuseForget, fuseBatchForget, fuseInterrupt:
			continue
		case fuseInit:
			out = make([]byte, 64)
			ne.PutUint32(out[0:], 7)
			ne.PutUint32(out[4:], 31)
			ne.PutUint32(out[8:], ne.Uint32(arg[8:])) // max_readahead
			ne.PutUint16(out[16:], 16)
			ne.PutUint16(out[18:], 12)
			ne.PutUint32(out[20:], 128<<10) // max_write
			ne.PutUint32(out[24:], 1)       // time_gran
		case fuseLookup:
			name := string(bytes.TrimRight(arg, "\x00"))
			if node != 1 || name != "prog" {
				errno = -int32(syscall.ENOENT)
				break
			}
			out = make([]byte, 128)
			ne.PutUint64(out[0:], 2) // nodeid; entry and attr valid 0: asked each time
			m.attr(out[40:], 2)
		case fuseGetattr:
			if m.stall.Load() {
				m.mu.Lock()
				m.stalled = append(m.stalled, unique)
				m.mu.Unlock()
				continue
			}
			out = make([]byte, 104)
			m.attr(out[16:], node)
		case fuseOpen, fuseOpendir:
			out = make([]byte, 16) // no FOPEN_KEEP_CACHE: each open drops the page cache
		case fuseRead:
			off, size := ne.Uint64(arg[8:]), uint64(ne.Uint32(arg[16:]))
			if node != 2 {
				out = []byte{}
				break
			}
			d := *m.data.Load()
			if off > uint64(len(d)) {
				off = uint64(len(d))
			}
			out = d[off:min(off+size, uint64(len(d)))]
		case fuseReaddir, fuseRelease, fuseReleasedir:
			out = []byte{}
		case 17: // FUSE_STATFS (review 44: overlayfs asks it of a lower layer at mount)
			out = make([]byte, 80)
			ne.PutUint32(out[40:], 4096) // bsize
			ne.PutUint32(out[44:], 255)  // namelen
			ne.PutUint32(out[48:], 4096) // frsize
		default:
			errno = -int32(syscall.ENOSYS)
		}
		hdr := make([]byte, 16, 16+len(out))
		ne.PutUint32(hdr[0:], uint32(16+len(out)))
		ne.PutUint32(hdr[4:], uint32(errno))
		ne.PutUint64(hdr[8:], unique)
		if errno == 0 {
			hdr = append(hdr, out...)
		}
		m.f.Write(hdr)
	}
}

// startOnFUSE runs prog (on a miniFUSE mount) with argument 30, executed by a
// shell and not by this process: Go executes from a vfork child, during which the
// parent's thread cannot be stopped, and a garbage collection that waits for it to
// stop would never let the FUSE server, in this process, answer the exec's
// requests. It returns once the process runs prog.
func startOnFUSE(t *testing.T, prog string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `exec "$0" 30`, prog)
	if err := cmd.Start(); err != nil {
		t.Fatalf("exec %s on FUSE: %v", prog, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	link := fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if exe, err := os.Readlink(link); err == nil && exe == prog {
			return cmd
		}
	}
	t.Fatalf("the shell did not execute %s within 5 s", prog)
	return nil
}

// TestReview37FUSEKeepsHashForNewBytes (review 37, medium for pinned rules: a
// program's hash pin is latch's answer to "the same path, other bytes"): an
// executable's hash is cached under its stat key (device, inode, mtime, size,
// ctime), and fix34d caches it only if the ctime is 2 s old, since a user cannot
// set ctime. On FUSE the server says what stat shows, ctime too, and what the
// bytes are: it serves the pinned program's bytes while latch hashes them, then
// other bytes of the same size under the same attributes (each open without
// FOPEN_KEEP_CACHE drops the page cache, so the next exec runs the new bytes). The
// new program's key is the old one, and latch gives it the pinned hash: a pinned
// rule for a path a user's FUSE mount covers (any directory the user owns, e.g.
// ~/bin or an AppImage) matches whatever that user runs there.
//
// Fails on main: the second program, whose bytes hash otherwise, gets the first
// one's hash from the cache.
//
// Fixed: a file on FUSE or a network file system (the mount's type, told without
// asking the server: see exeFS) is unhashable: neither program gets a hash, and the
// hash note says why (a pinned rule never matches either).
//
// Suggested: do not cache (or trust) hashes of files on file systems whose attributes
// their owner chooses: FUSE (statfs f_type FUSE_SUPER_MAGIC 0x65735546), also
// network file systems (NFS, CIFS, 9p) and overlay over them; hash such a file at
// each lookup, or treat it as unhashable (a pinned rule never matches, explained as
// for the 1 GiB cap). Even an uncached hash reads the bytes through the daemon's own
// open, which a FUSE server may answer differently (fuse_in_header.pid), so
// unhashable is the safe answer.
func TestReview37FUSEKeepsHashForNewBytes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	fs := mountMiniFUSE(t, dir, orig, time.Now().Add(-time.Hour))
	prog := filepath.Join(dir, "prog")

	hashOf := func(pid int) (hashKey, string) {
		d, err := openProcDir(int32(pid))
		if err != nil {
			t.Fatal(err)
		}
		defer d.close()
		k, err := d.exeHashKey()
		if err != nil {
			t.Fatal(err)
		}
		if hashes.note(k) != "" {
			return k, hashes.lookup(k, int32(pid)) // never hashed
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if s := hashes.lookup(k, int32(pid)); s != "" {
				return k, s
			}
			time.Sleep(50 * time.Millisecond)
		}
		return k, ""
	}
	run := func() *exec.Cmd {
		return startOnFUSE(t, prog)
	}

	p1 := run()
	k1, h1 := hashOf(p1.Process.Pid)
	sum := sha256.Sum256(orig)
	if h1 != "" && h1 != hex.EncodeToString(sum[:]) {
		t.Fatalf("first program's hash %q, want %x or none", h1, sum)
	}
	p1.Process.Kill()
	p1.Wait()

	// Other bytes, same size, same attributes (the last byte is in the section
	// headers, which exec does not read: the program still runs).
	other := bytes.Clone(orig)
	other[len(other)-1] ^= 0xff
	fs.data.Store(&other)
	osum := sha256.Sum256(other)

	p2 := run()
	k2, h2 := hashOf(p2.Process.Pid)
	// readAll, not os.ReadFile: os.Open adds the file to Go's epoll, which asks
	// the FUSE server (FUSE_POLL) from a thread a garbage collection may stop.
	if exe, err := readAll(unix.AT_FDCWD, fmt.Sprintf("/proc/%d/exe", p2.Process.Pid)); err != nil || !bytes.Equal(exe, other) {
		t.Fatalf("the second program's file does not hold the new bytes (%v)", err)
	}
	t.Logf("keys equal: %v", k1 == k2)
	if h2 == h1 && h1 != "" {
		t.Fatalf("a program on FUSE whose bytes hash to %x got the hash %s of the bytes the file held before (same stat key: %v): a rule pinned to that hash matches it",
			osum, h1, k1 == k2)
	}
	if h1 != "" || h2 != "" {
		t.Fatalf("programs on FUSE got hashes %q and %q: the server chooses the bytes latch reads and the attributes it keys them by, so a rule pinned to a hash would match what it serves next", h1, h2)
	}
	for _, k := range []hashKey{k1, k2} {
		if n := hashes.note(k); !strings.Contains(n, "FUSE") {
			t.Errorf("hash note of a program on FUSE %q, want one that says FUSE", n)
		}
	}
}

// TestReview37FUSEStallsAttribution (review 37, high: any local user who may mount
// FUSE stops every connection of the host): attribution stats the executable of the
// process that made a connection (readEntry: statx of /proc/PID/exe in exeFileID,
// exeOldMountID, verifyExe's path, exeHashKey), without AT_STATX_DONT_SYNC. For a
// file on FUSE whose server gives its attributes no validity (attr_valid 0) every
// statx is a GETATTR request to that server, and a server that never answers it
// holds the daemon's thread in the kernel: once the server has read the request it
// is waited for uninterruptibly, not even SIGKILL ends it, so the daemon cannot be
// restarted either (its process stays a zombie, as this test's did before it
// answered in its cleanup) until the server answers or root writes to
// /sys/fs/fuse/connections/N/abort. The queue has 4 readers (maxReaders): four connections of
// programs run from such a mount (fusermount3 is setuid root on desktops; an
// unprivileged user namespace may mount FUSE itself, and /proc/PID/exe reaches the
// file from the daemon's mount namespace) leave no reader, and every connection of
// every user waits (fail-closed) for as long as the user likes. fix34d's hash
// timeout covers the hashing read only, not these stats.
//
// Fails on main: readEntry of a process run from the stalling mount has not
// returned after 3 s (it returns when the test unmounts).
//
// Fix: statx /proc/PID/exe with AT_STATX_DONT_SYNC (the kernel's cached attributes:
// FUSE sends no request), take the file's identity from the eBPF hook's record of
// exec, and do not read or stat on the packet path what a user's file system
// serves (or do it in a bounded pool off the queue readers, with a deadline after
// which the connection is decided as unattributed).
func TestReview37FUSEStallsAttribution(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	fs := mountMiniFUSE(t, dir, orig, time.Now().Add(-time.Hour))
	cmd := startOnFUSE(t, filepath.Join(dir, "prog"))
	fs.stall.Store(true)
	done := make(chan error, 1)
	go func() {
		d, err := openProcDir(int32(cmd.Process.Pid))
		if err != nil {
			done <- err
			return
		}
		defer d.close()
		e, err := readEntry(d)
		if err == nil && (e.ident.status != engine.IdentityUnverified || !strings.Contains(e.ident.note, "FUSE") || e.exe != filepath.Join(dir, "prog")) {
			err = fmt.Errorf("a program on FUSE attributed as %q, %v (%q), want its path, unverified, with a note that says FUSE", e.exe, e.ident.status, e.ident.note)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
		return
	case <-time.After(3 * time.Second):
		t.Errorf("attribution of a process whose executable is on a FUSE mount that does not answer GETATTR has not returned after 3 s: a queue reader would be stuck (4 such connections stop the queue)")
	}
	// Let it go (answer the stalled requests), repeatedly: each stat of readEntry
	// is another request.
	fs.stall.Store(false)
	for range 50 {
		fs.unstall()
		select {
		case <-done:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Errorf("readEntry still stuck after the stalled requests were answered")
}
