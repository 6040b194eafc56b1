// Package e2e runs latch end to end on the real kernel: it builds the latch binary and a
// test client, makes two network namespaces joined by a veth pair (198.18.0.0/15), runs
// the daemon in the client namespace and real clients and servers on both sides.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/test/nettest"
)

var (
	latchBin  string // the latch binary under test
	helperBin string // e2ehelper, the client/server whose path the tests know
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped: needs root (network namespaces, netfilter)")
		return 0
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Printf("e2e: %s not found: %v\n", tool, err)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "latch-e2e-bin-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	defer removeIdentityBins()
	latchBin = filepath.Join(dir, "latch")
	helperBin = filepath.Join(dir, "e2ehelper")
	for bin, pkg := range map[string]string{latchBin: "../../cmd/latch", helperBin: "./e2ehelper"} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			fmt.Printf("e2e: go build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

// Net is a pair of namespaces: Client (where latch runs) and Server, joined by veth.
type Net struct {
	*nettest.Pair
	t *testing.T
}

// NewNet creates the namespaces and removes them when the test ends.
func NewNet(t *testing.T) *Net {
	t.Helper()
	p, err := nettest.NewPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return &Net{Pair: p, t: t}
}

// Exec runs a command in namespace ns and returns its combined output.
func (n *Net) Exec(ns string, name string, args ...string) (string, error) {
	out, err := nettest.Command(ns, name, args...).CombinedOutput()
	return string(out), err
}

// Proc is a long-running process in a namespace whose output lines the test reads.
type Proc struct {
	cmd   *exec.Cmd
	lines chan string
	stdin *os.File
	mu    sync.Mutex
	all   bytes.Buffer
}

// Start runs name in namespace ns; it is killed when the test ends.
func (n *Net) Start(ns string, name string, args ...string) *Proc {
	n.t.Helper()
	return n.StartCmd(nettest.Command(ns, name, args...))
}

// StartCmd runs cmd (made by nettest.Command) as Start does.
func (n *Net) StartCmd(cmd *exec.Cmd) *Proc {
	n.t.Helper()
	name := cmd.Path
	p := &Proc{lines: make(chan string, 100000)}
	p.cmd = cmd
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	p.cmd.Stderr = &lockedWriter{p}
	r, w, err := os.Pipe()
	if err != nil {
		n.t.Fatal(err)
	}
	p.cmd.Stdin = r
	p.stdin = w
	if err := p.cmd.Start(); err != nil {
		n.t.Fatalf("start %s: %v", name, err)
	}
	r.Close()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.all.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	n.t.Cleanup(func() { p.Kill() })
	return p
}

type lockedWriter struct{ p *Proc }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.all.Write(b)
}

// Output is everything the process printed so far (stdout and stderr).
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.all.String()
}

// WaitLine returns the first line for which match is true, or fails after timeout.
func (p *Proc) WaitLine(t *testing.T, timeout time.Duration, match func(string) bool) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("process exited before the expected line; output:\n%s", p.Output())
			}
			if match(l) {
				return l
			}
		case <-deadline:
			t.Fatalf("no expected line within %v; output:\n%s", timeout, p.Output())
		}
	}
}

// Signal sends sig and waits up to timeout for the process to exit.
func (p *Proc) Signal(sig syscall.Signal, timeout time.Duration) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	p.cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-done
		return fmt.Errorf("did not exit within %v after %v", timeout, sig)
	}
}

// Kill stops the process if it still runs.
func (p *Proc) Kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	p.stdin.Close()
}

// Daemon is a latch daemon running in the client namespace.
type Daemon struct {
	*Proc
	net   *Net
	API   string
	State string
}

