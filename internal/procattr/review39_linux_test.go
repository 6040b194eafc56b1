package procattr

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/fileperm"
)

// review39Mount is mountMiniFUSE whose cleanup first stops stalling and answers,
// for a while, whatever was stalled (a request read as the stall ended, or one of
// another process walking the temporary directory), so that the server stops and
// its /dev/fuse is closed before the next test opens its own.
func review39Mount(t *testing.T, dir string, prog []byte) *miniFUSE {
	t.Helper()
	fs := mountMiniFUSE(t, dir, prog, time.Now().Add(-time.Hour))
	t.Cleanup(func() {
		fs.stall.Store(false)
		for range 10 {
			fs.unstall()
			time.Sleep(20 * time.Millisecond)
		}
	})
	return fs
}

// review39Returns runs f and reports whether it returned within 3 s; if not, it
// answers fs's stalled requests (repeatedly) so that f, and this test process,
// can end.
func review39Returns(t *testing.T, fs *miniFUSE, f func()) bool {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(3 * time.Second):
	}
	fs.stall.Store(false)
	for range 50 {
		fs.unstall()
		select {
		case <-done:
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Errorf("still stuck after the stalled requests were answered")
	return false
}

// TestReview39OtherNamespacePathThroughFUSE (review 39, finding 1, high: the same
// stall as review 37's, which its fix meant to end): review 37's fix tells the
// file system of the *executable* (exeFS) and skips the path walk only when that
// file is on FUSE. But verifyExe then walks the *name* readlink gave in the
// host's mount namespace (hostFileID: openat2 + fstat), and for a process in a
// mount namespace of its own that name means something else on the host. A user
// runs a program from a tmpfs mounted at ~/x inside `unshare -Urm` (exe on tmpfs:
// exeFS says "tmpfs", trusted), and on the host mounts a FUSE file system of
// theirs at ~/x (fusermount3). The daemon's check of the host's ~/x/prog is a
// LOOKUP and a GETATTR to the user's FUSE server, which never answers the
// GETATTR: the queue reader waits uninterruptibly. Four such connections leave
// the queue no reader (every connection of every user waits).
//
// Fails on the current code: readEntry has not returned after 3 s.
//
// Suggested: before any walk of a path on the host (hostFileID, hostFileStat,
// hostFileQuick, the lineage's verifyExe), make sure it crosses no untrusted
// mount: walk one component at a time with openat2 RESOLVE_NO_XDEV-like checks
// and a DONT_SYNC statx mount id of each directory before looking into it, or
// only walk paths for processes in the host's mount namespace (a process in
// another one is never verified unless its namespace is root's own, and the
// host's file at its name is not then the file's identity anyway).
//
// Run: go test -count=1 -run TestReview39OtherNamespacePathThroughFUSE ./internal/procattr/ (as root)
func TestReview39OtherNamespacePathThroughFUSE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE and make a mount namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	h := filepath.Join(dir, "x")
	if err := os.Mkdir(h, 0o755); err != nil {
		t.Fatal(err)
	}
	// The attacker's process: its own mount namespace (unprivileged: unshare
	// -Urm), a tmpfs at h, a copy of sleep there, executed once the host has its
	// FUSE mount at h.
	script := fmt.Sprintf(`mount -t tmpfs t %q && cp /bin/sleep %q/prog && echo ready && read x && exec %q/prog 30`, h, h, h)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Skipf("the namespace's program did not get ready: %q %v", line, err)
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	fs := review39Mount(t, h, orig) // the user's FUSE mount on the host
	io.WriteString(in, "go\n")
	prog := filepath.Join(h, "prog")
	link := fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)
	ok := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if exe, err := os.Readlink(link); err == nil && exe == prog {
			ok = true
			break
		}
	}
	if !ok {
		t.Fatalf("the namespace's process did not execute %s", prog)
	}
	fs.stall.Store(true)
	var e *procEntry
	var rerr error
	if !review39Returns(t, fs, func() {
		d, err := openProcDir(int32(cmd.Process.Pid))
		if err != nil {
			rerr = err
			return
		}
		defer d.close()
		e, rerr = readEntry(d)
	}) {
		t.Fatalf("attribution of a process of another mount namespace, whose executable (on tmpfs) is named %s, has not returned after 3 s: the daemon walked that name on the host, through the user's FUSE mount there, whose server does not answer; a queue reader would be stuck (4 such connections stop the queue)", prog)
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	if e.ident.status == engine.IdentityVerified {
		t.Errorf("a process of another mount namespace verified as %s", e.exe)
	}
}

