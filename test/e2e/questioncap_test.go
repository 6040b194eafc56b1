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

	// Wait (at most 30 s) until every one of the flood's connections is either asked
	// about or decided by a cap.
	settled := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st := statusJSON(t, d)
		dec, _ := st["decisions"].(map[string]any)
		// (Before question caps were fair, a capped connection's reason was "limit".)
		if int(max(num(st["pending_prompts"]), 0)+max(num(dec["question-cap"]), 0)+max(num(dec["limit"]), 0)) >= flood {
			settled = true
			break
		}
	}
	if !settled {
		t.Logf("the flood's connections did not all reach latch within 30s; going on")
	}

	// Another program (another executable) connects: it must become a question.
	other := filepath.Join(t.TempDir(), "other-program")
	data, err := os.ReadFile(helperBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, data, 0o755); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() {
		out, _ := n.Exec(n.Client, other, "connect", fmt.Sprintf("%s:8092", n.ServerIP), "30s")
		done <- out
	}()
	var id string
	for deadline := time.Now().Add(15 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, p := range JSONLines(t, d.MustCLI(t, "prompts", "--json")) {
			if p["exe"] == other && int(num(p["remote_port"])) == 8092 {
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
		t.Fatalf("no question for the other program while one program floods; status:\n%s", d.MustCLI(t, "status"))
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
