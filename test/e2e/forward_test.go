//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerNet is a "container" namespace behind the router namespace n.Client, which
// forwards between it and the server namespace n.Server:
//
//	container 198.19.K.2 --veth-- 198.19.K.1 router (latch) 198.18.X.1 --veth-- 198.18.X.2 server
type containerNet struct {
	*Net
	Container   string
	ContainerIP string
}

func newContainerNet(t *testing.T) *containerNet {
	t.Helper()
	n := NewNet(t)
	k := 1 + os.Getpid()%250
	c := &containerNet{Net: n, Container: n.Client + "-ct", ContainerIP: fmt.Sprintf("198.19.%d.2", k)}
	gw := fmt.Sprintf("198.19.%d.1", k)
	vr, vc := fmt.Sprintf("lr%d", os.Getpid()%100000), fmt.Sprintf("lk%d", os.Getpid()%100000)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", c.Container).Run() })
	for _, args := range [][]string{
		{"netns", "add", c.Container},
		{"link", "add", vr, "netns", n.Client, "type", "veth", "peer", "name", vc, "netns", c.Container},
		{"-n", n.Client, "addr", "add", gw + "/24", "dev", vr},
		{"-n", c.Container, "addr", "add", c.ContainerIP + "/24", "dev", vc},
		{"-n", n.Client, "link", "set", vr, "up"},
		{"-n", c.Container, "link", "set", vc, "up"},
		{"-n", c.Container, "link", "set", "lo", "up"},
		{"-n", c.Container, "route", "add", "default", "via", gw},
		{"-n", n.Server, "route", "add", fmt.Sprintf("198.19.%d.0/24", k), "via", n.ClientIP},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := n.Exec(n.Client, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		t.Fatalf("enable forwarding in the router: %v: %s", err, out)
	}
	return c
}

// connectFrom runs e2ehelper connect in the container.
func (c *containerNet) connectFrom(t *testing.T, port int, timeout time.Duration) Result {
	t.Helper()
	out, err := c.Exec(c.Container, helperBin, "connect", fmt.Sprintf("%s:%d", c.ServerIP, port), timeout.String())
	if err != nil {
		t.Fatalf("e2ehelper connect in the container: %v\n%s", err, out)
	}
	var r Result
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("e2ehelper output %q: %v", out, err)
	}
	return r
}

