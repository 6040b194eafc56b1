package linux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/fastpath"
	"golang.org/x/sys/unix"
)

// noRemark is notrack without the socket remark: Redecide leaves the fast
// sockets' marks alone (the test daemon's LATCH_TEST_NOTRACK=noremark).
type noRemark struct{ *fastpath.FastPath }

func (noRemark) RedecideSockets([][2]netip.AddrPort) (int, error) { return 0, nil }

const (
	addrA6 = "fd00:198:18::1"
	addrB6 = "fd00:198:18::2"
)

// addV6 gives the topology's veth pair the IPv6 addresses addrA6 and addrB6.
func addV6(t *testing.T, tp *topo) {
	t.Helper()
	for _, args := range [][]string{
		{"-n", tp.a, "addr", "add", addrA6 + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "add", addrB6 + "/64", "dev", tp.vethB, "nodad"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// pushServer accepts connections in ns B, counts what each receives, and can
// write to them (the peer speaking first).
type pushServer struct {
	mu    sync.Mutex
	conns map[string]*pushConn // by the client's address
	ready chan struct{}
}

type pushConn struct {
	c   net.Conn
	got atomic.Int64
}

func listenPush(t *testing.T, tp *topo, addr string, port int) *pushServer {
	t.Helper()
	s := &pushServer{conns: map[string]*pushConn{}, ready: make(chan struct{}, 16)}
	serveTCP(t, tp.b, net.JoinHostPort(addr, strconv.Itoa(port)), func(c net.Conn) {
		pc := &pushConn{c: c}
		s.mu.Lock()
		s.conns[c.RemoteAddr().String()] = pc
		s.mu.Unlock()
		s.ready <- struct{}{}
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			pc.got.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	return s
}

// conn returns the server side of client connection c.
func (s *pushServer) conn(t *testing.T, c net.Conn) *pushConn {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		pc := s.conns[c.LocalAddr().String()]
		s.mu.Unlock()
		if pc != nil {
			return pc
		}
	}
	t.Fatalf("the server did not accept %v", c.LocalAddr())
	return nil
}

// dialFast connects from ns A to addr:port from a socket marked as the kernel
// fast path marks an allowed one, with an application's own bits besides: for
// a ruleset without the fast path in its namespace (whose sock_ops program
// would take a MarkFastAllow no connect hook of its gave off); with it, a fast
// connect is a real one (fastHits).
func dialFast(t *testing.T, tp *topo, addr string, port int, mark uint32) net.Conn {
	t.Helper()
	var c net.Conn
	err := inNS(tp.a, func() error {
		d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
			})
			return errors.Join(err, serr)
		}}
		var err error
		c, err = d.Dial("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		return err
	})
	if err != nil {
		out, _ := exec.Command("ip", "netns", "exec", tp.a, "iptables-save", "-c").CombinedOutput()
		out6, _ := exec.Command("ip", "netns", "exec", tp.a, "nft", "list", "ruleset").CombinedOutput()
		t.Fatalf("connect to %s port %d: %v\n%s\n%s", addr, port, err, out, out6)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func connMark(t *testing.T, c net.Conn) uint32 {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var m int
	var gerr error
	rc.Control(func(fd uintptr) { m, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return uint32(m)
}

// readN reads n bytes from c within 3 s.
func readN(c net.Conn, n int) error {
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := io.ReadFull(c, make([]byte, n))
	return err
}

// resetWithin reads from c until an error (within wait) and reports whether
// that error is a reset.
func resetWithin(c net.Conn, wait time.Duration) error {
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if errors.Is(err, syscall.ECONNRESET) {
				return nil
			}
			return fmt.Errorf("read ended with %v, want a reset", err)
		}
	}
}

// ctEntries counts the conntrack entries of ns A whose tuple has c's local port.
func ctEntries(t *testing.T, tp *topo, c net.Conn) int {
	t.Helper()
	local := c.LocalAddr().(*net.TCPAddr)
	fam := "ipv4"
	if local.IP.To4() == nil {
		fam = "ipv6"
	}
	out, err := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-f", fam, "-p", "tcp").Output()
	if err != nil {
		t.Fatalf("conntrack -L in %s: %v", tp.a, err)
	}
	n := 0
	p := strconv.Itoa(local.Port)
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "sport="+p+" ") || strings.Contains(l, "dport="+p+" ") {
			n++
		}
	}
	return n
}

// heldFor counts the daemon's "held" lines for c's flow in lines.
func heldFor(lines []string, c net.Conn) int {
	n := 0
	want := " " + c.LocalAddr().String() + " " + c.RemoteAddr().String() + " "
	for _, l := range lines {
		if strings.HasPrefix(l, "held ") && strings.Contains(l, want) {
			n++
		}
	}
	return n
}

// notrackConns is one address family's connections of testNotrack.
type notrackConns struct {
	name                 string
	first, peer, allowed net.Conn // this host speaks first, the peer does, still allowed
	sFirst, sPeer, sOK   *pushConn
}

// testNotrack runs the scenario of TestNotrack with firewall fw and the child's
// LATCH_TEST_NOTRACK mode; leak: the rule change is expected NOT to stop the
// connections (without the socket remark), to show that the remark is what
// stops them.
func testNotrack(t *testing.T, fw, mode string, inboundRule, leak bool) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("needs conntrack: %v", err)
	}
	needFirewall(t, fw)
	tp := newTopo(t)
	addV6(t, tp)
	before := ruleset(t, tp.a)
	const appBits = 0x5 // an application's own SO_MARK bits, outside MarkMask
	fams := []*notrackConns{{name: "IPv4"}, {name: "IPv6"}}
	srv := map[string][2]*pushServer{
		"IPv4": {listenPush(t, tp, addrB, 9101), listenPush(t, tp, addrB, 9102)},
		"IPv6": {listenPush(t, tp, addrB6, 9101), listenPush(t, tp, addrB6, 9102)},
	}
	// The connects to 9101 and 9102 are fast ones (the kernel fast path
	// allows them: a rule did, before the change below).
	var remotes []string
	for _, a := range []string{addrB, "[" + addrB6 + "]"} {
		remotes = append(remotes, a+":9101", a+":9102")
	}
	h := newFastHits(t, remotes...)
	// 9101: denied once decided again; 9102: still allowed.
	d := startDaemon(t, tp, "9101=deny,9102=allow,*=deny", append([]string{"LATCH_TEST_FIREWALL=" + fw, "LATCH_TEST_NOTRACK=" + mode, "LATCH_TEST_REDECIDE_PORT=9101"}, h.env...)...)
	if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
		t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
	}
	if !inboundRule {
		// The ruleset without the inbound notrack rule.
		for _, cmd := range [][]string{
			{"iptables", "-w", "-t", "raw", "-D", "PREROUTING", "-j", chainRawPre},
			{"ip6tables", "-w", "-t", "raw", "-D", "PREROUTING", "-j", chainRawPre},
		} {
			if out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a}, cmd...)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", cmd, err, out)
			}
		}
	}
	for _, f := range fams {
		addr := addrB
		if f.name == "IPv6" {
			addr = addrB6
		}
		fast := func(port int) net.Conn {
			t.Helper()
			c, err := h.dial(t, tp, addr, port, appBits)
			if err != nil {
				t.Fatalf("%s: a fast connect to port %d: %v", f.name, port, err)
			}
			return c
		}
		f.first, f.peer, f.allowed = fast(9101), fast(9101), fast(9102)
		f.sFirst, f.sPeer, f.sOK = srv[f.name][0].conn(t, f.first), srv[f.name][0].conn(t, f.peer), srv[f.name][1].conn(t, f.allowed)
		// Both ways, without a question and without a conntrack entry.
		for _, c := range []struct {
			c net.Conn
			s *pushConn
		}{{f.first, f.sFirst}, {f.peer, f.sPeer}, {f.allowed, f.sOK}} {
			if _, err := c.c.Write(make([]byte, 100)); err != nil {
				t.Fatalf("%s: write: %v", f.name, err)
			}
			if _, err := c.s.c.Write(make([]byte, 100)); err != nil {
				t.Fatalf("%s: server write: %v", f.name, err)
			}
			if err := readN(c.c, 100); err != nil {
				t.Fatalf("%s: read what the server sent: %v", f.name, err)
			}
		}
	}
	lines := d.linesFor(300 * time.Millisecond)
	for _, f := range fams {
		for _, c := range []net.Conn{f.first, f.peer, f.allowed} {
			if n := hitFor(lines, c); n != 1 {
				t.Errorf("%s: the kernel fast path decided the connect from %v %d times, want 1: %v", f.name, c.LocalAddr(), n, lines)
			}
			if n := heldFor(lines, c); n != 0 {
				t.Errorf("%s: a fast connection was held %d times: %v", f.name, n, lines)
			}
			n := ctEntries(t, tp, c)
			if inboundRule && n != 0 {
				t.Errorf("%s: a fast connection has %d conntrack entries, want none", f.name, n)
			}
			if !inboundRule && n == 0 {
				t.Errorf("%s: without the inbound rule the peer's packets made no conntrack entry", f.name)
			}
		}
		if got := f.sFirst.got.Load(); got != 100 {
			t.Errorf("%s: the server received %d bytes, want 100", f.name, got)
		}
	}

	// A rule change: the flows to 9101 are denied now (9102 still allowed).
	d.drain()
	d.cmd.Process.Signal(syscall.SIGUSR1)
	if l, ok := d.waitLine("redecided ", 10*time.Second); !ok || !strings.HasSuffix(l, " <nil>") {
		t.Fatalf("redecide: %q; stderr:\n%s", l, d.errors())
	}
	for _, f := range fams {
		want := MarkFastRedecide | appBits
		if leak {
			// Unmoved: established, the fast path's sock_ops program gave
			// the socket MarkFastFlow in place of the MarkFastAllow it
			// connected with.
			want = MarkFastFlow | appBits
		}
		if m := connMark(t, f.first); m != want {
			t.Errorf("%s: the socket's mark after the change is %#x, want %#x", f.name, m, want)
		}
	}
	for _, f := range fams {
		// This host speaks first: its segment is held, denied, and the
		// connection reset; the server never gets it.
		f.first.Write(make([]byte, 50))
		// The peer speaks first: this host's acknowledgement is held.
		f.sPeer.c.Write(make([]byte, 50))
		errFirst, errPeer := resetWithin(f.first, 3*time.Second), resetWithin(f.peer, 3*time.Second)
		time.Sleep(200 * time.Millisecond)
		f.peer.Write(make([]byte, 50))
		time.Sleep(300 * time.Millisecond)
		if leak {
			if errFirst == nil || f.sFirst.got.Load() != 150 {
				t.Errorf("%s: without the socket remark the segment after the change was expected through: %v, server got %d", f.name, errFirst, f.sFirst.got.Load())
			}
			if errPeer == nil || f.sPeer.got.Load() != 150 {
				t.Errorf("%s: without the socket remark the peer-first flow was expected to go on: %v, server got %d", f.name, errPeer, f.sPeer.got.Load())
			}
			continue
		}
		if errFirst != nil {
			t.Errorf("%s: this host spoke first after the change: %v", f.name, errFirst)
		}
		if got := f.sFirst.got.Load(); got != 100 {
			t.Errorf("%s: the server got %d bytes, want 100: the segment sent after the change got through", f.name, got)
		}
		if errPeer != nil {
			t.Errorf("%s: the peer spoke first after the change: %v", f.name, errPeer)
		}
		if got := f.sPeer.got.Load(); got != 100 {
			t.Errorf("%s: the server got %d bytes from the peer-first flow, want 100", f.name, got)
		}
		if n := ctEntries(t, tp, f.peer); inboundRule && n != 0 {
			t.Errorf("%s: the peer's packets after the change made %d conntrack entries", f.name, n)
		}
	}
	if leak {
		return
	}
	// Still allowed: decided again once however many segments are in flight,
	// then it passes in the kernel again, with the application's bits.
	for _, f := range fams {
		for range 5 {
			f.allowed.Write(make([]byte, 10))
		}
		for deadline := time.Now().Add(3 * time.Second); f.sOK.got.Load() < 150 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if got := f.sOK.got.Load(); got != 150 {
			t.Errorf("%s: the still allowed flow's server got %d bytes, want 150", f.name, got)
		}
		// Established: MarkFastFlow.
		if m := connMark(t, f.allowed); m != MarkFastFlow|appBits {
			t.Errorf("%s: the still allowed socket's mark is %#x, want %#x", f.name, m, MarkFastFlow|appBits)
		}
	}
	lines = d.linesFor(300 * time.Millisecond)
	for _, f := range fams {
		if n := heldFor(lines, f.allowed); n != 1 {
			t.Errorf("%s: the still allowed flow was held %d times, want 1: %v", f.name, n, lines)
		}
		f.allowed.Write(make([]byte, 10))
		if _, err := f.sOK.c.Write(make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		if err := readN(f.allowed, 10); err != nil {
			t.Errorf("%s: the still allowed flow: %v", f.name, err)
		}
	}
	lines = d.linesFor(300 * time.Millisecond)
	for _, f := range fams {
		if n := heldFor(lines, f.allowed); n != 0 {
			t.Errorf("%s: the still allowed flow was held again after its allow: %v", f.name, lines)
		}
		if n := ctEntries(t, tp, f.allowed); inboundRule && n != 0 {
			t.Errorf("%s: the still allowed flow has %d conntrack entries", f.name, n)
		}
	}
	// A SYN carrying MarkFastFlow (a fast socket's next connect, as after
	// connect(AF_UNSPEC) once the daemon's connect hooks are gone) is held and
	// decided (9101 is denied now), never passed by its mark.
	d.drain()
	if err := dialMarked(tp, "9101", MarkFastFlow); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a SYN marked MarkFastFlow: err = %v, want ECONNREFUSED (held, denied)", err)
	}
	if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, ":9101") {
		t.Errorf("the SYN marked MarkFastFlow was not held (got %q)", l)
	}
	d.stop()
	after := ruleset(t, tp.a)
	if fw == FirewallIptablesLegacy {
		// iptables-legacy cannot delete a table once made: empty filter and
		// raw tables may stay; no rule of latch's may.
		after = regexp.MustCompile(`(?m)^# Warning: ip6?tables-legacy tables present.*\n`).ReplaceAllString(after, "")
		for _, save := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
			out, err := exec.Command("ip", "netns", "exec", tp.a, save).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v: %s", save, err, out)
			}
			if strings.Contains(string(out), "-A ") || strings.Contains(string(out), "LATCH") {
				t.Errorf("%s after the daemon stopped:\n%s", save, out)
			}
		}
	}
	if after != before {
		t.Errorf("the ruleset after the daemon stopped differs from before:\n%s\nwant:\n%s", after, before)
	}
}

