package procattr

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/cgroup2"
	"github.com/latchfw/latch/internal/engine"
)

// otherExe is a second copy of the test binary: the same program in another file, as
// a forger would run under the path of a program rules allow.
func otherExe(t *testing.T) string {
	t.Helper()
	makeClientExe(t)
	p := filepath.Join(t.TempDir(), "forger")
	if err := copyFile(p, clientExe); err != nil {
		t.Fatal(err)
	}
	return p
}

// quickRescan lets the procfs method rescan /proc for every lookup: these tests
// start a new process for each.
func quickRescan(o Options) Options {
	o.ProcfsRescanInterval = time.Nanosecond
	return o
}

// inMountNS runs the client in a private mount namespace after the shell commands
// setup, which see the client's command line as "$@".
func inMountNS(setup string) func([]string) []string {
	return func(args []string) []string {
		return append([]string{"unshare", "-m", "--propagation", "private", "sh", "-c", setup + ` && exec "$@"`, "sh"}, args...)
	}
}

func resolveIdentity(t *testing.T, r *Resolver, c *client, remote netip.AddrPort) Process {
	t.Helper()
	p, err := r.Resolve(engine.TCP, c.Local, remote, 0)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if p.PID != c.pid() {
		t.Fatalf("Resolve = pid %d, want %d", p.PID, c.pid())
	}
	return p
}

func wantIdentity(t *testing.T, p Process, exe string, id engine.Identity, note string) {
	t.Helper()
	if p.Exe != exe || p.Identity != id {
		t.Errorf("exe %q identity %q (%s); want exe %q identity %q", p.Exe, p.Identity, p.IdentityNote, exe, id)
	}
	if !strings.Contains(p.IdentityNote, note) {
		t.Errorf("identity note %q; want it to say %q", p.IdentityNote, note)
	}
}

// TestIdentityOfForgedPaths runs programs that carry the test client's path without
// being its file, each way the class allows, and checks that none is verified, while
// the client itself, from the host's or another mount namespace, is.
func TestIdentityOfForgedPaths(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	forger := otherExe(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, quickRescan(m.opts))

			// The client itself: `ip netns exec` runs it in a mount namespace of its
			// own already; the file is the host's, so it is verified.
			p := resolveIdentity(t, r, startClient(t, ns, "tcp", remote), remote)
			wantIdentity(t, p, clientExe, engine.IdentityVerified, "")
			if p.IdentityNote != "" || p.Container != "" {
				t.Errorf("verified client: note %q, container %q; want none", p.IdentityNote, p.Container)
			}

			// The host's file seen through a bind mount of its own directory (as
			// systemd's ProtectSystem= and friends do): still the same file.
			dir := filepath.Dir(clientExe)
			c := startClientVia(t, ns, inMountNS(fmt.Sprintf("mount --bind %s %s", dir, dir)), "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityVerified, "")

			// Another file bind-mounted over the path in a private mount namespace.
			c = startClientVia(t, ns, inMountNS(fmt.Sprintf("mount --bind %s %s", forger, clientExe)), "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityUnverified, "another file")

			// The same file under another name (a bind of its directory elsewhere):
			// not forged, but the name is not the host's, so it is not verified.
			other := t.TempDir()
			c = startClientVia(t, ns, func(args []string) []string {
				args[0] = filepath.Join(other, filepath.Base(clientExe))
				return inMountNS(fmt.Sprintf("mount --bind %s %s", dir, other))(args)
			}, "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), filepath.Join(other, filepath.Base(clientExe)),
				engine.IdentityUnverified, "another mount namespace")

			// A memfd: a file no path names.
			c = startClientVia(t, ns, func(args []string) []string {
				return append([]string{clientExe, "memfd-exec"}, args[1:]...)
			}, "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), "/memfd:latch-test", engine.IdentityUnverified, "memfd")
		})
	}
}

// TestIdentityOfDeletedAndReplacedExecutable: a process keeps running a file that was
// then deleted and replaced by another at its path; the path now names another
// program, so the process is not verified.
func TestIdentityOfDeletedAndReplacedExecutable(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	forger := otherExe(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, quickRescan(m.opts))
			prog := filepath.Join(t.TempDir(), "prog")
			if err := copyFile(prog, clientExe); err != nil {
				t.Fatal(err)
			}
			c := startClientVia(t, ns, func(args []string) []string { args[0] = prog; return args }, "tcp", remote)
			if err := os.Remove(prog); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(prog, forger); err != nil {
				t.Fatal(err)
			}
			wantIdentity(t, resolveIdentity(t, r, c, remote), prog, engine.IdentityUnverified, "deleted or replaced")
		})
	}
}

