package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestManagedRuleDecidesConnections: a rule file dropped into the managed directory
// decides real connections; replacing it (picked up by inotify) changes the verdict,
// and a bad replacement keeps the last good rule deciding.
func TestManagedRuleDecidesConnections(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8231)
	md := filepath.Join(t.TempDir(), "rules.d")
	os.Mkdir(md, 0o755)
	file := filepath.Join(md, "corp.json")
	write := func(action string) {
		tmp := file + ".tmp"
		os.WriteFile(tmp, []byte(fmt.Sprintf(`{"version": 1, "rules": [
  {"app": %q, "dir": "out", "proto": "tcp", "port": "8231", "action": %q}
]}`, helperBin, action)), 0o644)
		os.Rename(tmp, file) // as configuration management does: atomically
	}
	write("deny")
	d := n.StartDaemon("--config", "", "--managed-rules", md, "--default", "drop", "--prompt-timeout", "2s")
	if r := n.Connect(t, 8231, 5*time.Second); r.Outcome != "refused" {
		t.Fatalf("with a managed deny rule: %+v", r)
	}
	write("allow")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.MustCLI(t, "rules", "list"), "allow") {
		if time.Now().After(deadline) {
			t.Fatalf("the changed managed file was not picked up:\n%s", d.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := n.Connect(t, 8231, 5*time.Second); r.Outcome != "connected" {
		t.Fatalf("with the managed rule changed to allow: %+v", r)
	}
	// A bad file: the allow rule stays in force.
	os.WriteFile(file, []byte(`{"version": 1, "rules": [{"action": "perhaps"}]}`), 0o644)
	time.Sleep(600 * time.Millisecond)
	if out, err := d.CLI("reload"); err == nil || !strings.Contains(out, file+":1:") {
		t.Errorf("reload with a bad file: %v %s", err, out)
	}
	if r := n.Connect(t, 8231, 5*time.Second); r.Outcome != "connected" {
		t.Errorf("after a bad managed file, the last good rule should still allow: %+v", r)
	}
}
