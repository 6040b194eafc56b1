package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Identity tests: a local user who is not root must not pass another program's app
// rule by making its own program carry that program's path (issue 14, section 1).

// idBins are the programs of the identity tests, in directories every user may read:
// Allowed is the program the rules allow; Forger another file of the same code (a
// static build, so it also runs inside an empty root), which attackers run under
// Allowed's path.
type idBins struct {
	Allowed, Forger string
}

var (
	idBinsOnce sync.Once
	idBinsVal  idBins
	idBinsErr  error
)

// removeIdentityBins removes what identityBins built; TestMain calls it.
func removeIdentityBins() {
	if idBinsVal.Allowed != "" {
		os.RemoveAll(filepath.Dir(filepath.Dir(idBinsVal.Allowed)))
	}
}

func identityBins(t *testing.T) idBins {
	t.Helper()
	idBinsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "latch-e2e-identity-")
		if err != nil {
			idBinsErr = err
			return
		}
		for _, d := range []string{dir, filepath.Join(dir, "allowed"), filepath.Join(dir, "forger")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				idBinsErr = err
				return
			}
			os.Chmod(d, 0o755)
		}
		idBinsVal = idBins{Allowed: filepath.Join(dir, "allowed", "e2ehelper"), Forger: filepath.Join(dir, "forger", "e2ehelper")}
		for _, bin := range []string{idBinsVal.Allowed, idBinsVal.Forger} {
			cmd := exec.Command("go", "build", "-o", bin, "./e2ehelper")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				idBinsErr = fmt.Errorf("go build e2ehelper: %v\n%s", err, out)
				return
			}
		}
	})
	if idBinsErr != nil {
		t.Fatal(idBinsErr)
	}
	return idBinsVal
}

// asNobody is the command line that runs args as uid and gid 65534 with no
// supplementary groups, as any local user could.
func asNobody(args ...string) []string {
	return append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, args...)
}

// inUserNS is the command line that runs the shell script as root of a new user and
// mount namespace (`unshare -Urm`), which any user may make; "$@" are args.
func inUserNS(script string, args ...string) []string {
	return append([]string{"unshare", "-Urm", "sh", "-c", script, "sh"}, args...)
}

// runClient runs argv in the client namespace and decodes e2ehelper's result line.
func runClient(t *testing.T, n *Net, argv []string) Result {
	t.Helper()
	out, err := n.Exec(n.Client, argv[0], argv[1:]...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var r Result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("%s: output %q: %v", strings.Join(argv, " "), out, err)
	}
	return r
}