// TestIdentityRecheckedAfterExec: a process found verified that then execs another
// file under the same path (same pid, same name) must not keep the verified
// identity the cache holds for it.
func TestIdentityRecheckedAfterExec(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	forger := otherExe(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, quickRescan(m.opts))
			c := startClientVia(t, ns, inMountNS("true"), "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityVerified, "")
			fmt.Fprintf(c.stdin, "exec-over %s tcp %s\n", forger, remote)
			line := c.readLine(t)
			addr, ok := strings.CutPrefix(line, "LOCAL ")
			if !ok {
				t.Fatalf("client after exec: %q", line)
			}
			c.Local = netip.MustParseAddrPort(addr)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityUnverified, "another file")
		})
	}
}

// TestIdentityOfConnectionMadeBeforeExec: a forged program connects, then execs the
// real program under the same path (same pid, socket kept): the connection is the
// forger's, and the eBPF record of the image that made it says so.
func TestIdentityOfConnectionMadeBeforeExec(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	forger := otherExe(t)
	for _, m := range modes[:1] { // ebpf; procfs sees only the image that runs now
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			if !r.hooks.knowsExe {
				t.Fatal("the eBPF hooks cannot read the executable's inode on this kernel")
			}
			c := startClientVia(t, ns, inMountNS(fmt.Sprintf("mount --bind %s %s", forger, clientExe)), "tcp", remote)
			fmt.Fprintln(c.stdin, "umount-exec")
			if line := c.readLine(t); line != "HOLDING" {
				t.Fatalf("client after exec: %q", line)
			}
			p := resolveIdentity(t, r, c, remote)
			wantIdentity(t, p, clientExe, engine.IdentityUnverified, "after it made this connection")
			// A connection the real program makes now is verified.
			c2 := startClient(t, ns, "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c2, remote), clientExe, engine.IdentityVerified, "")
		})
	}
}

// TestIdentityOfContainerProcess: a process in another mount namespace and in a
// cgroup named as docker names its containers is a container's, labelled with the
// container id, and not verified.
func TestIdentityOfContainerProcess(t *testing.T) {
	requireRoot(t)
	root, err := cgroup2.Find()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	id := strings.Repeat("0123456789abcdef", 4)
	parent := filepath.Join(root, fmt.Sprintf("latch-test-%d", os.Getpid()))
	cg := filepath.Join(parent, "docker-"+id+".scope")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(cg)
		os.Remove(parent)
	})
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	forger := otherExe(t)
	r := newResolverIn(t, ns, Options{})
	// `ip netns exec` mounts a sysfs of its own: reach the host's cgroup file
	// system through this process's root.
	procs := fmt.Sprintf("/proc/%d/root%s/cgroup.procs", os.Getpid(), cg)
	c := startClientVia(t, ns, inMountNS(fmt.Sprintf("echo $$ > %s && mount --bind %s %s", procs, forger, clientExe)), "tcp", remote)
	p := resolveIdentity(t, r, c, remote)
	wantIdentity(t, p, clientExe, engine.IdentityContainer, "docker:"+id)
	if p.Container != "docker:"+id {
		t.Errorf("container %q, want docker:%s", p.Container, id)
	}
}

