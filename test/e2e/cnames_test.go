//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startDaemonOverVarLib is StartDaemon with the daemon in a mount namespace of its own
// whose /var/lib is an empty tmpfs: the test writes a fake docker and podman state
// there (through /proc/PID/root, returned as varLib), and the host's /var/lib is
// neither read nor touched.
func (n *Net) startDaemonOverVarLib(t *testing.T, flags ...string) (d *Daemon, varLib string) {
	t.Helper()
	dir := t.TempDir()
	d = &Daemon{net: n, API: filepath.Join(dir, "latch.sock"), State: filepath.Join(dir, "state")}
	script := `mount -t tmpfs -o mode=0755,size=8m latch-e2e-varlib /var/lib && exec "$0" "$@"`
	args := append([]string{"-m", "--propagation", "private", "sh", "-c", script, latchBin,
		"daemon", "--config", "", "--state-dir", d.State, "--api", d.API}, flags...)
	d.Proc = n.Start(n.Client, "unshare", args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon output:\n%s", d.Output())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := d.CLI("status"); err == nil {
			break
		}
		if time.Now().After(deadline) || d.cmd.ProcessState != nil {
			t.Fatalf("daemon did not come up; output:\n%s", d.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// ip netns exec, unshare and sh each exec the next: the pid is the daemon's.
	varLib = fmt.Sprintf("/proc/%d/root/var/lib", d.cmd.Process.Pid)
	var st, host syscallStat
	if err := statDev(varLib, &st); err != nil {
		t.Fatal(err)
	}
	if err := statDev("/var/lib", &host); err != nil {
		t.Fatal(err)
	}
	if st == host {
		t.Fatalf("the daemon's /var/lib is the host's")
	}
	return d, varLib
}

// writeState writes a runtime state file below varLib, as the runtimes do (a new
// file renamed into place), owned by uid with mode.
func writeState(t *testing.T, varLib, rel string, data []byte, uid int, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(varLib, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	tmp := p + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tmp, uid, uid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func dockerState(t *testing.T, id, name string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"ID": id, "Name": "/" + name, "State": map[string]any{"Running": true},
		"Config": map[string]any{"Hostname": id[:12], "Image": "nginx"}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestContainerNamesFromRuntimeState: with docker's and podman's state files in the
// daemon's /var/lib, forwarded connections of programs in docker- and podman-style
// cgroups carry the name the runtime gives the container: `conns --json` and the
// question have container_name (exact bytes, a hostile name included), text output
// shows it escaped after the id; `rules add --container NAME --app EXE` lets the
// named docker container's program through; a state file owned by another user
// gives no name; a renamed container shows its new name within a few seconds and
// its old name's rule no longer matches it.
func TestContainerNamesFromRuntimeState(t *testing.T) {
	b := identityBins(t)
	idA := strings.Repeat("c0ffee0123456789", 4) // docker, named
	idB := strings.Repeat("5eed5eed01234567", 4) // podman, a hostile name
	idC := strings.Repeat("badc0ffee0123456", 4) // docker, its state owned by a user
	name := fmt.Sprintf("shop-%d", os.Getpid())
	renamed := fmt.Sprintf("api-%d", os.Getpid())
	hostile := "db\x1b[2K\rfirefox\u202e"
	parent := filepath.Join(cgroup2Root(t), fmt.Sprintf("latch-e2e-cname-%d", os.Getpid()))
	dirs := []string{filepath.Join(parent, "docker-"+idA+".scope"), filepath.Join(parent, "libpod-"+idB+".scope"),
		filepath.Join(parent, "docker-"+idC+".scope")}
	makeCgroups(t, dirs...)
	c := newContainerNet(t)
	const port = 8097
	srv := c.Serve(t, port)
	addr := fmt.Sprintf("%s:%d", c.ServerIP, port)

	d, varLib := c.startDaemonOverVarLib(t, "--forward", "--default", "deny", "--prompt-timeout", "30s")
	writeState(t, varLib, "docker/containers/"+idA+"/config.v2.json", dockerState(t, idA, name), 0, 0o600)
	writeState(t, varLib, "docker/containers/"+idC+"/config.v2.json", dockerState(t, idC, "planted"), 65534, 0o600)
	pod, _ := json.Marshal([]map[string]any{{"id": idB, "names": []string{hostile}, "image": "f00d", "layer": "beef"}})
	writeState(t, varLib, "containers/storage/overlay-containers/containers.json", pod, 0, 0o600)

	d.MustCLI(t, "rules", "add", "--container", name, "--app", b.Allowed, "--proto", "tcp", "--port", fmt.Sprint(port), "--action", "allow")

	// The docker container named by its runtime: the rule naming it lets it through.
	r := runIn(t, c.Net, c.Container, containerClient(dirs[0], b.Forger, b.Allowed, "connect", addr, "10s"))
	if r.Outcome != "connected" {
		t.Fatalf("the docker container %s's program with a --container NAME --app rule: %+v; want connected", name, r)
	}
	row := findConn(t, d, port, r.PID)
	for k, want := range map[string]any{"verdict": "allow", "reason": "rule", "container": "docker:" + idA, "container_name": name, "identity": "container"} {
		if row[k] != want {
			t.Errorf("history row %v: %s is %v, want %v", row, k, row[k], want)
		}
	}
	if table := d.MustCLI(t, "conns"); !strings.Contains(table, "[container docker:"+idA[:12]+" "+name+"]") {
		t.Errorf("conns text does not name the docker container %s:\n%s", name, table)
	}
	if ex := d.MustCLI(t, "explain", "--conn", fmt.Sprint(int64(num(row["id"])))); !strings.Contains(ex, "matched by the name") {
		t.Errorf("explain does not say the rule matched by name:\n%s", ex)
	}

	// The podman container: its hostile name, exact in JSON, escaped in text.
	row = c.askedAndDenied(t, d, srv, port, "podman", containerClient(dirs[1], b.Forger, b.Allowed, "connect", addr, "30s"), func(p map[string]any) {
		if p["container"] != "podman:"+idB || p["container_name"] != hostile {
			t.Errorf("question %v: want container podman:%s named %q", p, idB, hostile)
		}
		prompts := d.MustCLI(t, "prompts")
		if !strings.Contains(prompts, `[container podman:`+idB[:12]+` db\x1b[2K\x0dfirefox\u{202E}]`) || strings.ContainsAny(prompts, "\x1b\r\u202e") {
			t.Errorf("prompts text does not show the podman container's name escaped:\n%q", prompts)
		}
	})
	if row["container_name"] != hostile {
		t.Errorf("history row %v: container_name %q, want %q", row, row["container_name"], hostile)
	}
	if table := d.MustCLI(t, "conns"); strings.ContainsAny(table, "\x1b\r\u202e") {
		t.Errorf("conns text holds the raw name:\n%q", table)
	}

	// A docker state file owned by a user: no name from it.
	row = c.askedAndDenied(t, d, srv, port, "user-owned state", containerClient(dirs[2], b.Forger, b.Allowed, "connect", addr, "30s"), func(p map[string]any) {
		if p["container"] != "docker:"+idC || p["container_name"] != nil {
			t.Errorf("question %v: want container docker:%s without a name (its state file is a user's)", p, idC)
		}
	})
	if _, ok := row["container_name"]; ok {
		t.Errorf("history row %v: a name from a user-owned state file", row)
	}

	// Renamed: the new name shows once the file is looked at again (at most a second
	// later), and the rule naming the old name no longer matches.
	writeState(t, varLib, "docker/containers/"+idA+"/config.v2.json", dockerState(t, idA, renamed), 0, 0o600)
	time.Sleep(1500 * time.Millisecond)
	c.askedAndDenied(t, d, srv, port, "renamed", containerClient(dirs[0], b.Forger, b.Allowed, "connect", addr, "30s"), func(p map[string]any) {
		if p["container"] != "docker:"+idA || p["container_name"] != renamed {
			t.Errorf("question %v: want container docker:%s named %s", p, idA, renamed)
		}
	})
}

// syscallStat is a file's device and inode.
type syscallStat struct{ dev, ino uint64 }

func statDev(path string, s *syscallStat) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return err
	}
	*s = syscallStat{uint64(st.Dev), st.Ino}
	return nil
}
