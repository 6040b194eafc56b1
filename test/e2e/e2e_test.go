package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// num reads a JSON number or numeric string field.
func num(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case string:
		f, _ := strconv.ParseFloat(x, 64)
		return f
	}
	return -1
}

// waitPrompt polls `latch prompts --json` until one from the test client to port
// shows up.
func waitPrompt(t *testing.T, d *Daemon, port int) map[string]any {
	t.Helper()
	return waitPromptFor(t, d, port, true)
}

// waitPromptFor is waitPrompt; withExe false accepts a question whose program is
// unknown (attribution covers TCP and UDP sockets only).
func waitPromptFor(t *testing.T, d *Daemon, port int, withExe bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range JSONLines(t, d.MustCLI(t, "prompts", "--json")) {
			if int(num(p["remote_port"])) == port && (!withExe || p["exe"] == helperBin) {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no prompt for port %d; prompts:\n%s", port, d.MustCLI(t, "prompts"))
	return nil
}

// findConn returns the newest `latch conns --json` entry for the test client to port.
func findConn(t *testing.T, d *Daemon, port int, pid int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var found map[string]any
		for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json")) {
			if int(num(c["remote_port"])) == port && (pid == 0 || int(num(c["pid"])) == pid) {
				found = c
			}
		}
		if found != nil {
			return found
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no connection to port %d (pid %d) in history:\n%s", port, pid, d.MustCLI(t, "conns"))
	return nil
}

func TestAllowRuleConnects(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8080)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "20s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--remote", n.ServerIP, "--port", "8080", "--action", "allow")
	r := n.Connect(t, 8080, 10*time.Second)
	if r.Outcome != "connected" {
		t.Fatalf("allowed connect: %+v", r)
	}
	srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
	c := findConn(t, d, 8080, r.PID)
	if c["verdict"] != "allow" || c["reason"] != "rule" {
		t.Errorf("history entry: %v; want verdict allow, reason rule", c)
	}
	// Attribution: the connection is the client's, by pid and executable.
	if int(num(c["pid"])) != r.PID || c["exe"] != helperBin {
		t.Errorf("history attributes the connection to pid %v exe %v; want pid %d exe %s", c["pid"], c["exe"], r.PID, helperBin)
	}
	if c["direction"] != "out" || c["proto"] != "tcp" || c["remote_ip"] != n.ServerIP {
		t.Errorf("history entry %v: want direction out, proto tcp, remote_ip %s", c, n.ServerIP)
	}
}

func TestDenyAndRejectRefuseAtOnce(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8081)
	n.Serve(t, 8082)
	d := n.StartDaemon("--default", "allow", "--prompt-timeout", "20s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8081", "--action", "deny")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8082", "--action", "reject")
	for _, port := range []int{8081, 8082} {
		// A 10s connect timeout: a silent drop would show as "timeout"; fail-fast shows
		// as "refused" long before the prompt timeout could have passed.
		r := n.Connect(t, port, 10*time.Second)
		if r.Outcome != "refused" {
			t.Errorf("port %d: denied connect: %+v; want refused at once", port, r)
		}
		c := findConn(t, d, port, r.PID)
		if c["reason"] != "rule" {
			t.Errorf("port %d: history %v: want reason rule", port, c)
		}
	}
}

