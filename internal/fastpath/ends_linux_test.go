package fastpath

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// runEnds runs fp.Run until the test ends and returns the socket ends it reads.
func runEnds(t *testing.T, fp *FastPath) <-chan End {
	ends := make(chan End, 256)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- fp.Run(ctx, func(Decision) {}, func(e End) {
			select {
			case ends <- e:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ends
}

// connectLocal makes c connect a new socket to ap (with a reset on close if rst)
// and returns the socket's local address.
func connectLocal(t *testing.T, c *testClient, ap netip.AddrPort, rst bool) netip.AddrPort {
	t.Helper()
	cmd := "local " + ap.String()
	if rst {
		cmd = "rst " + cmd
	}
	fmt.Fprintln(c.in, cmd)
	line := c.line(t)
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "ok" {
		t.Fatalf("connect %s: %q", ap, line)
	}
	local, err := netip.ParseAddrPort(f[2])
	if err != nil {
		t.Fatalf("connect %s: %q: %v", ap, line, err)
	}
	return local
}

// waitEnd waits (endOf) for the end of the socket local → remote, which must
// carry the time it ended (between the call and now).
func waitEnd(t *testing.T, ends <-chan End, want End) {
	t.Helper()
	since := time.Now()
	e := endOf(t, ends, want.Local, want.Remote)
	// The socket closed before waitEnd was called, well within a second.
	if e.Time.Before(since.Add(-time.Second)) || e.Time.After(time.Now()) {
		t.Errorf("the end of %v -> %v at %v, want between %v and now", e.Local, e.Remote, e.Time, since.Add(-time.Second))
	}
}

// TestSocketEnds: the sock_ops program reports the end of every TCP socket of the
// namespace (it serves the root cgroup, whatever cgroup the connect hooks serve),
// not only of the connections the fast path decided, whether it closes
// with FIN (both sides closed, TIME_WAIT) or a reset, IPv4, IPv6 and IPv4-mapped.
func TestSocketEnds(t *testing.T) {
	enter := ownNetns(t)
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if st := fp.Stats(); !st.TCPEnds || st.TCPEndsWhy != "" {
		t.Fatalf("TCPEnds %v (%q), want on", st.TCPEnds, st.TCPEndsWhy)
	}
	ends := runEnds(t, fp)
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	v4 := listen(t, "tcp4", "127.0.0.1:0")
	v6 := listen(t, "tcp6", "[::1]:0")
	dual := listen(t, "tcp", "[::]:0")
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), dual.Port())
	for _, c2 := range []struct {
		name   string
		remote netip.AddrPort
		want   netip.AddrPort
		rst    bool
	}{
		{"v4 fin", v4, v4, false},
		{"v4 rst", v4, v4, true},
		{"v6 fin", v6, v6, false},
		{"v6 rst", v6, v6, true},
		// The end is IPv4, as conntrack's entry is.
		{"mapped fin", mapped, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dual.Port()), false},
	} {
		t.Run(c2.name, func(t *testing.T) {
			local := connectLocal(t, c, c2.remote, c2.rst)
			waitEnd(t, ends, End{Local: local, Remote: c2.want})
		})
	}
	// A socket of a process outside the hooks' cgroup (this test's) too.
	t.Run("other cgroup", func(t *testing.T) {
		enter(t)
		conn, err := net.Dial("tcp4", v4.String())
		if err != nil {
			t.Fatal(err)
		}
		local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
		conn.Close()
		waitEnd(t, ends, End{Local: local, Remote: v4})
	})
	if st := fp.Stats(); st.Ends < 6 || st.EndsLost != 0 {
		t.Errorf("Stats: %d ends, %d lost; want at least 6 and none lost", st.Ends, st.EndsLost)
	}
}

