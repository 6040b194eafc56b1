package procattr

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// TestReview33MountIDReuseVerified (review33, open, low as review32's finding,
// which it re-opens through its fix): review32's fix
// tells the program that connected from the one /proc names by the inode number
// and the mount id (ExeMnt, statx's STATX_MNT_ID). That mount id is the kernel's
// old, reusable one: a freed id goes to the next mount made anywhere, lowest
// free id first (mount ids are an IDA/xarray allocation; STATX_MNT_ID_UNIQUE,
// Linux 6.8+, is the 64-bit id that is never reused). So the program of
// TestNamedAfterConnectSameInodeVerified (its own executable on a file system
// of its own with the allowed program's inode number; it connects, then names
// the allowed program as its executable through a CLONE_VM | CLONE_NEWUSER
// child) gets past the new check too: once its executable is named away and
// its maps are gone, nothing holds its file system's mount; that mount goes
// and its id is free; a CLONE_VM | CLONE_NEWUSER | CLONE_NEWNS child binds the
// allowed program over itself in a mount namespace of its own (unprivileged),
// which takes that id, and names the file reached through that bind mount as
// the shared mm's executable. /proc/PID/exe: the allowed program's path (the
// bind mount is at the same path in the child's namespace), the allowed
// program's device and inode (verifyExe's host comparison holds), mount id
// equal to the record's; the process itself stays in the host's user and mount
// namespaces. Attributed verified, while its own code holds the socket. Fails
// on current main in both subtests: ownFS=false, the program's file system a
// tmpfs the test mounts and unmounts (as review32's test); ownFS=true, every
// step of the program's unprivileged (uid 65534): it mounts its tmpfs in a
// user and mount namespace of its own, executes itself from there by
// descriptor (execveat) and lets that namespace go. Only the allowed program
// is on a fresh tmpfs for the inode number (a stand-in: on the host's file
// system the attacker creates and deletes files in its tmpfs until the
// number comes up, about 44 us a file on this machine, seconds to minutes
// for a root file system's numbers). Through the queue the naming must come
// before the first packet is decided: a UDP socket's connect() writes the
// record and sends nothing (a connected socket's send runs no sendmsg hook),
// so there is no race to win.
//
// Fix: record mount.mnt_id_unique (u64) in the hooks and compare it with
// statx(STATX_MNT_ID_UNIQUE) of /proc/PID/exe (where the kernel has both:
// 6.8+; tried outside the tree: this test then passes, and
// TestResolveByRecordIdentity needs its own statx to ask for the unique id).
// The fast path's key (fp_key.mnt_id) has the same reusable id; no way to use
// that was found (an entry's mount id is taken over only once its mount is
// gone, which the mount watch sees in the tables it watches, and elsewhere the
// key's uid and file still give the same rule's verdict).
func TestReview33MountIDReuseVerified(t *testing.T) {
	requireRoot(t)
	cc, err := exec.LookPath("gcc")
	if err != nil {
		if cc, err = exec.LookPath("cc"); err != nil {
			t.Skip("no C compiler for testdata/masquerade")
		}
	}
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{DisableProcfs: true})
	if !r.hooks.identifies || !r.hooks.knowsExe {
		t.Fatal("the eBPF hooks do not record executables on this kernel (CI needs them)")
	}
	base := t.TempDir()
	for d := base; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	// The library outside the program's file system: its maps would hold the
	// mount (the program never returns to main's unmapped code).
	lib := filepath.Join(base, "lib")
	if err := os.Mkdir(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	src, _ := filepath.Abs("../fastpath/testdata/masquerade")
	build := filepath.Join(base, "bin")
	if err := os.Mkdir(build, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-O1", "-shared", "-fPIC", "-Wl,-z,now", "-o", filepath.Join(lib, "libmasq.so"), filepath.Join(src, "lib.c")},
		{"-O1", "-Wl,-z,now", "-o", filepath.Join(build, "masq"), filepath.Join(src, "main.c"), "-L" + lib, "-lmasq", "-Wl,-rpath," + lib},
	} {
		if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", cc, args, err, out)
		}
	}
	masq, err := os.ReadFile(filepath.Join(build, "masq"))
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	// ownFS: the program's own file system is a tmpfs it mounts in a user and
	// mount namespace of its own and executes itself from by descriptor
	// (testdata/masquerade MASQ_OWN_FS), every step unprivileged; otherwise
	// the test mounts and unmounts it (root), as review32's test does.
	for _, ownFS := range []bool{false, true} {
		t.Run(fmt.Sprintf("ownFS=%v", ownFS), func(t *testing.T) {
			// Mount ids are shared by the whole machine: another test's mount
			// may take the freed id first. A few tries.
			const tries = 4
			for try := 1; try <= tries; try++ {
				verified, reused := mountIDReuseOnce(t, r, ns, base, fmt.Sprintf("%v-%d", ownFS, try), build, ownFS, masq, sleep)
				if !reused {
					t.Logf("try %d: the freed mount id went to another mount first", try)
					continue
				}
				if verified {
					t.Errorf("a program of the user's own that connected, then named the allowed program as its executable through a bind mount that took its own file system's freed mount id: verified; want unverified")
				}
				return
			}
			t.Skipf("the freed mount id went to another mount in %d tries (a busy machine)", tries)
		})
	}
}

