package windows

// End-to-end tests: the Backend against the real driver C code running under the
// kernel emulation (driver/build/latch-sim). Connections are injected at the ALE
// layers through latch-sim's control socket, exactly as WFP would classify them, and
// their outcome is read back.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/proto"
)

var (
	simOnce  sync.Once
	simPath  string
	simErr   error
	simSkip  string
	simBuild string // private build directory, removed by TestMain
)

func TestMain(m *testing.M) {
	code := m.Run()
	if simBuild != "" {
		os.RemoveAll(simBuild)
	}
	os.Exit(code)
}

// buildSim builds latch-sim once per test binary with `make -C driver sim`, into a
// directory of its own so that a concurrent build of driver/build cannot swap the
// binary under a running test.
func buildSim(t testing.TB) string {
	t.Helper()
	simOnce.Do(func() {
		for _, tool := range []string{"make", "gcc"} {
			if _, err := exec.LookPath(tool); err != nil {
				simSkip = tool + " is not installed: cannot build the driver's emulation (driver/); CI has it"
				return
			}
		}
		root, err := filepath.Abs(filepath.Join("..", "..", ".."))
		if err != nil {
			simErr = err
			return
		}
		if simBuild, err = os.MkdirTemp("", "latch-sim-build-"); err != nil {
			simErr = err
			return
		}
		driver := filepath.Join(root, "driver")
		out, err := exec.Command("make", "-s", "-C", driver, "BUILD="+simBuild, "sim").CombinedOutput()
		if err != nil {
			simErr = fmt.Errorf("make -C %s sim: %v\n%s", driver, err, out)
			return
		}
		simPath = filepath.Join(simBuild, "latch-sim")
	})
	if simSkip != "" {
		t.Skip(simSkip)
	}
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simPath
}

// sim is a running latch-sim.
type sim struct {
	t       testing.TB
	cmd     *exec.Cmd
	port    string
	control string
	stderr  *bytes.Buffer
	exited  chan struct{}

	mu  sync.Mutex
	ctl net.Conn
	r   *bufio.Reader
}

type lockedBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

func startSim(t testing.TB, args ...string) *sim {
	t.Helper()
	bin := buildSim(t)
	// Unix socket paths must be short; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "latch-sim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &sim{t: t, port: filepath.Join(dir, "port"), control: filepath.Join(dir, "ctl"), exited: make(chan struct{})}
	s.cmd = exec.Command(bin, append([]string{"--port", s.port, "--control", s.control}, args...)...)
	stderr := &lockedBuffer{}
	s.cmd.Stderr = stderr
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ready ") {
				ready <- line
			}
		}
		s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			stderr.mu.Lock()
			t.Logf("latch-sim stderr:\n%s", stderr.String())
			stderr.mu.Unlock()
		}
	})
	select {
	case <-ready:
	case <-s.exited:
		t.Fatalf("latch-sim exited before it was ready: %s", stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("latch-sim did not become ready in 20 s")
	}
	c, err := net.Dial("unix", s.control)
	if err != nil {
		t.Fatal(err)
	}
	s.ctl, s.r = c, bufio.NewReader(c)
	t.Cleanup(func() { c.Close() })
	return s
}

// do sends one control command and returns the reply line.
func (s *sim) do(format string, args ...any) string {
	s.t.Helper()
	line := fmt.Sprintf(format, args...)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ctl.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := s.ctl.Write([]byte(line + "\n")); err != nil {
		s.t.Fatalf("control %q: %v", line, err)
	}
	reply, err := s.r.ReadString('\n')
	if err != nil {
		s.t.Fatalf("control %q: %v", line, err)
	}
	return strings.TrimSuffix(reply, "\n")
}

// connect injects a connection; spec is "v4 out tcp LADDR LPORT RADDR RPORT pid=N path=P".
func (s *sim) connect(tag, spec string) {
	s.t.Helper()
	if got := s.do("connect %s %s", tag, spec); got != "ok "+tag {
		s.t.Fatalf("connect %s %s: %s", tag, spec, got)
	}
}