// TestSocketEndsOff: without the sock_ops program (a kernel that refuses it), with
// NoTCPEnds (--forward), or on a kernel whose sock_ops programs cannot call
// bpf_get_netns_cookie (before 5.15: the program loads without the call, and still
// gives decisions their local port), no end is reported and Stats says why.
func TestSocketEndsOff(t *testing.T) {
	for name, cfg := range map[string]Config{"no sock_ops": {noSockops: true}, "NoTCPEnds": {NoTCPEnds: "test"}, "no netns cookie": {noNetnsCookie: true}} {
		t.Run(name, func(t *testing.T) {
			cg, cgfd := testCgroup(t)
			fp := openTest(t, cg, cfg)
			if st := fp.Stats(); st.TCPEnds || st.TCPEndsWhy == "" {
				t.Fatalf("TCPEnds %v (%q), want off with a reason", st.TCPEnds, st.TCPEndsWhy)
			}
			if st := fp.Stats(); cfg.noNetnsCookie && (!st.TCPLocal || !strings.Contains(st.TCPEndsWhy, "bpf_get_netns_cookie")) {
				t.Fatalf("stats %+v: want the sock_ops program attached, and ends off for the kernel", st)
			}
			ends := runEnds(t, fp)
			exe, _ := os.Executable()
			c := startClient(t, exe, cgfd)
			v4 := listen(t, "tcp4", "127.0.0.1:0")
			connectLocal(t, c, v4, true)
			connectLocal(t, c, v4, false)
			select {
			case e := <-ends:
				t.Fatalf("end %+v reported", e)
			case <-time.After(500 * time.Millisecond):
			}
		})
	}
}

