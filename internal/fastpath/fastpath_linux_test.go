package fastpath

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/cgroup2"
	"github.com/latchfw/latch/internal/engine"
)

// The test binary doubles as the client whose connections the hooks see: with
// LATCH_FP_CLIENT set, it reads addresses from stdin, one a line, connects to each
// and prints "ok MARK" or "err ERRNO" per line.
func TestMain(m *testing.M) {
	if os.Getenv("LATCH_FP_CLIENT") != "" {
		client()
		return
	}
	os.Exit(m.Run())
}

func client() {
	fmt.Println("ready", os.Getpid())
	sc := bufio.NewScanner(os.Stdin)
	held := -1 // the socket of "tfo", waiting for "send"
	for sc.Scan() {
		if clientPending(sc.Text(), &held) {
			continue
		}
		// "ADDRPORT": connect a new socket, report the mark; "local ADDRPORT...":
		// connect one new socket to each in turn (a socket that connects again),
		// report the mark and local address after each; "-" in place of an
		// ADDRPORT: connect(AF_UNSPEC), report the mark after it.
		f := strings.Fields(sc.Text())
		withLocal := len(f) > 1 && f[0] == "local"
		if withLocal {
			f = f[1:]
		}
		// "rst local ADDRPORT": the socket is closed with a reset (SO_LINGER 0).
		reset := len(f) > 2 && f[0] == "rst" && f[1] == "local"
		if reset {
			f, withLocal = f[2:], true
		}
		var aps []netip.AddrPort
		for _, a := range f {
			if a == "-" && len(aps) > 0 {
				aps = append(aps, netip.AddrPort{})
				continue
			}
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				fmt.Println("bad", err)
				break
			}
			aps = append(aps, ap)
		}
		if len(aps) != len(f) || len(aps) == 0 {
			continue
		}
		fam := unix.AF_INET6
		if aps[0].Addr().Is4() {
			fam = unix.AF_INET
		}
		fd, err := unix.Socket(fam, unix.SOCK_STREAM, 0)
		if err != nil {
			fmt.Println("err socket", err)
			continue
		}
		var out []string
		for _, ap := range aps {
			if !ap.IsValid() {
				unspec := unix.RawSockaddr{Family: unix.AF_UNSPEC}
				_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&unspec)), unsafe.Sizeof(unspec))
				mark, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
				out = append(out, fmt.Sprintf("unspec %d %#x", e, mark))
				continue
			}
			var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
			if ap.Addr().Is4() {
				sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
			}
			err = unix.Connect(fd, sa)
			mark, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
			r := fmt.Sprintf("ok %#x", mark)
			if err != nil {
				r = fmt.Sprintf("err %d %#x", err.(syscall.Errno), mark)
			}
			if withLocal {
				local := "-"
				switch la, _ := unix.Getsockname(fd); la := la.(type) {
				case *unix.SockaddrInet4:
					local = netip.AddrPortFrom(netip.AddrFrom4(la.Addr), uint16(la.Port)).String()
				case *unix.SockaddrInet6:
					local = netip.AddrPortFrom(netip.AddrFrom16(la.Addr).Unmap(), uint16(la.Port)).String()
				}
				r += " " + local
			}
			out = append(out, r)
		}
		if reset {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		unix.Close(fd)
		fmt.Println(strings.Join(out, "; "))
	}
}

// testClient is a client process running in a cgroup.
type testClient struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	pid int32
	exe string
}

func startClient(t *testing.T, exe string, cgroupFD int) *testClient {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "LATCH_FP_CLIENT=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgroupFD}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start client %s: %v", exe, err)
	}
	c := &testClient{cmd: cmd, in: in, out: bufio.NewScanner(out), pid: int32(cmd.Process.Pid), exe: exe}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	if line := c.line(t); !strings.HasPrefix(line, "ready") {
		t.Fatalf("client said %q", line)
	}
	return c
}

func (c *testClient) line(t *testing.T) string {
	t.Helper()
	if !c.out.Scan() {
		t.Fatalf("client ended: %v", c.out.Err())
	}
	return c.out.Text()
}

// say gives the client the command line and returns its report.
func (c *testClient) say(t *testing.T, line string) string {
	t.Helper()
	fmt.Fprintln(c.in, line)
	return c.line(t)
}

// connect makes the client connect to ap and returns its report.
func (c *testClient) connect(t *testing.T, ap netip.AddrPort) string {
	t.Helper()
	return c.say(t, ap.String())
}

// testCgroup makes a cgroup v2 directory for this test and returns its path and an
// open fd of it; both go when the test ends.
func testCgroup(t testing.TB) (string, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root, err := cgroup2.Find()
	if err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(root, fmt.Sprintf("latch-fastpath-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s not removed", dir)
	})
	return dir, fd
}

// netnsCount numbers the namespaces of ownNetns.
var netnsCount atomic.Int64

// ownNetns moves the test's goroutine (its OS thread, locked to it for the rest
// of the test: the thread ends with it) into a new network namespace with lo
// up, and returns enter, which moves another goroutine (a subtest's) there too.
// A process the goroutine starts (the test client) is in it as well. Call it
// before Open: the fast path serves the namespace it is opened in, reports the
// end of every TCP socket of it and its iterators walk them all. In the root
// namespace those are every other process's too, and other test binaries run
// at the same time (go test runs packages in parallel, and other people's
// tests run on a shared machine): their bursts of sockets (this package's
// TestEndsDoNotCrowdOutDecisions makes thousands) filled the channel of ends,
// dropping the end a test waited for, or the ring buffer of ends (ends lost),
// and their RedecideSockets moved the marks of this test's sockets.
func ownNetns(t *testing.T) (enter func(t *testing.T)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ns := fmt.Sprintf("latch-fp-%d-%d", os.Getpid(), netnsCount.Add(1))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v: %s", ns, err, out)
	}
	f, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	enter = func(t *testing.T) {
		t.Helper()
		// Never unlocked: the thread leaves the namespace by ending.
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Fatalf("setns %s: %v", ns, err)
		}
	}
	enter(t)
	return enter
}

