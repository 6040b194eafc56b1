//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
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
	if out := d.Output(); !strings.Contains(out, "each UDP query attributed by the kernel's record of the socket that sent it") {
		t.Errorf("the daemon does not attribute queries by the record of their sockets:\n%s", out)
	}
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

	// A name a deny rule covers is decided before anything is sent: it never reached
	// the upstream (while a name no rule refuses did).
	if out := dns.Output(); !strings.Contains(out, "asked ok.test\n") || strings.Contains(out, "asked blocked.test") {
		t.Errorf("the upstream was asked:\n%s\nwant ok.test, never blocked.test", out)
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

	// The system resolver reads the pointed resolv.conf: through latch, attributed.
	if r := n.systemResolveConnect(t, resolv, "ok.test"); r.Outcome != "connected" {
		t.Errorf("ok.test through the system resolver: %+v", r)
	} else if c := findConn(t, d, 8098, r.PID); c["host_source"] != "own" {
		t.Errorf("system resolver: history %v: want host ok.test (own)", c)
	}

	// Killed: DNS stops (nothing answers) and so do new connections (fail-closed).
	d.Signal(syscall.SIGKILL, 10*time.Second)
	if r := run("ok.test"); r.Outcome == "connected" || strings.Contains(r.Error, "no such host") {
		t.Errorf("with the daemon killed: %+v, want the lookup to fail (no answer)", r)
	}
	if r := n.systemResolveConnect(t, resolv, "ok.test"); r.Outcome == "connected" {
		t.Errorf("with the daemon killed, fail-closed: the system resolver found another way: %+v", r)
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

// withResolv runs name in the client namespace, in a mount namespace of its own where
// resolv (as it is now) is bind-mounted over /etc/resolv.conf: the program's system
// resolver reads it, and the machine's own file is never touched.
func (n *Net) withResolv(resolv, name string, args ...string) (string, error) {
	return n.Exec(n.Client, "unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv, name}, args...)...)
}

// systemResolveConnect resolves name with the resolv.conf resolv (Go's resolver: its
// servers in order, the next one when a server refuses) and connects to port 8098.
func (n *Net) systemResolveConnect(t *testing.T, resolv, name string) Result {
	t.Helper()
	out, err := n.withResolv(resolv, helperBin, "resolve-connect", "system", name, "8098", "5s")
	if err != nil {
		t.Fatalf("resolve-connect system %s: %v\n%s", name, err, out)
	}
	var r Result
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("resolve-connect output %q: %v", out, err)
	}
	return r
}

// daemonFails runs a daemon that must refuse to start, and returns its output.
func (n *Net) daemonFails(t *testing.T, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"netns", "exec", n.Client, latchBin, "daemon", "--state-dir", filepath.Join(dir, "state"),
		"--api", filepath.Join(dir, "latch.sock")}, flags...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("daemon %v: started (or hung): %v\n%s", flags, err, out)
	}
	return string(out)
}