// TestEndsDoNotCrowdOutDecisions: a burst of TCP socket ends (a busy server's
// connections, none of them latch's) that fills the ring buffer of ends while
// nobody reads it does not take the room of the fast path's decisions: every
// decision made then is recorded (ring_lost 0), and the ends that did not fit are
// counted (ends_lost). With one ring buffer for both, the decisions were lost.
func TestEndsDoNotCrowdOutDecisions(t *testing.T) {
	// Its burst of sockets in a namespace of its own: in the root namespace
	// every other fast path (of test binaries running beside it) reported them.
	ownNetns(t)
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if st := fp.Stats(); !st.TCPEnds {
		t.Fatalf("TCPEnds off: %s", st.TCPEndsWhy)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember: %v %v", ok, err)
	}
	// Connections reset at once (no TIME_WAIT to run out of ports), each two
	// socket ends (ours and the accepted one), until an end is lost; Run does not
	// read yet. At most 40000 connections and 60 s.
	server := listen(t, "tcp4", "127.0.0.1:0")
	deadline := time.Now().Add(60 * time.Second)
	n := 0
	for ; fp.Stats().EndsLost == 0; n++ {
		if n >= 40000 || time.Now().After(deadline) {
			t.Fatalf("no end lost after %d connections: %+v", n, fp.Stats())
		}
		conn, err := net.Dial("tcp4", server.String())
		if err != nil {
			t.Fatalf("connection %d: %v", n, err)
		}
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	t.Logf("the ring buffer of ends was full after %d connections", n)
	const decisions = 20
	for i := 0; i < decisions; i++ {
		if got := c.connect(t, dst); got != "ok 0x60000000" {
			t.Fatalf("connect %d: %q, want a fast-path allow", i, got)
		}
	}
	if st := fp.Stats(); st.RingLost != 0 || st.HitsAllow != decisions {
		t.Fatalf("stats %+v: want %d hits and no decision lost while the ends' ring buffer is full", st, decisions)
	}
	got := make(chan Decision, decisions)
	ends := make(chan End, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- fp.Run(ctx, func(d Decision) { got <- d }, func(e End) {
			select {
			case ends <- e:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < decisions; i++ {
		select {
		case d := <-got:
			if d.Remote != dst || d.Action != engine.Allow || d.PID != c.pid {
				t.Errorf("decision %d: %+v, want an allow to %v by pid %d", i, d, dst, c.pid)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("decision %d of %d not recorded: %+v", i, decisions, fp.Stats())
		}
	}
	// The ends that fit are read as well.
	select {
	case <-ends:
	case <-time.After(5 * time.Second):
		t.Fatalf("no socket end read: %+v", fp.Stats())
	}
	if st := fp.Stats(); st.RingLost != 0 || st.Events != decisions || st.EndsLost == 0 || st.Ends == 0 {
		t.Errorf("stats %+v: want %d decisions read, none lost; ends read and some lost", st, decisions)
	}
}

// TestEndAfterItsDecision: the decision of a connection the fast path allowed is
// handed to Run's callback before the end of its socket, though the two come
// through separate ring buffers (the byte accountant must know the flow to end
// it), and the end's time is not before the decision's; nothing is lost, and
// Close while both readers wait ends Run without an error. Both with the
// mapped rings and with the ringbuf.Reader fallback for both (review8: its
// wait must not drop the record it read; readEnds flushes the decisions'
// reader, whose wait then returns).
func TestEndAfterItsDecision(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "mapped"
		if fallback {
			name = "ringbuf.Reader"
		}
		t.Run(name, func(t *testing.T) { endsAfterDecisions(t, fallback) })
	}
}

// readWithRingbufReader has fp's Run read both rings with ringbuf.Reader, as
// where newRingWait failed (Open then leaves ringWait and endsWait nil).
func readWithRingbufReader(fp *FastPath) {
	for _, w := range []*ringWait{fp.ringWait, fp.endsWait} {
		if w != nil {
			w.close()
		}
	}
	fp.ringWait, fp.endsWait = nil, nil
}

func endsAfterDecisions(t *testing.T, fallback bool) {
	ownNetns(t)
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if fallback {
		readWithRingbufReader(fp)
	}
	if st := fp.Stats(); !st.TCPEnds || !st.TCPLocal {
		t.Fatalf("stats %+v: want the sock_ops program and socket ends", st)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember: %v %v", ok, err)
	}
	type record struct {
		d *Decision
		e *End
	}
	records := make(chan record, 4096)
	done := make(chan error, 1)
	go func() {
		done <- fp.Run(context.Background(), func(d Decision) { records <- record{d: &d} }, func(e End) {
			if e.Remote == dst {
				records <- record{e: &e}
			}
		})
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			fp.Close()
			<-done
		}
	})
	waitReading(t, fp)
	const n = 50
	for i := range n {
		connectLocal(t, c, dst, i%2 == 0)
	}
	decided := map[netip.AddrPort]time.Time{}
	for ended := 0; ended < n; {
		select {
		case r := <-records:
			if r.d != nil {
				decided[r.d.Local] = r.d.Time
				continue
			}
			at, ok := decided[r.e.Local]
			if !ok {
				t.Fatalf("the end of %v -> %v came before its decision", r.e.Local, r.e.Remote)
			}
			if r.e.Time.Before(at) {
				t.Errorf("the end of %v at %v, before its decision at %v", r.e.Local, r.e.Time, at)
			}
			delete(decided, r.e.Local)
			ended++
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d ends read: %+v", ended, n, fp.Stats())
		}
	}
	if st := fp.Stats(); st.RingLost != 0 || st.EndsLost != 0 {
		t.Errorf("stats %+v: want nothing lost", st)
	}
	time.Sleep(20 * time.Millisecond) // into the waits for records
	stopped = true
	if err := fp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still running 5 s after Close")
	}
}

// endOf waits up to 5 s (a loaded machine's test processes may wait for a CPU
// for a while) for the end of the socket local → remote and returns it.
func endOf(t *testing.T, ends <-chan End, local, remote netip.AddrPort) End {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-ends:
			if e.Local == local && e.Remote == remote {
				return e
			}
		case <-deadline:
			t.Fatalf("no end of the socket %v -> %v within 5 s", local, remote)
		}
	}
}