// StartDaemon runs `latch daemon` in the client namespace with extra flags and waits
// until its API answers.
func (n *Net) StartDaemon(flags ...string) *Daemon {
	n.t.Helper()
	dir := n.t.TempDir()
	d := &Daemon{net: n, API: filepath.Join(dir, "latch.sock"), State: filepath.Join(dir, "state")}
	args := append([]string{"daemon", "--state-dir", d.State, "--api", d.API}, flags...)
	d.Proc = n.Start(n.Client, latchBin, args...)
	n.t.Cleanup(func() {
		if n.t.Failed() {
			n.t.Logf("daemon output:\n%s", d.Output())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := d.CLI("status"); err == nil {
			return d
		}
		if time.Now().After(deadline) || d.cmd.ProcessState != nil {
			n.t.Fatalf("daemon did not come up; output:\n%s", d.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CLI runs a latch verb against this daemon.
func (d *Daemon) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, latchBin, args...)
	cmd.Env = append(os.Environ(), "LATCH_API="+d.API)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("latch %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustCLI is CLI that fails the test on error.
func (d *Daemon) MustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.CLI(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// JSONLines decodes one JSON object per line.
func JSONLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		objs = append(objs, m)
	}
	return objs
}

// Result is e2ehelper's connect/udp output.
type Result struct {
	Outcome string  `json:"outcome"`
	Error   string  `json:"error"`
	Millis  float64 `json:"ms"`
	PID     int     `json:"pid"`
	Local   string  `json:"local"`
}

// Connect runs one TCP connect from the client namespace to the server.
func (n *Net) Connect(t *testing.T, port int, timeout time.Duration) Result {
	t.Helper()
	return n.helperResult(t, "connect", port, timeout)
}

// UDP runs one UDP exchange from the client namespace to the server.
func (n *Net) UDP(t *testing.T, port int, timeout time.Duration) Result {
	t.Helper()
	return n.helperResult(t, "udp", port, timeout)
}

func (n *Net) helperResult(t *testing.T, verb string, port int, timeout time.Duration) Result {
	t.Helper()
	out, err := n.Exec(n.Client, helperBin, verb, fmt.Sprintf("%s:%d", n.ServerIP, port), timeout.String())
	if err != nil {
		t.Fatalf("e2ehelper %s: %v\n%s", verb, err, out)
	}
	var r Result
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("e2ehelper %s output %q: %v", verb, out, err)
	}
	return r
}

// Serve starts a TCP server in the server namespace.
func (n *Net) Serve(t *testing.T, port int) *Proc {
	t.Helper()
	p := n.Start(n.Server, helperBin, "serve", fmt.Sprintf("%s:%d", n.ServerIP, port))
	p.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	return p
}

// ServeUDP starts a UDP echo server in the server namespace.
func (n *Net) ServeUDP(t *testing.T, port int) *Proc {
	t.Helper()
	p := n.Start(n.Server, helperBin, "serve-udp", fmt.Sprintf("%s:%d", n.ServerIP, port))
	p.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	return p
}

// Accepted counts "accepted" lines the server printed.
func Accepted(p *Proc) int {
	return strings.Count(p.Output(), "accepted ")
}

// waitAccepted waits up to 5 s for server p to report want accepted
// connections (a client's connect returns before the server's line about it
// is read) and returns how many it reported.
func waitAccepted(p *Proc, want int) int {
	a := Accepted(p)
	for deadline := time.Now().Add(5 * time.Second); a < want && time.Now().Before(deadline); a = Accepted(p) {
		time.Sleep(10 * time.Millisecond)
	}
	return a
}

// nftCounter is a counter's values in `nft list ruleset`.
var nftCounter = regexp.MustCompile(`counter packets [0-9]+ bytes [0-9]+`)

// Ruleset returns the client namespace's firewall state as text, to compare.
func (n *Net) Ruleset(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, c := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := n.Exec(n.Client, c[0], c[1:]...)
		if err != nil {
			if _, lerr := exec.LookPath(c[0]); lerr != nil {
				continue
			}
			t.Fatalf("%s: %v\n%s", c[0], err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			// iptables-save prints a timestamp and packet counters that change.
			if strings.HasPrefix(l, "#") {
				continue
			}
			if strings.HasPrefix(l, ":") {
				if i := strings.Index(l, " ["); i > 0 {
					l = l[:i]
				}
			}
			// nft's counters too: a rule's text, not what passed it.
			l = nftCounter.ReplaceAllString(l, "counter")
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
