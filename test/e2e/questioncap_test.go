package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// statusJSON returns `latch status --json`.
func statusJSON(t *testing.T, d *Daemon) map[string]any {
	t.Helper()
	var st map[string]any
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	return st
}

// copyProgram copies the helper to path, so that latch sees another program.
func copyProgram(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(helperBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// waitSettled waits (at most 30 s) until n connections are either asked about or
// decided by a question cap. (Before question caps were fair, a capped connection's
// reason was "limit".)
func waitSettled(t *testing.T, d *Daemon, n int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st := statusJSON(t, d)
		dec, _ := st["decisions"].(map[string]any)
		if int(max(num(st["pending_prompts"]), 0)+max(num(dec["question-cap"]), 0)+max(num(dec["limit"]), 0)) >= n {
			return
		}
	}
	t.Logf("the flood's %d connections did not all reach latch within 30s; going on", n)
}

// askedAndAnswered connects from program as root and requires a question for it,
// which it answers allow; the connection must then go through.
func askedAndAnswered(t *testing.T, n *Net, d *Daemon, srv *Proc, program string, port int) {
	t.Helper()
	done := make(chan string, 1)
	go func() {
		out, _ := n.Exec(n.Client, program, "connect", fmt.Sprintf("%s:%d", n.ServerIP, port), "30s")
		done <- out
	}()
	var id string
	for deadline := time.Now().Add(15 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, p := range JSONLines(t, d.MustCLI(t, "prompts", "--json")) {
			if p["exe"] == program && int(num(p["remote_port"])) == port {
				id = fmt.Sprint(int64(num(p["id"])))
			}
		}
		select {
		case out := <-done:
			t.Fatalf("the other program's connection was decided without a question: %s\nstatus:\n%s", out, d.MustCLI(t, "status"))
		default:
		}
	}
	if id == "" {
		t.Fatalf("no question for the other program during the flood; status:\n%s", d.MustCLI(t, "status"))
	}
	d.MustCLI(t, "answer", id, "allow", "--for", "once")
	select {
	case out := <-done:
		if !strings.Contains(out, `"outcome":"connected"`) {
			t.Fatalf("answered allow, the other program got %s", out)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("answered allow, the other program's connection did not go through")
	}
	srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
}

// TestOneUserCannotSilenceOthers: one unprivileged user running many programs, each
// under its own bound, together holding more connections than latch ever had
// questions for, must not take the questions away from another user's program.
func TestOneUserCannotSilenceOthers(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8093)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "60s")
	// Programs nobody may run: a directory of its own, readable by all.
	dir, err := os.MkdirTemp("", "latch-e2e-progs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const programs, each = 18, 60 // 1,080 held connections, none over the program bound
	for i := range programs {
		prog := filepath.Join(dir, fmt.Sprintf("flood-%02d", i))
		copyProgram(t, prog)
		p := n.Start(n.Client, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			prog, "hold-many", n.ServerIP, fmt.Sprint(20000+i*each), fmt.Sprint(each), "40s")
		p.WaitLine(t, 10*time.Second, func(l string) bool { return l == "started" })
	}
	waitSettled(t, d, programs*each)

	other := filepath.Join(t.TempDir(), "other-program")
	copyProgram(t, other)
	askedAndAnswered(t, n, d, srv, other, 8093)

	users := 0
	for _, p := range JSONLines(t, d.MustCLI(t, "prompts", "--json")) {
		if int(num(p["uid"])) == 65534 {
			users++
		}
	}
	if users != 256 {
		t.Errorf("the flooding user has %d questions open, want its bound, 256", users)
	}
	caps, _ := statusJSON(t, d)["question_caps"].(map[string]any)
	if num(caps["user"]) < 1 || num(caps["per_user"]) != 256 {
		t.Errorf("status question_caps %v: want per_user 256 and the user bound counted", caps)
	}
	capped := 0
	for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "2000")) {
		if int(num(c["uid"])) == 65534 && c["reason"] == "question-cap" {
			capped++
		}
	}
	if capped < programs*each-256-10 {
		t.Errorf("history has %d of the user's connections with reason question-cap, want about %d", capped, programs*each-256)
	}
}

// TestOneProgramCannotSilenceOthers: one program holding more connections to distinct
// destinations than latch ever had questions for (the old machine-wide cap was 1,024)
// must not take the questions away from another program: that one's connection is
// still asked, and a person's answer lets it through.
func TestOneProgramCannotSilenceOthers(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8092)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "60s")
	const flood = 1100
	f := n.Start(n.Client, helperBin, "hold-many", n.ServerIP, "20000", fmt.Sprint(flood), "40s")
	f.WaitLine(t, 10*time.Second, func(l string) bool { return l == "started" })
	waitSettled(t, d, flood)
	// Another program (another executable) connects: it must become a question.
	other := filepath.Join(t.TempDir(), "other-program")
	copyProgram(t, other)
	askedAndAnswered(t, n, d, srv, other, 8092)

	// The flooding program kept its own share of questions, no more.
	mine := 0
	for _, p := range JSONLines(t, d.MustCLI(t, "prompts", "--json")) {
		if p["exe"] == helperBin {
			mine++
		}
	}
	if mine != 64 {
		t.Errorf("the flooding program has %d questions open, want its bound, 64", mine)
	}
	// Status says the cap applied, in JSON and in text.
	st := statusJSON(t, d)
	caps, _ := st["question_caps"].(map[string]any)
	if got := int(num(caps["app"])); got < flood-64-10 || num(caps["per_app"]) != 64 || num(caps["max"]) != 1024 {
		t.Errorf("status question_caps %v: want per_app 64, max 1024 and about %d refused by the program bound", caps, flood-64)
	}
	if text := d.MustCLI(t, "status"); !strings.Contains(text, "question caps:") || !strings.Contains(text, fmt.Sprintf("program %d", int(num(caps["app"])))) {
		t.Errorf("status text does not show the program cap:\n%s", text)
	}
	// The history says why the flood's connections were refused unasked.
	capped := 0
	for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "2000")) {
		if c["exe"] == helperBin && c["reason"] == "question-cap" && c["verdict"] == "deny" {
			capped++
		}
	}
	if capped < flood-64-10 {
		t.Errorf("history has %d of the flood's connections with reason question-cap, want about %d", capped, flood-64)
	}
}