// TestFileIDInRoot checks the lookup of a path in another process's root, as the
// host's file system is reached through process 1's (here this process's own root,
// through /proc/self: process 1 may be out of reach in a test sandbox).
func TestFileIDInRoot(t *testing.T) {
	requireRoot(t)
	makeClientExe(t)
	root, ns := openRoot("/proc/self")
	if root == unix.AT_FDCWD {
		t.Fatalf("openRoot(/proc/self) fell back to the working directory (namespace %q)", ns)
	}
	defer unix.Close(root)
	var st unix.Stat_t
	if err := unix.Stat(clientExe, &st); err != nil {
		t.Fatal(err)
	}
	for _, r := range []int{root, unix.AT_FDCWD} {
		id, err := fileIDIn(r, clientExe)
		if err != nil || id != (fileID{uint64(st.Dev), st.Ino}) {
			t.Errorf("root %d: fileIDIn(%s) = %v, %v; want %d/%d", r, clientExe, id, err, st.Dev, st.Ino)
		}
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(clientExe, link); err != nil {
			t.Fatal(err)
		}
		if id, err := fileIDIn(r, link); err == nil {
			t.Errorf("root %d: fileIDIn(symlink %s) = %v; want an error (symlinks are not followed)", r, link, id)
		}
		if id, err := fileIDIn(r, filepath.Dir(link)+"/../"+filepath.Base(filepath.Dir(link))+"/link"); err == nil {
			t.Errorf("root %d: fileIDIn(path to a symlink) = %v; want an error", r, id)
		}
		if _, err := fileIDIn(r, "/nonexistent/latch"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("root %d: fileIDIn(/nonexistent/latch): %v; want ENOENT", r, err)
		}
		if _, err := fileIDIn(r, filepath.Dir(clientExe)); err == nil {
			t.Errorf("root %d: fileIDIn(a directory): want an error", r)
		}
	}
}

func TestContainerOf(t *testing.T) {
	const id = "4bd8f2a1c3e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7"
	for _, tc := range []struct{ cgroup, want string }{
		{"0::/system.slice/docker-" + id + ".scope\n", "docker:" + id},
		{"12:pids:/docker/" + id + "\n0::/docker/" + id + "\n", "docker:" + id},
		{"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope/container\n", "podman@1000:" + id},
		// Names a user's programs chose in the tree systemd delegates to them say so.
		{"0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-" + id + ".scope\n", "docker@1000:" + id},
		{"0::/user.slice/user-1000.slice/user@1000.service/machine.slice/machine-box.scope\n", "machine@1000:box"},
		{"0::/user.slice/user-1000.slice/user@x.service/machine.slice/machine-box.scope\n", "machine:box"},
		{"0::/machine.slice/libpod-conmon-" + id + ".scope\n", ""},
		{"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-" + id + ".scope\n", "containerd:" + id},
		{"0::/kubepods/burstable/pod5b7a/" + id + "\n", "kubernetes:" + id},
		{"0::/machine.slice/crio-" + id + ".scope\n", "cri-o:" + id},
		{"0::/lxc.payload.web1/system.slice/nginx.service\n", "lxc:web1"},
		{"3:cpu:/lxc/web2\n", "lxc:web2"},
		{"0::/machine.slice/machine-deb\\x2dtest.scope/payload\n", "machine:deb-test"},
		{"0::/machine.slice/systemd-nspawn@box.service/payload\n", "machine:box"},
		{"0::/user.slice/user-1000.slice/session-3.scope\n", ""},
		{"0::/\n", ""},
		{"0::/system.slice/docker-" + id[:63] + ".scope\n", ""},
		{"garbage", ""},
		{"0::/lxc.payload.\x1b[2Kfirefox\n", ""},
		{"0::/machine.slice/machine-.scope\n", ""},
		{"", ""},
	} {
		if got := containerOf([]byte(tc.cgroup)); got != tc.want {
			t.Errorf("containerOf(%q) = %q, want %q", tc.cgroup, got, tc.want)
		}
	}
}

// FuzzContainerOf: any /proc/PID/cgroup content gives "" or "RUNTIME:ID" with both
// parts non-empty, and never panics.
func FuzzContainerOf(f *testing.F) {
	f.Add([]byte("0::/system.slice/docker-" + strings.Repeat("ab", 32) + ".scope\n"))
	f.Add([]byte("0::/machine.slice/machine-a\\x2.scope\n"))
	f.Add([]byte("1:name=systemd:/lxc/x\n0::/lxc.payload.\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := containerOf(b)
		if got == "" {
			return
		}
		rt, id, ok := strings.Cut(got, ":")
		if owner, uid, rootless := strings.Cut(rt, "@"); rootless {
			rt = owner
			if !isDecimal(uid) {
				t.Fatalf("containerOf(%q) = %q: the user after @ is not a number", b, got)
			}
		}
		if !ok || rt == "" || !isName(id) {
			t.Fatalf("containerOf(%q) = %q, want RUNTIME:ID with a plain ID", b, got)
		}
	})
}