// waitReading waits until fp.Run reads the decisions (SyncDecisions works):
// a goroutine started to call Run may not have run yet when it is asked.
func waitReading(t *testing.T, fp *FastPath) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		fp.syncMu.Lock()
		running := fp.syncRunning
		fp.syncMu.Unlock()
		if running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Run does not read the decisions after 10 s")
		}
	}
}

func listen(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func openTest(t *testing.T, cg string, cfg Config) *FastPath {
	t.Helper()
	cfg.CgroupPath = cg
	fp, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { fp.Close() })
	return fp
}

// runDecisions runs fp.Run until the test ends and returns the decisions it reads.
func runDecisions(t *testing.T, fp *FastPath) <-chan Decision {
	decisions := make(chan Decision, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- fp.Run(ctx, func(d Decision) { decisions <- d }, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	return decisions
}

func req(c *testClient, remote netip.AddrPort) *engine.Request {
	return &engine.Request{Direction: engine.Outbound, Protocol: engine.TCP, Remote: remote, PID: c.pid, Exe: c.exe, UID: int32(os.Getuid()), Identity: engine.IdentityVerified}
}

func ruleVerdict(a engine.Action, id engine.RuleID) engine.Verdict {
	return engine.Verdict{Action: a, Reason: engine.ReasonRule, RuleID: id}
}

// TestFastMarkEndsWithItsConnect: the mark that lets a SYN pass (MarkFastAllow)
// does not outlive the connect it was given for. Established, a fast socket
// carries MarkFastFlow instead (the ruleset lets no SYN pass by it); when the
// socket moves to TCP_CLOSE (connect(AF_UNSPEC) ends its connection, any program
// may; a refused connect) latch's mark is cleared. A daemon that dies takes its
// connect hooks along, and without this such a socket could connect again
// anywhere, its SYN carrying MarkFastAllow (test/e2e
// TestFastMarkAfterDaemonDeathFailsClosed).
func TestFastMarkEndsWithItsConnect(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if st := fp.Stats(); !st.TCPLocal {
		t.Skipf("no sock_ops program: %s", st.TCPLocalWhy)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	open := listen(t, "tcp4", "127.0.0.1:0")
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	for _, to := range []netip.AddrPort{open, closed} {
		if ok, err := fp.Remember(fp.Ticket(), req(c, to), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
			t.Fatalf("Remember %v: %v %v", to, ok, err)
		}
	}
	runDecisions(t, fp)
	r := c.say(t, "local "+open.String()+" -")
	connected, disconnected, _ := strings.Cut(r, "; ")
	if !strings.HasPrefix(connected, "ok 0x60000000 ") {
		t.Errorf("established fast connect: %q, want the mark 0x60000000 (MarkFastFlow)", connected)
	}
	if disconnected != "unspec 0 0x0" {
		t.Errorf("after connect(AF_UNSPEC): %q, want the mark cleared", disconnected)
	}
	if r := c.say(t, "local "+closed.String()); !strings.HasPrefix(r, fmt.Sprintf("err %d 0x0 ", unix.ECONNREFUSED)) {
		t.Errorf("refused fast connect: %q, want ECONNREFUSED and the mark cleared", r)
	}
	if s := fp.Stats(); s.HitsAllow != 2 {
		t.Errorf("%d fast-path hits, want 2: %+v", s.HitsAllow, s)
	}
}

// TestHitsMarkAndRecord: a stored allow marks the next connection's socket
// MarkFastAllow and records the decision; a reject marks it MarkReject; an
// unruled destination misses and leaves the mark alone; a rule change makes every
// entry miss.
// TestHitsMarkAndRecord runs with the programs reading the task's executable
// through BTF pointers (task_btf, where the kernel allows it) and through
// bpf_probe_read_kernel: both must build the key the daemon stores.
func TestHitsMarkAndRecord(t *testing.T) {
	for _, noTaskBTF := range []bool{false, true} {
		t.Run(fmt.Sprintf("noTaskBTF=%v", noTaskBTF), func(t *testing.T) {
			if !noTaskBTF && !taskBTF() {
				t.Skip("the kernel refuses bpf_get_current_task_btf in the fast path's programs")
			}
			testHitsMarkAndRecord(t, noTaskBTF)
		})
	}
}

func testHitsMarkAndRecord(t *testing.T, noTaskBTF bool) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{noTaskBTF: noTaskBTF})
	if fp.taskBTF == noTaskBTF {
		t.Fatalf("the programs read the task through BTF: %v, want %v", fp.taskBTF, !noTaskBTF)
	}
	rules := []engine.Rule{{ID: 1, Action: engine.Allow}, {ID: 2, Action: engine.Deny}}
	if err := fp.RulesChanged(rules); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	allowed := listen(t, "tcp4", "127.0.0.1:0")
	denied := listen(t, "tcp6", "[::1]:0")
	other := listen(t, "tcp4", "127.0.0.1:0")

	decisions := runDecisions(t, fp)

	tk := fp.Ticket()
	if ok, err := fp.Remember(tk, req(c, allowed), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember allow: %v %v", ok, err)
	}
	if ok, err := fp.Remember(tk, req(c, denied), ruleVerdict(engine.Deny, 2)); !ok || err != nil {
		t.Fatalf("Remember deny: %v %v", ok, err)
	}
	// Established: the socket's MarkFastAllow became MarkFastFlow.
	if got := c.connect(t, allowed); got != "ok 0x60000000" {
		t.Errorf("ruled connect: %q, want the fast flow mark", got)
	}
	// The same destination through an IPv6 socket, as an IPv4-mapped address: the
	// packets are IPv4, so is the entry.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(allowed.Addr().As16()), allowed.Port())
	if got := c.connect(t, mapped); got != "ok 0x60000000" {
		t.Errorf("ruled connect to %v: %q, want the fast flow mark", mapped, got)
	}
	if got := c.connect(t, denied); got != "ok 0x20000000" {
		t.Errorf("denied connect: %q, want the reject mark (no firewall here to act on it)", got)
	}
	if got := c.connect(t, other); got != "ok 0x0" {
		t.Errorf("unruled connect: %q, want no mark", got)
	}
	for i, want := range []struct {
		remote netip.AddrPort
		action engine.Action
		rule   engine.RuleID
	}{{allowed, engine.Allow, 1}, {allowed, engine.Allow, 1}, {denied, engine.Reject, 2}} {
		select {
		case d := <-decisions:
			if d.Remote != want.remote || d.Action != want.action || d.RuleID != want.rule || d.PID != c.pid || d.Exe != exe || d.UID != int32(os.Getuid()) {
				t.Errorf("decision %d: %+v, want %v %v rule %d pid %d", i, d, want.remote, want.action, want.rule, c.pid)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("decision %d not recorded", i)
		}
	}
	s := fp.Stats()
	if s.HitsAllow != 2 || s.HitsReject != 1 || s.Misses != 1 || s.Entries != 2 || s.RingLost != 0 {
		t.Errorf("stats %+v", s)
	}

	// Offer stores off the caller's goroutine.
	fp.Offer(fp.Ticket(), req(c, other), ruleVerdict(engine.Allow, 1))
	for deadline := time.Now().Add(5 * time.Second); fp.Stats().Entries < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("an offered verdict was not stored: %+v", fp.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := c.connect(t, other); got != "ok 0x60000000" {
		t.Errorf("after Offer: %q, want a hit", got)
	}
	<-decisions

	// A rule change: the same connections miss (and the socket carries no mark).
	if err := fp.RulesChanged(rules); err != nil {
		t.Fatal(err)
	}
	if got := c.connect(t, allowed); got != "ok 0x0" {
		t.Errorf("after a rule change: %q, want a miss", got)
	}
	// An old ticket stores under the old generation: still a miss.
	fp.Remember(tk, req(c, allowed), ruleVerdict(engine.Allow, 1))
	if got := c.connect(t, allowed); got != "ok 0x0" {
		t.Errorf("stored with a stale ticket: %q, want a miss", got)
	}
	if s := fp.Stats(); s.Stale != 2 || s.HitsAllow != 3 {
		t.Errorf("stats after the change %+v", s)
	}
}

// TestNotStored: what must never enter the map.
func TestNotStored(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}, {ID: 2, Action: engine.Drop}})
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := netip.MustParseAddrPort("127.0.0.1:9")
	tk := fp.Ticket()
	for name, tc := range map[string]struct {
		req *engine.Request
		v   engine.Verdict
	}{
		"prompt":   {req(c, dst), engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt, RuleID: 1}},
		"once":     {req(c, dst), engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt}},
		"default":  {req(c, dst), engine.Verdict{Action: engine.Allow, Reason: engine.ReasonDefault}},
		"timeout":  {req(c, dst), engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}},
		"limit":    {req(c, dst), engine.Verdict{Action: engine.Deny, Reason: engine.ReasonQuestionCap}},
		"drop":     {req(c, dst), ruleVerdict(engine.Drop, 2)},
		"udp":      {func() *engine.Request { r := req(c, dst); r.Protocol = engine.UDP; return r }(), ruleVerdict(engine.Allow, 1)},
		"inbound":  {func() *engine.Request { r := req(c, dst); r.Direction = engine.Inbound; return r }(), ruleVerdict(engine.Allow, 1)},
		"no pid":   {func() *engine.Request { r := req(c, dst); r.PID = 0; return r }(), ruleVerdict(engine.Allow, 1)},
		"other":    {func() *engine.Request { r := req(c, dst); r.Exe = "/bin/sh"; return r }(), ruleVerdict(engine.Allow, 1)},
		"new rule": {req(c, dst), ruleVerdict(engine.Allow, 7)},
		// A program whose identity the engine could not verify (e.g. run in a
		// user and mount namespace of its own): its later connections would be
		// recorded as verified.
		"unverified": {func() *engine.Request { r := req(c, dst); r.Identity = engine.IdentityUnverified; return r }(), ruleVerdict(engine.Allow, 1)},
		"unknown":    {func() *engine.Request { r := req(c, dst); r.Identity = engine.IdentityUnknown; return r }(), ruleVerdict(engine.Allow, 1)},
		"container":  {func() *engine.Request { r := req(c, dst); r.Identity = engine.IdentityContainer; return r }(), ruleVerdict(engine.Allow, 1)},
	} {
		if ok, err := fp.Remember(tk, tc.req, tc.v); ok || err != nil {
			t.Errorf("%s: stored (%v, %v)", name, ok, err)
		}
	}
	// A host rule anywhere in the set: nothing is cached.
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}, {ID: 3, Host: "x.example", Action: engine.Deny}})
	if ok, _ := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); ok {
		t.Error("stored while a host rule is in force")
	}
	if s := fp.Stats(); s.Entries != 0 || s.Cacheable || !strings.Contains(s.Why, "host") {
		t.Errorf("stats %+v", s)
	}
}