// TestForwardedConnectionsHeldAndAttributed: a router namespace runs latch with
// --forward. A program in the container namespace behind it with a rule gets through;
// another connection of it, with no rule, is held and asked; both are attributed to
// the executable and pid in the container and name its namespace, in questions and
// history. Without --forward the same router lets the container through unasked.
func TestForwardedConnectionsHeldAndAttributed(t *testing.T) {
	c := newContainerNet(t)
	c.Serve(t, 8095)
	srv := c.Serve(t, 8096)

	// Without --forward, forwarded traffic is untouched, as before.
	d0 := c.StartDaemon("--default", "deny", "--prompt-timeout", "20s")
	if r := c.connectFrom(t, 8096, 10*time.Second); r.Outcome != "connected" {
		t.Fatalf("without --forward, a forwarded connection: %+v; want connected unasked", r)
	}
	if p := d0.MustCLI(t, "prompts", "--json"); strings.TrimSpace(p) != "" {
		t.Errorf("without --forward, questions: %s", p)
	}
	if err := d0.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatalf("stop the first daemon: %v", err)
	}

	d := c.StartDaemon("--forward", "--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--port", "8095", "--action", "allow")

	r := c.connectFrom(t, 8095, 10*time.Second)
	if r.Outcome != "connected" {
		t.Fatalf("container program with a rule: %+v; want connected", r)
	}
	row := findConn(t, d, 8095, 0)
	if row["verdict"] != "allow" || row["exe"] != helperBin || int(num(row["pid"])) != r.PID || row["netns"] != c.Container {
		t.Errorf("history row %v: want allow by rule, exe %s, pid %d, netns %s", row, helperBin, r.PID, c.Container)
	}
	if row["local_ip"] != c.ContainerIP || row["direction"] != "out" {
		t.Errorf("history row %v: want local_ip %s, direction out", row, c.ContainerIP)
	}

	before := Accepted(srv)
	done := make(chan Result, 1)
	go func() { done <- c.connectFrom(t, 8096, 30*time.Second) }()
	p := waitPrompt(t, d, 8096)
	if p["netns"] != c.Container || p["local_ip"] != c.ContainerIP || num(p["pid"]) <= 0 {
		t.Errorf("question %v: want netns %s, local_ip %s and the pid", p, c.Container, c.ContainerIP)
	}
	time.Sleep(300 * time.Millisecond) // time for a SYN that was let through to arrive
	select {
	case r := <-done:
		t.Fatalf("held forwarded connection finished before the answer: %+v", r)
	default:
	}
	if got := Accepted(srv) - before; got != 0 {
		t.Fatalf("the server accepted %d connections while the forwarded one was held", got)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "allow", "--for", "once")
	select {
	case r := <-done:
		if r.Outcome != "connected" {
			t.Fatalf("answered allow, container client got %+v", r)
		}
		if int(num(p["pid"])) != r.PID {
			t.Errorf("question named pid %v, the client was %d", p["pid"], r.PID)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("answered allow, the held forwarded connection did not go through")
	}
	row = findConn(t, d, 8096, 0)
	if row["reason"] != "prompt" || row["netns"] != c.Container || row["exe"] != helperBin {
		t.Errorf("history row %v: want reason prompt, netns %s, exe %s", row, c.Container, helperBin)
	}
	// A denied forwarded connection is refused at once, like a local one.
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8097", "--action", "deny")
	if r := c.connectFrom(t, 8097, 10*time.Second); r.Outcome != "refused" {
		t.Errorf("denied forwarded connection: %+v; want refused", r)
	}
}