// promptOn waits for the question about a connection to port.
func promptOn(t *testing.T, d *Daemon, port int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range JSONLines(t, d.MustCLI(t, "prompts", "--json")) {
			if int(num(p["remote_port"])) == port {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no question for port %d; prompts:\n%s\nconns:\n%s", port, d.MustCLI(t, "prompts"), d.MustCLI(t, "conns"))
	return nil
}

// wantHeldNotAllowed runs a forging client and checks that its connection is held as
// a question about an unverified program (or a container's), and then gets the
// default (deny), not the allow rule of the path it carries.
func wantHeldNotAllowed(t *testing.T, n *Net, d *Daemon, port int, argv []string, wantExe, wantIdentity string) {
	t.Helper()
	srv := n.Serve(t, port)
	done := make(chan Result, 1)
	go func() { done <- runClient(t, n, argv) }()
	p := promptOn(t, d, port)
	if p["identity"] != wantIdentity || (wantExe != "" && p["exe"] != wantExe) {
		t.Errorf("question %v: want exe %q, identity %q", p, wantExe, wantIdentity)
	}
	if note, _ := p["identity_note"].(string); note == "" {
		t.Errorf("question %v: no identity_note saying why the program is not verified", p)
	}
	var r Result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("client still waiting 30s after a 2s prompt timeout")
	}
	if r.Outcome == "connected" || Accepted(srv) != 0 {
		t.Fatalf("the forged program got through (%+v, server accepted %d): the path's allow rule matched it", r, Accepted(srv))
	}
	c := findConn(t, d, port, 0)
	if c["verdict"] != "deny" || c["reason"] != "timeout" || c["identity"] != wantIdentity {
		t.Errorf("history %v: want verdict deny, reason timeout, identity %s", c, wantIdentity)
	}
	if table := d.MustCLI(t, "conns"); !strings.Contains(table, "["+wantIdentity) {
		t.Errorf("conns text does not mark the %s program:\n%s", wantIdentity, table)
	}
}

// TestForgedIdentityDoesNotPassAppRule: as an unprivileged user, each way to run
// another file under the allowed program's path (bind mount, pivot_root, chroot over
// a moved mount, a deleted and replaced file, a memfd) is held and asked about
// instead of being allowed by the path's rule, and so is the allowed program run from
// a user namespace with mounts of its own (its loader and libraries may be the
// user's); the allowed program itself, also from a mount namespace root made, still
// is allowed.
func TestForgedIdentityDoesNotPassAppRule(t *testing.T) {
	for _, tool := range []string{"unshare", "setpriv", "pivot_root", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (util-linux, coreutils) not found: %v", tool, err)
		}
	}
	b := identityBins(t)
	n := NewNet(t)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s")
	d.MustCLI(t, "rules", "add", "--app", b.Allowed, "--proto", "tcp", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--app", "/memfd:latch-e2e", "--proto", "tcp", "--action", "allow")
	addr := func(port int) string { return fmt.Sprintf("%s:%d", n.ServerIP, port) }
	allowedDir := filepath.Dir(b.Allowed)
	// An empty directory for a new root, made by the test where the user may not
	// write: the user only mounts a tmpfs over it in its own namespace.
	newRoot, err := os.MkdirTemp("", "latch-e2e-root-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(newRoot, 0o755)
	t.Cleanup(func() { os.RemoveAll(newRoot) })
	// fillRoot puts the forger at the allowed path inside the tmpfs on newRoot.
	fillRoot := fmt.Sprintf(`mount -t tmpfs none %[1]s && mkdir -p %[1]s%[2]s && cp %[3]s %[1]s%[4]s`,
		newRoot, allowedDir, b.Forger, b.Allowed)

	t.Run("legitimate", func(t *testing.T) {
		srv := n.Serve(t, 9100)
		r := runClient(t, n, asNobody(b.Allowed, "connect", addr(9100), "10s"))
		if r.Outcome != "connected" {
			t.Fatalf("the allowed program itself: %+v, want connected by its rule", r)
		}
		srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
		c := findConn(t, d, 9100, r.PID)
		if c["reason"] != "rule" || c["exe"] != b.Allowed || c["identity"] != "verified" {
			t.Errorf("history %v: want reason rule, exe %s, identity verified", c, b.Allowed)
		}
	})
	t.Run("same-file-other-mount-namespace", func(t *testing.T) {
		// The host's own file, seen through a bind mount of its directory in a
		// mount namespace root made in the initial user namespace (as systemd's
		// ProtectSystem= does): not a forgery, still the allowed program.
		srv := n.Serve(t, 9101)
		r := runClient(t, n, []string{"unshare", "-m", "--propagation", "private", "sh", "-c",
			`mount --bind "$1" "$1" && exec setpriv --reuid=65534 --regid=65534 --clear-groups -- "$2" connect "$3" 10s`,
			"sh", allowedDir, b.Allowed, addr(9101)})
		if r.Outcome != "connected" {
			t.Fatalf("the allowed program from another mount namespace: %+v, want connected", r)
		}
		srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
		if c := findConn(t, d, 9101, r.PID); c["identity"] != "verified" || c["reason"] != "rule" {
			t.Errorf("history %v: want identity verified, reason rule", c)
		}
	})
	t.Run("same-file-user-namespace", func(t *testing.T) {
		// The host's own file from a mount namespace a user made in a user
		// namespace of its own: the user could have bound any file over the loader
		// or a library the program maps, so it is not the allowed program.
		wantHeldNotAllowed(t, n, d, 9107, asNobody(inUserNS(`mount --bind "$1" "$1" && exec "$2" connect "$3" 10s`,
			allowedDir, b.Allowed, addr(9107))...), b.Allowed, "unverified")
		if c := findConn(t, d, 9107, 0); !strings.Contains(fmt.Sprint(c["identity_note"]), "user namespace with its own mounts") {
			t.Errorf("history %v: want an identity note about the user namespace", c)
		}
	})
	t.Run("bind-mount", func(t *testing.T) {
		wantHeldNotAllowed(t, n, d, 9102, asNobody(inUserNS(`mount --bind "$1" "$2" && exec "$2" connect "$3" 10s`,
			b.Forger, b.Allowed, addr(9102))...), b.Allowed, "unverified")
	})
	t.Run("pivot_root", func(t *testing.T) {
		wantHeldNotAllowed(t, n, d, 9103, asNobody(inUserNS(fillRoot+` && mkdir `+newRoot+`/old && cd `+newRoot+
			` && pivot_root . old && exec "$1" connect "$2" 10s`, b.Allowed, addr(9103))...), b.Allowed, "unverified")
	})
	t.Run("chroot", func(t *testing.T) {
		// The new root mount moved over "/", then chroot into it: what container
		// runtimes do where pivot_root is refused.
		wantHeldNotAllowed(t, n, d, 9104, asNobody(inUserNS(fillRoot+` && cd `+newRoot+
			` && mount -n --move . / && exec chroot . "$1" connect "$2" 10s`, b.Allowed, addr(9104))...), b.Allowed, "unverified")
	})
	t.Run("deleted-and-replaced", func(t *testing.T) {
		// A program the rule names, started, then deleted and replaced at its path
		// by another file: what runs is not what the path names any more.
		dir, err := os.MkdirTemp("", "latch-e2e-replaced-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755)
		t.Cleanup(func() { os.RemoveAll(dir) })
		prog := filepath.Join(dir, "prog")
		if out, err := exec.Command("cp", b.Forger, prog).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v\n%s", err, out)
		}
		d.MustCLI(t, "rules", "add", "--app", prog, "--proto", "tcp", "--action", "allow")
		srv := n.Serve(t, 9105)
		argv := asNobody(prog, "connect-after-line", addr(9105), "10s")
		p := n.Start(n.Client, argv[0], argv[1:]...)
		p.WaitLine(t, 10*time.Second, func(l string) bool { return l == "ready" })
		if err := os.Remove(prog); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", b.Allowed, prog).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v\n%s", err, out)
		}
		fmt.Fprintln(p.stdin)
		q := promptOn(t, d, 9105)
		if q["identity"] != "unverified" || q["exe"] != prog {
			t.Errorf("question %v: want exe %s, identity unverified", q, prog)
		}
		line := p.WaitLine(t, 30*time.Second, func(l string) bool { return strings.HasPrefix(l, "{") })
		if strings.Contains(line, `"connected"`) || Accepted(srv) != 0 {
			t.Fatalf("the replaced program got through: %s", line)
		}
	})
	t.Run("memfd", func(t *testing.T) {
		wantHeldNotAllowed(t, n, d, 9106, asNobody(b.Forger, "memfd-exec", "connect", addr(9106), "10s"),
			"/memfd:latch-e2e", "unverified")
	})
}