// TestCopyMisses: the same program copied to another path is another identity.
func TestCopyMisses(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}})
	exe, _ := os.Executable()
	dir := t.TempDir()
	cp := filepath.Join(dir, "copy")
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	orig, copied := startClient(t, exe, cgfd), startClient(t, cp, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(orig, dst), ruleVerdict(engine.Allow, 1)); !ok {
		t.Fatal(err)
	}
	if got := copied.connect(t, dst); got != "ok 0x0" {
		t.Errorf("copy: %q, want a miss", got)
	}
	if got := orig.connect(t, dst); got != "ok 0x60000000" {
		t.Errorf("original: %q, want a hit", got)
	}
	// A process that claims another path for its executable is not stored.
	if ok, _ := fp.Remember(fp.Ticket(), &engine.Request{Direction: engine.Outbound, Protocol: engine.TCP, Remote: dst, PID: copied.pid, Exe: exe, UID: 0, Identity: engine.IdentityVerified}, ruleVerdict(engine.Allow, 1)); ok {
		t.Error("stored a verdict for a pid running another file than the rule's path")
	}
}

// TestStoredAfterExit: a short-lived program's first connection is decided by the
// queue and the program may exit before the worker stores the verdict. The file
// attribution found (Request.ExeFile) keys the entry then, so the next run of the
// program hits; a file that is not the one at the rule's path is still refused.
func TestStoredAfterExit(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}})
	exe, _ := os.Executable()
	dst := listen(t, "tcp4", "127.0.0.1:0")
	first := startClient(t, exe, cgfd)
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, fmt.Sprintf("/proc/%d/exe", first.pid), 0, unix.STATX_INO|unix.STATX_MNT_ID, &stx); err != nil {
		t.Fatal(err)
	}
	file := engine.FileID{Dev: unix.Mkdev(stx.Dev_major, stx.Dev_minor), Ino: stx.Ino, Mnt: stx.Mnt_id}
	first.in.Close()
	first.cmd.Wait()
	r := req(first, dst)
	if ok, err := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1)); ok || err != nil {
		t.Fatalf("stored for an exited process without its file: %v %v", ok, err)
	}
	r.ExeFile = file
	if ok, err := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("not stored for an exited process with its file: %v %v", ok, err)
	}
	if got := startClient(t, exe, cgfd).connect(t, dst); got != "ok 0x60000000" {
		t.Errorf("the program's next run: %q, want a hit", got)
	}
	// The file of another program under the rule's path: refused.
	sh := file
	var other unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, "/bin/sh", 0, unix.STATX_INO, &other); err != nil {
		t.Fatal(err)
	}
	sh.Ino = other.Ino
	r.ExeFile, r.Remote = sh, netip.MustParseAddrPort("127.0.0.1:9")
	if ok, _ := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1)); ok {
		t.Error("stored an entry for another file than the one at the rule's path")
	}
}