func TestUnansweredPromptGetsDefaultAfterTimeout(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8083)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "3s")
	type res struct {
		r   Result
		err error
	}
	done := make(chan Result, 1)
	go func() { done <- n.Connect(t, 8083, 20*time.Second) }()
	p := waitPrompt(t, d, 8083)
	for _, k := range []string{"id", "pid", "exe", "proto", "remote_ip", "remote_port", "expires"} {
		if _, ok := p[k]; !ok {
			t.Errorf("prompt %v lacks %q", p, k)
		}
	}
	if p["proto"] != "tcp" || p["remote_ip"] != n.ServerIP {
		t.Errorf("prompt %v: want proto tcp, remote_ip %s", p, n.ServerIP)
	}
	var r Result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("client still waiting 30s after a 3s prompt timeout: the hold is not bounded")
	}
	if r.Outcome != "refused" {
		t.Fatalf("unanswered connect with --default deny: %+v; want refused after the timeout", r)
	}
	if r.Millis < 2500 {
		t.Errorf("refused after %.0fms; the question should have stayed open ~3s", r.Millis)
	}
	if Accepted(srv) != 0 {
		t.Errorf("server accepted a connection nobody allowed")
	}
	if int(num(p["pid"])) != r.PID {
		t.Errorf("prompt pid %v, client pid %d", p["pid"], r.PID)
	}
	c := findConn(t, d, 8083, r.PID)
	if c["verdict"] != "deny" || c["reason"] != "timeout" {
		t.Errorf("history %v: want verdict deny, reason timeout", c)
	}
	if out := d.MustCLI(t, "prompts", "--json"); strings.Contains(out, helperBin) {
		t.Errorf("prompt still listed after its timeout:\n%s", out)
	}
}

func TestAnswerLetsHeldConnectionThrough(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8084)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "60s")
	done := make(chan Result, 1)
	go func() { done <- n.Connect(t, 8084, 30*time.Second) }()
	p := waitPrompt(t, d, 8084)
	id := fmt.Sprint(int64(num(p["id"])))

	// While the question is open, a connection that a rule decides is not delayed.
	n.Serve(t, 8085)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8085", "--action", "allow")
	if r := n.Connect(t, 8085, 10*time.Second); r.Outcome != "connected" {
		t.Fatalf("rule-decided connect while a prompt is open: %+v", r)
	}
	select {
	case r := <-done:
		t.Fatalf("held connection finished before it was answered: %+v", r)
	default:
	}

	d.MustCLI(t, "answer", id, "allow", "--for", "forever", "--scope", "app+host+port")
	select {
	case r := <-done:
		if r.Outcome != "connected" {
			t.Fatalf("answered allow, client got %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("answered allow, held connection did not go through")
	}
	srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
	rules := JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	found := false
	for _, r := range rules {
		if r["app"] == helperBin && r["action"] == "allow" && fmt.Sprint(r["port"]) == "8084" {
			found = true
		}
	}
	if !found {
		t.Errorf("answer --for forever --scope app+host+port made no matching rule: %v", rules)
	}
	// The remembered answer decides the next connection without a question.
	if r := n.Connect(t, 8084, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("second connect after a remembered allow: %+v", r)
	}
}

func TestRuleRemovalRedecidesFlows(t *testing.T) {
	n := NewNet(t)
	n.ServeUDP(t, 5300)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "1s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "udp", "--port", "5300", "--action", "allow")
	s := n.Start(n.Client, helperBin, "udp-stream", n.ServerIP+":5300")
	s.WaitLine(t, 10*time.Second, func(l string) bool { return strings.HasPrefix(l, "reply ") })
	id := ruleID(t, d, "5300")
	d.MustCLI(t, "rules", "rm", id)
	// Conntrack forgot the flow: its next datagrams are held again and, with no rule,
	// denied. Without re-decision the allowed flow would keep flowing.
	s.WaitLine(t, 10*time.Second, func(l string) bool { return strings.HasPrefix(l, "noreply ") })
	time.Sleep(1500 * time.Millisecond)
	before := strings.Count(s.Output(), "reply ") - strings.Count(s.Output(), "noreply ")
	time.Sleep(1500 * time.Millisecond)
	after := strings.Count(s.Output(), "reply ") - strings.Count(s.Output(), "noreply ")
	if after != before {
		t.Errorf("flow still answered after its allow rule was removed (%d -> %d replies)", before, after)
	}

	// TCP: the next connection of the same app and destination is decided anew.
	n.Serve(t, 8086)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8086", "--action", "allow")
	if r := n.Connect(t, 8086, 10*time.Second); r.Outcome != "connected" {
		t.Fatalf("allowed: %+v", r)
	}
	d.MustCLI(t, "rules", "rm", ruleID(t, d, "8086"))
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8086", "--action", "reject")
	if r := n.Connect(t, 8086, 10*time.Second); r.Outcome != "refused" {
		t.Errorf("after the allow rule was replaced by reject: %+v", r)
	}
}

func ruleID(t *testing.T, d *Daemon, port string) string {
	t.Helper()
	for _, r := range JSONLines(t, d.MustCLI(t, "rules", "list", "--json")) {
		if fmt.Sprint(r["port"]) == port {
			return fmt.Sprint(int64(num(r["id"])))
		}
	}
	t.Fatalf("no rule for port %s", port)
	return ""
}

func TestFloodAgainstDefaultDenyLetsNothingThrough(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8087)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "1s")
	out, err := n.Exec(n.Client, helperBin, "flood", n.ServerIP+":8087", "5000", "16", "50ms")
	if err != nil {
		t.Fatalf("flood: %v\n%s", err, out)
	}
	t.Logf("flood: %s", strings.TrimSpace(out))
	if !strings.Contains(out, `"connected":0,`) {
		t.Errorf("connections got through a default-deny firewall: %s", out)
	}
	time.Sleep(500 * time.Millisecond)
	if a := Accepted(srv); a != 0 {
		t.Errorf("server accepted %d connections under default deny", a)
	}
	status := d.MustCLI(t, "status")
	t.Logf("status after flood:\n%s", status)
	// The daemon survived and still decides.
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8087", "--action", "allow")
	if r := n.Connect(t, 8087, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("after the flood, an allowed connect: %+v", r)
	}
}

