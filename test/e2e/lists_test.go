//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBlocklistDeniesAndAppRuleOverrides: a list naming the server's address denies a
// connection that a rule without an app allows; a rule for the program overrides the
// list; a list file with a bad line is refused and changes nothing; `lists update`
// reads the files again.
func TestBlocklistDeniesAndAppRuleOverrides(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 9150)
	n.Serve(t, 9151)
	dir := t.TempDir()
	list := filepath.Join(dir, "bad.txt")
	write := func(s string) {
		if err := os.WriteFile(list, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("# test list\n0.0.0.0 ads.example tracker.example\n||doubleclick.test^\n%s/32\n", n.ServerIP))
	d := n.StartDaemon("--mode", "silent-allow", "--default", "deny")
	d.MustCLI(t, "rules", "add", "--port", "9150", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "9151", "--action", "allow")
	if r := n.Connect(t, 9150, 5*time.Second); r.Outcome != "connected" {
		t.Fatalf("before the list: %+v", r)
	}
	out := d.MustCLI(t, "lists", "add", "ads", list, "--action", "deny")
	if !strings.Contains(out, "ads") || !strings.Contains(out, "3") {
		t.Errorf("lists add said:\n%s", out)
	}
	if r := n.Connect(t, 9150, 5*time.Second); r.Outcome != "refused" {
		t.Errorf("listed address, rule without an app: %+v", r)
	}
	if c := findConn(t, d, 9150, 0); c["reason"] != "list" {
		t.Errorf("history %v: want reason list", c)
	}
	if r := n.Connect(t, 9151, 5*time.Second); r.Outcome != "connected" {
		t.Errorf("listed address, the program's own rule: %+v", r)
	}
	// A bad file changes nothing.
	write("ok.example\nnot a domain\n")
	if out, err := d.CLI("lists", "update"); err == nil || !strings.Contains(out, "line 2") {
		t.Errorf("update with a bad line: %v %s", err, out)
	}
	if r := n.Connect(t, 9150, 5*time.Second); r.Outcome != "refused" {
		t.Errorf("after a refused update the list changed: %+v", r)
	}
	write("ok.example\n")
	d.MustCLI(t, "lists", "update")
	if r := n.Connect(t, 9150, 5*time.Second); r.Outcome != "connected" {
		t.Errorf("after the address left the list: %+v", r)
	}
}
