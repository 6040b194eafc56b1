//go:build linux

package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// modeOf returns the daemon's mode state from `latch mode --json`.
func modeOf(t *testing.T, d *Daemon) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(d.MustCLI(t, "mode", "--json")), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestBlockAllStopsAFloodAtOnce: a flood of connections an allow rule lets through;
// `latch mode block-all` returns; not one connection whose dial began after that gets
// through (the rule is not consulted); `latch mode ask` lets them through again.
func TestBlockAllStopsAFloodAtOnce(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8190)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "5s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8190", "--action", "allow")
	flood := n.Start(n.Client, helperBin, "flood-log-for", n.ServerIP+":8190", "8", "4s")
	// Let the flood run with the rule in force, then pull the switch mid-flood.
	flood.WaitLine(t, 10*time.Second, func(l string) bool { return strings.Contains(l, "connected_start_ns") })
	time.Sleep(time.Second)
	d.MustCLI(t, "mode", "block-all")
	returned := time.Now()
	summary := flood.WaitLine(t, 20*time.Second, func(l string) bool { return strings.Contains(l, `"attempts"`) })
	t.Logf("flood across the switch: %s", summary)
	var before, after int
	for _, l := range strings.Split(flood.Output(), "\n") {
		var c struct {
			Start int64 `json:"connected_start_ns"`
		}
		if !strings.Contains(l, "connected_start_ns") || json.Unmarshal([]byte(l), &c) != nil {
			continue
		}
		if c.Start > returned.UnixNano() {
			after++
		} else {
			before++
		}
	}
	var res struct{ Connected, Refused int64 }
	json.Unmarshal([]byte(summary), &res)
	if before == 0 || res.Refused == 0 {
		t.Fatalf("the flood did not cross the switch (%d through before, %d refused): %s", before, res.Refused, summary)
	}
	if after != 0 {
		t.Errorf("%d connections begun after 'latch mode block-all' returned got through (%d before)", after, before)
	}
	t.Logf("through before the switch returned: %d; after: %d; refused: %d", before, after, res.Refused)
	if st := d.MustCLI(t, "status"); !strings.Contains(st, "mode:") || !strings.Contains(st, "block-all") {
		t.Errorf("status does not show block-all:\n%s", st)
	}
	// History: the refused connections say why, and in which mode.
	var blocked map[string]any
	for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "100")) {
		if int(num(c["remote_port"])) == 8190 && c["mode"] == "block-all" {
			blocked = c
		}
	}
	if blocked == nil || blocked["verdict"] != "deny" || blocked["reason"] != "mode" {
		t.Errorf("no history row denied by mode block-all: %v", blocked)
	}
	// Reversible.
	d.MustCLI(t, "mode", "ask")
	if r := n.Connect(t, 8190, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("after block-all was switched off, the allowed connect: %+v", r)
	}
	_ = srv
}

// TestLearnModeSuggestsAndLetsThrough: with --mode learn, a connection no rule decides
// gets through, unasked, and becomes a suggestion; accepting it makes a rule that
// decides the next one in ask mode.
func TestLearnModeSuggestsAndLetsThrough(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8191)
	d := n.StartDaemon("--mode", "learn", "--default", "deny", "--prompt-timeout", "20s")
	r := n.Connect(t, 8191, 10*time.Second)
	if r.Outcome != "connected" {
		t.Fatalf("learn mode: %+v", r)
	}
	c := findConn(t, d, 8191, r.PID)
	if c["verdict"] != "allow" || c["reason"] != "mode" || c["mode"] != "learn" {
		t.Errorf("history row %v: want allow, reason mode, mode learn", c)
	}
	if out := d.MustCLI(t, "prompts", "--json"); strings.TrimSpace(out) != "" {
		t.Errorf("learn mode asked: %s", out)
	}
	var sug map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for sug == nil && time.Now().Before(deadline) {
		for _, s := range JSONLines(t, d.MustCLI(t, "suggestions", "--json")) {
			if rule, _ := s["rule"].(map[string]any); rule["app"] == helperBin && rule["port"] == "8191" {
				sug = s
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if sug == nil {
		t.Fatalf("no suggestion for the helper:\n%s", d.MustCLI(t, "suggestions"))
	}
	if text := d.MustCLI(t, "suggestions"); !strings.Contains(text, helperBin) {
		t.Errorf("suggestions text does not name the program:\n%s", text)
	}
	d.MustCLI(t, "suggestions", "accept", "--all")
	d.MustCLI(t, "mode", "ask")
	r = n.Connect(t, 8191, 10*time.Second)
	if r.Outcome != "connected" {
		t.Fatalf("after accepting, in ask mode: %+v", r)
	}
	if c := findConn(t, d, 8191, r.PID); c["reason"] != "rule" || c["mode"] != "ask" {
		t.Errorf("after accepting: history %v; want reason rule, mode ask", c)
	}
	if out := strings.TrimSpace(d.MustCLI(t, "suggestions", "--json")); out != "" {
		t.Errorf("accepted suggestions still listed: %s", out)
	}
}

// TestPauseRevertsAcrossRestart: `latch pause` allows without asking for its time;
// the mode before returns by itself, also when the pause ends while the daemon is
// stopped.
func TestPauseRevertsAcrossRestart(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8192)
	dir := t.TempDir()
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "latch.sock")
	d := n.startDaemonAt(t, state, sock, "--default", "deny")
	d.MustCLI(t, "mode", "silent-deny")
	if r := n.Connect(t, 8192, 10*time.Second); r.Outcome != "refused" {
		t.Fatalf("silent-deny: %+v", r)
	}
	// A short pause ends by itself while the daemon runs.
	d.MustCLI(t, "pause", "1s")
	if r := n.Connect(t, 8192, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("during a pause: %+v", r)
	}
	deadline := time.Now().Add(10 * time.Second)
	for modeOf(t, d)["mode"] != "silent-deny" {
		if time.Now().After(deadline) {
			t.Fatalf("the pause did not end: %v", modeOf(t, d))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A pause that ends while the daemon is stopped.
	d.MustCLI(t, "pause", "3s")
	if m := modeOf(t, d); m["mode"] != "silent-allow" || m["then"] != "silent-deny" {
		t.Fatalf("pause: %v", m)
	}
	if err := d.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3500 * time.Millisecond)
	d = n.startDaemonAt(t, state, sock, "--default", "deny", "--mode", "ask")
	if m := modeOf(t, d); m["mode"] != "silent-deny" {
		t.Errorf("after a restart past the pause's end: mode %v, want silent-deny", m)
	}
	if r := n.Connect(t, 8192, 10*time.Second); r.Outcome != "refused" {
		t.Errorf("after the pause, across a restart: %+v", r)
	}
	// And one still running across a restart keeps its end.
	d.MustCLI(t, "pause", "1h")
	if err := d.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	d = n.startDaemonAt(t, state, sock, "--default", "deny")
	if m := modeOf(t, d); m["mode"] != "silent-allow" || m["until"] == nil {
		t.Errorf("a running pause across a restart: %v", m)
	}
}
