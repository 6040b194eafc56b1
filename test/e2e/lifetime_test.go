//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUntilExitRuleEndsWithItsProcess: a question answered "allow --for until-exit"
// makes a rule for that process's program; when the process exits, the rule is gone
// within a second.
func TestUntilExitRuleEndsWithItsProcess(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 9130)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "20s")
	holder := n.Start(n.Client, helperBin, "hold", fmt.Sprintf("%s:%d", n.ServerIP, 9130))
	p := waitPrompt(t, d, 9130)
	d.MustCLI(t, "answer", fmt.Sprint(int(num(p["id"]))), "allow", "--for", "until-exit")
	holder.WaitLine(t, 10*time.Second, func(l string) bool { return strings.Contains(l, `"outcome":"connected"`) })
	rules := JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	if len(rules) != 1 || int(num(rules[0]["exit_pid"])) != int(num(p["pid"])) {
		t.Fatalf("rules after the answer: %v; want one with exit_pid %v", rules, p["pid"])
	}
	if err := holder.Signal(syscall.SIGTERM, 10*time.Second); err != nil && !strings.Contains(err.Error(), "terminated") {
		t.Fatal(err)
	}
	exited := time.Now()
	for strings.TrimSpace(d.MustCLI(t, "rules", "list", "--json")) != "" {
		if time.Since(exited) > time.Second {
			t.Fatalf("the rule is still there 1 s after its process exited:\n%s", d.MustCLI(t, "rules", "list"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("rule gone %v after its process exited", time.Since(exited).Round(time.Millisecond))
}

// TestUntilRebootRuleEndsWithTheBoot: a rule added --for until-reboot carries this
// boot's id; a daemon starting in another boot (its id changed in the rules file, as
// after a reboot) drops it.
func TestUntilRebootRuleEndsWithTheBoot(t *testing.T) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skip(err)
	}
	n := NewNet(t)
	dir := t.TempDir()
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "latch.sock")
	d := n.startDaemonAt(t, state, sock, "--default", "deny")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--action", "allow", "--for", "until-reboot")
	d.MustCLI(t, "rules", "add", "--app", "/usr/bin/curl", "--action", "allow")
	rules := JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	if len(rules) != 2 || rules[0]["boot_id"] != strings.TrimSpace(string(boot)) {
		t.Fatalf("rules %v: want the first with this boot's id", rules)
	}
	// The same boot: the rule stays across a restart.
	if err := d.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	d = n.startDaemonAt(t, state, sock, "--default", "deny")
	if got := len(JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))); got != 2 {
		t.Fatalf("%d rules after a restart in the same boot, want 2", got)
	}
	if err := d.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(state, "rules.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	other := strings.ReplaceAll(string(data), strings.TrimSpace(string(boot)), "00000000-0000-4000-8000-000000000000")
	if other == string(data) {
		t.Fatalf("rules file holds no boot id:\n%s", data)
	}
	if err := os.WriteFile(path, []byte(other), 0o600); err != nil {
		t.Fatal(err)
	}
	d = n.startDaemonAt(t, state, sock, "--default", "deny")
	rules = JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	if len(rules) != 1 || rules[0]["app"] != "/usr/bin/curl" {
		t.Errorf("rules in another boot: %v; want only the rule without a lifetime", rules)
	}
}
