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

// TestNamedAfterConnectSameInodeVerified (review32, fixed): the record's
// ExeFlags (review28's neighbour) only tells a file named with prctl(PR_SET_MM)
// when the naming came before the connect the record is of. A program that
// connects first (the record: its own executable, opened by execve, so
// __FMODE_EXEC) and names the allowed program as its executable afterwards
// through a CLONE_VM | CLONE_NEWUSER child (it stays in the host's user
// namespace) is judged by /proc, which names the allowed program, and by the
// record's executable against /proc's. Its own executable on another file
// system with the allowed program's inode number (here two fresh tmpfs,
// files made in the same order; an unprivileged user has FUSE through
// fusermount, whose server picks any inode number, or a tmpfs of a user
// namespace of its own, reached by descriptor, whose numbers it walks up to)
// made its connection attributed to the allowed program, verified, while its
// own code ran and held the socket, when only the inode number was compared.
// The record now carries the executable's mount id too (ExeMnt), and viaEBPF
// calls the process unverified unless both match /proc/PID/exe's.
func TestNamedAfterConnectSameInodeVerified(t *testing.T) {
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
	build := t.TempDir()
	base := t.TempDir()
	for d := base; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	src, _ := filepath.Abs("../fastpath/testdata/masquerade")
	for _, args := range [][]string{
		{"-O1", "-shared", "-fPIC", "-Wl,-z,now", "-o", filepath.Join(build, "libmasq.so"), filepath.Join(src, "lib.c")},
		{"-O1", "-Wl,-z,now", "-o", filepath.Join(build, "masq"), filepath.Join(src, "main.c"), "-L" + build, "-lmasq", "-Wl,-rpath,$ORIGIN"},
	} {
		if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", cc, args, err, out)
		}
	}
	// Two fresh tmpfs: the same order of creation gives the same numbers.
	own, allowed := filepath.Join(base, "own"), filepath.Join(base, "allowed")
	for _, d := range []string{own, allowed} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", 0, "mode=0755"); err != nil {
			t.Fatalf("mount tmpfs on %s: %v", d, err)
		}
		t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	}
	cp := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cp(filepath.Join(build, "libmasq.so"), filepath.Join(own, "libmasq.so"))
	cp(filepath.Join(build, "masq"), filepath.Join(own, "masq"))
	cp("/bin/sleep", filepath.Join(allowed, "lib"))
	target := filepath.Join(allowed, "prog")
	cp("/bin/sleep", target)
	var a, x unix.Stat_t
	if unix.Stat(filepath.Join(own, "masq"), &a) != nil || unix.Stat(target, &x) != nil || a.Ino != x.Ino {
		t.Fatalf("tmpfs inode numbers: own program %d, allowed program %d; the test needs them equal", a.Ino, x.Ino)
	}

	remote := netip.MustParseAddrPort("198.18.0.2:9")
	cmd := exec.Command(filepath.Join(own, "masq"), target, remote.Addr().String(), fmt.Sprint(remote.Port()))
	cmd.Env = append(os.Environ(), "MASQ_CLONE_VM=1", "MASQ_CONNECT_FIRST=1")
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
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "ok" {
		t.Fatalf("the program said %q; want ok LOCAL EXE", line)
	}
	if f[2] != target {
		t.Fatalf("the program's executable after the naming: %s; want %s", f[2], target)
	}
	local := netip.MustParseAddrPort(f[1])
	p, err := r.Resolve(engine.TCP, local, remote, -1)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	t.Logf("attributed: pid %d exe %s identity %v method %s note %q", p.PID, p.Exe, p.Identity, p.Method, p.IdentityNote)
	if p.PID != int32(cmd.Process.Pid) {
		t.Fatalf("attributed to pid %d; want the program's %d", p.PID, cmd.Process.Pid)
	}
	if p.Identity == engine.IdentityVerified {
		t.Errorf("a program of the user's own, which named %s as its executable after it connected: verified as %s (method %s); want unverified", target, p.Exe, p.Method)
	}
}
