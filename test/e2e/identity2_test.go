//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Identity beyond the path (issue 11): rules by command line, parent, systemd unit and
// container, against real processes. The daemon runs in silent-deny mode, so a
// connection no rule allows is refused at once instead of asked about.

// TestCmdlineTellsScriptsOfOneInterpreterApart: two scripts run by the same python3
// get different verdicts by --cmdline; the cmdline rule cannot stand without --app.
func TestCmdlineTellsScriptsOfOneInterpreterApart(t *testing.T) {
	py, err := filepath.EvalSymlinks("/usr/bin/python3")
	if err != nil {
		t.Skipf("no /usr/bin/python3: %v", err)
	}
	dir := t.TempDir()
	script := `import socket, sys
s = socket.socket()
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except Exception as e:
    print("other", e)
`
	good, bad := filepath.Join(dir, "good.py"), filepath.Join(dir, "bad.py")
	for _, f := range []string{good, bad} {
		if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := NewNet(t)
	n.Serve(t, 9120)
	d := n.StartDaemon("--mode", "silent-deny", "--default", "deny")
	if out, err := d.CLI("rules", "add", "--cmdline", "* "+good+"*", "--action", "allow"); err == nil || !strings.Contains(out, "needs app") {
		t.Errorf("a cmdline rule without --app was accepted or said something else: %v %s", err, out)
	}
	d.MustCLI(t, "rules", "add", "--app", py, "--cmdline", "* "+good+" *", "--port", "9120", "--action", "allow")
	run := func(f string) string {
		out, err := n.Exec(n.Client, "/usr/bin/python3", f, n.ServerIP, "9120")
		if err != nil {
			t.Fatalf("python3 %s: %v\n%s", f, err, out)
		}
		return strings.TrimSpace(out)
	}
	if got := run(good); got != "connected" {
		t.Errorf("the allowed script: %s", got)
	}
	if got := run(bad); got != "refused" {
		t.Errorf("the other script of the same interpreter: %s", got)
	}
	var seen bool
	for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json")) {
		if c["reason"] == "rule" && strings.Contains(fmt.Sprint(c["cmdline"]), good) {
			seen = true
		}
	}
	if !seen {
		t.Errorf("no history row of the allowed script with its command line:\n%s", d.MustCLI(t, "conns"))
	}
}

// TestParentRuleMatchesChildOfAllowedParent: a program started by the allowed parent
// (a shell) matches --parent; the same program started otherwise does not. The
// history shows the verified parent chain.
func TestParentRuleMatchesChildOfAllowedParent(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	n := NewNet(t)
	n.Serve(t, 9121)
	d := n.StartDaemon("--mode", "silent-deny", "--default", "deny")
	d.MustCLI(t, "rules", "add", "--parent", sh, "--port", "9121", "--action", "allow")
	addr := fmt.Sprintf("%s:%d", n.ServerIP, 9121)
	// "; true" keeps the shell from exec'ing the helper: the shell stays its parent.
	viaShell := runClient(t, n, []string{"/bin/sh", "-c", `"$0" connect "$1" 5s; true`, helperBin, addr})
	if viaShell.Outcome != "connected" {
		t.Errorf("child of the allowed parent: %+v", viaShell)
	}
	direct := runClient(t, n, []string{helperBin, "connect", addr, "5s"})
	if direct.Outcome != "refused" {
		t.Errorf("same program without that parent: %+v", direct)
	}
	c := findConn(t, d, 9121, viaShell.PID)
	ps, _ := c["parents"].([]any)
	if len(ps) == 0 || ps[0] != sh {
		t.Errorf("history row %v: want parents starting with %s", c, sh)
	}
}

// TestUnitRuleMatchesProcessInUnitCgroup: a process moved into a cgroup under
// system.slice named like a service (as systemd-run would make it) matches --unit;
// the same program outside does not.
func TestUnitRuleMatchesProcessInUnitCgroup(t *testing.T) {
	root := cgroup2Root(t)
	unit := fmt.Sprintf("latch-e2e-%d.service", os.Getpid())
	slice := filepath.Join(root, "system.slice")
	made := false
	if _, err := os.Stat(slice); os.IsNotExist(err) {
		if err := os.Mkdir(slice, 0o755); err != nil {
			t.Fatal(err)
		}
		made = true
	}
	cg := filepath.Join(slice, unit)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(cg)
		if made {
			os.Remove(slice)
		}
	})
	n := NewNet(t)
	n.Serve(t, 9122)
	d := n.StartDaemon("--mode", "silent-deny", "--default", "deny")
	d.MustCLI(t, "rules", "add", "--unit", unit, "--port", "9122", "--action", "allow")
	addr := fmt.Sprintf("%s:%d", n.ServerIP, 9122)
	procs := fmt.Sprintf("/proc/%d/root%s/cgroup.procs", os.Getpid(), cg)
	inUnit := runClient(t, n, []string{"sh", "-c", `echo $$ > "$1" && exec "$2" connect "$3" 5s`, "sh", procs, helperBin, addr})
	if inUnit.Outcome != "connected" {
		t.Errorf("process in %s: %+v", unit, inUnit)
	}
	outside := runClient(t, n, []string{helperBin, "connect", addr, "5s"})
	if outside.Outcome != "refused" {
		t.Errorf("process outside the unit: %+v", outside)
	}
	if c := findConn(t, d, 9122, inUnit.PID); c["unit"] != unit || c["reason"] != "rule" {
		t.Errorf("history row %v: want unit %s, reason rule", c, unit)
	}
}

// TestContainerRuleMatchesContainerProcess: a process in another mount namespace and
// a cgroup named like a docker container matches --container by its short id; the
// same program in another mount namespace outside that cgroup does not.
func TestContainerRuleMatchesContainerProcess(t *testing.T) {
	b := identityBins(t)
	root := cgroup2Root(t)
	id := strings.Repeat("fedcba9876543210", 4)
	parent := filepath.Join(root, fmt.Sprintf("latch-e2e-c-%d", os.Getpid()))
	cg := filepath.Join(parent, "docker-"+id+".scope")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(cg)
		os.Remove(parent)
	})
	n := NewNet(t)
	n.Serve(t, 9123)
	d := n.StartDaemon("--mode", "silent-deny", "--default", "deny")
	d.MustCLI(t, "rules", "add", "--container", id[:12], "--port", "9123", "--action", "allow")
	addr := fmt.Sprintf("%s:%d", n.ServerIP, 9123)
	procs := fmt.Sprintf("/proc/%d/root%s/cgroup.procs", os.Getpid(), cg)
	// The container's program: another file under a path of its own mount namespace.
	in := runClient(t, n, []string{"unshare", "-m", "sh", "-c", `echo $$ > "$1" && mount --bind "$2" "$3" && exec "$3" connect "$4" 5s`,
		"sh", procs, b.Forger, b.Allowed, addr})
	if in.Outcome != "connected" {
		t.Errorf("process in the container: %+v", in)
	}
	other := runClient(t, n, []string{"unshare", "-m", "sh", "-c", `mount --bind "$1" "$2" && exec "$2" connect "$3" 5s`,
		"sh", b.Forger, b.Allowed, addr})
	if other.Outcome != "refused" {
		t.Errorf("the same trick outside the container's cgroup: %+v", other)
	}
	if c := findConn(t, d, 9123, in.PID); c["container"] != "docker:"+id || c["reason"] != "rule" {
		t.Errorf("history row %v: want container docker:%s, reason rule", c, id)
	}
}