// wait returns the connection's final state, or "pending" after ms.
func (s *sim) wait(tag string, ms int) string {
	s.t.Helper()
	return s.do("wait %s %d", tag, ms)
}

// stats returns the driver's counters as latch-sim reports them.
func (s *sim) stats() map[string]uint64 {
	s.t.Helper()
	line := s.do("stats")
	out := map[string]uint64{}
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		n, err := strconv.ParseUint(v, 10, 64)
		if !ok || err != nil {
			s.t.Fatalf("stats: %q", line)
		}
		out[k] = n
	}
	return out
}

// unload unloads the driver and requires the emulation's verifier to find nothing
// (no leak, no pend left incomplete, no IRQL violation).
func (s *sim) unload() {
	s.t.Helper()
	if got := s.do("unload"); got != "clean" {
		s.t.Fatalf("unload: %s", got)
	}
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.t.Fatal("latch-sim did not exit after unload")
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		s.t.Fatalf("latch-sim exited with %d", code)
	}
}

// simDecider decides like a small rule set: remote port 443, or local port 53 inbound,
// allowed by rule 1; remote port 25 denied by rule 2; remote port 9 rejected by rule
// 3; everything else is a question nobody answers.
type simDecider struct {
	asked     atomic.Int64
	denyHTTPS atomic.Bool // the rules changed: port 443 is denied by rule 4
	mu        sync.Mutex
	reqs      map[uint16]engine.Request // by remote port (outbound) or local port (inbound)
	all       []engine.Request
}

func (d *simDecider) sawLocalPort(p uint16) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.all {
		if r.Local.Port() == p {
			return true
		}
	}
	return false
}

func (d *simDecider) Decide(req *engine.Request, verdict func(engine.Verdict)) {
	d.asked.Add(1)
	key := req.Remote.Port()
	if req.Direction == engine.Inbound {
		key = req.Local.Port()
	}
	d.mu.Lock()
	if d.reqs == nil {
		d.reqs = map[uint16]engine.Request{}
	}
	d.reqs[key] = *req
	d.all = append(d.all, *req)
	d.mu.Unlock()
	switch {
	case d.denyHTTPS.Load() && req.Remote.Port() == 443:
		verdict(engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 4})
	case req.Direction == engine.Outbound && req.Remote.Port() == 443,
		req.Direction == engine.Inbound && req.Local.Port() == 53:
		verdict(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1})
	case req.Remote.Port() == 25:
		verdict(engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 2})
	case req.Remote.Port() == 9:
		verdict(engine.Verdict{Action: engine.Reject, Reason: engine.ReasonRule, RuleID: 3})
	}
}

func (d *simDecider) request(key uint16) (engine.Request, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.reqs[key]
	return r, ok
}

// capturingDialer dials the emulated port and remembers the latest Port.
type capturingDialer struct {
	path string
	mu   sync.Mutex
	last Port
	n    int
}

func (c *capturingDialer) dial(ctx context.Context) (Port, error) {
	p, err := EmulatedDialer(c.path)(ctx)
	if err == nil {
		c.mu.Lock()
		c.last, c.n = p, c.n+1
		c.mu.Unlock()
	}
	return p, err
}