// TestDNSProxyFailOpen: with --fail open the resolver is no single point of failure.
// resolv.conf names the upstream after latch's resolver, so a killed daemon leaves DNS
// working through the system resolver (which moves on as soon as the dead resolver's
// port refuses) and connections too; a restart puts queries through latch again
// (attributed: the program's own name); a clean stop restores resolv.conf exactly,
// a symbolic link as the same link with its target's bytes untouched.
func TestDNSProxyFailOpen(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8098)
	dns := n.Start(n.Server, helperBin, "dns-serve", n.ServerIP+":53", "ok.test", n.ServerIP)
	dns.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	dir := t.TempDir()
	target := filepath.Join(dir, "resolv.conf.real")
	orig := "# the machine's own\nnameserver " + n.ServerIP + "\nsearch example.test\noptions ndots:1 rotate\n"
	if err := os.WriteFile(target, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink(target, resolv); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--default", "deny", "--fail", "open", "--dns-proxy", "127.0.0.1:53", "--resolv-conf", resolv}
	d := n.StartDaemon(flags...)
	if out := d.Output(); !strings.Contains(out, "each UDP query attributed by the kernel's record of the socket that sent it") {
		t.Errorf("the daemon does not attribute queries by the record of their sockets:\n%s", out)
	}
	d.MustCLI(t, "rules", "add", "--host", "ok.test", "--port", "8098", "--action", "allow")

	b, _ := os.ReadFile(resolv)
	if got := string(b); !strings.Contains(got, "\nnameserver 127.0.0.1\nnameserver "+n.ServerIP+"\n") ||
		strings.Contains(got, "rotate") || !strings.Contains(got, "options ndots:1\n") {
		t.Fatalf("resolv.conf while the resolver runs (fail-open: the proxy, then the upstream; no rotate):\n%s", got)
	}
	r := n.systemResolveConnect(t, resolv, "ok.test")
	if r.Outcome != "connected" {
		t.Fatalf("ok.test through the system resolver: %+v", r)
	}
	if c := findConn(t, d, 8098, r.PID); c["host"] != "ok.test" || c["host_source"] != "own" {
		t.Errorf("history %v: want host ok.test (own): the query went through latch's resolver", c)
	}

	// Killed: nothing listens at the resolver's address; DNS goes on to the upstream,
	// and the connection passes (fail-open: the queue is bypassed).
	d.Signal(syscall.SIGKILL, 10*time.Second)
	if r := n.systemResolveConnect(t, resolv, "ok.test"); r.Outcome != "connected" {
		t.Errorf("with the daemon killed, fail-open: %+v, want the name resolved and the connection made", r)
	}
	// glibc too (getent: the resolver of C programs).
	t0 := time.Now()
	if out, err := n.withResolv(resolv, "getent", "ahostsv4", "ok.test"); err != nil || !strings.Contains(out, n.ServerIP) {
		t.Errorf("getent ahostsv4 ok.test with the daemon killed, fail-open: %v\n%s", err, out)
	}
	t.Logf("glibc lookup with the daemon killed: %v", time.Since(t0))

	// Restarted on the same state: queries go through latch again.
	d2 := n.StartDaemon(append(flags, "--state-dir", d.State)...)
	d2.MustCLI(t, "rules", "add", "--host", "ok.test", "--port", "8098", "--action", "allow")
	r = n.systemResolveConnect(t, resolv, "ok.test")
	if r.Outcome != "connected" {
		t.Fatalf("after a restart: %+v", r)
	}
	if c := findConn(t, d2, 8098, r.PID); c["host"] != "ok.test" || c["host_source"] != "own" {
		t.Errorf("after a restart: history %v: want host ok.test (own)", c)
	}
	var st struct {
		Proxy *struct{ Queries, Attributed uint64 } `json:"dns_proxy"`
	}
	if err := json.Unmarshal([]byte(d2.MustCLI(t, "status", "--json")), &st); err != nil || st.Proxy == nil || st.Proxy.Attributed < 1 {
		t.Errorf("after a restart: status dns_proxy %+v %v: want attributed queries", st.Proxy, err)
	}
	if err := d2.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	if got, err := os.Readlink(resolv); err != nil || got != target {
		t.Errorf("after a clean stop: %s is a link to %q (%v), want a link to %s", resolv, got, err, target)
	}
	if b, _ := os.ReadFile(target); string(b) != orig {
		t.Errorf("the link's target after a clean stop:\n%s\nwant:\n%s", b, orig)
	}
	if _, err := os.Stat(filepath.Join(d.State, "resolv.conf.orig")); err == nil {
		t.Error("the backup of resolv.conf outlived a clean stop")
	}

	// Killed once more, then started without --dns-proxy: the file no longer names a
	// resolver that will never answer again.
	d3 := n.StartDaemon(append(flags, "--state-dir", d.State)...)
	d3.Signal(syscall.SIGKILL, 10*time.Second)
	if _, err := os.Readlink(resolv); err == nil {
		t.Fatal("resolv.conf not pointed at the resolver")
	}
	d4 := n.StartDaemon("--state-dir", d.State, "--fail", "open", "--resolv-conf", resolv)
	if got, err := os.Readlink(resolv); err != nil || got != target {
		t.Errorf("a daemon without --dns-proxy after a killed one: %s is %q (%v), want the link to %s", resolv, got, err, target)
	}
	d4.Signal(syscall.SIGTERM, 15*time.Second)
}

