package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// floodResult is e2ehelper flood's summary.
type floodResult struct {
	Attempts  int   `json:"attempts"`
	Connected int64 `json:"connected"`
	Refused   int64 `json:"refused"`
	Timeout   int64 `json:"timeout"`
	Other     int64 `json:"other"`
}

// startFlood starts a bounded flood of TCP connects from the client namespace: n
// connects from conc workers, each given up after timeout.
func (n *Net) startFlood(t *testing.T, port, count, conc int, timeout time.Duration) *Proc {
	t.Helper()
	return n.Start(n.Client, helperBin, "flood", fmt.Sprintf("%s:%d", n.ServerIP, port), fmt.Sprint(count), fmt.Sprint(conc), timeout.String())
}

// floodDone waits for a flood's summary.
func floodDone(t *testing.T, p *Proc) floodResult {
	t.Helper()
	line := p.WaitLine(t, 2*time.Minute, func(l string) bool { return strings.HasPrefix(l, "{") })
	var r floodResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("flood output %q: %v", line, err)
	}
	return r
}

// startDaemonAt is StartDaemon with a given state directory and API socket, so a
// test can stop and start the daemon over the same state.
func (n *Net) startDaemonAt(t *testing.T, state, api string, flags ...string) *Daemon {
	t.Helper()
	d := &Daemon{net: n, API: api, State: state}
	args := append([]string{"daemon", "--config", "", "--state-dir", state, "--api", api}, flags...)
	d.Proc = n.Start(n.Client, latchBin, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon output:\n%s", d.Output())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := d.CLI("status"); err == nil {
			return d
		}
		if time.Now().After(deadline) || d.cmd.ProcessState != nil {
			t.Fatalf("daemon did not come up; output:\n%s", d.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// seedAllowRule gives state dir state one rule allowing e2ehelper to port, the way a
// user would: a daemon that intercepts nothing, the CLI, a stop.
func (n *Net) seedAllowRule(t *testing.T, state string, port int) {
	t.Helper()
	api := filepath.Join(filepath.Dir(state), "seed.sock")
	d := n.startDaemonAt(t, state, api, "--backend", "none")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", fmt.Sprint(port), "--action", "allow")
	if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestBootProtectHoldsUntilDaemonTakesOver: `latch boot-protect` with no daemon lets
// no connection through; a daemon started under a flood of connects nobody allowed
// takes over with none of them getting through, and then passes what its rules allow.
func TestBootProtectHoldsUntilDaemonTakesOver(t *testing.T) {
	n := NewNet(t)
	before := n.Ruleset(t)
	allowed, unasked := n.Serve(t, 8201), n.Serve(t, 8202)
	dir := t.TempDir()
	state, api := filepath.Join(dir, "state"), filepath.Join(dir, "latch.sock")
	n.seedAllowRule(t, state, 8201)

	out, err := n.Exec(n.Client, latchBin, "boot-protect", "--config", "")
	if err != nil {
		t.Fatalf("boot-protect: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	if n.Ruleset(t) == before {
		t.Fatal("boot-protect changed no firewall rule")
	}
	// No daemon: nothing passes, even what the rules would allow.
	r := floodDone(t, n.startFlood(t, 8201, 40, 8, 300*time.Millisecond))
	if r.Connected != 0 {
		t.Fatalf("with only the boot ruleset, %d of %d connects got through", r.Connected, r.Attempts)
	}

	// Hand-over under a flood to a port no rule allows.
	fl := n.startFlood(t, 8202, 480, 16, 200*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	d := n.startDaemonAt(t, state, api, "--default", "deny", "--prompt-timeout", "1s")
	fr := floodDone(t, fl)
	t.Logf("flood during hand-over: %+v", fr)
	if fr.Connected != 0 || Accepted(unasked) != 0 {
		t.Errorf("during the hand-over %d connects got through (server saw %d); want 0", fr.Connected, Accepted(unasked))
	}
	if !strings.Contains(d.Output(), "replacing the ruleset") {
		t.Errorf("the daemon did not say it replaced the boot ruleset:\n%s", d.Output())
	}
	// The daemon decides now: the allowed port passes.
	if r := n.Connect(t, 8201, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("allowed connect after the daemon took over: %+v", r)
	}
	if a := waitAccepted(allowed, 1); a != 1 {
		t.Errorf("allowed server accepted %d, want 1", a)
	}
	// boot-protect while a daemon runs changes nothing.
	running := n.Ruleset(t)
	if out, err := n.Exec(n.Client, latchBin, "boot-protect", "--config", ""); err != nil || !strings.Contains(out, "already") {
		t.Errorf("boot-protect with a daemon running: %v %s", err, out)
	}
	if now := n.Ruleset(t); now != running {
		t.Errorf("boot-protect changed a running daemon's rules:\n%s", now)
	}
	// A clean stop (no --keep-rules-on-exit) removes everything, boot rules included.
	if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if after := n.Ruleset(t); after != before {
		t.Errorf("ruleset after stop differs from before boot-protect.\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// latch cleanup removes the boot ruleset.
	n.Exec(n.Client, latchBin, "boot-protect", "--config", "")
	if out, err := n.Exec(n.Client, latchBin, "cleanup"); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	if after := n.Ruleset(t); after != before {
		t.Errorf("ruleset after cleanup differs:\n%s", after)
	}
	// --fail open: boot protection is off.
	out, err = n.Exec(n.Client, latchBin, "boot-protect", "--config", "", "--fail", "open")
	if err != nil || !strings.Contains(out, "off") {
		t.Errorf("boot-protect --fail open: %v %s", err, out)
	}
	if after := n.Ruleset(t); after != before {
		t.Errorf("boot-protect --fail open installed rules:\n%s", after)
	}
}

// restartUnderFlood restarts the daemon rounds times while a bounded flood of
// connects nobody allowed runs during each restart; it returns how many got through.
func restartUnderFlood(t *testing.T, n *Net, state, api string, rounds, port int, flags ...string) (through int64, d *Daemon) {
	t.Helper()
	d = n.startDaemonAt(t, state, api, flags...)
	for i := 0; i < rounds; i++ {
		fl := n.startFlood(t, port, 64, 16, 150*time.Millisecond)
		time.Sleep(50 * time.Millisecond)
		if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
			t.Fatalf("restart %d: stop: %v\n%s", i, err, d.Output())
		}
		d = n.startDaemonAt(t, state, api, flags...)
		through += floodDone(t, fl).Connected
	}
	return through, d
}

// TestRestartUnderFloodLetsNothingThrough: 20 restarts (SIGTERM, start) of a
// fail-closed daemon with --keep-rules-on-exit, each under a flood of connects no rule
// allows: none gets through, and rules and history survive. The same restarts
// without the flag let connects through (the gap this closes).
func TestRestartUnderFloodLetsNothingThrough(t *testing.T) {
	n := NewNet(t)
	before := n.Ruleset(t)
	allowedSrv, unasked := n.Serve(t, 8211), n.Serve(t, 8212)
	dir := t.TempDir()
	state, api := filepath.Join(dir, "state"), filepath.Join(dir, "latch.sock")
	n.seedAllowRule(t, state, 8211)
	flags := []string{"--keep-rules-on-exit", "--fail", "closed", "--default", "deny", "--prompt-timeout", "1s"}

	d := n.startDaemonAt(t, state, api, flags...)
	if r := n.Connect(t, 8211, 10*time.Second); r.Outcome != "connected" {
		t.Fatalf("allowed connect: %+v", r)
	}
	time.Sleep(300 * time.Millisecond) // history is written in the background
	histBefore := len(JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "1000")))
	if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	// Stopped with the rules kept: even the allowed port is held (dropped).
	if r := n.Connect(t, 8211, 1*time.Second); r.Outcome == "connected" {
		t.Fatalf("with the daemon stopped and its rules kept, a connect got through: %+v", r)
	}

	through, d := restartUnderFlood(t, n, state, api, 20, 8212, flags...)
	t.Logf("20 restarts with --keep-rules-on-exit: %d unasked connects through (server saw %d)", through, Accepted(unasked))
	if through != 0 || Accepted(unasked) != 0 {
		t.Errorf("%d unasked connects got through during 20 restarts (server saw %d); want 0", through, Accepted(unasked))
	}
	rules := JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	if len(rules) != 1 || fmt.Sprint(rules[0]["port"]) != "8211" {
		t.Errorf("rules after 20 restarts: %v", rules)
	}
	if h := len(JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "1000"))); h < histBefore || histBefore == 0 {
		t.Errorf("history had %d entries before the restarts, %d after", histBefore, h)
	}
	if r := n.Connect(t, 8211, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("allowed connect after the restarts: %+v", r)
	}
	if a := waitAccepted(allowedSrv, 2); a != 2 {
		t.Errorf("allowed server accepted %d, want 2", a)
	}
	d.Signal(syscall.SIGTERM, 20*time.Second)

	// Control: without the flag, a stop removes the rules and the same restarts leak.
	n.Exec(n.Client, latchBin, "cleanup")
	leak, d := restartUnderFlood(t, n, state, api, 5, 8212, "--fail", "closed", "--default", "deny", "--prompt-timeout", "1s")
	t.Logf("control, 5 restarts without --keep-rules-on-exit: %d unasked connects through", leak)
	if leak == 0 {
		t.Errorf("control: restarts without --keep-rules-on-exit let nothing through either; the flood does not reach the gap")
	}
	d.Signal(syscall.SIGTERM, 20*time.Second)
	n.Exec(n.Client, latchBin, "cleanup")
	if after := n.Ruleset(t); after != before {
		t.Errorf("ruleset after the test differs:\n%s", after)
	}
}

// TestKeepRulesOnExitIsFailClosedOnly: a fail-open daemon removes its rules on stop
// even with --keep-rules-on-exit (kept rules would hold nothing but block nothing
// either: they bypass), and a fail-closed one keeps them until latch cleanup.
func TestKeepRulesOnExitIsFailClosedOnly(t *testing.T) {
	n := NewNet(t)
	before := n.Ruleset(t)
	d := n.StartDaemon("--config", "", "--fail", "open", "--keep-rules-on-exit")
	if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if after := n.Ruleset(t); after != before {
		t.Errorf("fail-open with --keep-rules-on-exit left rules:\n%s", after)
	}
	d = n.StartDaemon("--config", "", "--fail", "closed", "--keep-rules-on-exit")
	if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if after := n.Ruleset(t); after == before {
		t.Error("fail-closed with --keep-rules-on-exit removed its rules on stop")
	}
	if out, err := n.Exec(n.Client, latchBin, "cleanup"); err != nil {
		t.Fatalf("cleanup: %v %s", err, out)
	}
	if after := n.Ruleset(t); after != before {
		t.Errorf("after cleanup:\n%s", after)
	}
}
