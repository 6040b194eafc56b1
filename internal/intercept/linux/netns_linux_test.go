package linux

// Test harness: network namespaces joined by a veth pair, a daemon child process
// running the backend inside namespace A, clients in A and servers in B.
//
//	netns A (client, backend)  198.18.0.1/24 ---veth--- 198.18.0.2/24  netns B (servers)

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/procattr"
	"golang.org/x/sys/unix"
)

const (
	addrA     = "198.18.0.1"
	addrB     = "198.18.0.2"
	testQueue = 4242
	childEnv  = "LATCH_LINUX_TEST_CHILD"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

var nsCounter atomic.Int32

// topo is a pair of network namespaces joined by a veth pair.
type topo struct{ a, b string }

func newTopo(t *testing.T) *topo {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and netfilter rules")
	}
	for _, tool := range []string{"ip", "iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	n := nsCounter.Add(1)
	tp := &topo{
		a: fmt.Sprintf("latch-lt%d-%d-a", os.Getpid(), n),
		b: fmt.Sprintf("latch-lt%d-%d-b", os.Getpid(), n),
	}
	va, vb := fmt.Sprintf("lta%d%d", os.Getpid()%100000, n), fmt.Sprintf("ltb%d%d", os.Getpid()%100000, n)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", tp.a).Run()
		exec.Command("ip", "netns", "del", tp.b).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", tp.a},
		{"netns", "add", tp.b},
		{"link", "add", va, "netns", tp.a, "type", "veth", "peer", "name", vb, "netns", tp.b},
		{"-n", tp.a, "addr", "add", addrA + "/24", "dev", va},
		{"-n", tp.b, "addr", "add", addrB + "/24", "dev", vb},
		{"-n", tp.a, "link", "set", va, "up"},
		{"-n", tp.b, "link", "set", vb, "up"},
		{"-n", tp.a, "link", "set", "lo", "up"},
		{"-n", tp.b, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return tp
}

// inNS runs fn on an OS thread that has joined network namespace ns. Sockets made there
// stay in ns and may be used from any goroutine afterwards. The thread is never
// unlocked, so it dies with the goroutine instead of carrying the namespace elsewhere.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// ruleset returns what iptables-save, ip6tables-save and nft print in ns, without the
// comment lines that carry timestamps and without counters.
func ruleset(t *testing.T, ns string) string {
	t.Helper()
	var b strings.Builder
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		if _, err := exec.LookPath(cmd[0]); err != nil {
			continue
		}
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, cmd...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s in %s: %v: %s", cmd, ns, err, out)
		}
		fmt.Fprintf(&b, "== %s\n", strings.Join(cmd, " "))
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(counters.ReplaceAllString(l, "[0:0]") + "\n")
			}
		}
	}
	return b.String()
}

// tcpServer accepts connections in ns B on port and counts them.
type tcpServer struct {
	ln       net.Listener
	accepted atomic.Int64
}

func listenTCP(t *testing.T, tp *topo, port int) *tcpServer {
	t.Helper()
	s := &tcpServer{}
	err := inNS(tp.b, func() error {
		var err error
		s.ln, err = net.Listen("tcp4", net.JoinHostPort(addrB, strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", tp.b, err)
	}
	t.Cleanup(func() { s.ln.Close() })
	go func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			c.Close()
		}
	}()
	return s
}

// dial connects from ns A to B:port.
func dial(tp *topo, port int, timeout time.Duration) (time.Duration, error) {
	var took time.Duration
	err := inNS(tp.a, func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp4", net.JoinHostPort(addrB, strconv.Itoa(port)), timeout)
		took = time.Since(start)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return took, err
}

// daemon is a child process running the backend in namespace A.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	stderr *strings.Builder
	mu     sync.Mutex
	stats  *intercept.Stats
}

// startDaemon starts the backend in tp.a. policy maps remote ports to actions, see
// childDecider. It waits for the ruleset to be in place unless wantReady is false.
func startDaemon(t *testing.T, tp *topo, policy string, env ...string) *daemon {
	t.Helper()
	d := spawnDaemon(t, tp, policy, env...)
	if _, ok := d.waitLine("ready", 15*time.Second); !ok {
		t.Fatalf("daemon did not become ready; stderr:\n%s", d.errors())
	}
	return d
}

func spawnDaemon(t *testing.T, tp *topo, policy string, env ...string) *daemon {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", tp.a, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=daemon", "LATCH_TEST_POLICY="+policy)
	cmd.Env = append(cmd.Env, env...)
	d := &daemon{t: t, cmd: cmd, lines: make(chan string, 100000), exited: make(chan struct{}), stderr: &strings.Builder{}}
	cmd.Stderr = &lockedWriter{w: d.stderr, mu: &d.mu}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l := sc.Text()
			if s, ok := strings.CutPrefix(l, "stats "); ok {
				var st intercept.Stats
				if json.Unmarshal([]byte(s), &st) == nil {
					d.mu.Lock()
					d.stats = &st
					d.mu.Unlock()
				}
			}
			select {
			case d.lines <- l:
			default:
			}
		}
		d.cmd.Wait()
		close(d.exited)
	}()
	return d
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (d *daemon) errors() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// waitLine waits for an output line starting with prefix.
func (d *daemon) waitLine(prefix string, timeout time.Duration) (string, bool) {
	deadline := time.After(timeout)
	for {
		select {
		case l := <-d.lines:
			if strings.HasPrefix(l, prefix) {
				return l, true
			}
		case <-d.exited:
			// Drain what is left.
			for {
				select {
				case l := <-d.lines:
					if strings.HasPrefix(l, prefix) {
						return l, true
					}
				default:
					return "", false
				}
			}
		case <-deadline:
			return "", false
		}
	}
}

