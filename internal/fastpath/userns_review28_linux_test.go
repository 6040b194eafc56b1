package fastpath

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

	"github.com/latchfw/latch/internal/engine"
)

// review28Uid is the unprivileged user the review28 tests run their clients as
// (nobody on Debian): the hole needs no privilege.
const review28Uid = 65534

// publicCopy copies the test binary to a directory every user may enter, so
// that an unprivileged client can run it, and returns its path.
func publicCopy(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(dir, "client")
	if err := os.WriteFile(cp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return cp
}

// storeAllowed makes rule 1 allow exe, starts exe as review28Uid in the
// cgroup cgfd, and stores the rule's allow of its connects to a new TCP
// listener, which it returns with the client.
func storeAllowed(t *testing.T, fp *FastPath, exe string, cgfd int) (*testClient, netip.AddrPort) {
	t.Helper()
	fp.RulesChanged([]engine.Rule{{ID: 1, App: exe, Action: engine.Allow}})
	dst := listen(t, "tcp4", "127.0.0.1:0")
	prog := startClientAs(t, review28Uid, cgfd, exe, exe)
	r := req(prog, dst)
	r.UID = review28Uid
	if ok, err := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1)); !ok {
		t.Fatalf("not stored: %v", err)
	}
	return prog, dst
}

// startClientAs is startClient for argv (the client's executable last, run
// with LATCH_FP_CLIENT set; argv may run it through unshare), as user uid.
func startClientAs(t *testing.T, uid uint32, cgroupFD int, exe string, argv ...string) *testClient {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LATCH_FP_CLIENT=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgroupFD,
		Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start client %v: %v", argv, err)
	}
	c := &testClient{cmd: cmd, in: in, out: bufio.NewScanner(out), pid: int32(cmd.Process.Pid), exe: exe}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	if line := c.line(t); !strings.HasPrefix(line, "ready") {
		t.Fatalf("client %v said %q", argv, line)
	} else {
		fmt.Sscan(strings.TrimPrefix(line, "ready "), &c.pid)
	}
	return c
}

// TestUserNamespaceHitsVerifiedEntry (review28, fixed, medium-low): the kernel
// key is the executable file (inode, device, mount, directory), the socket's
// uid and the destination; it does not say whether the connecting process is
// in the initial user namespace. latch's attribution calls a process in a user
// namespace of its own "unverified" even with the host's mounts and root
// (internal/procattr verifyExe: "runs in a user namespace of its own, where it
// may name another program as its executable": its root holds
// CAP_CHECKPOINT_RESTORE there and points /proc/PID/exe, mm->exe_file, at any
// program it may run with prctl(PR_SET_MM_MAP, exe_fd), or runs the host's
// file through a descriptor under a chroot holding its own loader), and only
// a verified program matches --app rules, so the queue asks about (or the mode
// decides) such a connection. The README promises the fast path caches only
// verified identities, "a program run in a user and mount namespace of its own
// is asked through the queue every time". But unshare -U without a mount
// namespace keeps the host's mount ids, so the process's key is the verified
// program's, and its connect hits the entry the real program's allowed
// connection left (any user can make that entry by running the program once):
// it is allowed in the kernel, never asked. An unprivileged user thereby gets
// code of their own decided as an allowed program (a setcap or static binary
// under ptrace_scope >= 2, which LD_PRELOAD and ptrace cannot take over).
// Fixed: identify (fastpath.c) gives a task in another user namespace than the
// host's no identity, so its connect misses.
func TestUserNamespaceHitsVerifiedEntry(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("no unshare")
		}
		cg, cgfd := testCgroup(t)
		exe := publicCopy(t)
		ownNetns(t)
		fp := openTest(t, cg, cfg)
		if s := fp.Stats(); !s.TCPLocal {
			t.Skipf("no TCP fast path: %+v", s)
		}
		// The program itself, verified: its allowed connection is stored.
		prog, dst := storeAllowed(t, fp, exe, cgfd)
		if got := prog.connect(t, dst); got != "ok 0x60000000" {
			t.Fatalf("the verified program: %q, want a hit", got)
		}

		// The same user, the same file, run in a user namespace of its own (the
		// host's mounts and root): what attribution calls unverified.
		ns := startClientAs(t, review28Uid, cgfd, exe, "unshare", "-Ur", "--", exe)
		self, err1 := os.Readlink("/proc/self/ns/user")
		its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", ns.pid))
		if err1 != nil || err2 != nil || self == its {
			t.Fatalf("the client is not in a user namespace of its own: %q %v, %q %v", self, err1, its, err2)
		}
		if got := ns.connect(t, dst); got != "ok 0x0" {
			t.Errorf("a process in a user namespace of its own: %q, want a miss (the queue decides it: not verified, no --app rule matches it)", got)
		}
	})
}

