//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestWatchTerminal runs `latch watch` in a real terminal (tmux), waits for it to show
// a question, and answers it with keypresses: a (allow), f (forever), 2 (app+host).
func TestWatchTerminal(t *testing.T) {
	f := newFixture(t)
	tm, screen, waitScreen := tmuxWatch(t, f, 200, 50)
	waitScreen("waiting for questions")

	verdict := f.request("/usr/bin/curl", 443)
	waitScreen("/usr/bin/curl (pid 4242, user root)")
	waitScreen("198.18.0.2:443")
	for _, key := range []string{"a", "f", "2"} {
		tm("send-keys", "-t", "watch", key)
		time.Sleep(100 * time.Millisecond)
	}
	if v := waitVerdict(t, verdict); v.Action != engine.Allow || v.Reason != engine.ReasonPrompt {
		t.Fatalf("keys a f 2 gave %+v, want allow by prompt", v)
	}
	waitScreen("added rule")
	rules := f.eng.Rules()
	if len(rules) != 1 || rules[0].App != "/usr/bin/curl" || rules[0].Remote.String() != "198.18.0.2/32" ||
		!rules[0].Port.IsZero() || !rules[0].Expires.IsZero() {
		t.Errorf("keys a f 2 (allow forever app+host) made %v", rules)
	}

	// A second question, answered deny once: d, o.
	verdict = f.request("/usr/bin/wget", 80)
	waitScreen("/usr/bin/wget")
	tm("send-keys", "-t", "watch", "d")
	time.Sleep(100 * time.Millisecond)
	tm("send-keys", "-t", "watch", "o")
	if v := waitVerdict(t, verdict); v.Action != engine.Deny {
		t.Fatalf("keys d o gave %+v", v)
	}
	if n := len(f.eng.Rules()); n != 1 {
		t.Errorf("deny once made a rule: %d rules", n)
	}
	// q quits and restores the terminal.
	tm("send-keys", "-t", "watch", "q")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := tm("has-session", "-t", "watch"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch did not quit on q; screen:\n%s", screen())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tmuxWatch runs `latch watch` against f in a real terminal (a tmux pane of width x
// height cells) and returns functions to run tmux commands, read the screen, and wait
// until the screen shows a text.
func tmuxWatch(t *testing.T, f *fixture, width, height int) (tm func(args ...string) (string, error),
	screen func() string, waitScreen func(want string)) {
	t.Helper()
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("needs tmux")
	}
	server := fmt.Sprintf("latch-test-%d-%s", os.Getpid(), t.Name())
	tm = func(args ...string) (string, error) {
		out, err := exec.Command(tmux, append([]string{"-L", server}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { tm("kill-server") })
	if out, err := tm("new-session", "-d", "-s", "watch", "-x", fmt.Sprint(width), "-y", fmt.Sprint(height),
		"env", "LATCH_API="+f.sock, latchBin, "watch"); err != nil {
		t.Fatalf("tmux: %v: %s", err, out)
	}
	screen = func() string {
		out, _ := tm("capture-pane", "-p", "-t", "watch")
		return out
	}
	waitScreen = func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(screen(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("watch never showed %q; screen:\n%s", want, screen())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return tm, screen, waitScreen
}

// TestWatchLines answers through standard input when it is not a terminal.
func TestWatchLines(t *testing.T) {
	f := newFixture(t)
	cmd := exec.Command(latchBin, "watch")
	cmd.Env = append(os.Environ(), "LATCH_API="+f.sock)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitLine := func(want string) string {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("watch ended before printing %q", want)
				}
				if strings.Contains(l, want) {
					return l
				}
			case <-timeout:
				t.Fatalf("watch never printed %q", want)
			}
		}
	}
	waitLine("waiting for questions")
	verdict := f.request("/usr/bin/curl", 8443)
	waitLine("/usr/bin/curl")
	waitLine("answer ")
	io.WriteString(stdin, "reject 1h app+port\n")
	if v := waitVerdict(t, verdict); v.Action != engine.Reject {
		t.Fatalf("line 'reject 1h app+port' gave %+v", v)
	}
	waitLine("added rule")
	rules := f.eng.Rules()
	if len(rules) != 1 || rules[0].Port.Lo != 8443 || rules[0].Remote.IsValid() || rules[0].Expires.IsZero() {
		t.Errorf("'reject 1h app+port' made %v", rules)
	}
	// A malformed line is reported and answers nothing.
	verdict = f.request("/usr/bin/wget", 80)
	waitLine("/usr/bin/wget")
	io.WriteString(stdin, "allow soon\n")
	waitLine(`"for"`)
	select {
	case v := <-verdict:
		t.Fatalf("a malformed line answered: %+v", v)
	default:
	}
	io.WriteString(stdin, "quit\n")
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch after quit: %v", err)
	}
}