// TestExpiry: an entry stops hitting at its rule's expiry.
func TestExpiry(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	until := time.Now().Add(300 * time.Millisecond)
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow, Expires: until}})
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); !ok {
		t.Fatal(err)
	}
	if got := c.connect(t, dst); got != "ok 0x60000000" {
		t.Fatalf("before expiry: %q", got)
	}
	time.Sleep(time.Until(until) + 10*time.Millisecond)
	if got := c.connect(t, dst); got != "ok 0x0" {
		t.Errorf("after expiry: %q, want a miss", got)
	}
}

// TestRingLossCounted: with a ring buffer nobody reads, decisions beyond its
// capacity are counted as lost.
func TestRingLossCounted(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{RingBytes: 4096})
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}})
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1))
	const n = 100 // 4096 bytes hold fewer than 60 events of 96+8 bytes
	for i := 0; i < n; i++ {
		c.connect(t, dst)
	}
	s := fp.Stats()
	if s.HitsAllow != n || s.RingLost == 0 || s.RingLost >= n {
		t.Errorf("stats %+v: want %d hits, some but not all lost", s, n)
	}
	t.Logf("%d of %d decisions lost with a 4 KiB ring", s.RingLost, n)
	_ = strconv.Itoa
}

// BenchmarkRemember is what storing a first-seen ruled connection's verdict costs
// the daemon (after the verdict went out, so not the connection's latency): the
// identity checks (three statx) and the map update.
func BenchmarkRemember(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	cg, _ := testCgroup(b)
	fp, err := Open(Config{CgroupPath: cg})
	if err != nil {
		b.Skip(err)
	}
	defer fp.Close()
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}})
	exe, _ := os.Executable()
	r := &engine.Request{Direction: engine.Outbound, Protocol: engine.TCP, PID: int32(os.Getpid()), Exe: exe, UID: 0, Identity: engine.IdentityVerified}
	v := ruleVerdict(engine.Allow, 1)
	tk := fp.Ticket()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		r.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(i))
		if ok, err := fp.Remember(tk, r, v); !ok {
			b.Fatal(err)
		}
	}
}