// TestReplacedExecutableHitsOldEntry (review28, fixed, low): attribution calls
// a process whose executable was deleted or replaced since it started
// unverified ("the executable was deleted or replaced since the process
// started"; README: "not verified until it is restarted"), so no --app rule
// matches it and the queue asks. The kernel's key is the running file's
// inode, which a replace (a package upgrade renames a new file over the old)
// does not change for a process started before: its entries keep hitting
// until the TTL or the next rule change, though the same connection through
// the queue would be asked about. It runs the code that was allowed, so the
// gain is small; it is the class of TestUserNamespaceHitsVerifiedEntry (the
// key does not tell what attribution would not verify). Fixed: identify gives
// no identity for an executable without links or whose name is gone from the
// dentry cache (renamed over).
func TestReplacedExecutableHitsOldEntry(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		cg, cgfd := testCgroup(t)
		exe := publicCopy(t)
		ownNetns(t)
		fp := openTest(t, cg, cfg)
		if s := fp.Stats(); !s.TCPLocal {
			t.Skipf("no TCP fast path: %+v", s)
		}
		prog, dst := storeAllowed(t, fp, exe, cgfd)
		if got := prog.connect(t, dst); got != "ok 0x60000000" {
			t.Fatalf("before the replace: %q, want a hit", got)
		}
		// An upgrade: a new file renamed over the path.
		b, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(exe+".new", append(b, 0), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(exe+".new", exe); err != nil {
			t.Fatal(err)
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", prog.pid)); err != nil || !strings.HasSuffix(l, " (deleted)") {
			t.Fatalf("the client's executable: %q %v; want the deleted file", l, err)
		}
		if got := prog.connect(t, dst); got != "ok 0x0" {
			t.Errorf("a process whose executable was replaced: %q, want a miss (the queue decides it: not verified, no --app rule matches it)", got)
		}
	})
}

// TestUserNamespaceMasqueradeHitsEntry (review28, fixed, medium-low): what
// TestUserNamespaceHitsVerifiedEntry lets through is not only the allowed
// program. An unprivileged user's own program (testdata/masquerade), in a user
// namespace of its own with the host's mounts (unshare -Ur), names the allowed
// program as its executable (prctl PR_SET_MM_MAP with exe_fd: mm->exe_file,
// which the kernel key reads, is then the allowed file, through the host's
// mount, in its directory) and connects: the kernel allows its connection by
// the allowed program's cached verdict. Attribution calls it unverified ("runs
// in a user namespace of its own, where it may name another program as its
// executable"), so the queue would ask: the README's "Program identity" class
// of tricks, which latch otherwise defeats, passes through the fast path. It
// matters where code injection into the allowed program is barred otherwise
// (a setcap or setuid program, or a static one under ptrace_scope >= 2:
// LD_PRELOAD and ptrace do not reach them). Fixed with
// TestUserNamespaceHitsVerifiedEntry.
func TestUserNamespaceMasqueradeHitsEntry(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) { masquerade(t, cfg, false, false) })
}

