//go:build linux

package main

import (
	"bufio"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/events"
)

// TestEventsVerb follows a real API server's event stream with `latch events
// --follow`: JSON keeps the exact bytes, text escapes what came from outside.
func TestEventsVerb(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-ev-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "latch.sock")
	eng, _ := engine.New(engine.Config{Default: engine.Deny}, nil)
	defer eng.Close()
	hub := events.NewHub(events.Config{HostID: "h"})
	defer hub.Close(time.Second)
	srv := api.NewServer(api.Config{Engine: eng, EventLog: hub.Subscribe, Logf: t.Logf})
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()

	if r := runLatch(t, []string{"LATCH_API=" + sock}, nil, "events"); r.code != 2 || !strings.Contains(r.stderr, "want --follow") {
		t.Errorf("events without --follow: exit %d, %s", r.code, r.stderr)
	}
	for _, asJSON := range []bool{false, true} {
		args := []string{"events", "--follow"}
		if asJSON {
			args = append(args, "--json")
		}
		cmd := exec.Command(latchBin, args...)
		cmd.Env = append(os.Environ(), "LATCH_API="+sock)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 10)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Emit until the follower is subscribed and prints.
		req := engine.Request{ID: 7, Direction: engine.Outbound, Protocol: engine.TCP, PID: 42, Exe: "/tmp/x\x1b[31m\u202egpj.exe",
			Remote: netip.MustParseAddrPort("198.18.0.9:443"), Host: "evil\x07.example.com", UID: 0}
		var line string
		deadline := time.After(10 * time.Second)
	wait:
		for {
			hub.Decided(&req, engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 3}, time.Millisecond)
			select {
			case line = <-lines:
				break wait
			case <-time.After(100 * time.Millisecond):
			case <-deadline:
				t.Fatal("latch events printed nothing")
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		if asJSON {
			if !strings.Contains(line, `"executable":"/tmp/x\u001b[31m`+"\u202e"+`gpj.exe"`) || !strings.Contains(line, `"schema":"latch.event/1"`) {
				t.Errorf("--json line %q: want the document with exact bytes", line)
			}
		} else {
			want := `connection.decided out tcp /tmp/x\x1b[31m\u{202E}gpj.exe pid 42 -> evil\x07.example.com (198.18.0.9):443: deny (rule, rule 3)`
			if !strings.Contains(line, want) || strings.ContainsAny(line, "\x1b\x07\u202e") {
				t.Errorf("text line %q\nwant it to contain %q, escaped", line, want)
			}
		}
	}
}