// TestIdentityOfSharedSocket: a process connects a UDP socket, starts the real
// program and then a forger, both inheriting the socket, and exits. Either may send
// on the socket: the program that holds it first must not vouch for the packet.
// With the eBPF hooks on, no record names a live process that made the socket; with
// procfs alone, the holders run different files. A socket its holders share with
// their own copies of one program stays verified under procfs.
func TestIdentityOfSharedSocket(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:53")
	forger := otherExe(t)
	for _, m := range modes[1:] { // ebpf alone cannot name a process: the one that connected is gone
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, quickRescan(m.opts))
			resolve := func(c *client) Process {
				t.Helper()
				c.wait(t)
				local := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), c.Local.Port())
				p, err := r.Resolve(engine.UDP, local, remote, 0)
				if err != nil {
					t.Fatalf("Resolve: %v", err)
				}
				if p.PID != int32(c.Child) && p.PID != int32(c.Child2) {
					t.Fatalf("Resolve = pid %d, want %d or %d", p.PID, c.Child, c.Child2)
				}
				return p
			}
			c := startClient(t, ns, "udp-share", remote, shareWithEnv+"="+forger)
			p := resolve(c)
			if p.Identity == engine.IdentityVerified {
				t.Errorf("socket shared by %s and a forger: pid %d %s verified; want unverified", clientExe, p.PID, p.Exe)
			}
			note := "held by processes that run different programs"
			if m.name == "combined" {
				note = "no record of the process that made the socket"
			}
			wantIdentity(t, p, p.Exe, engine.IdentityUnverified, note)

			c = startClient(t, ns, "udp-share", remote, shareWithEnv+"="+clientExe)
			p = resolve(c)
			if m.name == "procfs" {
				wantIdentity(t, p, clientExe, engine.IdentityVerified, "")
			} else {
				wantIdentity(t, p, clientExe, engine.IdentityUnverified, note)
			}
		})
	}
}

// TestIdentityInUserNamespaceWithOwnMounts: any user may make a user namespace with
// a mount namespace of its own and bind its own file over the host's loader or
// libraries, then exec a host program, which runs the user's code under the host
// program's file. Such a process is not verified, even though its executable is the
// host's file at the host's path; one in the initial user namespace (as systemd's
// sandboxed services are) still is.
func TestIdentityInUserNamespaceWithOwnMounts(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, quickRescan(m.opts))
			dir := filepath.Dir(clientExe)
			// The host's file through a bind mount, in a new user namespace.
			c := startClientVia(t, ns, func(args []string) []string {
				return append([]string{"unshare", "-Urm", "--propagation", "private", "sh", "-c",
					fmt.Sprintf(`mount --bind %s %s && exec "$@"`, dir, dir), "sh"}, args...)
			}, "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityUnverified,
				"runs in a user namespace with its own mounts")
			// No mount at all: the mount namespace is still its own.
			c = startClientVia(t, ns, func(args []string) []string {
				return append([]string{"unshare", "-Urm"}, args...)
			}, "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityUnverified,
				"runs in a user namespace with its own mounts")
			// The host's mounts (this process's, as below), but a root of its own (chroot, which root of a user
			// namespace may do) holding the user's loader and libraries, and the
			// host's file executed through a descriptor opened before the chroot.
			c = startClientVia(t, ns, func(args []string) []string {
				return append([]string{"nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", os.Getpid()), "--",
					"unshare", "-Ur", clientExe, "chroot-exec", chrootWithLoader(t, clientExe)}, args[1:]...)
			}, "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityUnverified,
				"runs in a user namespace with its own root")
			// A user namespace that shares the host's mounts (here this process's, as
			// process 1 may be out of reach in a test sandbox) and root: it cannot
			// change them, but it holds CAP_CHECKPOINT_RESTORE there and may point
			// /proc/PID/exe at another program (PR_SET_MM_MAP): not verified either.
			c = startClientVia(t, ns, func(args []string) []string {
				return append([]string{"nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", os.Getpid()), "--", "unshare", "-Ur"}, args...)
			}, "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityUnverified,
				"runs in a user namespace of its own")
			// The initial user namespace, a mount namespace of its own: verified.
			c = startClientVia(t, ns, inMountNS(fmt.Sprintf("mount --bind %s %s", dir, dir)), "tcp", remote)
			wantIdentity(t, resolveIdentity(t, r, c, remote), clientExe, engine.IdentityVerified, "")
		})
	}
}

