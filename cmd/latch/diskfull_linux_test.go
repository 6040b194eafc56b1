package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRulesSavedOnFullStateDir: with the state directory on a 64 KiB file system
// that fills up after the daemon started (the history, or anything else), rules added
// through the API are still saved, and load again after a restart; status says the
// history stopped.
func TestRulesSavedOnFullStateDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a tmpfs")
	}
	dir, err := os.MkdirTemp("", "latch-diskfull-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "run", "latch.sock")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "latch-test", state).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", state).Run() })
	env := []string{"LATCH_API=" + sock}

	d := startDaemon(t, state, sock)
	// Whatever the daemon left free is taken.
	f, err := os.Create(filepath.Join(state, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4096)
	for range 64 { // 256 KiB at most: more than the file system holds
		if _, err := f.Write(block); err != nil {
			break
		}
	}
	f.Close()

	for _, app := range []string{"/usr/bin/ssh", "/usr/bin/curl", "/usr/bin/git"} {
		r := runLatch(t, env, nil, "rules", "add", "--app", app, "--port", "22", "--action", "allow")
		if r.code != 0 {
			t.Fatalf("rules add %s on a full state dir: exit %d: %s", app, r.code, r.stderr)
		}
	}
	var st struct {
		History struct {
			Stopped bool `json:"stopped"`
		} `json:"history"`
	}
	out := runLatch(t, env, nil, "status", "--json").ok(t).stdout
	if err := json.Unmarshal([]byte(out), &st); err != nil || !st.History.Stopped {
		t.Errorf("status --json does not say the history stopped (%v): %s", err, out)
	}
	if text := runLatch(t, env, nil, "status").ok(t).stdout; !strings.Contains(text, "history stopped:") {
		t.Errorf("status does not say the history stopped:\n%s", text)
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon exit %d: %s", code, d.out.String())
	}

	d = startDaemon(t, state, sock)
	rules := jsonLines(t, runLatch(t, env, nil, "rules", "list", "--json").ok(t).stdout)
	if len(rules) != 3 {
		t.Fatalf("rules after a restart on a full state dir: %v", rules)
	}
	// And one more, still on the full disk.
	runLatch(t, env, nil, "rules", "add", "--app", "/usr/bin/rsync", "--action", "allow").ok(t)
	d.stop(t)
}