// TestUDPStored: Open pins the UDP match program; UDP allows are stored only once
// the ruleset runs it (SetUDP), UDP denies and forwarded connections never; Close
// removes the pin unless told to keep it.
func TestUDPStored(t *testing.T) {
	cg, cgfd := testCgroup(t)
	pins := filepath.Join(t.TempDir(), "bpf") // made by Open (mode 0700)
	fp, err := Open(Config{CgroupPath: cg, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	pin := fp.UDPMatch()
	if pin == "" {
		t.Fatalf("no UDP match pinned: %+v", fp.Stats())
	}
	prog, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		t.Fatalf("load the pinned UDP match: %v", err)
	}
	if prog.Type() != ebpf.SocketFilter {
		t.Errorf("pinned program type %v, want a socket filter (xt_bpf)", prog.Type())
	}
	prog.Close()
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}, {ID: 2, Action: engine.Deny}})
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := netip.MustParseAddrPort("127.0.0.1:53")
	udp := func() *engine.Request { r := req(c, dst); r.Protocol = engine.UDP; return r }
	if ok, _ := fp.Remember(fp.Ticket(), udp(), ruleVerdict(engine.Allow, 1)); ok {
		t.Error("a UDP allow was stored before the ruleset runs the UDP match")
	}
	if s := fp.Stats(); s.UDP || s.UDPWhy == "" || s.UDPMatch != pin {
		t.Errorf("stats before SetUDP: %+v", s)
	}
	fp.SetUDP(nil)
	if ok, err := fp.Remember(fp.Ticket(), udp(), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Errorf("a UDP allow was not stored: %v, %v", ok, err)
	}
	fwd := udp()
	fwd.Netns = "container"
	for name, tc := range map[string]struct {
		r *engine.Request
		v engine.Verdict
	}{"deny": {udp(), ruleVerdict(engine.Deny, 2)}, "forwarded": {fwd, ruleVerdict(engine.Allow, 1)}} {
		if ok, _ := fp.Remember(fp.Ticket(), tc.r, tc.v); ok {
			t.Errorf("%s: stored", name)
		}
	}
	if s := fp.Stats(); !s.UDP || s.UDPWhy != "" || s.Entries != 1 {
		t.Errorf("stats after SetUDP: %+v", s)
	}
	fp.Close()
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("the pin is still there after Close: %v", err)
	}

	kept, err := Open(Config{CgroupPath: cg, PinDir: pins, KeepPin: true})
	if err != nil {
		t.Fatal(err)
	}
	kept.Close()
	if _, err := os.Stat(kept.UDPMatch()); err != nil {
		t.Errorf("KeepPin: the pin is gone after Close: %v", err)
	}
	os.Remove(kept.UDPMatch())
	unix.Unmount(pins, unix.MNT_DETACH)
}

// TestRemovePins: a daemon frees the pins of daemons gone (their rules were
// replaced), never a live one's; latch cleanup (RemovePin) frees them all.
func TestRemovePins(t *testing.T) {
	dir := t.TempDir()
	self := fmt.Sprintf("%s%d", pinPrefixUDP, os.Getpid())
	selfLease := fmt.Sprintf("%s%d", pinPrefixLease, os.Getpid())
	for _, name := range []string{pinPrefixUDP + "999999999", pinPrefixLease + "999999999", self, selfLease, "other"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if removed, err := removePins(dir, processGone); !removed || err != nil {
		t.Fatalf("removePins: %v, %v", removed, err)
	}
	for name, want := range map[string]bool{pinPrefixUDP + "999999999": false, pinPrefixLease + "999999999": false, self: true, selfLease: true, "other": true} {
		if _, err := os.Stat(filepath.Join(dir, name)); (err == nil) != want {
			t.Errorf("%s: there %t, want %t", name, err == nil, want)
		}
	}
	if removed, err := RemovePin(dir); !removed || err != nil {
		t.Fatalf("RemovePin: %v, %v", removed, err)
	}
	for _, name := range []string{self, selfLease} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("RemovePin left a pin: %s", name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "other")); err != nil {
		t.Error("RemovePin removed a file that is no pin")
	}
}