// TestReview39CachedVerifiedRecheckThroughFUSE (review 39, finding 2, high): review
// 35's re-check (stillNamed) of a cached verified process stats its path on the
// host at every resolution (hostFileQuick, then hostFileStat), with no
// AT_STATX_DONT_SYNC and no look at the mounts it crosses. The owner of a
// directory holding a verified program (~/bin/prog, run and cached verified)
// renames the directory away and mounts a FUSE file system of theirs at its name
// (fusermount3, no user namespace needed; a symbolic link to a FUSE mount does the
// same for hostFileQuick, which follows directory links). The next connection of
// that still-running process makes the daemon stat ~/bin/prog: a GETATTR to the
// user's server, which never answers it. The queue reader waits uninterruptibly.
//
// Fails on the current code: stillNamed has not returned after 3 s.
//
// Suggested: the re-check stats with AT_STATX_DONT_SYNC and checks the mount id
// of the path's file (statx STATX_MNT_ID, DONT_SYNC) against the executable's
// before trusting it, and walks with openat2 RESOLVE_NO_XDEV from a directory it
// knows is on the executable's mount, or checks each directory's file system with
// exeFS's means before looking into it.
//
// Run: go test -count=1 -run TestReview39CachedVerifiedRecheckThroughFUSE ./internal/procattr/ (as root)
func TestReview39CachedVerifiedRecheckThroughFUSE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(bin, "prog")
	if err := os.WriteFile(prog, orig, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	d, err := openProcDir(int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	var e *procEntry
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if e, err = readEntry(d); err == nil && e.exe == prog {
			break
		}
	}
	if e == nil || e.exe != prog || e.ident.status != engine.IdentityVerified {
		t.Fatalf("the program at %s is not verified: %+v %v", prog, e, err)
	}
	if !e.stillNamed() || !e.stillNamed() {
		t.Fatalf("the verified program's re-check fails before the path changed")
	}
	// The user's directory moved away, the user's FUSE mount at its name.
	if err := os.Rename(bin, bin+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	fs := review39Mount(t, bin, orig)
	fs.stall.Store(true)
	var named bool
	if !review39Returns(t, fs, func() { named = e.stillNamed() }) {
		t.Fatalf("the re-check of a cached verified process (%s) has not returned after 3 s: the user put a FUSE mount on the path and its server does not answer; a queue reader would be stuck at each connection of that process", prog)
	}
	if named {
		t.Errorf("the re-check says the host's %s is still the process's file", prog)
	}
}

// TestReview39OpenTrustedThroughUserFUSE (review 39, finding 3, medium: the daemon's
// start hangs at a member's wish; placed here for the package's FUSE server):
// fileperm.OpenTrusted (the lists migration's readOlder, run at every start for an
// older lists.json entry that has no copy yet, which a refused one never gets)
// trusts what fstat says of each directory and of the file. On a FUSE mount that
// is the server's answer: a member mounts FUSE (fusermount3) on a directory of
// theirs in a root-owned sticky directory (/tmp/m) and answers uid 0, mode 0755
// for the mount's root and 0 for its files: OpenTrusted takes the member's file
// for root's. Worse, each fstat is a GETATTR request, and a server that never
// answers it holds the daemon's start (uninterruptibly: not even SIGKILL ends
// it, so systemd cannot restart it) for as long as the member likes.
//
// Fails on the current code: OpenTrusted opens the member's file through the
// FUSE mount, and with the server stalling it has not returned after 3 s.
//
// Suggested: in the walk, statx each opened directory with AT_STATX_DONT_SYNC and
// STATX_MNT_ID and refuse any mount whose type untrustedFS names (as exeFS tells
// it) before any request could reach its server (the openat of the mount's root
// already is an OPENDIR: tell the type of the child mount from mountinfo by the
// mount point before opening it, or open with O_PATH, which sends none).
//
// Run: go test -count=1 -run TestReview39OpenTrustedThroughUserFUSE ./internal/procattr/ (as root)
func TestReview39OpenTrustedThroughUserFUSE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	base := t.TempDir()
	sticky := filepath.Join(base, "tmp")
	if err := os.Mkdir(sticky, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(sticky, 0o1777); err != nil {
		t.Fatal(err)
	}
	m := filepath.Join(sticky, "m")
	if err := os.Mkdir(m, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(m, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(m, "prog")
	if f, err := fileperm.OpenTrusted(list); err == nil {
		f.Close()
		t.Fatalf("OpenTrusted opened %s under a directory of uid 1000 (no FUSE yet)", list)
	}
	fs := review39Mount(t, m, []byte("example.com\n"))
	var f *os.File
	var oerr error
	if !review39Returns(t, fs, func() { f, oerr = fileperm.OpenTrusted(list) }) {
		t.Fatalf("never reached")
	}
	t.Logf("OpenTrusted through FUSE: %v", oerr)
	if oerr == nil {
		f.Close()
		t.Errorf("OpenTrusted opened %s, a file of uid 1000's FUSE mount (its server says uid 0), as a file only root could have chosen", list)
	}
	fs.stall.Store(true)
	if !review39Returns(t, fs, func() {
		if f, err := fileperm.OpenTrusted(list); err == nil {
			f.Close()
		}
	}) {
		t.Errorf("OpenTrusted(%s) has not returned after 3 s: the member's FUSE server does not answer GETATTR; the daemon's start (the lists migration) waits uninterruptibly", list)
	}
}

// TestReview39OvermountedExeDirThroughFUSE (review 39, finding 1 in its simplest
// form: no namespace, no cache, only fusermount3): a user runs ~/d/prog (a file on
// the home file system: exeFS says ext4, trusted), then mounts a FUSE file system
// of theirs over ~/d (fusermount3 mounts over a directory the user owns, a
// non-empty one too with libfuse 3). The kernel's name of the running file is
// still ~/d/prog (d_path ignores what is mounted over its directory), but the
// daemon's walk of that name on the host (verifyExe's hostFileID) now enters the
// FUSE mount: a LOOKUP and a GETATTR to the user's server, which never answers
// the GETATTR. The queue reader that attributes this process's connection waits
// uninterruptibly; four such connections stop the queue.
//
// Fails on the current code: readEntry has not returned after 3 s.
//
// Run: go test -count=1 -run TestReview39OvermountedExeDirThroughFUSE ./internal/procattr/ (as root)
func TestReview39OvermountedExeDirThroughFUSE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	orig, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	d := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(d, "prog")
	if err := os.WriteFile(prog, orig, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	link := fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if exe, err := os.Readlink(link); err == nil && exe == prog {
			break
		}
	}
	fs := review39Mount(t, d, orig) // over the running program's directory
	fs.stall.Store(true)
	var e *procEntry
	var rerr error
	if !review39Returns(t, fs, func() {
		pd, err := openProcDir(int32(cmd.Process.Pid))
		if err != nil {
			rerr = err
			return
		}
		defer pd.close()
		e, rerr = readEntry(pd)
	}) {
		t.Fatalf("attribution of a process running %s (on the temporary directory's file system) has not returned after 3 s: its owner mounted FUSE over its directory and the daemon's walk of that name went into it; a queue reader would be stuck (4 such connections stop the queue)", prog)
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	if e.ident.status == engine.IdentityVerified {
		t.Errorf("a process whose executable's name now leads into a FUSE mount verified as %s", e.exe)
	}
}