func TestStopRemovesEveryRule(t *testing.T) {
	n := NewNet(t)
	before := n.Ruleset(t)
	d := n.StartDaemon("--fail", "closed", "--inbound")
	during := n.Ruleset(t)
	if during == before {
		t.Fatalf("daemon running but the ruleset did not change:\n%s", during)
	}
	if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatalf("daemon stop: %v\n%s", err, d.Output())
	}
	if after := n.Ruleset(t); after != before {
		t.Errorf("ruleset after stop differs from before start.\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestFailClosedHoldsAfterSIGKILL(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8088)
	d := n.StartDaemon("--fail", "closed")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8088", "--action", "allow")
	if r := n.Connect(t, 8088, 10*time.Second); r.Outcome != "connected" {
		t.Fatalf("with the daemon up and an allow rule: %+v", r)
	}
	d.Signal(syscall.SIGKILL, 10*time.Second)
	if r := n.Connect(t, 8088, 2*time.Second); r.Outcome == "connected" {
		t.Fatalf("fail-closed: a new connection got through with the daemon killed: %+v", r)
	}
	accepted := Accepted(srv)
	if out, err := n.Exec(n.Client, latchBin, "cleanup"); err != nil {
		t.Fatalf("latch cleanup: %v\n%s", err, out)
	}
	if r := n.Connect(t, 8088, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("after latch cleanup: %+v", r)
	}
	if accepted != 1 {
		t.Errorf("server accepted %d connections before cleanup; want 1", accepted)
	}
}

func TestFailOpenAfterSIGKILL(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8089)
	d := n.StartDaemon("--fail", "open", "--default", "deny")
	d.Signal(syscall.SIGKILL, 10*time.Second)
	if r := n.Connect(t, 8089, 5*time.Second); r.Outcome != "connected" {
		t.Errorf("fail-open: with the daemon killed: %+v; want connected", r)
	}
	n.Exec(n.Client, latchBin, "cleanup")
}