func (c *capturingDialer) port() Port {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func runBackend(t testing.TB, cfg Config, d intercept.Decider) (*Backend, context.CancelFunc, <-chan error) {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Run(ctx, d)
		close(done) // a test that took the result leaves the cleanup a closed channel
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	// Connected once HELLO went through.
	eventually(t, "the backend connected to latch-sim", func() bool { return b.Stats().Extra["connected"] == 1 })
	return b, cancel, done
}

const curlPath = `\Device\HarddiskVolume3\Windows\System32\curl.exe`

func TestSimAllowDenyRejectTimeout(t *testing.T) {
	s := startSim(t)
	d := &simDecider{}
	devices := &fakeDevices{table: map[string]string{"C:": `\Device\HarddiskVolume3`}}
	b, _, _ := runBackend(t, Config{Dial: EmulatedDialer(s.port), Default: engine.Deny,
		PromptTimeout: 500 * time.Millisecond, Devices: devices}, d)

	s.connect("allow", "v4 out tcp 198.18.0.1 50001 198.19.0.2 443 pid=1234 path="+curlPath)
	s.connect("deny", "v4 out tcp 198.18.0.1 50002 198.19.0.2 25 pid=1234 path="+curlPath)
	s.connect("reject", "v4 out tcp 198.18.0.1 50003 198.19.0.2 9 pid=1234 path="+curlPath)
	s.connect("in6", `v6 in udp 2001:2::1 53 2001:2::2 40000 pid=800 path=\Device\HarddiskVolume3\dns server.exe irql=passive`)
	start := time.Now()
	s.connect("ask", "v4 out tcp 198.18.0.1 50004 198.19.0.2 8080 pid=1234 path="+curlPath)

	for tag, want := range map[string]string{"allow": "permit", "deny": "block", "reject": "block", "in6": "permit"} {
		if got := s.wait(tag, 5000); got != want {
			t.Errorf("%s: %s, want %s", tag, got, want)
		}
	}
	// Nobody answers: held until the driver's deadline (prompt timeout + grace), then
	// the default.
	if got := s.wait("ask", 300); got != "pending" {
		t.Fatalf("unanswered question: %s after 300 ms, want still pending", got)
	}
	if got := s.wait("ask", 10000); got != "block" {
		t.Fatalf("unanswered question: %s, want the default (block)", got)
	}
	if held := time.Since(start); held < 1400*time.Millisecond || held > 8*time.Second {
		t.Errorf("unanswered question held %v, want about 1.5 s (timeout 500 ms + 1 s grace)", held)
	}

	// What the engine saw: the real driver's fields, the program as a DOS path.
	r, ok := d.request(443)
	if !ok || r.Exe != `C:\Windows\System32\curl.exe` || r.PID != 1234 || r.Direction != engine.Outbound ||
		r.Protocol != engine.TCP || r.Remote.String() != "198.19.0.2:443" || r.Local.String() != "198.18.0.1:50001" || r.UID != -1 {
		t.Errorf("request for :443: %+v", r)
	}
	if time.Since(r.Time) > time.Minute || time.Until(r.Time) > time.Minute {
		t.Errorf("request time %v is not the driver's timestamp of now", r.Time)
	}
	r, ok = d.request(53)
	if !ok || r.Exe != `C:\dns server.exe` || r.Direction != engine.Inbound || r.Protocol != engine.UDP ||
		r.Remote.String() != "[2001:2::2]:40000" || r.PID != 800 {
		t.Errorf("inbound request: %+v", r)
	}

	st := b.Stats()
	if st.Held != 5 || st.Allowed != 2 || st.Denied != 1 || st.Rejected != 1 {
		t.Errorf("backend stats %+v, want held 5, allowed 2, denied 1, rejected 1", st)
	}
	// The driver's counters as the backend reads them (STATS_QUERY over the port) and
	// as latch-sim reads them in-process agree, once the last completion is counted.
	var ds map[string]uint64
	eventually(t, "driver counters settle", func() bool {
		ds = s.stats()
		return ds["timed_out"] == 1
	})
	if ds["pended"] != 5 || ds["permitted"] != 2 || ds["blocked"] < 3 || ds["pending_now"] != 0 {
		t.Errorf("driver stats %v", ds)
	}
	st = b.Stats()
	for k, v := range ds {
		if k == "pending_now" || k == "flow_contexts_live" {
			continue // may change between the two reads
		}
		if got := st.Extra["driver_"+k]; got != v {
			t.Errorf("Stats().Extra[driver_%s] = %d, latch-sim says %d", k, got, v)
		}
	}
	s.unload()
}

// TestSimCacheAndRedecide: a rule's verdict is cached in the driver (the same process
// to the same place is not asked again); Redecide flushes it.
func TestSimCacheAndRedecide(t *testing.T) {
	s := startSim(t)
	d := &simDecider{}
	b, _, _ := runBackend(t, Config{Dial: EmulatedDialer(s.port), PromptTimeout: time.Second}, d)
	if err := b.RulesChanged([]engine.Rule{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}); err != nil {
		t.Fatal(err)
	}

	s.connect("c1", "v4 out tcp 198.18.0.1 50001 198.19.0.2 443 pid=1234 path="+curlPath)
	if got := s.wait("c1", 5000); got != "permit" {
		t.Fatalf("c1: %s", got)
	}
	s.connect("c2", "v4 out tcp 198.18.0.1 50002 198.19.0.2 443 pid=1234 path="+curlPath)
	if got := s.wait("c2", 5000); got != "permit" {
		t.Fatalf("c2: %s", got)
	}
	if n := d.asked.Load(); n != 1 {
		t.Fatalf("asked %d times, want once (the second from the driver's cache)", n)
	}
	if hits := s.stats()["cache_hits"]; hits != 1 {
		t.Fatalf("driver cache_hits %d, want 1", hits)
	}
	// The rules change: 443 is denied now. After Redecide the driver's cache no longer
	// answers with the old verdict.
	d.denyHTTPS.Store(true)
	if n, err := b.Redecide(nil); err != nil || n != 2 {
		t.Fatalf("Redecide = %d, %v; want the 2 established flows", n, err)
	}
	s.connect("c3", "v4 out tcp 198.18.0.1 50003 198.19.0.2 443 pid=1234 path="+curlPath)
	if got := s.wait("c3", 5000); got != "block" {
		t.Fatalf("c3 after the rule change and Redecide: %s, want block", got)
	}
	s.unload()
}

// TestSimDisconnectAndReconnect: the service going away completes held connections
// with the default at once; the port breaking makes the backend reconnect by itself;
// a restarted service is served again.
func TestSimDisconnectAndReconnect(t *testing.T) {
	s := startSim(t)
	d := &simDecider{}
	cd := &capturingDialer{path: s.port}
	b, cancel, done := runBackend(t, Config{Dial: cd.dial, Default: engine.Allow, PromptTimeout: 30 * time.Second}, d)

	s.connect("held", "v4 out tcp 198.18.0.1 50001 198.19.0.2 8080 pid=1234 path="+curlPath)
	eventually(t, "the question reached the decider", func() bool { return d.asked.Load() == 1 })
	if got := s.wait("held", 100); got != "pending" {
		t.Fatalf("held: %s, want pending", got)
	}

	// The port breaks under the running service: it reconnects and keeps working.
	cd.port().Close()
	eventually(t, "reconnected", func() bool { return b.Stats().Extra["reconnects"] == 1 && b.Stats().Extra["connected"] == 1 })
	// The held connection got the default (permit) when the client went away, long
	// before its 31 s deadline.
	if got := s.wait("held", 5000); got != "permit" {
		t.Fatalf("held after disconnect: %s, want the default at once (permit)", got)
	}
	s.connect("after", "v4 out tcp 198.18.0.1 50002 198.19.0.2 25 pid=1234 path="+curlPath)
	if got := s.wait("after", 5000); got != "block" {
		t.Fatalf("after reconnect: %s, want block", got)
	}
	if n := s.stats()["no_client_default"]; n != 1 {
		t.Fatalf("no_client_default %d, want 1", n)
	}

	// The service stops: Run returns, the port closes, nothing is held any more.
	s.connect("held2", "v4 out tcp 198.18.0.1 50003 198.19.0.2 8081 pid=1234 path="+curlPath)
	eventually(t, "the second question reached the decider", func() bool { return d.asked.Load() == 3 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if got := s.wait("held2", 5000); got != "permit" {
		t.Fatalf("held2 after the service stopped: %s, want the default (permit)", got)
	}

	// A new service instance connects and is served.
	runBackend(t, Config{Dial: EmulatedDialer(s.port), PromptTimeout: time.Second}, d)
	s.connect("new", "v4 out tcp 198.18.0.1 50004 198.19.0.2 443 pid=1234 path="+curlPath)
	if got := s.wait("new", 5000); got != "permit" {
		t.Fatalf("new service: %s", got)
	}
	s.unload()
}

// TestSimSecondServiceRefused: the port admits one client; a second service says why.
func TestSimSecondServiceRefused(t *testing.T) {
	s := startSim(t)
	runBackend(t, Config{Dial: EmulatedDialer(s.port)}, &simDecider{})
	b2, err := New(Config{Dial: EmulatedDialer(s.port), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = b2.Run(ctx, &simDecider{})
	if !errors.Is(err, ErrPortBusy) || !strings.Contains(err.Error(), "another latch service") {
		t.Fatalf("second Run = %v, want ErrPortBusy", err)
	}
	s.unload()
}

// TestSimMalformedFromService: what the service sends wrong gets an error ACK and
// changes nothing; the driver counts it.
func TestSimMalformedFromService(t *testing.T) {
	s := startSim(t)
	d := &simDecider{}
	cd := &capturingDialer{path: s.port}
	runBackend(t, Config{Dial: cd.dial, PromptTimeout: 30 * time.Second}, d)
	s.connect("held", "v4 out tcp 198.18.0.1 50001 198.19.0.2 8080 pid=1234 path="+curlPath)
	eventually(t, "the question reached the decider", func() bool { return d.asked.Load() == 1 })
	before := s.stats()["malformed_messages"]

	verdict := func(mut func(b []byte)) []byte {
		// A request id the driver holds: the pended connection is the driver's first.
		b, err := proto.Encode(&proto.Verdict{RequestID: 1, Action: proto.ActionPermit})
		if err != nil {
			t.Fatal(err)
		}
		mut(b)
		return b
	}
	helloReply, _ := proto.Encode(&proto.HelloReply{DriverVersion: uint32(proto.Version)})
	bad := map[string][]byte{
		"bad magic":         verdict(func(b []byte) { b[0] = 'X' }),
		"version 1":         verdict(func(b []byte) { b[4] = 1 }),
		"action 9":          verdict(func(b []byte) { b[24] = 9 }),
		"ttl without scope": verdict(func(b []byte) { b[32] = 1 }),
		"length lies":       verdict(func(b []byte) { b[8] = 41 }),
		"reserved set":      verdict(func(b []byte) { b[38] = 1 }),
		"truncated":         verdict(func(b []byte) {})[:39],
		"driver's type":     helloReply,
		"oversized":         append(verdict(func(b []byte) {}), make([]byte, 60)...),
	}
	port := cd.port()
	for name, msg := range bad {
		out := make([]byte, proto.AckSize)
		n, err := port.Send(msg, out)
		if err != nil {
			t.Errorf("%s: Send: %v", name, err)
			continue
		}
		m, err := proto.Decode(out[:n])
		if a, ok := m.(*proto.Ack); err != nil || !ok || a.Status != proto.StatusInvalidParameter {
			t.Errorf("%s: answer %+v, %v; want an ACK with STATUS_INVALID_PARAMETER", name, m, err)
		}
	}
	if got := s.wait("held", 200); got != "pending" {
		t.Fatalf("after malformed verdicts the connection is %s, want still pending", got)
	}
	if got := s.stats()["malformed_messages"] - before; got != uint64(len(bad)) {
		t.Fatalf("driver counted %d malformed messages, want %d", got, len(bad))
	}
	// A well-formed verdict for an id the driver does not hold: STATUS_NOT_FOUND.
	out := make([]byte, proto.AckSize)
	msg, _ := proto.Encode(&proto.Verdict{RequestID: 999999, Action: proto.ActionPermit})
	n, err := port.Send(msg, out)
	m, derr := proto.Decode(out[:n])
	if a, ok := m.(*proto.Ack); err != nil || derr != nil || !ok || a.Status != proto.StatusNotFound {
		t.Fatalf("verdict for an unknown id: %+v, %v, %v; want STATUS_NOT_FOUND", m, err, derr)
	}
	s.unload()
}

// TestSimHelloOfAnotherVersion: the real driver refuses a service of another version,
// and tells the backend so (the backend's handling is unit-tested).
func TestSimHelloOfAnotherVersion(t *testing.T) {
	s := startSim(t)
	p, err := EmulatedDialer(s.port)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	hello, _ := proto.Encode(&proto.Hello{ServiceVersion: 1, DefaultAction: proto.ActionBlock, PendingTimeoutMS: 1000})
	out := make([]byte, proto.HelloReplySize)
	n, err := p.Send(hello, out)
	if err != nil {
		t.Fatal(err)
	}
	m, err := proto.Decode(out[:n])
	r, ok := m.(*proto.HelloReply)
	if err != nil || !ok || r.Status != proto.StatusRevisionMismatch || r.DriverVersion != uint32(proto.Version) {
		t.Fatalf("HELLO v1 answered %+v, %v; want HELLO_REPLY v2 with STATUS_REVISION_MISMATCH", m, err)
	}
	p.Close()
	s.unload()
}

// TestSimManyConcurrent: many connections at once from the emulation's threads, half
// decided by rules and half never answered, each gets its verdict; none is lost.
func TestSimManyConcurrent(t *testing.T) {
	s := startSim(t)
	d := &simDecider{}
	b, _, _ := runBackend(t, Config{Dial: EmulatedDialer(s.port), Default: engine.Deny, PromptTimeout: 200 * time.Millisecond, Readers: 4}, d)
	const n = 200
	for i := range n {
		port := 443
		if i%2 == 1 {
			port = 20000 + i // a question nobody answers
		}
		s.connect(fmt.Sprintf("m%d", i), fmt.Sprintf("v4 out tcp 198.18.0.1 %d 198.19.0.2 %d pid=%d path=%s", 30000+i, port, 100+i, curlPath))
	}
	for i := range n {
		want := "permit"
		if i%2 == 1 {
			want = "block"
		}
		if got := s.wait(fmt.Sprintf("m%d", i), 10000); got != want {
			t.Fatalf("m%d: %s, want %s", i, got, want)
		}
	}
	st := b.Stats()
	if st.Held != n || st.Allowed != n/2 || st.Extra["malformed_messages"] != 0 {
		t.Fatalf("stats %+v", st)
	}
	ds := s.stats()
	if ds["timed_out"] != n/2 || ds["permitted"] != n/2 || ds["pending_now"] != 0 {
		t.Fatalf("driver stats %v", ds)
	}
	s.unload()
}

// BenchmarkSimRoundTrip measures a connection held by the real driver and decided by
// a rule in the service: classify, pend, FltSendMessage over the emulated port, decode,
// decide, VERDICT, complete, reauthorize. The baseline in the same run,
// BenchmarkSimCacheHit, is the same connect answered from the driver's verdict cache
// (the control-socket round trip and the classify, without the service).
func BenchmarkSimRoundTrip(b *testing.B) {
	s := startSim(b)
	runBackend(b, Config{Dial: EmulatedDialer(s.port), CacheTTL: -1, Logf: func(string, ...any) {}}, &simDecider{})
	i := 0
	for b.Loop() {
		i++
		tag := "r" + strconv.Itoa(i)
		s.connect(tag, fmt.Sprintf("v4 out tcp 198.18.0.1 %d 198.19.0.2 443 pid=1234 path=%s", 1024+i%60000, curlPath))
		if got := s.wait(tag, 5000); got != "permit" {
			b.Fatalf("%s: %s", tag, got)
		}
	}
}

func BenchmarkSimCacheHit(b *testing.B) {
	s := startSim(b)
	be, _, _ := runBackend(b, Config{Dial: EmulatedDialer(s.port), Logf: func(string, ...any) {}}, &simDecider{})
	if err := be.RulesChanged([]engine.Rule{{ID: 1}}); err != nil { // rule 1 allows 443 (simDecider)
		b.Fatal(err)
	}
	s.connect("warm", "v4 out tcp 198.18.0.1 1023 198.19.0.2 443 pid=1234 path="+curlPath)
	if got := s.wait("warm", 5000); got != "permit" {
		b.Fatalf("warm: %s", got)
	}
	i := 0
	for b.Loop() {
		i++
		tag := "h" + strconv.Itoa(i)
		s.connect(tag, fmt.Sprintf("v4 out tcp 198.18.0.1 %d 198.19.0.2 443 pid=1234 path=%s", 1024+i%60000, curlPath))
		if got := s.wait(tag, 5000); got != "permit" {
			b.Fatalf("%s: %s", tag, got)
		}
	}
	if hits := s.stats()["cache_hits"]; hits < uint64(i) {
		b.Fatalf("%d of %d connects decided from the driver's cache", hits, i)
	}
}

// TestSimWithEngine runs latch's real engine on the Windows backend and the real
// driver: rules written with DOS paths and Windows service names decide held
// connections, questions appear as prompts and are answered, unanswered ones get the
// engine's default before the driver's own deadline, and a rule change re-decides.
func TestSimWithEngine(t *testing.T) {
	s := startSim(t)
	eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: 400 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	const curl = `C:\Windows\System32\curl.exe`
	allowHTTPS, err := eng.AddRule(engine.Rule{App: curl, Protocol: engine.TCP, Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Allow})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []engine.Rule{
		{App: curl, Port: engine.PortRange{Lo: 25, Hi: 25}, Action: engine.Deny},
		{Service: "dnscache", Protocol: engine.UDP, Port: engine.PortRange{Lo: 53, Hi: 53}, Action: engine.Allow},
	} {
		if _, err := eng.AddRule(r); err != nil {
			t.Fatal(err)
		}
	}
	b, _, _ := runBackend(t, Config{
		Dial: EmulatedDialer(s.port), Default: engine.Deny, PromptTimeout: 400 * time.Millisecond,
		Devices:  &fakeDevices{table: map[string]string{"C:": `\Device\HarddiskVolume3`}},
		Services: &fakeServices{byPID: map[uint32][]string{880: {"Dnscache", "NlaSvc"}}},
	}, eng)

	const svchost = `\Device\HarddiskVolume3\Windows\System32\svchost.exe`
	s.connect("https", "v4 out tcp 198.18.0.1 50001 198.19.0.2 443 pid=1234 path="+curlPath)
	s.connect("smtp", "v4 out tcp 198.18.0.1 50002 198.19.0.2 25 pid=1234 path="+curlPath)
	s.connect("dns", "v4 out udp 198.18.0.1 50003 198.19.0.53 53 pid=880 path="+svchost)
	s.connect("otherdns", "v4 out udp 198.18.0.1 50004 198.19.0.53 53 pid=990 path="+svchost)
	for tag, want := range map[string]string{"https": "permit", "smtp": "block", "dns": "permit"} {
		if got := s.wait(tag, 5000); got != want {
			t.Errorf("%s: %s, want %s", tag, got, want)
		}
	}
	// An svchost that hosts no Dnscache is not covered by the service rule: it is a
	// question, and nobody answers it.
	if got := s.wait("otherdns", 5000); got != "block" {
		t.Errorf("otherdns: %s, want block (default after the prompt timeout)", got)
	}

	// A question, seen as a prompt with the program's DOS path, answered once.
	s.connect("ask", "v4 out tcp 198.18.0.1 50005 198.19.0.2 8080 pid=1234 path="+curlPath)
	var prompt engine.Prompt
	eventually(t, "the prompt", func() bool {
		for _, p := range eng.Prompts() {
			if p.Request.Remote.Port() == 8080 {
				prompt = p
				return true
			}
		}
		return false
	})
	if prompt.Request.Exe != curl || prompt.Request.PID != 1234 {
		t.Errorf("prompt request %+v", prompt.Request)
	}
	if _, err := eng.Answer(prompt.ID, engine.Answer{Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	if got := s.wait("ask", 5000); got != "permit" {
		t.Errorf("answered question: %s, want permit", got)
	}

	// Nobody answers: the engine's timeout verdict reaches the driver before the
	// driver's own deadline (prompt timeout + grace) would have applied the default.
	start := time.Now()
	s.connect("unanswered", "v4 out tcp 198.18.0.1 50006 198.19.0.2 8081 pid=1234 path="+curlPath)
	if got := s.wait("unanswered", 5000); got != "block" {
		t.Errorf("unanswered: %s, want block", got)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 1300*time.Millisecond {
		t.Errorf("unanswered question decided after %v, want about the 400 ms prompt timeout", d)
	}
	if n := s.stats()["timed_out"]; n != 0 {
		t.Errorf("the driver timed out %d connections itself; the engine should have answered first", n)
	}

	// The allow rule goes; Redecide flushes the driver's cache, so the same connection
	// is asked again instead of being permitted from the cache.
	if _, err := eng.RemoveRule(allowHTTPS.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Redecide(nil); err != nil {
		t.Fatal(err)
	}
	s.connect("https2", "v4 out tcp 198.18.0.1 50007 198.19.0.2 443 pid=1234 path="+curlPath)
	if got := s.wait("https2", 5000); got != "block" {
		t.Errorf("https after the allow rule was removed: %s, want block (asked, unanswered)", got)
	}
	s.unload()
}

// TestSimRuleChangeFlushedBeforeReturn: with the real engine and the real driver, a
// rule's allow is cached in the driver; once the call that replaces it with a deny
// rule has returned, the very next connection is decided by the deny rule, not by the
// cached allow (FollowRules: FLUSH acknowledged before the rule change returns). A
// question answered by a person is not cached: the next connection is asked again.
func TestSimRuleChangeFlushedBeforeReturn(t *testing.T) {
	s := startSim(t)
	eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: 400 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	const curl = `C:\Windows\System32\curl.exe`
	if _, err := eng.AddRule(engine.Rule{App: curl, Protocol: engine.TCP, Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	b, _, _ := runBackend(t, Config{
		Dial: EmulatedDialer(s.port), Default: engine.Deny, PromptTimeout: 400 * time.Millisecond,
		Devices: &fakeDevices{table: map[string]string{"C:": `\Device\HarddiskVolume3`}},
	}, eng)
	b.FollowRules(eng)
	if why := b.CacheOff(); why != "" {
		t.Fatalf("CacheOff = %q, want the cache on", why)
	}

	for i, tag := range []string{"c1", "c2"} {
		s.connect(tag, fmt.Sprintf("v4 out tcp 198.18.0.1 %d 198.19.0.2 443 pid=1234 path=%s", 50001+i, curlPath))
		if got := s.wait(tag, 5000); got != "permit" {
			t.Fatalf("%s: %s, want permit", tag, got)
		}
	}
	if hits := s.stats()["cache_hits"]; hits != 1 {
		t.Fatalf("driver cache_hits %d, want 1 (c2 from the rule's cached allow)", hits)
	}

	// The allow rule is replaced by a deny rule; then, at once, the same connection.
	if err := eng.ReplaceRules([]engine.Rule{{App: curl, Protocol: engine.TCP, Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Deny}}); err != nil {
		t.Fatal(err)
	}
	s.connect("c3", "v4 out tcp 198.18.0.1 50003 198.19.0.2 443 pid=1234 path="+curlPath)
	if got := s.wait("c3", 5000); got != "block" {
		t.Fatalf("c3 right after the deny rule replaced the allow rule: %s, want block", got)
	}
	if hits := s.stats()["cache_hits"]; hits != 1 {
		t.Errorf("driver cache_hits %d after the rule change, want still 1 (c3 decided by the service)", hits)
	}

	// A person's answer decides its own connection only.
	s.connect("ask1", "v4 out tcp 198.18.0.1 50004 198.19.0.2 8080 pid=1234 path="+curlPath)
	var prompt engine.Prompt
	eventually(t, "the prompt", func() bool {
		for _, p := range eng.Prompts() {
			if p.Request.Remote.Port() == 8080 {
				prompt = p
				return true
			}
		}
		return false
	})
	if _, err := eng.Answer(prompt.ID, engine.Answer{Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	if got := s.wait("ask1", 5000); got != "permit" {
		t.Fatalf("answered question: %s, want permit", got)
	}
	s.connect("ask2", "v4 out tcp 198.18.0.1 50005 198.19.0.2 8080 pid=1234 path="+curlPath)
	if got := s.wait("ask2", 5000); got != "block" {
		t.Errorf("the same connection after a once answer: %s, want block (asked again, unanswered)", got)
	}
	s.unload()
}
