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
	"github.com/cilium/ebpf"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/cgroup2"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/fastpath"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
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
		systemCgroup2()
		os.Exit(runChild(mode))
	}
	// The children inherit it: systemCgroup2 changes only a mount namespace
	// that is not this one.
	if ns, err := os.Readlink("/proc/self/ns/mnt"); err == nil {
		os.Setenv(testMountNSEnv, ns)
	}
	os.Exit(m.Run())
}

// testMountNSEnv names the test process's mount namespace for its children.
const testMountNSEnv = "LATCH_LINUX_TEST_MNTNS"

// systemCgroup2 mounts the cgroup v2 hierarchy on /sys/fs/cgroup in a child's own
// mount namespace (`ip netns exec` gives it a /sys without one), so that
// cgroup2.Find, which prefers /sys/fs/cgroup, names a mount that lasts as long as
// the child. Else it would name the first other cgroup2 mount the child inherited,
// such as another test package's in /tmp, which that package unmounts when its
// test ends (seen in CI: the fast path's attach then found no cgroup).
func systemCgroup2() {
	// Not /proc/1/ns/mnt: `ip netns exec`'s child may not read it (EACCES).
	self, err := os.Readlink("/proc/self/ns/mnt")
	if test := os.Getenv(testMountNSEnv); err != nil || test == "" || self == test {
		return // the test's mounts are not the child's to change
	}
	if root, err := cgroup2.Find(); err == nil && (root == "/sys/fs/cgroup" || strings.HasPrefix(root, "/sys/fs/cgroup/")) {
		return
	}
	// On failure the callers fall back as before (cgroup2.MountPrivate).
	_ = unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
}

var nsCounter atomic.Int32

// topo is a pair of network namespaces joined by a veth pair.
type topo struct {
	a, b  string
	vethA string // the veth end in a
	vethB string // the veth end in b
}