// TestNotrack: with each firewall mechanism, the fast path's TCP connections
// (sockets marked MarkFastAllow) leave no conntrack entry and pass both ways,
// IPv4 and IPv6; after a rule change (Redecide) that denies them, this host's
// next segment is held and the connection reset, whether this host or the peer
// speaks first; a connection still allowed goes on, held once however many
// segments are in flight, and then passes in the kernel again; an
// application's own mark bits stay; the ruleset goes on exit.
func TestNotrack(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallNftables, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			if fw == FirewallIptablesLegacy {
				if _, err := newIptables(fw); err != nil {
					t.Skip(err)
				}
			}
			testNotrack(t, fw, "on", true, false)
		})
	}
}

// TestNotrackNeedsSocketRemark: without the socket remark (Redecide leaves the
// fast sockets' marks alone) the denied connections go on after the change:
// the remark is what stops them.
func TestNotrackNeedsSocketRemark(t *testing.T) {
	testNotrack(t, FirewallIptablesNft, "noremark", true, true)
}

// TestNotrackWithoutInboundRule: without the raw table's inbound rule the
// peer's packets make conntrack entries (the cost notrack saves), yet the
// decisions stay exact: this host's packets are kept out of conntrack by
// their socket's mark before conntrack looks them up, so an entry the peer's
// packets opened (this host's side as its reply direction) never carries them.
func TestNotrackWithoutInboundRule(t *testing.T) {
	testNotrack(t, FirewallIptablesNft, "on", false, false)
}