// TestContainerProcessIsShownAsContainer: a process in another mount namespace and in
// a cgroup named as docker names its containers is shown as that container's
// program, and the host program's rule for the same path does not match it.
func TestContainerProcessIsShownAsContainer(t *testing.T) {
	b := identityBins(t)
	root := cgroup2Root(t)
	id := strings.Repeat("0123456789abcdef", 4)
	parent := filepath.Join(root, fmt.Sprintf("latch-e2e-%d", os.Getpid()))
	cg := filepath.Join(parent, "docker-"+id+".scope")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(cg)
		os.Remove(parent)
	})
	n := NewNet(t)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s")
	d.MustCLI(t, "rules", "add", "--app", b.Allowed, "--proto", "tcp", "--action", "allow")
	// `ip netns exec` mounts a sysfs of its own: the host's cgroups are reached
	// through this process's root.
	procs := fmt.Sprintf("/proc/%d/root%s/cgroup.procs", os.Getpid(), cg)
	argv := []string{"unshare", "-m", "sh", "-c", `echo $$ > "$1" && mount --bind "$2" "$3" && exec "$3" connect "$4" 10s`,
		"sh", procs, b.Forger, b.Allowed, fmt.Sprintf("%s:%d", n.ServerIP, 9110)}
	wantHeldNotAllowed(t, n, d, 9110, argv, b.Allowed, "container")
	c := findConn(t, d, 9110, 0)
	if c["container"] != "docker:"+id {
		t.Errorf("history %v: want container docker:%s", c, id)
	}
	if table := d.MustCLI(t, "conns"); !strings.Contains(table, "[container docker:0123456789ab]") {
		t.Errorf("conns text does not name the container:\n%s", table)
	}
}

