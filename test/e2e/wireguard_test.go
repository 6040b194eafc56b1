//go:build linux

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// wgRunDir is where wireguard-go puts its UAPI sockets (IFNAME.sock); wg finds them
// there. It is not per network namespace: interface names must be unique machine-wide.
const wgRunDir = "/var/run/wireguard"

var wgCount atomic.Int32

// wgTunnel is how the test makes WireGuard interfaces: with the kernel module
// (ip link add type wireguard) or, without it, with wireguard-go, a userspace
// WireGuard on a TUN device.
type wgTunnel struct {
	kernel bool
	goExe  string // wireguard-go's executable, symlinks resolved (userspace only)
	n      *Net
	procs  map[string]*Proc // wireguard-go per interface
}

// newWGTunnel picks the kernel module when this kernel has it, else wireguard-go;
// it skips the test, saying why, when neither can run here or wg is missing.
func newWGTunnel(t *testing.T, n *Net) *wgTunnel {
	t.Helper()
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("needs wg (Debian package wireguard-tools)")
	}
	w := &wgTunnel{n: n, procs: map[string]*Proc{}}
	probe := fmt.Sprintf("lwp%d", os.Getpid()%100000)
	out, kerr := exec.Command("ip", "-n", n.Client, "link", "add", probe, "type", "wireguard").CombinedOutput()
	if kerr == nil {
		exec.Command("ip", "-n", n.Client, "link", "del", probe).Run()
		w.kernel = true
		return w
	}
	kernelWhy := fmt.Sprintf("no kernel WireGuard (ip link add type wireguard: %v: %s)", kerr, strings.TrimSpace(string(out)))
	p, err := exec.LookPath("wireguard-go")
	if err != nil {
		t.Skipf("%s and no wireguard-go (Debian package wireguard-go): %v", kernelWhy, err)
	}
	if w.goExe, err = filepath.EvalSymlinks(p); err != nil {
		t.Fatalf("resolve %s: %v", p, err)
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("%s, and wireguard-go needs a TUN device: %v", kernelWhy, err)
	}
	f.Close()
	t.Logf("%s: using wireguard-go (%s)", kernelWhy, w.goExe)
	return w
}

// add makes WireGuard interface name in namespace ns. With wireguard-go it starts
// the daemon in the foreground, waits (bounded) for its UAPI socket, and at cleanup
// stops it (SIGTERM, then SIGKILL after 5 s) and removes its socket.
func (w *wgTunnel) add(t *testing.T, ns, name string) {
	t.Helper()
	if w.kernel {
		if out, err := w.n.Exec(ns, "ip", "link", "add", name, "type", "wireguard"); err != nil {
			t.Fatalf("ip link add %s type wireguard in %s: %v: %s", name, ns, err, out)
		}
		return
	}
	sock := filepath.Join(wgRunDir, name+".sock")
	if _, err := os.Stat(sock); err == nil {
		t.Fatalf("%s exists already: another wireguard-go runs an interface named %s", sock, name)
	}
	p := w.n.Start(ns, w.goExe, "-f", name)
	w.procs[name] = p
	t.Cleanup(func() {
		if err := p.Signal(syscall.SIGTERM, 5*time.Second); err != nil && !isExitBySignal(err) {
			t.Logf("stop wireguard-go %s: %v", name, err)
		}
		os.Remove(sock)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				return
			}
		}
		if p.cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("wireguard-go -f %s in %s: no UAPI socket %s within 10 s; output:\n%s", name, ns, sock, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isExitBySignal reports whether err is a process's exit caused by a signal (how
// wireguard-go may end on SIGTERM).
func isExitBySignal(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return true
		}
	}
	return false
}

// pid is the process that sends interface name's UDP: wireguard-go's, or 0 for the
// kernel's.
func (w *wgTunnel) pid(name string) int {
	if w.kernel {
		return 0
	}
	return w.procs[name].cmd.Process.Pid
}