// setConnMark sets c's socket mark.
func setConnMark(t *testing.T, c net.Conn, mark uint32) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
	})
	if serr != nil {
		t.Fatal(serr)
	}
}

// TestNftNotrackRuleset checks the native nftables ruleset's notrack rules on
// kernels that cannot queue from nftables (these machines: its queue
// statements become drops, so what would be held does not get through): a
// fast socket's flow passes both ways (inbound held too) with no conntrack
// entry, IPv4 and IPv6; once its socket is marked MarkFastRedecide its
// segments are held (dropped here), while the peer's still reach it; back to
// MarkFastFlow (the mark of an established fast socket), the retransmission
// passes; a SYN marked MarkFastFlow is held (dropped here).
func TestNftNotrackRuleset(t *testing.T) {
	for _, tool := range []string{"nft", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	tp := newTopo(t)
	addV6(t, tp)
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, inbound: true, exemptLoopback: true, notrack: true}.nftRules(), "counter drop")
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	for _, a := range []struct{ name, addr string }{{"IPv4", addrB}, {"IPv6", addrB6}} {
		srv := listenPush(t, tp, a.addr, 9201)
		c := dialFast(t, tp, a.addr, 9201, MarkFastAllow|0x5)
		s := srv.conn(t, c)
		c.Write(make([]byte, 100))
		s.c.Write(make([]byte, 100))
		if err := readN(c, 100); err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		if n := ctEntries(t, tp, c); n != 0 {
			t.Errorf("%s: %d conntrack entries, want none", a.name, n)
		}
		setConnMark(t, c, MarkFastRedecide|0x5)
		c.Write(make([]byte, 50))
		s.c.Write(make([]byte, 20))
		if err := readN(c, 20); err != nil {
			t.Errorf("%s: the peer's segment to a socket being decided again: %v", a.name, err)
		}
		time.Sleep(500 * time.Millisecond)
		if got := s.got.Load(); got != 100 {
			t.Errorf("%s: a segment of a socket being decided again got through: server has %d bytes, want 100", a.name, got)
		}
		setConnMark(t, c, MarkFastFlow|0x5)
		for deadline := time.Now().Add(5 * time.Second); s.got.Load() < 150 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if got := s.got.Load(); got != 150 {
			t.Errorf("%s: after the allow mark came back the server has %d bytes, want 150", a.name, got)
		}
		if n := ctEntries(t, tp, c); n != 0 {
			t.Errorf("%s: %d conntrack entries at the end, want none", a.name, n)
		}
		if err := inNS(tp.a, func() error {
			d := net.Dialer{Timeout: time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(MarkFastFlow))
				})
				return errors.Join(err, serr)
			}}
			c, err := d.Dial("tcp", net.JoinHostPort(a.addr, "9201"))
			if err == nil {
				c.Close()
			}
			return err
		}); err == nil {
			t.Errorf("%s: a SYN marked MarkFastFlow got through", a.name)
		}
	}
}