// acceptAll accepts connections on a new listener on network addr and closes
// each once its peer did; it returns the listener's address.
func acceptAll(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Read(make([]byte, 1))
				c.Close()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestSocketEndBytes: the end of an actively opened socket carries its counts
// (at least its SYN, ACK and FIN out, the SYN-ACK and FIN in, each at least an IP
// and TCP header long), IPv4 and IPv6, with FIN or a reset; the end of the
// accepted socket carries none (its handshake came before it existed: the
// accountant reads conntrack for it). internal/intercept/linux's
// TestSocketEndBytesMatchConntrack compares them with conntrack's.
func TestSocketEndBytes(t *testing.T) {
	enter := ownNetns(t)
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if st := fp.Stats(); !st.TCPEndBytes || st.TCPEndBytesWhy != "" {
		t.Fatalf("TCPEndBytes %v (%q), want on", st.TCPEndBytes, st.TCPEndBytesWhy)
	}
	ends := runEnds(t, fp)
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	for _, c2 := range []struct {
		name, network, addr string
		rst                 bool
	}{{"v4 fin", "tcp4", "127.0.0.1:0", false}, {"v4 rst", "tcp4", "127.0.0.1:0", true}, {"v6 fin", "tcp6", "[::1]:0", false}} {
		t.Run(c2.name, func(t *testing.T) {
			enter(t)
			srv := acceptAll(t, c2.network, c2.addr)
			local := connectLocal(t, c, srv, c2.rst)
			e := endOf(t, ends, local, srv)
			t.Logf("end %+v", e)
			hdr := uint64(40)
			if !local.Addr().Is4() {
				hdr = 60
			}
			minOut, minIn := uint64(3), uint64(2) // SYN, ACK, FIN; SYN-ACK, FIN
			if c2.rst {
				minOut = 2 // SYN, ACK: the reset goes out after the end
				minIn = 1
			}
			if !e.Counted || e.Packets.Out < minOut || e.Packets.In < minIn || e.Bytes.Out < hdr*e.Packets.Out || e.Bytes.In < hdr*e.Packets.In {
				t.Errorf("end %+v: want counted, at least %d packets out and %d in of at least %d bytes each", e, minOut, minIn, hdr)
			}
			// The accepted socket's end: no counters.
			if a := endOf(t, ends, srv, local); a.Counted || a.Bytes != (Counts{}) || a.Packets != (Counts{}) {
				t.Errorf("the accepted socket's end %+v carries counters", a)
			}
		})
	}
}

// TestSocketEndBytesOff: on a kernel without socket storage for sock_ops and
// cgroup_skb programs (the code that would use it is never visited by the
// verifier), or without socket ends, ends carry no counters and Stats says why;
// the ends themselves are still reported where they are on.
func TestSocketEndBytesOff(t *testing.T) {
	for name, cfg := range map[string]Config{"no socket storage": {noEndBytes: true}, "no ends": {NoTCPEnds: "test"}} {
		t.Run(name, func(t *testing.T) {
			ownNetns(t)
			cg, cgfd := testCgroup(t)
			fp := openTest(t, cg, cfg)
			st := fp.Stats()
			if st.TCPEndBytes || st.TCPEndBytesWhy == "" {
				t.Fatalf("TCPEndBytes %v (%q), want off with a reason", st.TCPEndBytes, st.TCPEndBytesWhy)
			}
			if !st.TCPEnds {
				return
			}
			ends := runEnds(t, fp)
			exe, _ := os.Executable()
			c := startClient(t, exe, cgfd)
			srv := acceptAll(t, "tcp4", "127.0.0.1:0")
			local := connectLocal(t, c, srv, false)
			if e := endOf(t, ends, local, srv); e.Counted || e.Bytes != (Counts{}) {
				t.Errorf("end %+v carries counters", e)
			}
		})
	}
}

// TestSocketEndsOfItsNamespaceOnly: of two daemons' fast paths, one serving this
// network namespace and one another (a container's daemon; both sock_ops
// programs at the root cgroup), each reports the ends of its own namespace's
// sockets only. The state callback is a flag of the socket, which the other's
// program turned on: this one's program is called for that socket's end too.
func TestSocketEndsOfItsNamespaceOnly(t *testing.T) {
	// This one's namespace of its own too: the ends of the root namespace's
	// sockets (every process's) could fill the channel and hide a wrong one.
	ownNetns(t)
	cg, _ := testCgroup(t)
	here := openTest(t, cg, Config{})
	if st := here.Stats(); !st.TCPEnds {
		t.Skipf("no socket ends: %s", st.TCPEndsWhy)
	}
	hereEnds := runEnds(t, here)

	ns := fmt.Sprintf("latch-fp-ends-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	// In the other namespace, on a thread of its own that never leaves it
	// (it ends with its goroutine): the fast path serves the namespace it is
	// opened in, and a socket is of the namespace it is made in.
	type result struct {
		fp            *FastPath
		local, remote netip.AddrPort
		err           error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		r := result{}
		defer func() { res <- r }()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			r.err = err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		if r.fp, r.err = Open(Config{CgroupPath: cg}); r.err != nil {
			return
		}
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			r.err = err
			return
		}
		defer l.Close()
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			r.err = err
			return
		}
		if s, err := l.Accept(); err == nil {
			defer s.Close()
		}
		r.local = c.LocalAddr().(*net.TCPAddr).AddrPort()
		r.remote = c.RemoteAddr().(*net.TCPAddr).AddrPort()
		// Closed with a reset: TCP_CLOSE at once.
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	r := <-res
	if r.fp != nil {
		t.Cleanup(func() { r.fp.Close() })
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if st := r.fp.Stats(); !st.TCPEnds {
		t.Fatalf("no socket ends in the other namespace: %s", st.TCPEndsWhy)
	}
	// The socket's own daemon reports its end...
	waitEnd(t, runEnds(t, r.fp), End{Local: r.local, Remote: r.remote})
	// ... and this one, which reads every readEvery, never.
	deadline := time.After(6 * readEvery)
	for {
		select {
		case e := <-hereEnds:
			if e.Local == r.local && e.Remote == r.remote {
				t.Fatalf("the fast path of this namespace reported the end of %v -> %v, a socket of namespace %s", e.Local, e.Remote, ns)
			}
		case <-deadline:
			return
		}
	}
}

// TestSimultaneousOpenGuardOff: without the ingress program (a kernel that
// refuses it), Stats says the simultaneous open guard is off and why, and
// sockets' ends carry no byte counts (the ingress program counts those in).
// With it, the guard is on, in the sock_ops program's cgroup.
func TestSimultaneousOpenGuardOff(t *testing.T) {
	cg, _ := testCgroup(t)
	if st := openTest(t, cg, Config{}).Stats(); !st.SimultaneousOpenGuard || st.SimultaneousOpenGuardWhy != "" || st.SimultaneousOpenGuardCgroup == "" {
		t.Errorf("guard %v (%q) at %q, want on", st.SimultaneousOpenGuard, st.SimultaneousOpenGuardWhy, st.SimultaneousOpenGuardCgroup)
	}
	st := openTest(t, cg, Config{noSimOpen: true}).Stats()
	if st.SimultaneousOpenGuard || st.SimultaneousOpenGuardWhy == "" {
		t.Errorf("guard %v (%q), want off and why", st.SimultaneousOpenGuard, st.SimultaneousOpenGuardWhy)
	}
	if st.TCPEndBytes || !strings.Contains(st.TCPEndBytesWhy, "no ingress program") {
		t.Errorf("end bytes %v (%q), want off: no ingress program", st.TCPEndBytes, st.TCPEndBytesWhy)
	}
}