// TestWireGuardTunnelHeldAndAttributed: a WireGuard tunnel between the two
// namespaces (latch runs on the client side), made with kernel WireGuard when the
// kernel has it, else with wireguard-go. A program's connection through the tunnel
// is held and asked about, attributed to the program, with the tunnel addresses;
// nothing reaches the server until it is answered. The tunnel's own UDP (the
// handshake to the peer's port 51820) is a connection of whoever sends it:
//   - wireguard-go, a program like any other: asked about as its executable and pid,
//     and allowed with a rule for it;
//   - kernel WireGuard, from a socket no process holds: asked about as an unknown
//     program (pid 0, no executable), allowed by address.
//
// Until the tunnel's UDP is answered the connection inside it does not get through.
func TestWireGuardTunnelHeldAndAttributed(t *testing.T) {
	n := NewNet(t)
	wg := newWGTunnel(t, n)
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, wgCount.Add(1)%10)
	wgA, wgB := "lwa"+id, "lwb"+id
	dir := t.TempDir()
	key := func(name string) (privFile, pub string) {
		priv, err := exec.Command("wg", "genkey").Output()
		if err != nil {
			t.Fatalf("wg genkey: %v", err)
		}
		privFile = filepath.Join(dir, name)
		if err := os.WriteFile(privFile, priv, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("wg", "pubkey")
		cmd.Stdin = strings.NewReader(string(priv))
		p, err := cmd.Output()
		if err != nil {
			t.Fatalf("wg pubkey: %v", err)
		}
		return privFile, strings.TrimSpace(string(p))
	}
	privA, pubA := key("a.key")
	privB, pubB := key("b.key")
	const tunA, tunB = "198.19.251.1", "198.19.251.2"
	run := func(ns string, args ...string) {
		t.Helper()
		if out, err := n.Exec(ns, args[0], args[1:]...); err != nil {
			t.Fatalf("%s in %s: %v: %s", strings.Join(args, " "), ns, err, out)
		}
	}
	wg.add(t, n.Client, wgA)
	wg.add(t, n.Server, wgB)
	run(n.Client, "wg", "set", wgA, "private-key", privA, "listen-port", "51820",
		"peer", pubB, "endpoint", n.ServerIP+":51820", "allowed-ips", tunB+"/32")
	run(n.Server, "wg", "set", wgB, "private-key", privB, "listen-port", "51820",
		"peer", pubA, "endpoint", n.ClientIP+":51820", "allowed-ips", tunA+"/32")
	run(n.Client, "ip", "addr", "add", tunA+"/24", "dev", wgA)
	run(n.Server, "ip", "addr", "add", tunB+"/24", "dev", wgB)
	run(n.Client, "ip", "link", "set", wgA, "up")
	run(n.Server, "ip", "link", "set", wgB, "up")
	if out, err := n.Exec(n.Client, "ip", "route", "get", tunB); err != nil || !strings.Contains(out, "dev "+wgA) {
		t.Fatalf("route to %s in the client: %v: %s; want dev %s", tunB, err, out, wgA)
	}
	srv := n.Start(n.Server, helperBin, "serve", tunB+":8443")
	srv.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })

	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	done := make(chan Result, 1)
	go func() {
		out, _ := n.Exec(n.Client, helperBin, "connect", tunB+":8443", "25s")
		var r Result
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
			r.Outcome, r.Error = "bad output", out
		}
		done <- r
	}()

	// The program's connection, on its way into the tunnel: held, asked, attributed.
	p := waitPrompt(t, d, 8443)
	if p["proto"] != "tcp" || p["remote_ip"] != tunB || p["local_ip"] != tunA || p["direction"] != "out" {
		t.Errorf("question %v: want tcp out from %s to %s (through %s)", p, tunA, tunB, wgA)
	}
	if got := Accepted(srv); got != 0 {
		t.Fatalf("the server accepted %d connections while the connection was held", got)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "allow", "--for", "once")

	// The tunnel's handshake to its peer: its sender's connection.
	hs := waitPromptFor(t, d, 51820, false)
	wantExe, wantPID := "", wg.pid(wgA)
	if !wg.kernel {
		wantExe = wg.goExe
	}
	if hs["proto"] != "udp" || hs["remote_ip"] != n.ServerIP || int(num(hs["local_port"])) != 51820 ||
		hs["exe"] != wantExe || int(num(hs["pid"])) != wantPID {
		t.Errorf("handshake question %v: want udp %s:51820 -> %s:51820 from exe %q pid %d (kernel WireGuard: %v)",
			hs, n.ClientIP, n.ServerIP, wantExe, wantPID, wg.kernel)
	}
	if got := Accepted(srv); got != 0 {
		t.Fatalf("the server accepted %d connections while the tunnel's handshake was held", got)
	}
	if wg.kernel {
		// No program to name: allowed by address, once.
		d.MustCLI(t, "answer", fmt.Sprint(int64(num(hs["id"]))), "allow", "--for", "once")
	} else {
		// wireguard-go: the rule a user makes, for the program.
		d.MustCLI(t, "answer", fmt.Sprint(int64(num(hs["id"]))), "allow", "--for", "forever")
		var found bool
		for _, r := range JSONLines(t, d.MustCLI(t, "rules", "list", "--json")) {
			if r["app"] == wg.goExe && r["action"] == "allow" {
				found = true
			}
		}
		if !found {
			t.Errorf("answered forever, no allow rule for %s:\n%s", wg.goExe, d.MustCLI(t, "rules"))
		}
	}

	var r Result
	select {
	case r = <-done:
		if r.Outcome != "connected" {
			t.Fatalf("connect through the tunnel: %+v", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the connection through the tunnel did not finish")
	}
	if host, _, _ := net.SplitHostPort(r.Local); host != tunA {
		t.Errorf("the client's local address %s: want the tunnel's %s", r.Local, tunA)
	}
	srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") && strings.Contains(l, tunA+":") })

	row := findConn(t, d, 8443, r.PID)
	if row["verdict"] != "allow" || row["reason"] != "prompt" || row["exe"] != helperBin || row["remote_ip"] != tunB || row["local_ip"] != tunA {
		t.Errorf("history row %v: want the program's connection through the tunnel, allowed when asked", row)
	}
	row = findConn(t, d, 51820, 0)
	if row["verdict"] != "allow" || row["proto"] != "udp" || row["exe"] != wantExe || int(num(row["pid"])) != wantPID {
		t.Errorf("history row %v: want the tunnel's UDP, allowed, exe %q pid %d", row, wantExe, wantPID)
	}
}