func newTopo(t testing.TB) *topo {
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
	va, vb := fmt.Sprintf("lta%d-%d", os.Getpid()%100000, n), fmt.Sprintf("ltb%d-%d", os.Getpid()%100000, n)
	tp.vethA, tp.vethB = va, vb
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
// comment lines that carry timestamps and without counters. Other comments, such as
// the warning that legacy tables exist, stay.
func ruleset(t testing.TB, ns string) string {
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
			if !strings.HasPrefix(l, "# Generated by") && !strings.HasPrefix(l, "# Completed on") {
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

func listenTCP(t testing.TB, tp *topo, port int) *tcpServer {
	t.Helper()
	return listenTCPAt(t, tp, addrB, port)
}

// listenTCPAt is a tcpServer on addr (IPv4 or IPv6) and port in namespace B.
func listenTCPAt(t testing.TB, tp *topo, addr string, port int) *tcpServer {
	t.Helper()
	s := &tcpServer{}
	if err := inNS(tp.b, func() error {
		var err error
		s.ln, err = net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		return err
	}); err != nil {
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
	t      testing.TB
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	stderr *strings.Builder
	mu     sync.Mutex
	stats  *intercept.Stats
	last   []string // the last lines it printed (at most lastLines), under mu
}

// lastLines is how many of its last output lines a daemon keeps for a failure's
// message.
const lastLines = 20

// readyWithin bounds the wait for a daemon's "ready": on an idle machine it is
// ready within a second, but a loaded one (a full test run beside other
// people's on two cores) can take many times that; the wait ends as soon as
// the line comes.
const readyWithin = 60 * time.Second

// startDaemon starts the backend in tp.a. policy maps remote ports to actions, see
// childDecider. It waits for the ruleset to be in place unless wantReady is false.
func startDaemon(t testing.TB, tp *topo, policy string, env ...string) *daemon {
	t.Helper()
	d := spawnDaemon(t, tp, policy, env...)
	if _, ok := d.waitLine("ready", readyWithin); !ok {
		t.Fatalf("daemon did not become ready: %s; stderr:\n%s", d.progress(), d.errors())
	}
	return d
}

func spawnDaemon(t testing.TB, tp *topo, policy string, env ...string) *daemon {
	t.Helper()
	return spawnChild(t, tp, "daemon", policy, env...)
}

// spawnChild runs this test binary in child mode (see runChild) in namespace A.
func spawnChild(t testing.TB, tp *topo, mode, policy string, env ...string) *daemon {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", tp.a, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "LATCH_TEST_POLICY="+policy)
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
			d.mu.Lock()
			if d.last = append(d.last, l); len(d.last) > lastLines {
				d.last = d.last[1:]
			}
			d.mu.Unlock()
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

// progress says whether the daemon exited (and how) and what it printed last:
// how far it got.
func (d *daemon) progress() string {
	exited := "still running"
	select {
	case <-d.exited:
		exited = "exited: " + d.cmd.ProcessState.String()
	default:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return fmt.Sprintf("%s; its last lines: %q", exited, d.last)
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

// linesFor returns the lines printed so far and within the next d.
func (d *daemon) linesFor(wait time.Duration) []string {
	var out []string
	deadline := time.After(wait)
	for {
		select {
		case l := <-d.lines:
			out = append(out, l)
		case <-deadline:
			return out
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
	case "floor":
		ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer cancel()
		if stop, err := startCPUProfile(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		} else {
			defer stop()
		}
		ruleset := fmt.Sprintf("*filter\n-A OUTPUT -p tcp -m tcp --tcp-flags SYN,ACK,RST,FIN SYN -j NFQUEUE --queue-num %d\nCOMMIT\n", queue)
		if os.Getenv("LATCH_TEST_FLOOR_LATCH_RULES") != "" {
			// The floor reader behind latch's full ruleset: what the ruleset costs.
			ruleset = ruleSpec{queue: queue, exemptLoopback: true}.iptablesRules(false, nil, nil)
		}
		if _, err := run(ruleset, "iptables-restore", "-w", "--noflush"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		err := nfq.AcceptAll(ctx, queue, func() { fmt.Println("ready") })
		st, _ := json.Marshal(intercept.Stats{})
		fmt.Printf("stats %s\n", st)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "unpriv-icmp":
		return unprivilegedICMP()
	case "unpriv-udp":
		return unprivilegedUDP()
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
	cfg.Forward = os.Getenv("LATCH_TEST_FORWARD") != ""
	cfg.Firewall = os.Getenv("LATCH_TEST_FIREWALL")
	cfg.FastUDPMatch = os.Getenv("LATCH_TEST_FAST_UDP")
	// LATCH_TEST_FAST_LEASE: the pinned lease program (the test holds the
	// lease, see pinLease).
	cfg.FastLease = os.Getenv("LATCH_TEST_FAST_LEASE")
	// LATCH_TEST_FAST_TCP: as with the kernel fast path deciding TCP connects
	// (the tests mark their sockets as it would).
	cfg.FastTCP = os.Getenv("LATCH_TEST_FAST_TCP") != ""
	var pinOnly *fastpath.SocketPinOnly
	// LATCH_TEST_SOCKET_PIN=on: the kernel fast path's socket pin, loaded
	// alone and pinned in a directory of the daemon's own.
	if os.Getenv("LATCH_TEST_SOCKET_PIN") == "on" {
		dir, err := os.MkdirTemp("", "latch-lt-pin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.Remove(dir)
		// LATCH_TEST_RECEIVE_CHECK=off: without the pin's receive check.
		var noRecv []string
		if os.Getenv("LATCH_TEST_RECEIVE_CHECK") == "off" {
			noRecv = append(noRecv, "test: off")
		}
		sp, err := fastpath.OpenSocketPin(filepath.Join(dir, "bpf"), noRecv...)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer sp.Close()
		pinOnly = sp
		cfg.FastSocketPin = sp.Path()
		// With the sender stash, unless LATCH_TEST_SENDER_STASH=off (the
		// attribution by tuple alone, as before it).
		if os.Getenv("LATCH_TEST_SENDER_STASH") != "off" {
			cfg.FastSenderStash = sp.StashPath()
		}
	}
	cfg.ExemptLoopback = os.Getenv("LATCH_TEST_HOLD_LOOPBACK") == ""
	// LATCH_TEST_MAX_FLOWS: Config.MaxFlows (1: each allowed flow makes the
	// daemon forget the others).
	cfg.MaxFlows, _ = strconv.Atoi(os.Getenv("LATCH_TEST_MAX_FLOWS"))
	if v := os.Getenv("LATCH_TEST_HOLD_TIMEOUT"); v != "" {
		var err error
		if cfg.HoldTimeout, err = time.ParseDuration(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	switch a := os.Getenv("LATCH_TEST_ATTRIBUTE"); a {
	case "":
	case "instant":
		cfg.Resolver = instantResolver{}
	case "slow9005":
		// Attribution of connections to port 9005 takes 3s.
		cfg.Resolver = instantResolver{slowPort: 9005}
	default:
		// eBPF off unless asked for ("ebpf", benchmarks only): its hooks attach to the
		// root cgroup, shared with the whole machine.
		r, err := procattr.NewResolver(procattr.Options{DisableEBPF: a != "ebpf"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer r.Close()
		cfg.Resolver = r
	}
	cfg.ReadBuffer, _ = strconv.Atoi(os.Getenv("LATCH_TEST_READ_BUFFER"))
	if v := os.Getenv("LATCH_TEST_TRAFFIC_INTERVAL"); v != "" {
		// Byte accounting on: each report is a line "traffic LOCAL REMOTE in=N out=N ended=B".
		var err error
		if cfg.TrafficInterval, err = time.ParseDuration(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		cfg.OnTraffic = func(ts []intercept.Traffic) {
			if os.Getenv("LATCH_TEST_TRAFFIC_SILENT") != "" {
				return // benchmarks: the accounting's cost, not the printing's
			}
			for _, tr := range ts {
				say("traffic %s %s in=%d out=%d ended=%t", tr.Request.Local, tr.Request.Remote, tr.BytesIn, tr.BytesOut, tr.Ended)
			}
		}
	}
	cfg.Ready = func() { say("ready") }
	cfg.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	// LATCH_TEST_SOCKET_ENDS: the kernel fast path (its hooks on the root cgroup,
	// serving this namespace only) reports the end of every TCP socket here ("on"),
	// or is asked not to ("off": the fallback, as with --forward).
	// LATCH_TEST_NOTRACK: the fast path's TCP socket iterators keep its flows
	// out of conntrack ("on"); "noremark": the ruleset does, but Redecide
	// leaves the sockets' marks alone (what notrack would be without them).
	var fp *fastpath.FastPath
	notrack := os.Getenv("LATCH_TEST_NOTRACK")
	if v := os.Getenv("LATCH_TEST_SOCKET_ENDS"); v != "" || notrack != "" {
		var err error
		fcfg := fastpath.Config{NoTCPEnds: map[bool]string{true: "test: off"}[v == "off"]}
		if notrack != "" {
			// The connect hooks on the cgroup the test made for its fast
			// connects (LATCH_TEST_FAST_CGROUP, relative to the cgroup2
			// root: the test puts itself there to dial one, see
			// fastHits.dial), else on a cgroup of no process.
			root, err := cgroup2.Find()
			if err != nil {
				// `ip netns exec` gives a /sys without it.
				if root, err = cgroup2.MountPrivate("latch-lt-cgroup2-"); err != nil {
					fmt.Fprintln(os.Stderr, err)
					return 1
				}
				defer cgroup2.Unmount(root)
			}
			if rel := os.Getenv("LATCH_TEST_FAST_CGROUP"); rel != "" {
				fcfg.CgroupPath = filepath.Join(root, rel)
			} else {
				// A name of its own: a killed daemon leaves its cgroup
				// behind, and a later daemon may get its pid.
				if fcfg.CgroupPath, err = os.MkdirTemp(root, "latch-lt-notrack-"); err != nil {
					fmt.Fprintln(os.Stderr, err)
					return 1
				}
				defer os.Remove(fcfg.CgroupPath)
			}
		}
		if fp, err = fastpath.Open(fcfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer fp.Close()
		if v := os.Getenv("LATCH_TEST_FAST_ALLOW"); v != "" {
			if err := fastAllow(fp, v); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		if v != "" {
			cfg.SocketEnds = fp.Stats().TCPEnds
			say("socket-ends %t %s", cfg.SocketEnds, fp.Stats().TCPEndsWhy)
			say("end-bytes %t %s", fp.Stats().TCPEndBytes, fp.Stats().TCPEndBytesWhy)
			// The sockets' live counts, as the daemon wires them, unless
			// LATCH_TEST_LIVE_BYTES=off.
			if fp.Stats().TCPLiveBytes && os.Getenv("LATCH_TEST_LIVE_BYTES") != "off" {
				cfg.SocketCounts = func(fn func(local, remote netip.AddrPort, bytes SocketBytes)) error {
					return fp.SocketCounts(func(local, remote netip.AddrPort, c fastpath.Counts) {
						fn(local, remote, SocketBytes{Out: c.Out, In: c.In})
					})
				}
			}
			say("live-bytes %t %s", cfg.SocketCounts != nil, fp.Stats().TCPLiveBytesWhy)
		}
	}
	var b *Backend
	switch notrack {
	case "":
	case "on":
		if why := fp.Notrack(); why != "" {
			fmt.Fprintln(os.Stderr, why)
			return 1
		}
		cfg.FastSockets = fp
	case "noremark":
		cfg.FastSockets = noRemark{fp}
	default:
		fmt.Fprintf(os.Stderr, "LATCH_TEST_NOTRACK=%q: want on or noremark\n", notrack)
		return 2
	}
	if notrack != "" {
		cfg.Ready = func() { say("ready"); say("notrack %v", b.Notrack()) }
	}
	if cfg.FastSocketPin != "" {
		// Once the ruleset is installed, after "ready" (which startDaemon
		// waits for, discarding the lines before it).
		ready := cfg.Ready
		cfg.Ready = func() {
			ready()
			if cfg.FastSenderStash != "" {
				// With its maps' ids, the datagrams' and the ports' (the
				// test opens them by id: the pin is in this process's
				// mount namespace).
				var id, ports ebpf.MapID
				if m := b.stashMap.Load(); m != nil {
					if info, err := m.sent.Info(); err == nil {
						id, _ = info.ID()
					}
					if info, err := m.ports.Info(); err == nil {
						ports, _ = info.ID()
					}
				}
				say("sender-stash %v %d %d", b.FastSenderStash(), id, ports)
			}
			say("socket-pin %v", b.FastSocketPin())
			if pinOnly != nil {
				st := pinOnly.Stats()
				say("receive-check %v %s", st.SocketPinReceive, st.SocketPinReceiveWhy)
			}
		}
	}
	var err error
	b, err = New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if fp != nil {
		fpCtx, stopFP := context.WithCancel(context.Background())
		fpDone := make(chan struct{})
		go func() {
			defer close(fpDone)
			fp.Run(fpCtx, func(d fastpath.Decision) {
				// A connect the kernel fast path decided (fastHits.hitFor).
				say("fast-hit %s %s %s %s rule=%d", d.Action, d.Protocol, d.Local, d.Remote, d.RuleID)
			}, func(e fastpath.End) {
				if os.Getenv("LATCH_TEST_PRINT_ENDS") != "" {
					say("end %s %s counted=%t bytes_out=%d bytes_in=%d packets_out=%d packets_in=%d",
						e.Local, e.Remote, e.Counted, e.Bytes.Out, e.Bytes.In, e.Packets.Out, e.Packets.In)
				}
				var bytes *SocketBytes
				if e.Counted && os.Getenv("LATCH_TEST_END_BYTES") != "off" {
					bytes = &SocketBytes{Out: e.Bytes.Out, In: e.Bytes.In}
				}
				b.SocketEnded(e.Local, e.Remote, e.Time, bytes)
			})
		}()
		defer func() { stopFP(); <-fpDone }()
	}
	if pinOnly != nil {
		// The receive check's reports, as the daemon wires them; each
		// also said ("pin-moved PROTO LOCAL REMOTE COOKIE").
		go pinOnly.ReadPinMoves(func(m fastpath.PinMove) {
			say("pin-moved %d %s %s %d", m.Protocol, m.Local, m.Remote, m.Cookie)
			b.PinMoved(m.Protocol, m.Local, m.Remote, m.Cookie)
		})
	}
	say("backend %s", b.Name())
	if cfg.FastUDPMatch != "" {
		go func() {
			// The ruleset is installed once Ready has been said.
			for i := 0; i < 300; i++ {
				if err := b.FastUDP(); err == nil || !strings.Contains(err.Error(), "not installed yet") {
					say("fast-udp %v", err)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	if cfg.FastLease != "" {
		go func() {
			for i := 0; i < 300; i++ {
				if err := b.FastLease(); err == nil || !strings.Contains(err.Error(), "not installed yet") {
					say("fast-lease %v", err)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	policy, err := parsePolicy(os.Getenv("LATCH_TEST_POLICY"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// LATCH_TEST_POLICY_AFTER: the policy from the first SIGUSR1 on, set
	// before that signal's Redecide (a rule change, then its Redecide).
	var policyAfter map[int]policyAction
	if s := os.Getenv("LATCH_TEST_POLICY_AFTER"); s != "" {
		if policyAfter, err = parsePolicy(s); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	// LATCH_TEST_POLICY_AFTER2: the policy from the second SIGUSR1 on (a
	// second rule change).
	var policyAfter2 map[int]policyAction
	if s := os.Getenv("LATCH_TEST_POLICY_AFTER2"); s != "" {
		if policyAfter2, err = parsePolicy(s); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	var policyMu sync.Mutex
	// LATCH_TEST_ADDR_POLICY decides by remote address first: "198.18.0.2=allow".
	addrPolicy := map[netip.Addr]policyAction{}
	for _, item := range strings.Split(os.Getenv("LATCH_TEST_ADDR_POLICY"), ",") {
		if item == "" {
			continue
		}
		k, v, _ := strings.Cut(item, "=")
		a, err := netip.ParseAddr(k)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		act, err := parsePolicy("*=" + v)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		addrPolicy[a] = act[-1]
	}
	quiet := os.Getenv("LATCH_TEST_QUIET") != ""
	// LATCH_TEST_DENY_UID: deny whatever this user's sockets send, before
	// any other policy (a program no rule allows).
	denyUID := os.Getenv("LATCH_TEST_DENY_UID")
	dec := intercept.DeciderFunc(func(req *engine.Request, verdict func(engine.Verdict)) {
		if !quiet {
			say("held %s %s %s %s uid=%d pid=%d exe=%s", req.Direction, req.Protocol, req.Local, req.Remote, req.UID, req.PID, req.Exe)
		}
		port := req.Remote.Port()
		if req.Direction == engine.Inbound {
			port = req.Local.Port()
		}
		act, ok := addrPolicy[req.Remote.Addr()]
		if denyUID != "" && strconv.Itoa(int(req.UID)) == denyUID {
			act, ok = policyAction{action: engine.Deny}, true
		}
		policyMu.Lock()
		pol := policy
		policyMu.Unlock()
		if !ok && req.Direction == engine.Inbound {
			act, ok = pol[int(port)|inboundOnly]
		}
		if !ok {
			act, ok = pol[int(port)]
		}
		if !ok {
			act = pol[-1]
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
		changes := 0
		for range usr1 {
			changes++
			next := policyAfter
			if changes > 1 && policyAfter2 != nil {
				next = policyAfter2
			}
			if next != nil {
				policyMu.Lock()
				policy = next
				policyMu.Unlock()
			}
			n, err := b.Redecide(func(r *engine.Request) bool {
				return int(r.Remote.Port()) == redecidePort || int(r.Local.Port()) == redecidePort
			})
			say("redecided %d %v", n, err)
		}
	}()
	stopProfile, err := startCPUProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stopProfile()
	runErr := b.Run(ctx, dec)
	st, _ := json.Marshal(b.Stats())
	say("stats %s", st)
	if runErr != nil {
		fmt.Fprintln(os.Stderr, runErr)
		return 1
	}
	return 0
}

// fastAllow stores in fp, through the API the daemon uses once a rule decided,
// a verdict allowing TCP connects of one program to each of a few remotes (rule
// 1): spec is "PID EXE UID REMOTE,REMOTE..." (LATCH_TEST_FAST_ALLOW; the test
// process, which dials from the hooks' cgroup, see fastHits). Its connects
// there are then decided by the connect hooks, as the daemon's fast connects
// are.
func fastAllow(fp *fastpath.FastPath, spec string) error {
	f := strings.Fields(spec)
	if len(f) != 4 {
		return fmt.Errorf("LATCH_TEST_FAST_ALLOW=%q: want PID EXE UID REMOTE,REMOTE", spec)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return fmt.Errorf("LATCH_TEST_FAST_ALLOW=%q: pid: %w", spec, err)
	}
	uid, err := strconv.Atoi(f[2])
	if err != nil {
		return fmt.Errorf("LATCH_TEST_FAST_ALLOW=%q: uid: %w", spec, err)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		return err
	}
	tk := fp.Ticket()
	for _, r := range strings.Split(f[3], ",") {
		remote, err := netip.ParseAddrPort(r)
		if err != nil {
			return fmt.Errorf("LATCH_TEST_FAST_ALLOW=%q: %w", spec, err)
		}
		req := &engine.Request{Direction: engine.Outbound, Protocol: engine.TCP, Remote: remote, PID: int32(pid), Exe: f[1], UID: int32(uid), Identity: engine.IdentityVerified}
		ok, err := fp.Remember(tk, req, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1})
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the fast path did not store the allow of %s (pid %d) to %v", f[1], pid, remote)
		}
	}
	return nil
}

// startCPUProfile writes a CPU profile to $LATCH_TEST_CPUPROFILE, if set, until stop.
func startCPUProfile() (stop func(), err error) {
	path := os.Getenv("LATCH_TEST_CPUPROFILE")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

type policyAction struct {
	action engine.Action
	delay  time.Duration
}

// inboundOnly marks a policy key that applies to inbound requests only
// ("in:9001=allow"), before the port's entry for both directions.
const inboundOnly = 1 << 16

// parsePolicy parses "9001=allow,9002=reject,9004=allow@3s,*=deny" (port -1 is
// "*"); "in:9001=allow" decides only inbound requests to local port 9001.
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
		k, in := strings.CutPrefix(k, "in:")
		if k != "*" {
			var err error
			if port, err = strconv.Atoi(k); err != nil || port < 0 || port > 65535 {
				return nil, fmt.Errorf("policy item %q: want a port: %v", item, err)
			}
			if in {
				port |= inboundOnly
			}
		} else if in {
			return nil, fmt.Errorf("policy item %q: in: wants a port", item)
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

// instantResolver answers at once: it measures what the attribution hand-off costs
// without the cost of attribution itself. With slowPort, connections to that remote
// port take 3s to attribute.
type instantResolver struct{ slowPort uint16 }

func (r instantResolver) ResolveDev(_ engine.Protocol, _, remote netip.AddrPort, _ int32, _ int) (procattr.Process, error) {
	if r.slowPort != 0 && remote.Port() == r.slowPort {
		time.Sleep(3 * time.Second)
	}
	return procattr.Process{PID: 1, Exe: "/instant", Identity: engine.IdentityVerified, UID: 0}, nil
}

func (instantResolver) ResolveInbound(engine.Protocol, netip.AddrPort, netip.AddrPort, int) (procattr.Process, error) {
	return procattr.Process{PID: 1, Exe: "/instant", Identity: engine.IdentityVerified, UID: 0}, nil
}