// TestNotrackCleanup: the raw table's chains a killed daemon left go with
// Cleanup, and the ruleset is as before.
func TestNotrackCleanup(t *testing.T) {
	tp := newTopo(t)
	before := ruleset(t, tp.a)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_FIREWALL="+FirewallIptablesNft, "LATCH_TEST_NOTRACK=on")
	if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
		t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
	}
	d.cmd.Process.Kill()
	<-d.exited
	if left := ruleset(t, tp.a); !strings.Contains(left, chainRawPre) || !strings.Contains(left, chainRawOut) {
		t.Fatalf("after a kill the raw chains are gone already:\n%s", left)
	}
	c := spawnChild(t, tp, "cleanup", "")
	<-c.exited
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("cleanup exited %d: %s", code, c.errors())
	}
	if after := ruleset(t, tp.a); after != before {
		t.Errorf("ruleset after cleanup differs.\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// simOpen binds a socket in namespace A, marked mark, to addrA:port and
// connects it to addrB:peerPort, while a socket in B bound to addrB:peerPort
// connects to addrA:port every 200 ms (a simultaneous open: the peer's SYN
// meets A's socket in SYN_SENT). It reports whether A's connect completed
// within 3 s.
func simOpen(t *testing.T, tp *topo, mark uint32, port, peerPort int) bool {
	t.Helper()
	stop := make(chan struct{})
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		inNS(tp.b, func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addrB), Port: peerPort}, Timeout: 200 * time.Millisecond,
				Control: func(_, _ string, rc syscall.RawConn) error {
					rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
					return nil
				}}
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if c, err := d.Dial("tcp4", net.JoinHostPort(addrA, strconv.Itoa(port))); err == nil {
					c.Close()
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}()
	defer func() { close(stop); <-peerDone }()
	connected := false
	err := inNS(tp.a, func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_MARK, int(mark)); err != nil {
			return err
		}
		syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: netip.MustParseAddr(addrA).As4()}); err != nil {
			return err
		}
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: peerPort, Addr: netip.MustParseAddr(addrB).As4()}); err != nil && err != syscall.EINPROGRESS {
			return err
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, _ := unix.Poll(pfd, 3000); n == 1 {
			e, _ := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
			connected = e == 0
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return connected
}

// TestNotrackSimultaneousOpenHeld: with notrack and the inbound chain, a
// socket that kept a fast mark its connect no longer warrants (MarkFastFlow
// after a dead daemon's sock_ops program could not clear it at TCP_CLOSE;
// MarkFastRedecide, which nothing clears at TCP_CLOSE) and connects to a
// destination nothing allowed sends a SYN that is held; the peer's own SYN to
// its port (a simultaneous open) must be held too, with each firewall. LATCH-IN
// used to return every untracked TCP packet whose local socket carries a fast
// mark, the peer's SYN included, and LATCH-OUT then let the socket's SYN-ACK
// pass (MarkFastFlow: not a bare SYN). Here no one reads the queue (a killed
// daemon, fail-closed; for native nftables, which cannot queue on these
// machines, the queue statements become drops).
func TestNotrackSimultaneousOpenHeld(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		t.Run(fw, func(t *testing.T) {
			if fw == FirewallIptablesLegacy {
				if _, err := newIptables(fw); err != nil {
					t.Skip(err)
				}
			}
			tp := newTopo(t)
			if fw == FirewallNftables {
				rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, inbound: true, exemptLoopback: true, notrack: true, fastTCP: true}.nftRules(), "counter drop")
				install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
				install.Stdin = strings.NewReader(rules)
				if out, err := install.CombinedOutput(); err != nil {
					t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
				}
			} else {
				d := startDaemon(t, tp, "*=deny", "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_NOTRACK=on", "LATCH_TEST_INBOUND=1", "LATCH_TEST_FAST_TCP=1")
				if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
					t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
				}
				d.cmd.Process.Kill()
				<-d.exited
				t.Cleanup(func() { c := spawnChild(t, tp, "cleanup", ""); <-c.exited })
			}
			for i, m := range []uint32{MarkFastFlow, MarkFastRedecide} {
				if simOpen(t, tp, m|0x5, 9303+2*i, 9304+2*i) {
					t.Errorf("a socket marked %#x connected by a simultaneous open past the ruleset", m)
				}
			}
		})
	}
}