func TestSecondDaemonRefuses(t *testing.T) {
	n := NewNet(t)
	n.StartDaemon()
	dir := t.TempDir()
	out, err := n.Exec(n.Client, latchBin, "daemon", "--state-dir", dir+"/s", "--api", dir+"/a.sock")
	if err == nil {
		t.Fatalf("second daemon in one namespace started:\n%s", out)
	}
	if !strings.Contains(strings.ToLower(out), "already") && !strings.Contains(strings.ToLower(out), "another") {
		t.Errorf("second daemon's error does not say why: %s", out)
	}
}

func TestHostnameFromDNSLabelsAndMatches(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8090)
	dns := n.Start(n.Server, helperBin, "dns-serve", n.ServerIP+":53", "svc.example.test", n.ServerIP)
	dns.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "udp", "--port", "53", "--action", "allow")

	done := make(chan string, 1)
	go func() {
		out, _ := n.Exec(n.Client, helperBin, "resolve-connect", n.ServerIP+":53", "svc.example.test", "8090", "20s")
		done <- out
	}()
	p := waitPrompt(t, d, 8090)
	if p["host"] != "svc.example.test" {
		t.Errorf("prompt %v: want host svc.example.test, the name the program looked up", p)
	}
	// A rule on the name decides the held connection.
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--host", "svc.example.test", "--action", "allow")
	select {
	case out := <-done:
		if !strings.Contains(out, `"outcome":"connected"`) {
			t.Fatalf("connection to svc.example.test after a host rule: %s", out)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("held connection not released by the host rule")
	}
	srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
	c := findConn(t, d, 8090, 0)
	if c["host"] != "svc.example.test" || c["reason"] != "rule" {
		t.Errorf("history %v: want host svc.example.test, reason rule", c)
	}
}

func TestUnsolicitedDNSAnswerTeachesNoName(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8091)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	// The server's host claims, unasked, that bank.example.test is itself; a host rule
	// for that name must not start matching connections to it.
	if out, err := n.Exec(n.Server, helperBin, "dns-spoof", n.ClientIP+":40000", "bank.example.test", n.ServerIP); err != nil {
		t.Fatalf("dns-spoof: %v\n%s", err, out)
	}
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--host", "bank.example.test", "--action", "allow")
	done := make(chan Result, 1)
	go func() { done <- n.Connect(t, 8091, 20*time.Second) }()
	p := waitPrompt(t, d, 8091)
	if p["host"] != nil && p["host"] != "" {
		t.Errorf("prompt %v carries a host name learned from an unsolicited DNS packet", p)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "deny", "--for", "once")
	if r := <-done; r.Outcome == "connected" {
		t.Errorf("connection allowed by a host rule through a forged name: %+v", r)
	}
}

func TestOtherProtocolsAreHeldToo(t *testing.T) {
	n := NewNet(t)
	srv := n.Start(n.Server, helperBin, "udplite-serve", n.ServerIP+":7000")
	srv.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	// UDP-Lite needs no privilege; a firewall that holds only TCP, UDP and ICMP would
	// let it through unasked.
	done := make(chan string, 1)
	go func() {
		out, _ := n.Exec(n.Client, helperBin, "udplite-send", n.ServerIP+":7000", "10")
		done <- out
	}()
	p := waitPromptFor(t, d, 7000, false)
	if p["proto"] != "136" {
		t.Errorf("prompt %v: want proto 136 (UDP-Lite)", p)
	}
	<-done
	if got := strings.Count(srv.Output(), "datagram "); got != 0 {
		t.Errorf("%d UDP-Lite datagrams reached the server while the question was open", got)
	}
	d.MustCLI(t, "rules", "add", "--proto", "136", "--remote", n.ServerIP, "--port", "7000", "--action", "allow")
	go func() {
		out, _ := n.Exec(n.Client, helperBin, "udplite-send", n.ServerIP+":7000", "5")
		done <- out
	}()
	srv.WaitLine(t, 10*time.Second, func(l string) bool { return strings.HasPrefix(l, "datagram ") })
	<-done
}