// TestCloneVMMasqueradeHitsEntry (review28's neighbour, fixed, medium-low):
// the masquerade of TestUserNamespaceMasqueradeHitsEntry without leaving the
// initial user namespace. The program clones a child with CLONE_VM |
// CLONE_NEWUSER (any user may, where unprivileged user namespaces are on): the
// child shares the program's memory, mm->exe_file included, and holds
// CAP_CHECKPOINT_RESTORE in its own user namespace, so its prctl(PR_SET_MM_MAP,
// exe_fd) names the allowed program as the executable of the program itself,
// which stays in the host's user namespace with the host's mounts and root.
// Neither the kernel's user-namespace check (identify) nor attribution's
// (procattr verifyExe reads the process's own ns/user) sees it. Fixed: fentry
// on the kernel's replace_mm_exe_file records the mm (exe_replaced in
// fastpath.c) and identify gives its tasks no identity, so the connect misses.
func TestCloneVMMasqueradeHitsEntry(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) { masquerade(t, cfg, true, false) })
}

// TestBinfmtExecFDMasqueradeHitsEntry (the neighbour of
// TestCloneVMMasqueradeHitsEntry's fix, open, medium-low): that fix tells a
// file named with prctl(PR_SET_MM) by its f_flags (the kernel opened it for
// execve, __FMODE_EXEC, or the process opened it). But a process can get a
// descriptor of the allowed program that the kernel opened for execve:
// binfmt_misc's O flag hands one (AT_EXECFD) to the interpreter of a program
// executed, and since Linux 6.7 any user may register an entry (here: names
// ending in .masqx, a link to the allowed program) in the binfmt_misc
// instance of a user namespace of their own, executing it from the host's
// mount namespace. testdata/masquerade (MASQ_CLONE_VM=1 MASQ_BINFMT=1) names
// that descriptor as its executable through its CLONE_VM child: the key is the
// allowed program's and the connect hits its entry (and attribution calls it
// verified). Telling it needs a record of the exe_file change itself (fentry
// on replace_mm_exe_file, which kernels in lockdown refuse; or a syscall
// tracepoint on prctl). LATCH_TEST_KNOWN_HOLES=1 runs it.
func TestBinfmtExecFDMasqueradeHitsEntry(t *testing.T) {
	if os.Getenv("LATCH_TEST_KNOWN_HOLES") == "" {
		t.Skip("open: a descriptor binfmt_misc's O flag opened for execve, named with prctl(PR_SET_MM) by a CLONE_VM child; LATCH_TEST_KNOWN_HOLES=1 runs it")
	}
	eachTaskRead(t, func(t *testing.T, cfg Config) { masquerade(t, cfg, true, true) })
}

