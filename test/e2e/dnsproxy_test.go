//go:build linux

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDNSProxy is issue 12's local resolver mode: resolv.conf points at latch's
// resolver while the daemon runs; queries are attributed to the asking program; a
// name a deny rule covers gets NXDOMAIN (recorded in history as a DNS decision) and
// the program never connects; the Firefox canary gets NXDOMAIN though upstream knows
// it; killed (fail-closed), DNS and new connections stop, and a restart brings both
// back; a clean stop restores resolv.conf byte for byte.
func TestDNSProxy(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8098)
	dns := n.Start(n.Server, helperBin, "dns-serve", n.ServerIP+":53", "ok.test,blocked.test,use-application-dns.net", n.ServerIP)
	dns.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	orig := "# the machine's own\nnameserver " + n.ServerIP + "\nsearch example.test\noptions ndots:1\n"
	if err := os.WriteFile(resolv, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--default", "deny", "--prompt-timeout", "30s", "--fail", "closed",
		"--dns-proxy", "127.0.0.1:53", "--resolv-conf", resolv}
	d := n.StartDaemon(flags...)
	d.MustCLI(t, "rules", "add", "--host", "ok.test", "--port", "8098", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--host", "blocked.test", "--action", "deny")

	b, _ := os.ReadFile(resolv)
	if got := string(b); !strings.Contains(got, "\nnameserver 127.0.0.1\n") || strings.Contains(got, n.ServerIP) || !strings.Contains(got, "search example.test") {
		t.Fatalf("resolv.conf while the resolver runs:\n%s", got)
	}

	run := func(name string) Result {
		t.Helper()
		out, err := n.Exec(n.Client, helperBin, "resolve-connect", "127.0.0.1:53", name, "8098", "5s")
		if err != nil {
			t.Fatalf("resolve-connect %s: %v\n%s", name, err, out)
		}
		var r Result
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
			t.Fatalf("resolve-connect output %q: %v", out, err)
		}
		return r
	}
	r := run("ok.test")
	if r.Outcome != "connected" {
		t.Fatalf("ok.test through the resolver, with a host rule for it: %+v", r)
	}
	if c := findConn(t, d, 8098, r.PID); c["host"] != "ok.test" || c["host_source"] != "own" || c["exe"] != helperBin {
		t.Errorf("history %v: want host ok.test (own) for %s", c, helperBin)
	}

	before := Accepted(srv)
	r = run("blocked.test")
	if r.Outcome == "connected" || !strings.Contains(r.Error, "no such host") {
		t.Errorf("blocked.test: %+v, want NXDOMAIN (no such host)", r)
	}
	var refused map[string]any
	for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json")) {
		if c["host"] == "blocked.test" {
			refused = c
		}
	}
	if refused == nil || int(num(refused["pid"])) != r.PID || refused["exe"] != helperBin || refused["verdict"] != "deny" ||
		!strings.Contains(refused["note"].(string), "DNS query refused") || int(num(refused["remote_port"])) != 53 {
		t.Errorf("history of the refused query %v: want pid %d exe %s, verdict deny, a DNS note", refused, r.PID, helperBin)
	}

	if r := run(Canary()); r.Outcome == "connected" || !strings.Contains(r.Error, "no such host") {
		t.Errorf("canary: %+v, want NXDOMAIN", r)
	}
	time.Sleep(200 * time.Millisecond)
	if got := Accepted(srv); got != before {
		t.Errorf("the server accepted %d connections after the refusals", got-before)
	}

	var st struct {
		Proxy *struct {
			Queries, Refused, Canary, Attributed uint64
		} `json:"dns_proxy"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil || st.Proxy == nil ||
		st.Proxy.Refused < 1 || st.Proxy.Canary < 1 || st.Proxy.Attributed < 3 {
		t.Errorf("status dns_proxy: %+v %v", st.Proxy, err)
	}

	// Killed: DNS stops (nothing answers) and so do new connections (fail-closed).
	d.Signal(syscall.SIGKILL, 10*time.Second)
	if r := run("ok.test"); r.Outcome == "connected" || strings.Contains(r.Error, "no such host") {
		t.Errorf("with the daemon killed: %+v, want the lookup to fail (no answer)", r)
	}
	if r := n.Connect(t, 8098, 2*time.Second); r.Outcome == "connected" {
		t.Errorf("with the daemon killed, fail-closed: a connection got through: %+v", r)
	}
	// Restarted on the same state: the original resolv.conf it kept still gives the
	// upstream, and DNS works again.
	d2 := n.StartDaemon(append(flags, "--state-dir", d.State)...)
	if r := run("ok.test"); r.Outcome != "connected" {
		t.Errorf("after a restart: %+v", r)
	}
	if err := d2.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	if b, _ := os.ReadFile(resolv); string(b) != orig {
		t.Errorf("resolv.conf after a clean stop:\n%s\nwant the original:\n%s", b, orig)
	}

	// Killed again: `latch cleanup` restores resolv.conf as well as the firewall.
	d3 := n.StartDaemon(append(flags, "--state-dir", d.State)...)
	d3.Signal(syscall.SIGKILL, 10*time.Second)
	if b, _ := os.ReadFile(resolv); string(b) == orig {
		t.Fatal("resolv.conf not pointed at the resolver")
	}
	if out, err := n.Exec(n.Client, latchBin, "cleanup", "--state-dir", d.State, "--resolv-conf", resolv); err != nil || !strings.Contains(out, "restored") {
		t.Errorf("latch cleanup: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(resolv); string(b) != orig {
		t.Errorf("resolv.conf after cleanup:\n%s\nwant the original:\n%s", b, orig)
	}
}

// Canary is the name Firefox asks before turning DNS over HTTPS on by itself.
func Canary() string { return "use-application-dns.net" }