// cgroup2Root finds the cgroup v2 mount.
func cgroup2Root(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, " - cgroup2 "); i > 0 {
			if f := strings.Fields(l[:i]); len(f) >= 5 {
				return f[4]
			}
		}
	}
	t.Skip("no cgroup v2 hierarchy mounted")
	return ""
}

// TestSharedSocketIsNotCreditedToItsHolder: as an unprivileged user, a process
// connects a UDP socket, starts the allowed program and then a forger, both
// inheriting it, and exits; the forger sends. The allowed program holds the socket,
// but nothing shows it sends on it: its rule must not let the forger's datagram out.
func TestSharedSocketIsNotCreditedToItsHolder(t *testing.T) {
	b := identityBins(t)
	n := NewNet(t)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s")
	d.MustCLI(t, "rules", "add", "--app", b.Allowed, "--proto", "udp", "--action", "allow")
	addr := func(port int) string { return fmt.Sprintf("%s:%d", n.ServerIP, port) }

	// The allowed program's own exchange passes by its rule.
	n.ServeUDP(t, 9120)
	if r := runClient(t, n, asNobody(b.Allowed, "udp", addr(9120), "10s")); r.Outcome != "connected" {
		t.Fatalf("the allowed program itself: %+v, want an answer by its rule", r)
	}

	srv := n.ServeUDP(t, 9121)
	r := runClient(t, n, asNobody(b.Allowed, "share-udp", addr(9121), b.Forger, "10s"))
	if r.Outcome == "connected" || strings.Contains(srv.Output(), "datagram ") {
		t.Fatalf("the forger's datagram on a socket the allowed program holds got through (%+v; server: %q)", r, srv.Output())
	}
	c := findConn(t, d, 9121, 0)
	if c["identity"] == "verified" || c["reason"] == "rule" {
		t.Errorf("history %v: want the connection unverified, not decided by the allowed program's rule", c)
	}
	if note := fmt.Sprint(c["identity_note"]); !strings.Contains(note, "no record of the process that made the socket") {
		t.Errorf("history %v: want an identity note saying no record names the socket's maker", c)
	}
}

// TestUserOwnedContainerLabelIsNotASystemContainer: a cgroup named like a system
// container's, but inside a user's own systemd tree (user@UID.service, which systemd
// delegates to that user), is labelled as that user's ("docker@1000:ID"): a rule for
// the system container of that id lets the real one through and holds the lookalike.
func TestUserOwnedContainerLabelIsNotASystemContainer(t *testing.T) {
	b := identityBins(t)
	root := cgroup2Root(t)
	id := strings.Repeat("fedcba9876543210", 4)
	parent := filepath.Join(root, fmt.Sprintf("latch-e2e-%d", os.Getpid()))
	system := filepath.Join(parent, "system.slice", "docker-"+id+".scope")
	userTree := filepath.Join(parent, "user.slice", "user-1000.slice", "user@1000.service")
	forged := filepath.Join(userTree, "app.slice", "docker-"+id+".scope")
	for _, cg := range []string{system, forged} {
		if err := os.MkdirAll(cg, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{forged, filepath.Dir(forged), userTree, filepath.Dir(userTree), filepath.Dir(filepath.Dir(userTree)),
			system, filepath.Dir(system), parent} {
			for i := 0; i < 50; i++ { // a cgroup is removable once its processes are gone
				if err := os.Remove(d); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	n := NewNet(t)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s")
	d.MustCLI(t, "rules", "add", "--container", id[:12], "--proto", "tcp", "--action", "allow")
	in := func(cg string, port int) []string {
		procs := fmt.Sprintf("/proc/%d/root%s/cgroup.procs", os.Getpid(), cg)
		return []string{"unshare", "-m", "sh", "-c", `echo $$ > "$1" && mount --bind "$2" "$3" && exec "$3" connect "$4" 10s`,
			"sh", procs, b.Forger, b.Allowed, fmt.Sprintf("%s:%d", n.ServerIP, port)}
	}
	n.Serve(t, 9130)
	if r := runClient(t, n, in(system, 9130)); r.Outcome != "connected" {
		t.Fatalf("the system container's program: %+v, want it let through by --container %s", r, id[:12])
	}
	wantHeldNotAllowed(t, n, d, 9131, in(forged, 9131), b.Allowed, "container")
	if c := findConn(t, d, 9131, 0); c["container"] != "docker@1000:"+id {
		t.Errorf("history %v: want container docker@1000:%s", c, id)
	}
}