// TestNotrackKeepsDNSTracked: with notrack and the DNS log (Config.Hostnames),
// a fast socket's TCP to port 53 stays tracked both ways (the DNS log's rules
// follow conntrack's direction), while its TCP to another port leaves no
// conntrack entry; iptables-nft, fail-open (no queue reader: nothing is held).
func TestNotrackKeepsDNSTracked(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("needs conntrack: %v", err)
	}
	spec := ruleSpec{queue: testQueue, failOpen: true, dnsLogGroup: 4299, fastTCP: true, notrack: true}
	tp := newTopo(t)
	var fw *iptablesFirewall
	var ferr error
	inNS(tp.a, func() error { fw, ferr = newIptables(FirewallIptablesNft); return nil })
	if ferr != nil {
		t.Skip(ferr)
	}
	if err := inNS(tp.a, func() error { return fw.install(spec) }); err != nil {
		t.Fatalf("install: %v", err)
	}
	defer inNS(tp.a, fw.remove)
	for _, port := range []string{"53", "9053"} {
		serveTCP(t, tp.b, addrB+":"+port, func(c net.Conn) { io.Copy(c, c); c.Close() })
	}
	for _, want := range []struct {
		port    string
		tracked bool
	}{{"53", true}, {"9053", false}} {
		var c net.Conn
		if err := inNS(tp.a, func() (err error) {
			// The SYN marked MarkFastAllow (the ruleset passes it), the
			// rest MarkFastFlow, as a fast socket's.
			d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(MarkFastAllow))
				})
				return errors.Join(err, serr)
			}}
			c, err = d.Dial("tcp4", addrB+":"+want.port)
			return err
		}); err != nil {
			t.Fatalf("connect to port %s: %v", want.port, err)
		}
		setConnMark(t, c, MarkFastFlow)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 5)
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatalf("port %s: write: %v", want.port, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("port %s: read: %v", want.port, err)
		}
		if n := ctEntries(t, tp, c); (n > 0) != want.tracked {
			t.Errorf("a fast socket's TCP to port %s: %d conntrack entries, want tracked %v", want.port, n, want.tracked)
		}
		c.Close()
	}
}
