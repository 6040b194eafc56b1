package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/textesc"
)

// TestDisguisedProgramNameShownEscaped runs a real program whose path holds terminal
// escapes, a carriage return, a line feed and a right-to-left override, and lets it
// connect through the daemon: `latch prompts` and `latch conns` show the path escaped,
// one record per line, never as "firefox"; --json keeps the exact path.
func TestDisguisedProgramNameShownEscaped(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8090)
	dir := filepath.Join(t.TempDir(), "x\x1b[2K\rfirefox\u202Etxt.exe\u200D")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "e2e\x1b[2K\rfirefox\x1b[8m\n2026-12-04 00:00:00.000  out  tcp  ok")
	copyProgram(t, exe)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "60s")
	done := make(chan string, 1)
	go func() {
		out, _ := n.Exec(n.Client, exe, "connect", fmt.Sprintf("%s:%d", n.ServerIP, 8090), "30s")
		done <- out
	}()

	var id string
	deadline := time.Now().Add(10 * time.Second)
	for id == "" && time.Now().Before(deadline) {
		for _, p := range JSONLines(t, d.MustCLI(t, "prompts", "--json")) {
			if int(num(p["remote_port"])) == 8090 && p["exe"] == exe {
				id = fmt.Sprint(int64(num(p["id"])))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if id == "" {
		t.Fatalf("no question from the program with the exact path %q; prompts --json:\n%s", exe, d.MustCLI(t, "prompts", "--json"))
	}
	checkLines := func(what, out string, want int) {
		t.Helper()
		if strings.ContainsAny(out, "\x1b\r\u202E\u200D") {
			t.Errorf("%s shows a raw escape, carriage return or invisible character:\n%q", what, out)
		}
		if !strings.Contains(out, textesc.String(exe)) {
			t.Errorf("%s lacks the path escaped as %s:\n%s", what, textesc.String(exe), out)
		}
		if n := strings.Count(out, "\n"); n != want {
			t.Errorf("%s: %d lines, want %d:\n%s", what, n, want, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "2026-12-04 00:00:00.000") || strings.HasPrefix(l, "firefox") {
				t.Errorf("%s has a line that the path faked: %q", what, l)
			}
		}
	}
	checkLines("latch prompts", d.MustCLI(t, "prompts"), 2)

	d.MustCLI(t, "answer", id, "deny")
	select {
	case out := <-done:
		if !strings.Contains(out, "refused") {
			t.Errorf("answered deny, the program reported %s", out)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("answered deny, the program did not return")
	}
	c := findConn(t, d, 8090, 0)
	if c["exe"] != exe {
		t.Errorf("conns --json: exe %q, want the exact path %q", c["exe"], exe)
	}
	checkLines("latch conns", d.MustCLI(t, "conns"), 2)
}