// chrootWithLoader makes a directory holding copies of the loader and the libraries
// exe needs (as `ldd` lists them), at their paths: a root in which exe runs with
// files that are not the host's.
func chrootWithLoader(t *testing.T, exe string) string {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	out, err := exec.Command("ldd", exe).CombinedOutput()
	if err != nil {
		t.Fatalf("ldd %s: %v\n%s", exe, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if !strings.HasPrefix(f, "/") {
				continue
			}
			dst := filepath.Join(dir, f)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(dst, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// TestContainerOfNestedIsTheOuter: a container whose cgroup is delegated to it (an
// LXD or nspawn container, podman running systemd, docker with a private cgroup
// namespace and CAP_SYS_ADMIN) names the cgroups below its own: their names are
// its root's claim, not the host runtime's. The label is the outermost container
// the host's runtime made, so that such a container cannot be taken for a system
// container of the host (and get its rules and, by the id, its name) or for a
// host user's own container (a "user@UID.service" it makes below its cgroup).
func TestContainerOfNestedIsTheOuter(t *testing.T) {
	const outer = "4bd8f2a1c3e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7"
	const inner = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct{ cgroup, want string }{
		{"0::/lxc.payload.c1/system.slice/docker-" + inner + ".scope\n", "lxc:c1"},
		{"0::/machine.slice/libpod-" + outer + ".scope/container/docker-" + inner + ".scope\n", "podman:" + outer},
		{"0::/system.slice/docker-" + outer + ".scope/docker/" + inner + "\n", "docker:" + outer},
		{"0::/machine.slice/machine-box.scope/payload/system.slice/docker-" + inner + ".scope\n", "machine:box"},
		// A user@UID.service the container made below its own cgroup is its own
		// name too: not a host user's tree.
		{"0::/machine.slice/libpod-" + outer + ".scope/container/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + inner + ".scope/container\n", "podman:" + outer},
		{"0::/machine.slice/libpod-" + outer + ".scope/container/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n", "podman:" + outer},
		// A host user's own tree still says whose, whatever is nested in it.
		{"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + outer + ".scope/container/docker-" + inner + ".scope\n", "podman@1000:" + outer},
	} {
		if got := containerOf([]byte(tc.cgroup)); got != tc.want {
			t.Errorf("containerOf(%q) = %q, want %q", tc.cgroup, got, tc.want)
		}
	}
}

// TestDelegatedCgroupIsItsUsers: a system unit with Delegate=yes and User= (a CI
// runner, a container service run as a user) hands its cgroup to that user, who may
// make "docker-ID.scope" below it: a process there, in a mount namespace of its
// own, is labelled as that user's ("docker@1000:ID"), which no rule for a system
// container (and no name from root's docker state) matches, as for a user's
// user@UID.service tree. It used to be taken for root's docker container ID.
func TestDelegatedCgroupIsItsUsers(t *testing.T) {
	requireRoot(t)
	root, err := cgroup2.Find()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	id := strings.Repeat("0123456789abcdef", 4)
	parent := filepath.Join(root, fmt.Sprintf("latch-test-deleg-%d", os.Getpid()))
	unit := filepath.Join(parent, "ci-runner.service")
	cg := filepath.Join(unit, "docker-"+id+".scope")
	if err := os.MkdirAll(unit, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range []string{cg, unit, parent} {
			for i := 0; i < 50; i++ { // a cgroup is removable once its processes are gone
				if err := os.Remove(d); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	// As systemd delegates: the unit's directory and its control files are the user's.
	for _, p := range []string{unit, filepath.Join(unit, "cgroup.procs"), filepath.Join(unit, "cgroup.subtree_control"), filepath.Join(unit, "cgroup.threads")} {
		if err := os.Chown(p, 1000, 1000); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(cg, 0o755); err != nil { // what user 1000 may do
		t.Fatal(err)
	}
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	r := newResolverIn(t, ns, Options{})
	procs := fmt.Sprintf("/proc/%d/root%s/cgroup.procs", os.Getpid(), cg)
	c := startClientVia(t, ns, inMountNS(fmt.Sprintf("echo $$ > %s && mount --bind %s %s", procs, otherExe(t), clientExe)), "tcp", remote)
	p := resolveIdentity(t, r, c, remote)
	if p.Identity != engine.IdentityContainer || p.Container != "docker@1000:"+id {
		t.Errorf("a container in a cgroup delegated to user 1000: identity %s, container %q; want container docker@1000:%s", p.Identity, p.Container, id)
	}
}
