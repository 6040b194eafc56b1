//go:build linux

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWireGuardTunnelHeldAndAttributed: a WireGuard tunnel between the two
// namespaces (latch runs on the client side). A connection through the tunnel is held
// and attributed to its program like any other; the tunnel's own UDP (handshake and
// data to the peer's port 51820) is sent by the kernel, from a socket no process
// holds, so it is asked about as an unknown program (pid 0) until allowed: the user
// allows it with a rule on the peer's address and port, without --app.
func TestWireGuardTunnelHeldAndAttributed(t *testing.T) {
	n := NewNet(t)
	wgA, wgB := fmt.Sprintf("lwa%d", os.Getpid()%100000), fmt.Sprintf("lwb%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "-n", n.Client, "link", "add", wgA, "type", "wireguard").CombinedOutput(); err != nil {
		t.Skipf("this kernel has no WireGuard (ip link add type wireguard: %v: %s)", err, strings.TrimSpace(string(out)))
	}
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("needs wg (Debian package wireguard-tools)")
	}
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
	run(n.Server, "ip", "link", "add", wgB, "type", "wireguard")
	run(n.Client, "wg", "set", wgA, "private-key", privA, "listen-port", "51820",
		"peer", pubB, "endpoint", n.ServerIP+":51820", "allowed-ips", tunB+"/32")
	run(n.Server, "wg", "set", wgB, "private-key", privB, "listen-port", "51820",
		"peer", pubA, "endpoint", n.ClientIP+":51820", "allowed-ips", tunA+"/32")
	run(n.Client, "ip", "addr", "add", tunA+"/24", "dev", wgA)
	run(n.Server, "ip", "addr", "add", tunB+"/24", "dev", wgB)
	run(n.Client, "ip", "link", "set", wgA, "up")
	run(n.Server, "ip", "link", "set", wgB, "up")
	srv := n.Start(n.Server, helperBin, "serve", tunB+":8443")
	srv.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })

	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--remote", tunB, "--port", "8443", "--action", "allow")
	done := make(chan string, 1)
	go func() {
		out, _ := n.Exec(n.Client, helperBin, "connect", tunB+":8443", "25s")
		done <- out
	}()
	// The program's connection is decided by its rule; the tunnel's handshake to the
	// peer is the kernel's and is asked about.
	hs := waitPromptFor(t, d, 51820, false)
	if hs["proto"] != "udp" || hs["remote_ip"] != n.ServerIP || num(hs["pid"]) != 0 || hs["exe"] != "" {
		t.Errorf("handshake question %v: want udp to %s:51820 from no process (pid 0, exe \"\")", hs, n.ServerIP)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(hs["id"]))), "allow", "--for", "once")
	select {
	case out := <-done:
		if !strings.Contains(out, `"outcome":"connected"`) {
			t.Fatalf("connect through the tunnel: %s", out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the connection through the tunnel did not finish")
	}
	row := findConn(t, d, 8443, 0)
	if row["verdict"] != "allow" || row["exe"] != helperBin || row["remote_ip"] != tunB {
		t.Errorf("history row %v: want the program's connection through the tunnel, allowed by its rule", row)
	}
}
