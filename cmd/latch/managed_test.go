//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestManagedRules: drop-in rule files are in force beside the user's rules, listed
// with their source, refused to the API, picked up by inotify, SIGHUP and `latch
// reload`, all or nothing; a bad file keeps the last good set and is named with its
// line.
func TestManagedRules(t *testing.T) {
	dir := t.TempDir()
	md := filepath.Join(dir, "rules.d")
	os.Mkdir(md, 0o755)
	corp := filepath.Join(md, "10-corp.json")
	os.WriteFile(corp, []byte(`{"version": 1, "rules": [
  {"dir": "out", "proto": "tcp", "port": "25", "action": "deny", "note": "no mail"}
]}`), 0o644)
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "latch.sock")
	env := []string{"LATCH_API=" + sock}
	d := startDaemon(t, state, sock, "--config", "", "--managed-rules", md)
	latch := func(args ...string) result { return runLatch(t, env, nil, args...) }

	latch("rules", "add", "--app", "/usr/bin/ssh", "--port", "22", "--action", "allow").ok(t)
	list := latch("rules", "list").ok(t).stdout
	if !strings.Contains(list, "managed:"+corp) || !strings.Contains(list, "own") {
		t.Fatalf("rules list does not show sources:\n%s", list)
	}
	var managedID string
	for _, r := range jsonLines(t, latch("rules", "list", "--json").ok(t).stdout) {
		if r["source"] == corp {
			managedID = strings.TrimSuffix(strings.TrimSuffix(jsonNum(r["id"]), ".0"), ".00")
		}
	}
	if managedID == "" {
		t.Fatal("no rule with the managed source in rules list --json")
	}
	// Read-only through the API.
	r := latch("rules", "rm", managedID)
	if r.code == 0 || !strings.Contains(r.stderr, "read-only") || !strings.Contains(r.stderr, corp) {
		t.Errorf("removing a managed rule: exit %d %q", r.code, r.stderr)
	}
	// The user's rules file holds only the user's rule.
	if b, _ := os.ReadFile(filepath.Join(state, "rules.json")); strings.Contains(string(b), "no mail") || !strings.Contains(string(b), "/usr/bin/ssh") {
		t.Errorf("rules.json:\n%s", b)
	}

	// A new file appears: inotify loads it.
	os.WriteFile(filepath.Join(md, "20-dns.json"), []byte(`{"version": 1, "rules": [
  {"dir": "out", "proto": "udp", "port": "53", "action": "allow"}
]}`), 0o644)
	waitFor(t, "inotify to load 20-dns.json", func() bool { return strings.Contains(latch("rules", "list").stdout, "20-dns.json") })

	// A bad file: the last good set stays, the error names file and line.
	bad := filepath.Join(md, "30-bad.json")
	os.WriteFile(bad, []byte("{\"version\": 1, \"rules\": [\n  {\"dir\": \"out\", \"proto\": \"tcp\", \"action\": \"allow\"},\n  {\"dir\": \"sideways\", \"proto\": \"tcp\", \"action\": \"allow\"}\n]}"), 0o644)
	time.Sleep(500 * time.Millisecond) // inotify tries too, and keeps the set
	r = latch("reload")
	if r.code == 0 || !strings.Contains(r.stderr, bad+":3:") || !strings.Contains(r.stderr, "stay") {
		t.Errorf("reload with a bad file: exit %d %q", r.code, r.stderr)
	}
	if list := latch("rules", "list").ok(t).stdout; !strings.Contains(list, "20-dns.json") || !strings.Contains(list, "10-corp.json") || strings.Contains(list, "30-bad") {
		t.Errorf("after a bad file the set changed:\n%s", list)
	}
	if !strings.Contains(d.out.String(), bad+":3:") {
		t.Errorf("the daemon's log does not name the bad file and line:\n%s", d.out.String())
	}
	// Removing files and SIGHUP: reloaded.
	os.Remove(bad)
	os.Remove(corp)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "SIGHUP to drop 10-corp.json", func() bool { return !strings.Contains(latch("rules", "list").stdout, "10-corp.json") })
	if r := latch("reload").ok(t); !strings.Contains(r.stdout, "1 rule") {
		t.Errorf("reload: %q", r.stdout)
	}

	// import --dry-run shows the difference and changes nothing; --merge adds.
	before := latch("rules", "export").ok(t).stdout
	imp := filepath.Join(dir, "import.json")
	os.WriteFile(imp, []byte(`{"version": 1, "rules": [
  {"dir": "out", "proto": "tcp", "port": "443", "action": "allow"}
]}`), 0o644)
	r = latch("rules", "import", "--dry-run", imp).ok(t)
	if !strings.Contains(r.stdout, "+ (new)") || !strings.Contains(r.stdout, "- #") || !strings.Contains(r.stdout, "app=/usr/bin/ssh") || !strings.Contains(r.stdout, "1 added, 1 removed, 0 changed") {
		t.Errorf("import --dry-run:\n%s", r.stdout)
	}
	if after := latch("rules", "export").ok(t).stdout; after != before {
		t.Errorf("--dry-run changed the rules:\n%s\n%s", before, after)
	}
	r = latch("rules", "import", "--merge", "--dry-run", imp).ok(t)
	if !strings.Contains(r.stdout, "1 added, 0 removed, 0 changed") {
		t.Errorf("import --merge --dry-run:\n%s", r.stdout)
	}
	latch("rules", "import", "--merge", imp).ok(t)
	latch("rules", "import", "--merge", imp).ok(t) // twice: nothing doubles
	own := 0
	for _, r := range jsonLines(t, latch("rules", "list", "--json").ok(t).stdout) {
		if r["source"] == nil {
			own++
		}
	}
	if own != 2 {
		t.Errorf("after merging a one-rule file twice into one rule: %d own rules", own)
	}
	d.stop(t)

	// A bad file at start: the daemon refuses, naming it.
	os.WriteFile(bad, []byte("{\"version\": 1, \"rules\": [\n{\"action\": \"maybe\"}]}"), 0o644)
	r = runLatch(t, nil, nil, "daemon", "--backend", "none", "--config", "", "--state-dir", state, "--api", sock, "--managed-rules", md)
	if r.code == 0 || !strings.Contains(r.stderr, bad+":2:") {
		t.Errorf("start with a bad managed file: exit %d %q", r.code, r.stderr)
	}
}

func jsonNum(v any) string {
	if f, ok := v.(float64); ok {
		return strings.TrimRight(strings.TrimRight(strconvF(f), "0"), ".")
	}
	return ""
}

func strconvF(f float64) string { return fmt.Sprintf("%.0f", f) }

// TestHangupWithoutManagedRules: SIGHUP (systemctl reload) never ends the daemon, even
// with no managed rules directory.
func TestHangupWithoutManagedRules(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "latch.sock")
	d := startDaemon(t, filepath.Join(dir, "state"), sock, "--config", "", "--managed-rules", "")
	d.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	runLatch(t, []string{"LATCH_API=" + sock}, nil, "status").ok(t)
	if !strings.Contains(d.out.String(), "nothing to reload") {
		t.Errorf("no log of the SIGHUP:\n%s", d.out.String())
	}
	if code := d.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}
