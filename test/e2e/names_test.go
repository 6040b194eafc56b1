//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestPerProgramNames is issue 12's first test: two programs resolve different names
// that share one address, and each connection carries the name its own program
// resolved (host_source "own"), whichever lookup came last; a host rule for one name
// does not let the other program through. A third program that resolved nothing sees
// the machine-wide name only as "shared", which host rules do not match.
func TestPerProgramNames(t *testing.T) {
	bins := identityBins(t) // two verified programs of the same code at two paths
	n := NewNet(t)
	n.Serve(t, 8096)
	dns := n.Start(n.Server, helperBin, "dns-serve", n.ServerIP+":53", "bank.test,cdn-other.test", n.ServerIP)
	dns.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s")
	d.MustCLI(t, "rules", "add", "--proto", "udp", "--port", "53", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--host", "bank.test", "--port", "8096", "--action", "allow")

	resolve := func(bin, name string) {
		t.Helper()
		out, err := n.Exec(n.Client, bin, "dns-query", n.ServerIP+":53", name, "5s")
		if err != nil || !strings.Contains(out, `"outcome":"answer"`) {
			t.Fatalf("%s dns-query %s: %v\n%s", bin, name, err, out)
		}
	}
	connect := func(bin string) Result {
		t.Helper()
		out, err := n.Exec(n.Client, bin, "connect", n.ServerIP+":8096", "5s")
		if err != nil {
			t.Fatalf("%s connect: %v\n%s", bin, err, out)
		}
		var r Result
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
			t.Fatalf("connect output %q: %v", out, err)
		}
		return r
	}
	conn := func(pid int) map[string]any {
		t.Helper()
		return findConn(t, d, 8096, pid)
	}

	// Allowed resolves bank.test, then Forger resolves cdn-other.test to the same
	// address: machine-wide, the latest name is cdn-other.test.
	resolve(bins.Allowed, "bank.test")
	resolve(bins.Forger, "cdn-other.test")
	waitLearned(t, d, 2) // the answers' copies reached the daemon
	if r := connect(bins.Allowed); r.Outcome != "connected" {
		t.Errorf("the program that resolved bank.test was not let through by the rule for bank.test: %+v", r)
	} else if c := conn(r.PID); c["host"] != "bank.test" || c["host_source"] != "own" || c["reason"] != "rule" {
		t.Errorf("history %v: want host bank.test, host_source own, reason rule", c)
	}

	// Now Allowed resolves again, so bank.test is the latest name machine-wide; Forger
	// still connects under its own name, and the rule for bank.test does not apply.
	resolve(bins.Allowed, "bank.test")
	waitLearned(t, d, 3)
	if r := connect(bins.Forger); r.Outcome == "connected" {
		t.Errorf("the program that resolved cdn-other.test was let through by the rule for bank.test: %+v", r)
	} else if c := conn(r.PID); c["host"] != "cdn-other.test" || c["host_source"] != "own" || c["verdict"] == "allow" {
		t.Errorf("history %v: want host cdn-other.test, host_source own, not allowed", c)
	}

	// A program that resolved nothing: the machine-wide name, labelled shared, and no
	// host rule matches it.
	if r := n.Connect(t, 8096, 5*time.Second); r.Outcome == "connected" {
		t.Errorf("a program that resolved no name was let through by the rule for bank.test: %+v", r)
	} else if c := conn(r.PID); c["host"] != "bank.test" || c["host_source"] != "shared" {
		t.Errorf("history %v: want host bank.test, host_source shared", c)
	}
	text := d.MustCLI(t, "conns")
	if !strings.Contains(text, "shared") {
		t.Errorf("conns does not say which name was shared:\n%s", text)
	}
}

// waitLearned waits (at most 5 s) until the daemon's hostname learner has learned
// at least n addresses from answers: their copies are read on a socket of their own,
// a little after the program got its answer.
func waitLearned(t *testing.T, d *Daemon, n uint64) {
	t.Helper()
	var st struct {
		DNS *struct {
			Learned uint64 `json:"learned"`
		} `json:"dns"`
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		if st.DNS != nil && st.DNS.Learned >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon learned %+v addresses from DNS answers in 5 s, want %d", st.DNS, n)
		}
	}
}

// TestDNSOverTCPAnswersLabel: a program that resolves over TCP (as after a truncated
// UDP answer) gets its name on the connection, as its own, and the host rule applies.
func TestDNSOverTCPAnswersLabel(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8097)
	dns := n.Start(n.Server, helperBin, "dns-serve", n.ServerIP+":53", "tcp-only.test", n.ServerIP)
	dns.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s")
	d.MustCLI(t, "rules", "add", "--port", "53", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--host", "tcp-only.test", "--port", "8097", "--action", "allow")
	out, err := n.Exec(n.Client, helperBin, "resolve-connect-tcp", n.ServerIP+":53", "tcp-only.test", "8097", "10s")
	if err != nil || !strings.Contains(out, `"outcome":"connected"`) {
		t.Fatalf("resolve over TCP and connect, with a host rule for the name: %v\n%s\n%s\n%s", err, out, d.MustCLI(t, "status", "--json"), d.MustCLI(t, "conns"))
	}
	if c := findConn(t, d, 8097, 0); c["host"] != "tcp-only.test" || c["host_source"] != "own" || c["reason"] != "rule" {
		t.Errorf("history %v: want host tcp-only.test (own), allowed by the host rule", c)
	}
}

// TestEncryptedDNSFlagged: a connection to an encrypted DNS service of the daemon's
// list (a test host at a 198.18 address, port 443) is flagged in the question and in
// history; `rules preset block-encrypted-dns` with the same list then denies it.
func TestEncryptedDNSFlagged(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 443)
	list := t.TempDir() + "/encdns.txt"
	if err := os.WriteFile(list, []byte("# test\n"+n.ServerIP+" Test DoH\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s", "--encrypted-dns-list", list)
	done := make(chan Result, 1)
	go func() { done <- n.Connect(t, 443, 20*time.Second) }()
	p := waitPrompt(t, d, 443)
	note, _ := p["note"].(string)
	if !strings.Contains(note, "encrypted DNS: names after this are not visible") || !strings.Contains(note, "Test DoH") {
		t.Errorf("question %v: want a note saying it is encrypted DNS (Test DoH)", p)
	}
	if text := d.MustCLI(t, "prompts"); !strings.Contains(text, "encrypted DNS") {
		t.Errorf("prompts does not show the flag:\n%s", text)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "allow", "--for", "once")
	if r := <-done; r.Outcome != "connected" {
		t.Fatalf("allowed once: %+v", r)
	}
	if c := findConn(t, d, 443, 0); !strings.Contains(fmt.Sprint(c["note"]), "encrypted DNS") {
		t.Errorf("history %v: want the encrypted DNS note", c)
	}
	// The preset blocks it, at once (a rule, no question).
	d.MustCLI(t, "rules", "preset", "block-encrypted-dns", "--list", list)
	if r := n.Connect(t, 443, 10*time.Second); r.Outcome != "refused" {
		t.Errorf("after the preset: %+v, want refused", r)
	}
}