// makeCgroups makes the cgroup directories dirs (and parents missing) and removes
// what it made when the test ends, once the processes in them have exited.
func makeCgroups(t *testing.T, dirs ...string) {
	t.Helper()
	var made []string // deepest last
	for _, dir := range dirs {
		var missing []string
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(d); err == nil {
				break
			}
			missing = append(missing, d)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			made = append(made, missing[i])
		}
	}
	t.Cleanup(func() {
		// A cgroup can be removed once its last process is reaped: the test's
		// processes have exited by now, so a few tries suffice.
		for i := len(made) - 1; i >= 0; i-- {
			for try := 0; try < 50; try++ {
				if err := os.Remove(made[i]); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
}

// containerClient is the command line that runs, in the container namespace, a
// program in cgroup dir (its cgroup.procs reached through the test's root, as `ip
// netns exec` mounts a sysfs of its own) and in a mount namespace of its own where
// the file prog is bound over the path exe: the container's program at exe, another
// file than the host's there, as in a container's image. dir "" runs it in no
// container cgroup (and prog "" runs the host's file at exe).
func containerClient(dir, prog, exe string, args ...string) []string {
	procs := "/dev/null"
	if dir != "" {
		procs = fmt.Sprintf("/proc/%d/root%s", os.Getpid(), filepath.Join(dir, "cgroup.procs"))
	}
	script := `echo $$ > "$1" && p="$2" && shift 2 && exec "$p" "$@"`
	if prog != "" {
		script = `echo $$ > "$1" && mount --bind "$3" "$2" && p="$2" && shift 3 && exec "$p" "$@"`
	}
	argv := []string{"unshare", "-m", "sh", "-c", script, "sh", procs, exe}
	if prog != "" {
		argv = append(argv, prog)
	}
	return append(argv, args...)
}

// askedAndDenied runs argv in c's container namespace, checks its question with
// check, answers deny once and checks that the connection was refused, by the pid
// the question named, and that srv accepted nothing while it was held. It returns
// the connection's history row.
func (c *containerNet) askedAndDenied(t *testing.T, d *Daemon, srv *Proc, port int, what string, argv []string, check func(p map[string]any)) map[string]any {
	t.Helper()
	before := Accepted(srv)
	done := make(chan Result, 1)
	go func() { done <- runIn(t, c.Net, c.Container, argv) }()
	p := promptOn(t, d, port)
	check(p)
	time.Sleep(300 * time.Millisecond) // time for a SYN that was let through to arrive
	if got := Accepted(srv) - before; got != 0 {
		t.Errorf("%s: the server accepted %d connections while it was held", what, got)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "deny", "--for", "once")
	select {
	case r := <-done:
		if r.Outcome != "refused" {
			t.Errorf("%s: answered deny, got %+v", what, r)
		}
		if int(num(p["pid"])) != r.PID {
			t.Errorf("%s: question named pid %v, the client was %d", what, p["pid"], r.PID)
		}
		return findConn(t, d, port, r.PID)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: answered deny, the client did not finish", what)
	}
	return nil
}

// runIn runs argv in namespace ns and decodes e2ehelper's result line.
func runIn(t *testing.T, n *Net, ns string, argv []string) Result {
	t.Helper()
	out, err := n.Exec(ns, argv[0], argv[1:]...)
	if err != nil {
		t.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		return Result{Outcome: "failed"}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var r Result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Errorf("%s: output %q: %v", strings.Join(argv, " "), out, err)
		return Result{Outcome: "failed"}
	}
	return r
}

// TestForwardedContainerConnectionsAttributed: behind a router running latch with
// --forward, programs in the container namespace run in cgroups named as docker,
// podman and systemd-machined name their containers, each in a mount namespace of its own where the
// program's path is another file than the host's (as in a container's image). Their
// forwarded connections are attributed to the container (id and runtime; a
// systemd-nspawn machine's by its name), the
// executable as the container sees it and the namespace, in questions, `conns` and
// history. A `rules add --container ID --app EXE` rule lets the docker container's
// program through (and one with the machine's name the machine's); the same program in the podman container, and the host's program
// of that path in the same namespace, are held and asked.
func TestForwardedContainerConnectionsAttributed(t *testing.T) {
	b := identityBins(t)
	idA := strings.Repeat("a1b2c3d4e5f60718", 4)
	idB := strings.Repeat("9f8e7d6c5b4a3021", 4)
	parent := filepath.Join(cgroup2Root(t), fmt.Sprintf("latch-e2e-fwd-%d", os.Getpid()))
	name := fmt.Sprintf("web-%d", os.Getpid()) // a systemd-nspawn machine: named by its cgroup
	dirs := []string{filepath.Join(parent, "docker-"+idA+".scope"), filepath.Join(parent, "libpod-"+idB+".scope"),
		filepath.Join(parent, "machine.slice", `machine-web\x2d`+name[4:]+".scope")}
	makeCgroups(t, dirs...)
	c := newContainerNet(t)
	const port = 8098
	srv := c.Serve(t, port)
	addr := fmt.Sprintf("%s:%d", c.ServerIP, port)

	d := c.StartDaemon("--forward", "--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--container", idA[:12], "--app", b.Allowed, "--proto", "tcp", "--port", fmt.Sprint(port), "--action", "allow")
	d.MustCLI(t, "rules", "add", "--container", name, "--app", b.Allowed, "--proto", "tcp", "--port", fmt.Sprint(port), "--action", "allow")

	// The docker container's program: its rule lets it through.
	r := runIn(t, c.Net, c.Container, containerClient(dirs[0], b.Forger, b.Allowed, "connect", addr, "10s"))
	if r.Outcome != "connected" {
		t.Fatalf("the docker container's program with a --container --app rule: %+v; want connected", r)
	}
	row := findConn(t, d, port, r.PID)
	for k, want := range map[string]any{"verdict": "allow", "reason": "rule", "exe": b.Allowed, "netns": c.Container,
		"identity": "container", "container": "docker:" + idA, "local_ip": c.ContainerIP, "direction": "out"} {
		if row[k] != want {
			t.Errorf("history row %v: %s is %v, want %v", row, k, row[k], want)
		}
	}
	if table := d.MustCLI(t, "conns"); !strings.Contains(table, "[container docker:"+idA[:12]+"]") {
		t.Errorf("conns text does not name the docker container:\n%s", table)
	}

	// The machine's program, by the machine's name.
	r = runIn(t, c.Net, c.Container, containerClient(dirs[2], b.Forger, b.Allowed, "connect", addr, "10s"))
	if r.Outcome != "connected" {
		t.Fatalf("the machine's program with a --container NAME --app rule: %+v; want connected", r)
	}
	if row := findConn(t, d, port, r.PID); row["container"] != "machine:"+name || row["exe"] != b.Allowed || row["reason"] != "rule" {
		t.Errorf("history row %v: want container machine:%s, exe %s, reason rule", row, name, b.Allowed)
	}

	// The same program in the podman container: another id, so held and asked.
	c.askedAndDenied(t, d, srv, port, "the podman container's program", containerClient(dirs[1], b.Forger, b.Allowed, "connect", addr, "30s"), func(p map[string]any) {
		for k, want := range map[string]any{"exe": b.Allowed, "netns": c.Container, "identity": "container",
			"container": "podman:" + idB, "local_ip": c.ContainerIP} {
			if p[k] != want {
				t.Errorf("question %v: %s is %v, want %v", p, k, p[k], want)
			}
		}
	})
	row = findConn(t, d, port, 0)
	if row["container"] != "podman:"+idB || row["reason"] != "prompt" || row["verdict"] == "allow" {
		t.Errorf("history row %v: want container podman:%s, denied by the answer", row, idB)
	}
	if table := d.MustCLI(t, "conns"); !strings.Contains(table, "[container podman:"+idB[:12]+"]") {
		t.Errorf("conns text does not name the podman container:\n%s", table)
	}

	// The host's program of that path, in the container's namespace but in no
	// container: verified, and no container rule matches it.
	c.askedAndDenied(t, d, srv, port, "the host's program", containerClient("", "", b.Allowed, "connect", addr, "30s"), func(p map[string]any) {
		if p["exe"] != b.Allowed || p["identity"] != "verified" || p["container"] != nil || p["netns"] != c.Container {
			t.Errorf("question %v: want exe %s, verified, no container, netns %s", p, b.Allowed, c.Container)
		}
	})
}

// TestForwardedConnectionCarriesUnit: a forwarded connection's program is identified
// as fully as a local one's: a program in the container namespace in a systemd
// unit's cgroup is let through by a --unit rule, and history names the unit.
func TestForwardedConnectionCarriesUnit(t *testing.T) {
	unit := fmt.Sprintf("latch-e2e-fwd-%d.service", os.Getpid())
	dir := filepath.Join(cgroup2Root(t), "system.slice", unit)
	makeCgroups(t, dir)
	c := newContainerNet(t)
	const port = 8099
	c.Serve(t, port)
	d := c.StartDaemon("--forward", "--mode", "silent-deny", "--default", "deny")
	d.MustCLI(t, "rules", "add", "--unit", unit, "--port", fmt.Sprint(port), "--action", "allow")
	addr := fmt.Sprintf("%s:%d", c.ServerIP, port)
	r := runIn(t, c.Net, c.Container, containerClient(dir, "", helperBin, "connect", addr, "5s"))
	if r.Outcome != "connected" {
		t.Errorf("forwarded connection of a program in %s with a --unit rule: %+v; want connected", unit, r)
	}
	if row := findConn(t, d, port, r.PID); row["unit"] != unit || row["reason"] != "rule" || row["netns"] != c.Container {
		t.Errorf("history row %v: want unit %s, reason rule, netns %s", row, unit, c.Container)
	}
	// Outside the unit, the same program is refused (silent-deny: no question).
	if r := runIn(t, c.Net, c.Container, containerClient("", "", helperBin, "connect", addr, "5s")); r.Outcome != "refused" {
		t.Errorf("the same program outside the unit: %+v; want refused", r)
	}
}