// masquerade runs testdata/masquerade against the allowed program's cached
// allow: in a user namespace of its own (unshare -Ur), or with cloneVM from
// the initial one through a CLONE_VM child (MASQ_CLONE_VM); with binfmt the
// file named is one binfmt_misc opened for execve (MASQ_BINFMT).
func masquerade(t *testing.T, cfg Config, cloneVM, binfmt bool) {
	cc, err := exec.LookPath("gcc")
	if err != nil {
		if cc, err = exec.LookPath("cc"); err != nil {
			t.Skip("no C compiler for testdata/masquerade")
		}
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare")
	}
	cg, cgfd := testCgroup(t)
	exe := publicCopy(t)
	dir := filepath.Dir(exe)
	src, _ := filepath.Abs("testdata/masquerade")
	for _, args := range [][]string{
		{"-O1", "-shared", "-fPIC", "-Wl,-z,now", "-o", filepath.Join(dir, "libmasq.so"), filepath.Join(src, "lib.c")},
		{"-O1", "-Wl,-z,now", "-o", filepath.Join(dir, "masq"), filepath.Join(src, "main.c"), "-L" + dir, "-lmasq", "-Wl,-rpath,$ORIGIN"},
	} {
		if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", cc, args, err, out)
		}
	}
	ownNetns(t)
	fp := openTest(t, cg, cfg)
	if s := fp.Stats(); !s.TCPLocal {
		t.Skipf("no TCP fast path: %+v", s)
	}
	prog, dst := storeAllowed(t, fp, exe, cgfd)
	if got := prog.connect(t, dst); got != "ok 0x60000000" {
		t.Fatalf("the verified program: %q, want a hit", got)
	}
	masq := func(userns bool) string {
		t.Helper()
		argv := []string{filepath.Join(dir, "masq"), exe, dst.Addr().String(), fmt.Sprint(dst.Port())}
		if userns && !cloneVM {
			argv = append([]string{"unshare", "-Ur", "--"}, argv...)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		if userns && cloneVM {
			cmd.Env = append(os.Environ(), "MASQ_CLONE_VM=1")
			if binfmt {
				cmd.Env = append(cmd.Env, "MASQ_BINFMT=1")
			}
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd,
			Credential: &syscall.Credential{Uid: review28Uid, Gid: review28Uid}}
		out, _ := cmd.CombinedOutput() // a refused step exits 1, saying which
		return strings.TrimSpace(string(out))
	}
	// Outside a user namespace of its own the kernel refuses (no
	// CAP_CHECKPOINT_RESTORE): the program stays itself.
	if got := masq(false); !strings.HasPrefix(got, "err prctl 1") {
		t.Fatalf("the masquerade outside a user namespace: %q, want refused (EPERM)", got)
	}
	got := masq(true)
	if binfmt && strings.HasPrefix(got, "err ") && !strings.HasSuffix(got, " "+exe) {
		t.Skipf("no descriptor from binfmt_misc in a user namespace (Linux 6.7+): %q", got)
	}
	if !strings.HasSuffix(got, " "+exe) {
		t.Fatalf("the masquerade in a user namespace: %q, want its executable named %s", got, exe)
	}
	if !strings.HasPrefix(got, "ok 0x0 ") {
		t.Errorf("a program of the user's own naming the allowed one as its executable: %q, want a miss (the queue decides it: not verified)", got)
	}
}

// eachTaskRead runs f with the programs reading the task through BTF pointers
// (task_btf, where the kernel allows it) and through bpf_probe_read_kernel:
// identify refuses the same tasks both ways.
func eachTaskRead(t *testing.T, f func(t *testing.T, cfg Config)) {
	for _, noTaskBTF := range []bool{false, true} {
		t.Run(fmt.Sprintf("noTaskBTF=%v", noTaskBTF), func(t *testing.T) {
			if !noTaskBTF && !taskBTF() {
				t.Skip("the kernel refuses bpf_get_current_task_btf in the fast path's programs")
			}
			f(t, Config{noTaskBTF: noTaskBTF})
		})
	}
}

// TestExecutedProgramStillHits: the guard of TestCloneVMMasqueradeHitsEntry's
// fix. identify now refuses an executable file the kernel did not open for
// an execve (no __FMODE_EXEC in its f_flags); a program started the ordinary
// way (execve, here by an unprivileged user) must still be identified and
// hit on every connect: 20 of 20, none counted as without identity.
func TestExecutedProgramStillHits(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		cg, cgfd := testCgroup(t)
		exe := publicCopy(t)
		ownNetns(t)
		fp := openTest(t, cg, cfg)
		if s := fp.Stats(); !s.TCPLocal {
			t.Skipf("no TCP fast path: %+v", s)
		}
		prog, dst := storeAllowed(t, fp, exe, cgfd)
		const n = 20
		before := fp.Stats()
		hits := 0
		for range n {
			if got := prog.connect(t, dst); got == "ok 0x60000000" {
				hits++
			}
		}
		after := fp.Stats()
		if hits != n || after.HitsAllow-before.HitsAllow != n || after.NoIdentity != before.NoIdentity {
			t.Errorf("an executed program: %d of %d connects hit (hits counted %d, without identity %d); want all", hits, n,
				after.HitsAllow-before.HitsAllow, after.NoIdentity-before.NoIdentity)
		}
	})
}