// TestPinDirSystemBPFFS: with a BPF file system at /sys/fs/bpf (here: one the test
// mounts, standing in for it), the UDP match is pinned in a latch directory there,
// with no mount of its own (the packaged unit has no CAP_SYS_ADMIN); a symbolic
// link or a directory open to others in its place is refused; Close removes the
// pin and the directory. Without one, the state directory's bpf is used.
func TestPinDirSystemBPFFS(t *testing.T) {
	state := t.TempDir()
	if got, want := PinDir(state), filepath.Join(state, "bpf"); systemBPFFS == "/sys/fs/bpf" && !isBPFFS("/sys/fs/bpf") && got != want {
		t.Errorf("PinDir without a system BPF file system: %s, want %s", got, want)
	}
	sys := t.TempDir()
	if err := unix.Mount("bpf", sys, "bpf", 0, "mode=0755"); err != nil {
		t.Skipf("mount a BPF file system: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(sys, unix.MNT_DETACH) })
	old := systemBPFFS
	systemBPFFS = sys
	t.Cleanup(func() { systemBPFFS = old })
	dir := PinDir(state)
	if filepath.Dir(dir) != sys || !strings.HasPrefix(filepath.Base(dir), "latch-") || PinDir(state+"/") != dir || PinDir(t.TempDir()) == dir {
		t.Fatalf("PinDir(%s) = %s: want a latch- directory in %s, one per state directory", state, dir, sys)
	}
	cg, _ := testCgroup(t)
	fp, err := Open(Config{CgroupPath: cg, PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	pin := fp.UDPMatch()
	if filepath.Dir(pin) != dir || fp.unmountPin {
		t.Fatalf("pin %q (mounted %t, %s): want one in %s, no mount", pin, fp.unmountPin, fp.Stats().UDPWhy, dir)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil || st.Mode&0o7777 != 0o700 || st.Uid != uint32(os.Geteuid()) {
		t.Errorf("pin directory %s: mode %#o uid %d (%v); want 0700, ours", dir, st.Mode&0o7777, st.Uid, err)
	}
	fp.Close()
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, the pin directory %s: %v; want it gone", dir, err)
	}

	// Refused: a symbolic link, a directory others may write to.
	elsewhere := t.TempDir()
	if err := os.Symlink(elsewhere, dir); err != nil {
		t.Fatal(err)
	}
	fp, err = Open(Config{CgroupPath: cg, PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if fp.UDPMatch() != "" || !strings.Contains(fp.Stats().UDPWhy, "not a directory") {
		t.Errorf("a symbolic link as pin directory: pin %q, why %q", fp.UDPMatch(), fp.Stats().UDPWhy)
	}
	fp.Close()
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("pinned through the symbolic link: %v", ents)
	}
	os.Remove(dir)
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	fp, err = Open(Config{CgroupPath: cg, PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if fp.UDPMatch() != "" || !strings.Contains(fp.Stats().UDPWhy, "mode") {
		t.Errorf("a pin directory of mode 0777: pin %q, why %q", fp.UDPMatch(), fp.Stats().UDPWhy)
	}
	fp.Close()
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// TestHitsRecordLocalPort: a connection the fast path decided is recorded with its
// local address and port, as the kernel chose them (the sock_ops program), for IPv4,
// IPv6, an IPv4-mapped address and a reject hit alike. A connect that fails before
// any packet goes out (a multicast destination: no route for TCP) is counted as a hit
// but not recorded, and a socket that then connects again is recorded once, with its
// second destination and local port.
func TestHitsRecordLocalPort(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal || s.TCPLocalWhy != "" {
		t.Fatalf("no sock_ops program: %+v", s)
	}
	rules := []engine.Rule{{ID: 1, Action: engine.Allow}, {ID: 2, Action: engine.Deny}}
	if err := fp.RulesChanged(rules); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	allowed := listen(t, "tcp4", "127.0.0.1:0")
	allowed6 := listen(t, "tcp6", "[::1]:0")
	denied := listen(t, "tcp4", "127.0.0.1:0")
	unsent := netip.MustParseAddrPort("224.0.0.1:80")

	decisions := runDecisions(t, fp)

	tk := fp.Ticket()
	for _, r := range []struct {
		to netip.AddrPort
		v  engine.Verdict
	}{{allowed, ruleVerdict(engine.Allow, 1)}, {allowed6, ruleVerdict(engine.Allow, 1)}, {denied, ruleVerdict(engine.Deny, 2)}, {unsent, ruleVerdict(engine.Allow, 1)}} {
		if ok, err := fp.Remember(tk, req(c, r.to), r.v); !ok || err != nil {
			t.Fatalf("Remember %v: %v %v", r.to, ok, err)
		}
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(allowed.Addr().As16()), allowed.Port())
	// local reports "ok MARK LOCAL" (or "err ERRNO MARK LOCAL") for each connect.
	local := func(r string) netip.AddrPort {
		t.Helper()
		f := strings.Fields(r)
		ap, err := netip.ParseAddrPort(f[len(f)-1])
		if err != nil {
			t.Fatalf("client said %q: %v", r, err)
		}
		return ap
	}
	type want struct {
		remote, local netip.AddrPort
		action        engine.Action
	}
	var wants []want
	for _, to := range []netip.AddrPort{allowed, allowed6, mapped, denied} {
		r := c.say(t, "local "+to.String())
		mark := "0x60000000" // established: MarkFastFlow
		action := engine.Allow
		if to == denied {
			mark, action = "0x20000000", engine.Reject // no firewall here to act on it
		}
		if !strings.HasPrefix(r, "ok "+mark+" ") {
			t.Fatalf("connect to %v: %q, want the mark %s", to, r, mark)
		}
		remote := netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
		wants = append(wants, want{remote, local(r), action})
	}
	// A connect that fails before tcp_connect (no SYN, so no mark: it is
	// given at TCP_CONNECT_CB), then the same socket to allowed.
	r := c.say(t, "local "+unsent.String()+" "+allowed.String())
	first, second, _ := strings.Cut(r, "; ")
	if !strings.HasPrefix(first, fmt.Sprintf("err %d 0x0", unix.ENETUNREACH)) || !strings.HasPrefix(second, "ok 0x60000000 ") {
		t.Fatalf("connect to %v, then %v: %q; want ENETUNREACH then connected, both hits", unsent, allowed, r)
	}
	wants = append(wants, want{allowed, local(second), engine.Allow})
	for i, w := range wants {
		select {
		case d := <-decisions:
			if d.Remote != w.remote || d.Local != w.local || d.Action != w.action || d.PID != c.pid || d.Protocol != engine.TCP {
				t.Errorf("decision %d: %+v, want %v -> %v %v", i, d, w.local, w.remote, w.action)
			}
			if !w.local.IsValid() || w.local.Port() == 0 {
				t.Errorf("decision %d: the client's socket has no local address: %v", i, w.local)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("decision %d (%v) not recorded", i, w.remote)
		}
	}
	select {
	case d := <-decisions:
		t.Errorf("a decision too many: %+v (the connect that sent nothing?)", d)
	case <-time.After(200 * time.Millisecond):
	}
	if s := fp.Stats(); s.HitsAllow != 5 || s.HitsReject != 1 || s.RingLost != 0 || s.Events != 5 {
		t.Errorf("stats %+v: want 5 allowed and 1 refused in the kernel, 5 recorded", s)
	}
}

// TestPendingDroppedByAMiss: a hit whose connect failed before tcp_connect
// leaves its decision pending in the socket's storage; a later connect of the
// same socket that misses must drop it, not send it at its own TCP_CONNECT_CB.
// Else the second connection, to a destination no rule decided, would leave
// with the first one's MarkFastAllow and be recorded as the first one's
// decision.
func TestPendingDroppedByAMiss(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal || s.TCPLocalWhy != "" {
		t.Fatalf("no sock_ops program: %+v", s)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	unruled := listen(t, "tcp4", "127.0.0.1:0")
	unsent := netip.MustParseAddrPort("224.0.0.1:80")
	decisions := runDecisions(t, fp)
	if ok, err := fp.Remember(fp.Ticket(), req(c, unsent), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember %v: %v %v", unsent, ok, err)
	}
	r := c.say(t, "local "+unsent.String()+" "+unruled.String())
	first, second, _ := strings.Cut(r, "; ")
	if !strings.HasPrefix(first, fmt.Sprintf("err %d 0x0", unix.ENETUNREACH)) || !strings.HasPrefix(second, "ok 0x0 ") {
		t.Errorf("connect to %v (a hit), then %v (a miss): %q; want ENETUNREACH, then connected without a mark", unsent, unruled, r)
	}
	select {
	case d := <-decisions:
		t.Errorf("a decision recorded: %+v; want none (the hit sent no SYN, the miss is the queue's)", d)
	case <-time.After(300 * time.Millisecond):
	}
	if s := fp.Stats(); s.HitsAllow != 1 || s.Misses != 1 || s.Events != 0 {
		t.Errorf("stats %+v: want 1 hit, 1 miss, nothing recorded", s)
	}
}

// TestNoTCPHitsWithoutSockops: without the sock_ops program (a kernel that
// refuses it) nothing could check a decision again as its SYN leaves (a deferred
// connect's leaves at its first write, perhaps after a rule change), so no TCP
// connect is decided in the kernel: a ruled connect gets no fast mark (it goes
// to the queue), none is recorded, and Stats says why.
func TestNoTCPHitsWithoutSockops(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{noSockops: true})
	if s := fp.Stats(); s.TCPLocal || s.TCPLocalWhy == "" {
		t.Fatalf("stats %+v: want tcp_local off, and why", s)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	allowed := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, allowed), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember %v: %v %v", allowed, ok, err)
	}
	decisions := runDecisions(t, fp)
	if got := c.connect(t, allowed); got != "ok 0x0" {
		t.Errorf("ruled connect: %q, want no fast mark (ok 0x0)", got)
	}
	select {
	case d := <-decisions:
		t.Errorf("a TCP decision recorded without the sock_ops program: %+v", d)
	case <-time.After(300 * time.Millisecond):
	}
	if s := fp.Stats(); s.HitsAllow != 0 || s.Misses == 0 {
		t.Errorf("stats %+v: want no hit, a miss", s)
	}
}

// TestLeaseHeldWhileOpen: Open pins the lease program, which matches (returns
// 1) while the FastPath is open, in a process that lives; once its file
// descriptors close (Close here, a daemon's death in the e2e tests) the kernel
// empties the lease's program array and the pinned program, which a ruleset
// kept on exit still runs (KeepPin), matches no more. SetLease reports
// whether the ruleset checks it.
func TestLeaseHeldWhileOpen(t *testing.T) {
	cg, _ := testCgroup(t)
	pins := filepath.Join(t.TempDir(), "bpf")
	fp, err := Open(Config{CgroupPath: cg, PinDir: pins, KeepPin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(pins, unix.MNT_DETACH)
	pin := fp.Lease()
	if pin == "" {
		t.Fatalf("no lease pinned: %+v", fp.Stats())
	}
	defer os.Remove(pin)
	defer os.Remove(fp.UDPMatch())
	prog, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		t.Fatalf("load the pinned lease: %v", err)
	}
	defer prog.Close()
	if prog.Type() != ebpf.SocketFilter {
		t.Errorf("pinned program type %v, want a socket filter (xt_bpf)", prog.Type())
	}
	pkt := make([]byte, 64) // any packet: the lease does not read it
	run := func() uint32 {
		t.Helper()
		ret, err := prog.Run(&ebpf.RunOptions{Data: pkt})
		if err != nil {
			t.Fatalf("run the lease program: %v", err)
		}
		return ret
	}
	if got := run(); got != 1 {
		t.Errorf("the lease program returns %d while the fast path is open, want 1", got)
	}
	// A dying process's files are released from the highest descriptor
	// down: the lease's must be above every link's, so that it lapses first.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	links := 0
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target == "anon_inode:bpf_link" {
			links++
			if n > fp.objs.Lease.FD() {
				t.Errorf("link descriptor %d is above the lease's %d", n, fp.objs.Lease.FD())
			}
		}
	}
	if links == 0 {
		t.Error("no link descriptors found")
	}
	if s := fp.Stats(); s.Lease || s.LeaseWhy == "" {
		t.Errorf("stats before SetLease: %+v", s)
	}
	fp.SetLease(nil)
	if s := fp.Stats(); !s.Lease || s.LeaseWhy != "" || s.LeaseMatch != pin {
		t.Errorf("stats after SetLease: %+v", s)
	}
	fp.Close()
	// The kernel empties the array from a work queue.
	got := run()
	for deadline := time.Now().Add(2 * time.Second); got != 0 && time.Now().Before(deadline); got = run() {
		time.Sleep(10 * time.Millisecond)
	}
	if got != 0 {
		t.Errorf("the lease program returns %d after Close, want 0", got)
	}
}

// BenchmarkLease measures the lease program, which the ruleset runs on every
// fast SYN and the first datagram of every UDP flow (an xt_bpf match), against
// a program that only returns 1 (what a match costs at least), in interleaved
// rounds of BPF_PROG_TEST_RUN (the kernel's own loop, no syscall per run):
// ns per run of each, the per-round differences and their median.
func BenchmarkLease(b *testing.B) {
	cg, _ := testCgroup(b)
	pins := filepath.Join(b.TempDir(), "bpf")
	fp, err := Open(Config{CgroupPath: cg, PinDir: pins})
	if err != nil {
		b.Fatal(err)
	}
	defer fp.Close()
	ret1, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer ret1.Close()
	pkt := make([]byte, 64)
	const repeat = 1_000_000
	var diffs []float64
	var lease, base float64
	for b.Loop() {
		for round := 0; round < 5; round++ {
			progs := []*ebpf.Program{fp.objs.LatchFastLease, ret1}
			if round%2 == 1 {
				progs[0], progs[1] = progs[1], progs[0]
			}
			ns := map[*ebpf.Program]float64{}
			for _, p := range progs {
				ret, d, err := p.Benchmark(pkt, repeat, nil)
				if err != nil || ret != 1 {
					b.Fatalf("run: %d, %v", ret, err)
				}
				ns[p] = float64(d.Nanoseconds())
			}
			l, h := ns[fp.objs.LatchFastLease], ns[ret1]
			lease, base = lease+l, base+h
			diffs = append(diffs, l-h)
			b.Logf("round %d: lease %.1f ns, return-1 program %.1f ns, difference %.1f ns", round, l, h, l-h)
		}
	}
	slices.Sort(diffs)
	b.ReportMetric(diffs[len(diffs)/2], "ns-over-baseline")
	b.ReportMetric(lease/float64(len(diffs)), "ns-lease")
	b.ReportMetric(base/float64(len(diffs)), "ns-baseline")
}

// TestDeathReleasesHighestFirst checks what the lease's order rests on (see
// "The lease" and raiseLease): the kernel releases a killed process's files
// from its highest descriptor down (close_files queues them in ascending
// order; task_work_run runs the queue last in, first out), so the lease's
// descriptor, above the links', is released before any hook goes. Files
// opened for writing report IN_CLOSE_WRITE as they are released.
func TestDeathReleasesHighestFirst(t *testing.T) {
	dir := t.TempDir()
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Skipf("no inotify: %v", err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, dir, unix.IN_CLOSE_WRITE); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "exec 3>f3 4>f4 5>f5 6>f6; echo ready; exec sleep 60")
	cmd.Dir = dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Read(make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	// The shell closes nothing it opened before exec; drain what it wrote.
	time.Sleep(100 * time.Millisecond)
	buf := make([]byte, 4096)
	unix.SetNonblock(in, true)
	unix.Read(in, buf)
	unix.SetNonblock(in, false)
	cmd.Process.Kill()
	cmd.Wait()
	var order []string
	for len(order) < 4 {
		n, err := unix.Read(in, buf)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[i]))
			name := strings.TrimRight(string(buf[i+unix.SizeofInotifyEvent:i+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			order = append(order, name)
			i += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	if want := []string{"f6", "f5", "f4", "f3"}; !slices.Equal(order, want) {
		t.Errorf("a killed process's files were released in the order %v, want %v (highest descriptor first)", order, want)
	}
}

// TestEndsCgroupMustHoldTheHooks: the connect hooks leave their decisions to the
// sock_ops program, so a cgroup for the socket end hooks (EndsCgroupPath) that
// does not hold the connect hooks' is refused, naming both, before anything loads.
func TestEndsCgroupMustHoldTheHooks(t *testing.T) {
	for _, c := range []struct{ hooks, ends string }{
		{"/sys/fs/cgroup/a", "/sys/fs/cgroup/b"},
		{"/sys/fs/cgroup", "/sys/fs/cgroup/b"},
		{"/sys/fs/cgroup/bb", "/sys/fs/cgroup/b"},
	} {
		fp, err := Open(Config{CgroupPath: c.hooks, EndsCgroupPath: c.ends})
		if err == nil {
			fp.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "not within") || !strings.Contains(err.Error(), c.ends) {
			t.Errorf("Open with the hooks in %s and the socket end hooks in %s: %v; want refused", c.hooks, c.ends, err)
		}
	}
}

// TestNoTCPWithoutTCPRuleset: while the ruleset has no fast TCP rules (a kernel
// without xt_u32: SetTCPRuleset with the reason) a SYN with MarkFastAllow goes to
// the queue, which would decide and record the hit's connection again. So no TCP
// verdict is stored then, and one stored before misses.
func TestNoTCPWithoutTCPRuleset(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}})
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); !ok {
		t.Fatalf("Remember: %v", err)
	}
	if got := c.connect(t, dst); got != "ok 0x60000000" {
		t.Fatalf("with the TCP rules: %q, want a hit", got)
	}
	fp.SetTCPRuleset(errors.New("test: no xt_u32"))
	if got := c.connect(t, dst); got != "ok 0x0" {
		t.Errorf("the verdict stored before the TCP rules went off: %q, want a miss", got)
	}
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); ok || err != nil {
		t.Errorf("stored a TCP verdict without the TCP rules (%v, %v)", ok, err)
	}
	if got := c.connect(t, dst); got != "ok 0x0" {
		t.Errorf("without the TCP rules: %q, want a miss", got)
	}
	if s := fp.Stats(); !strings.Contains(s.TCPRulesetWhy, "xt_u32") {
		t.Errorf("Stats.TCPRulesetWhy %q, want the reason", s.TCPRulesetWhy)
	}
	fp.SetTCPRuleset(nil)
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); !ok {
		t.Fatalf("Remember with the TCP rules back: %v", err)
	}
	if got := c.connect(t, dst); got != "ok 0x60000000" {
		t.Errorf("with the TCP rules back: %q, want a hit", got)
	}
}
