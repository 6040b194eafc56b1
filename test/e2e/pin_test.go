//go:build linux

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPinnedRuleStopsMatchingWhenBinaryChanges: a rule added with --pin allows the
// program while its file is unchanged; after the file is rewritten the rule no longer
// matches, and the question says "the program at PATH changed since you allowed it".
func TestPinnedRuleStopsMatchingWhenBinaryChanges(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-e2e-pin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "e2ehelper")
	if out, err := exec.Command("cp", helperBin, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	n := NewNet(t)
	n.Serve(t, 9140)
	d := n.StartDaemon("--mode", "silent-deny", "--default", "deny", "--prompt-timeout", "3s")
	d.MustCLI(t, "rules", "add", "--app", bin, "--pin", "--port", "9140", "--action", "allow")
	addr := fmt.Sprintf("%s:%d", n.ServerIP, 9140)
	// The first connection of a file not hashed yet is not allowed by a pinned rule
	// (latch asks rather than allows while hashing); soon after, it is.
	connected := false
	for i := 0; i < 50 && !connected; i++ {
		connected = runClient(t, n, []string{bin, "connect", addr, "5s"}).Outcome == "connected"
		if !connected {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !connected {
		t.Fatalf("the pinned, unchanged program never got through:\n%s", d.MustCLI(t, "conns"))
	}
	// Rewrite the file in place: a byte appended (the program still runs).
	f, err := os.OpenFile(bin, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	d.MustCLI(t, "mode", "ask")
	var note string
	// A file changed under 2 s ago is hashed but not cached (procattr's
	// hashRacyMargin: a coarse clock could give a later rewrite the same
	// times), so for those 2 s the question says latch is still hashing it.
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(note, "changed since you allowed it") && time.Now().Before(deadline); {
		done := make(chan Result, 1)
		go func() { done <- runClient(t, n, []string{bin, "connect", addr, "10s"}) }()
		p := promptOn(t, d, 9140)
		note, _ = p["note"].(string)
		d.MustCLI(t, "answer", fmt.Sprint(int(num(p["id"]))), "deny")
		if r := <-done; r.Outcome == "connected" {
			t.Fatalf("the rewritten program got through the pinned rule: %+v", r)
		}
	}
	want := "the program at " + bin + " changed since you allowed it"
	if note != want {
		t.Errorf("question note %q, want %q", note, want)
	}
}
