//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/store"
)

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type daemonProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	sock   string
	dir    string
	waited bool
}

// startDaemon runs `latch daemon --backend none` and waits until its API answers.
func startDaemon(t *testing.T, stateDir, sock string, extra ...string) *daemonProc {
	t.Helper()
	args := append([]string{"daemon", "--backend", "none", "--state-dir", stateDir, "--api", sock}, extra...)
	d := &daemonProc{cmd: exec.Command(latchBin, args...), out: &syncBuffer{}, done: make(chan struct{}), sock: sock, dir: stateDir}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("daemon output:\n%s", d.out.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := runLatch(t, []string{"LATCH_API=" + sock}, nil, "status")
		if r.code == 0 {
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("daemon exited: %s", d.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon API did not come up: %s", r.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and returns the exit code.
func (d *daemonProc) stop(t *testing.T) int {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not stop on SIGTERM")
	}
	return d.cmd.ProcessState.ExitCode()
}

func TestDaemonLifecycle(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-daemon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "run", "latch.sock")
	env := []string{"LATCH_API=" + sock}
	d := startDaemon(t, state, sock, "--default", "reject", "--prompt-timeout", "5s", "--fail", "open")

	st := runLatch(t, env, nil, "status").ok(t).stdout
	for _, want := range []string{"none (nothing is intercepted)", "fail-open", "reject after 5s"} {
		if !strings.Contains(st, want) {
			t.Errorf("status lacks %q:\n%s", want, st)
		}
	}
	runLatch(t, env, nil, "rules", "add", "--app", "/usr/bin/ssh", "--port", "22", "--action", "allow").ok(t)

	// A second daemon on the same state dir refuses, clearly; so does one on the same socket.
	r := runLatch(t, nil, nil, "daemon", "--backend", "none", "--state-dir", state, "--api", filepath.Join(dir, "other.sock"))
	if r.code != 1 || !strings.Contains(r.stderr, "in use by another latch daemon (pid") {
		t.Errorf("second daemon on one state dir: exit %d, %q", r.code, r.stderr)
	}
	r = runLatch(t, nil, nil, "daemon", "--backend", "none", "--state-dir", filepath.Join(dir, "state2"), "--api", sock)
	if r.code != 1 || !strings.Contains(r.stderr, "another latch daemon is serving it") {
		t.Errorf("second daemon on one socket: exit %d, %q", r.code, r.stderr)
	}
	runLatch(t, env, nil, "status").ok(t) // the first one is unharmed

	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon exit %d on SIGTERM: %s", code, d.out.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after a clean stop: %v", err)
	}
	if !strings.Contains(d.out.String(), "stopped") {
		t.Errorf("daemon log lacks the clean stop:\n%s", d.out.String())
	}

	// The rules survive a restart.
	d = startDaemon(t, state, sock)
	rules := jsonLines(t, runLatch(t, env, nil, "rules", "list", "--json").ok(t).stdout)
	if len(rules) != 1 || rules[0]["app"] != "/usr/bin/ssh" {
		t.Errorf("rules after restart: %v", rules)
	}
	d.stop(t)

	// A malformed rules file: the daemon refuses to start, names the field, and leaves
	// the file alone.
	rulesPath := filepath.Join(state, store.RulesFileName)
	bad := []byte(`{"version":1,"rules":[{"id":1,"action":"allow","port":"70000"}]}`)
	os.WriteFile(rulesPath, bad, 0o600)
	r = runLatch(t, nil, nil, "daemon", "--backend", "none", "--state-dir", state, "--api", sock)
	if r.code != 1 || !strings.Contains(r.stderr, "port") || !strings.Contains(r.stderr, rulesPath) {
		t.Errorf("daemon with a malformed rules file: exit %d, %q", r.code, r.stderr)
	}
	if after, _ := os.ReadFile(rulesPath); !bytes.Equal(after, bad) {
		t.Errorf("the refused rules file was changed: %s", after)
	}
}

// TestDaemonLogFormat: --log-format json gives one JSON record per line on stderr
// (slog: time, level, msg), text gives key=value records; config file sets it too.
func TestDaemonLogFormat(t *testing.T) {
	dir := t.TempDir()
	for _, format := range []string{"json", "text"} {
		state, sock := filepath.Join(dir, format, "state"), filepath.Join(dir, format, "latch.sock")
		cfg := writeFile(t, "latch.toml", fmt.Sprintf("log-format = %q\n", format))
		d := startDaemon(t, state, sock, "--config", cfg)
		if code := d.stop(t); code != 0 {
			t.Fatalf("exit %d", code)
		}
		lines := strings.Split(strings.TrimSpace(d.out.String()), "\n")
		var sawStarted bool
		for _, l := range lines {
			if format == "json" {
				var rec map[string]any
				if err := json.Unmarshal([]byte(l), &rec); err != nil {
					t.Fatalf("json log line %q: %v", l, err)
				}
				if rec["level"] == nil || rec["time"] == nil || rec["msg"] == nil {
					t.Errorf("json record lacks level/time/msg: %q", l)
				}
				if m, _ := rec["msg"].(string); strings.HasPrefix(m, "started:") {
					sawStarted = true
				}
			} else {
				if !strings.HasPrefix(l, "time=") || !strings.Contains(l, " level=") || !strings.Contains(l, " msg=") {
					t.Errorf("text log line %q is no slog record", l)
				}
				if strings.Contains(l, `msg="started:`) {
					sawStarted = true
				}
			}
		}
		if !sawStarted {
			t.Errorf("%s: no started record in:\n%s", format, d.out.String())
		}
	}
	r := runLatch(t, nil, nil, "daemon", "--backend", "none", "--log-format", "xml")
	if r.code != 2 || !strings.Contains(r.stderr, "--log-format") {
		t.Errorf("--log-format xml: exit %d %q", r.code, r.stderr)
	}
}

// TestDaemonNotifiesSystemd: under Type=notify the daemon sends READY=1 on
// $NOTIFY_SOCKET once it serves (its API answers by then), and STOPPING=1 on SIGTERM.
func TestDaemonNotifiesSystemd(t *testing.T) {
	dir := t.TempDir()
	ns := filepath.Join(dir, "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sock := filepath.Join(dir, "latch.sock")
	cmd := exec.Command(latchBin, "daemon", "--backend", "none", "--config", "", "--state-dir", filepath.Join(dir, "state"), "--api", sock)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	read := func() string {
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		b := make([]byte, 256)
		n, err := c.Read(b)
		if err != nil {
			t.Fatalf("no notification: %v\n%s", err, out.String())
		}
		return string(b[:n])
	}
	if got := read(); got != "READY=1" {
		t.Fatalf("first notification %q", got)
	}
	// Ready means serving: the API answers at once, no retry.
	runLatch(t, []string{"LATCH_API=" + sock}, nil, "status").ok(t)
	cmd.Process.Signal(syscall.SIGTERM)
	if got := read(); got != "STOPPING=1" {
		t.Fatalf("notification on SIGTERM %q", got)
	}
	cmd.Wait()
}