// TestDNSProxySystemdResolved: resolv.conf as systemd-resolved's stub (a link to
// stub-resolv.conf, laid out in a temporary directory as resolved lays out
// /run/systemd/resolve; a fake stub answers on 127.0.0.53 in the client namespace).
// --dns-proxy on the stub's address is refused with a clear error and changes
// nothing; on another address the upstream is the servers resolved itself uses (its
// resolv.conf), not the stub, and follows that file when it changes; an address
// another program serves is refused, named; a clean stop puts the link back.
func TestDNSProxySystemdResolved(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8098)
	up := n.Start(n.Server, helperBin, "dns-serve", n.ServerIP+":53", "ok.test", n.ServerIP)
	up.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	// The fake stub gives another address: a connection made to the server proves the
	// answer came from the real upstream.
	stub := n.Start(n.Client, helperBin, "dns-serve", "127.0.0.53:53", "ok.test", "198.18.99.99")
	stub.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })

	dir := t.TempDir()
	run := filepath.Join(dir, "run", "systemd", "resolve")
	os.MkdirAll(run, 0o755)
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	stubConf := "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
	os.WriteFile(filepath.Join(run, "stub-resolv.conf"), []byte(stubConf), 0o644)
	os.WriteFile(filepath.Join(run, "resolv.conf"), []byte("nameserver "+n.ServerIP+"\nsearch .\n"), 0o644)
	resolv := filepath.Join(dir, "etc", "resolv.conf")
	const target = "../run/systemd/resolve/stub-resolv.conf"
	if err := os.Symlink(target, resolv); err != nil {
		t.Fatal(err)
	}
	unchanged := func(when string) {
		t.Helper()
		if got, err := os.Readlink(resolv); err != nil || got != target {
			t.Errorf("%s: %s is %q %v, want the link to %s", when, resolv, got, err, target)
		}
		if b, _ := os.ReadFile(filepath.Join(run, "stub-resolv.conf")); string(b) != stubConf {
			t.Errorf("%s: stub-resolv.conf changed:\n%s", when, b)
		}
	}

	out := n.daemonFails(t, "--dns-proxy", "127.0.0.53:53", "--resolv-conf", resolv)
	if !strings.Contains(out, "systemd-resolved's stub resolver answers at 127.0.0.53") || !strings.Contains(out, "choose another address") {
		t.Errorf("--dns-proxy on the stub's address:\n%s", out)
	}
	unchanged("after the refused start")
	out = n.daemonFails(t, "--dns-proxy", "127.0.0.53:53", "--resolv-conf", "none", "--dns-upstream", n.ServerIP+":53")
	if !strings.Contains(out, "127.0.0.53:53 (UDP) is already in use") {
		t.Errorf("--dns-proxy on an address in use:\n%s", out)
	}

	d := n.StartDaemon("--default", "deny", "--fail", "open", "--dns-proxy", "127.0.0.153:53", "--resolv-conf", resolv)
	d.MustCLI(t, "rules", "add", "--host", "ok.test", "--port", "8098", "--action", "allow")
	if !strings.Contains(d.Output(), "forwarding to "+n.ServerIP+":53") {
		t.Errorf("upstream: want resolved's own server %s:53; daemon output:\n%s", n.ServerIP, d.Output())
	}
	b, _ := os.ReadFile(resolv)
	if fi, _ := os.Lstat(resolv); fi == nil || fi.Mode()&os.ModeSymlink != 0 || !strings.Contains(string(b), "nameserver 127.0.0.153\nnameserver "+n.ServerIP+"\n") {
		t.Errorf("resolv.conf while the resolver runs:\n%s", b)
	}
	r := n.systemResolveConnect(t, resolv, "ok.test")
	if r.Outcome != "connected" {
		t.Fatalf("ok.test through latch's resolver (upstream: resolved's servers): %+v", r)
	}
	if c := findConn(t, d, 8098, r.PID); c["host"] != "ok.test" || c["host_source"] != "own" {
		t.Errorf("history %v: want host ok.test (own)", c)
	}

	// The network changes: resolved writes its new servers; latch follows, and names
	// the new one after itself in resolv.conf (fail-open).
	moved := n.Start(n.Client, helperBin, "dns-serve", "127.0.0.2:53", "ok.test", n.ServerIP)
	moved.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	os.WriteFile(filepath.Join(run, "resolv.conf"), []byte("# the network changed\nnameserver 127.0.0.2\n"), 0o644)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(resolv)
		if strings.Contains(string(b), "nameserver 127.0.0.153\nnameserver 127.0.0.2\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resolv.conf after resolved's servers changed:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := n.systemResolveConnect(t, resolv, "ok.test"); r.Outcome != "connected" || !strings.Contains(moved.Output(), "asked ok.test") {
		t.Errorf("after the change: %+v; the new server was asked:\n%s", r, moved.Output())
	}

	if err := d.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	unchanged("after a clean stop")
}