// drain discards the lines printed so far.
func (d *daemon) drain() {
	for {
		select {
		case <-d.lines:
		default:
			return
		}
	}
}

// stop ends the daemon with SIGTERM and returns its final counters.
func (d *daemon) stop() intercept.Stats {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		d.t.Fatalf("daemon did not stop within 20s; stderr:\n%s", d.errors())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Fatalf("daemon exited with %d; stderr:\n%s", code, d.errors())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stats == nil {
		d.t.Fatalf("daemon printed no stats; stderr:\n%s", d.stderr.String())
	}
	return *d.stats
}

// runChild is the daemon side: it runs in namespace A with the backend.
func runChild(mode string) int {
	queue := uint16(testQueue)
	switch mode {
	case "cleanup":
		if err := Cleanup(queue); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "daemon":
	default:
		fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
		return 2
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Printf(format+"\n", args...)
		mu.Unlock()
	}
	cfg := DefaultConfig()
	cfg.QueueNum = queue
	cfg.FailOpen = os.Getenv("LATCH_TEST_FAIL_OPEN") != ""
	cfg.Inbound = os.Getenv("LATCH_TEST_INBOUND") != ""
	cfg.Firewall = os.Getenv("LATCH_TEST_FIREWALL")
	cfg.ExemptLoopback = os.Getenv("LATCH_TEST_HOLD_LOOPBACK") == ""
	if v := os.Getenv("LATCH_TEST_HOLD_TIMEOUT"); v != "" {
		var err error
		if cfg.HoldTimeout, err = time.ParseDuration(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	if os.Getenv("LATCH_TEST_ATTRIBUTE") != "" {
		// eBPF off: its hooks attach to the root cgroup, shared with the whole machine.
		r, err := procattr.NewResolver(procattr.Options{DisableEBPF: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer r.Close()
		cfg.Resolver = r
	}
	cfg.Ready = func() { say("ready") }
	cfg.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	b, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	say("backend %s", b.Name())
	policy, err := parsePolicy(os.Getenv("LATCH_TEST_POLICY"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	quiet := os.Getenv("LATCH_TEST_QUIET") != ""
	dec := intercept.DeciderFunc(func(req *engine.Request, verdict func(engine.Verdict)) {
		if !quiet {
			say("held %s %s %s %s uid=%d pid=%d exe=%s", req.Direction, req.Protocol, req.Local, req.Remote, req.UID, req.PID, req.Exe)
		}
		port := req.Remote.Port()
		if req.Direction == engine.Inbound {
			port = req.Local.Port()
		}
		act, ok := policy[int(port)]
		if !ok {
			act = policy[-1]
		}
		if act.delay > 0 {
			time.AfterFunc(act.delay, func() { verdict(engine.Verdict{Action: act.action, Reason: engine.ReasonRule}) })
			return
		}
		verdict(engine.Verdict{Action: act.action, Reason: engine.ReasonRule})
	})
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	redecidePort, _ := strconv.Atoi(os.Getenv("LATCH_TEST_REDECIDE_PORT"))
	go func() {
		for range usr1 {
			n, err := b.Redecide(func(r *engine.Request) bool { return int(r.Remote.Port()) == redecidePort })
			say("redecided %d %v", n, err)
		}
	}()
	runErr := b.Run(ctx, dec)
	st, _ := json.Marshal(b.Stats())
	say("stats %s", st)
	if runErr != nil {
		fmt.Fprintln(os.Stderr, runErr)
		return 1
	}
	return 0
}

type policyAction struct {
	action engine.Action
	delay  time.Duration
}

// parsePolicy parses "9001=allow,9002=reject,9004=allow@3s,*=deny" (port -1 is "*").
func parsePolicy(s string) (map[int]policyAction, error) {
	p := map[int]policyAction{-1: {action: engine.Allow}}
	for _, item := range strings.Split(s, ",") {
		if item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("policy item %q: want PORT=ACTION", item)
		}
		port := -1
		if k != "*" {
			var err error
			if port, err = strconv.Atoi(k); err != nil {
				return nil, fmt.Errorf("policy item %q: %w", item, err)
			}
		}
		var pa policyAction
		name, delay, hasDelay := strings.Cut(v, "@")
		if hasDelay {
			var err error
			if pa.delay, err = time.ParseDuration(delay); err != nil {
				return nil, fmt.Errorf("policy item %q: %w", item, err)
			}
		}
		var err error
		if pa.action, err = engine.ParseAction(name); err != nil {
			return nil, fmt.Errorf("policy item %q: %w", item, err)
		}
		p[port] = pa
	}
	return p, nil
}

// osArgs0 is the test binary, for running a child mode directly.
func osArgs0() string { return os.Args[0] }