// mountIDReuseOnce runs one attempt of TestReview33MountIDReuseVerified in
// base/tryN: reused says whether the bind mount got the freed id, verified
// whether Resolve then called the connection verified.
func mountIDReuseOnce(t *testing.T, r *Resolver, ns, base, try, build string, ownFS bool, masq, sleep []byte) (verified, reused bool) {
	dir := filepath.Join(base, "try"+try)
	own, allowed := filepath.Join(dir, "own"), filepath.Join(dir, "allowed")
	mounts := []string{own, allowed}
	if ownFS {
		mounts = mounts[1:]
	}
	for _, d := range mounts {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", 0, "mode=0755"); err != nil {
			t.Fatalf("mount tmpfs on %s: %v", d, err)
		}
		t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	}
	// Two fresh tmpfs, files made in the same order: the same inode numbers.
	files := []struct {
		path string
		data []byte
	}{
		{filepath.Join(own, "pad"), nil},
		{filepath.Join(own, "masq"), masq},
		{filepath.Join(allowed, "pad"), nil},
		{filepath.Join(allowed, "prog"), sleep},
	}
	if ownFS {
		files = files[2:]
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(allowed, "prog")
	var x unix.Stat_t
	if err := unix.Stat(target, &x); err != nil {
		t.Fatal(err)
	}
	if !ownFS {
		var a unix.Stat_t
		if unix.Stat(filepath.Join(own, "masq"), &a) != nil || a.Ino != x.Ino {
			t.Fatalf("tmpfs inode numbers: own program %d, allowed program %d; the test needs them equal", a.Ino, x.Ino)
		}
	}

	remote := netip.MustParseAddrPort("198.18.0.2:9")
	prog := filepath.Join(own, "masq")
	env := []string{"MASQ_CLONE_VM=1", "MASQ_CONNECT_FIRST=1", "MASQ_REUSE_MNT=1"}
	if ownFS {
		prog = filepath.Join(build, "masq")
		env = append(env, "MASQ_OWN_FS=1")
	}
	cmd := exec.Command(prog, target, remote.Addr().String(), fmt.Sprint(remote.Port()))
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	var serr error
	inNetns(t, ns, func() { serr = cmd.Start() })
	if serr != nil {
		t.Fatal(serr)
	}
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	out := bufio.NewReader(stdout)
	line, _ := out.ReadString('\n')
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "ok" {
		t.Fatalf("the program said %q; want ok LOCAL EXE", line)
	}
	local := netip.MustParseAddrPort(f[1])
	// Its executable is named away and its maps are gone: its file system's
	// mount goes, and its id with it (with ownFS, its namespace went already:
	// nothing holds the mount now).
	if !ownFS {
		if err := unix.Unmount(own, unix.MNT_DETACH); err != nil {
			t.Fatalf("unmount %s: %v", own, err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := stdin.Write([]byte("g")); err != nil {
		t.Fatal(err)
	}
	line, _ = out.ReadString('\n')
	f = strings.Fields(line)
	if len(f) != 5 || f[0] != "reused" {
		t.Fatalf("the program said %q; want reused WANT GOT ERR EXE", line)
	}
	if f[3] != "0" {
		t.Fatalf("the naming through the bind mount failed: %q", line)
	}
	if f[1] != f[2] {
		return false, false
	}
	var am unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, allowed, 0, unix.STATX_MNT_ID, &am); err != nil {
		t.Fatal(err)
	}
	if f[1] == fmt.Sprint(am.Mnt_id) {
		t.Fatalf("the program's own executable was on the allowed program's mount (%s); want a file system of its own", f[1])
	}
	if f[4] != target {
		t.Fatalf("the program's executable after the naming: %s; want %s", f[4], target)
	}
	p, err := r.Resolve(engine.TCP, local, remote, -1)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	t.Logf("mount id %s reused; attributed: pid %d exe %s identity %v method %s note %q", f[1], p.PID, p.Exe, p.Identity, p.Method, p.IdentityNote)
	if p.PID != int32(cmd.Process.Pid) {
		t.Fatalf("attributed to pid %d; want the program's %d", p.PID, cmd.Process.Pid)
	}
	return p.Identity == engine.IdentityVerified, true
}
