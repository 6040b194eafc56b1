package linux

import (
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	addr6LiveA = "fd00:75::1"
	addr6LiveB = "fd00:75::2"
)

// ipt runs iptables (or ip6tables) in ns.
func ipt(t *testing.T, ns string, v6 bool, args ...string) {
	t.Helper()
	tool := "iptables"
	if v6 {
		tool = "ip6tables"
	}
	if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, tool}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s in %s: %v: %s", tool, strings.Join(args, " "), ns, err, out)
	}
}

var countRuleRE = regexp.MustCompile(`^\[(\d+):(\d+)\] -A (OUTPUT|INPUT) .*latch-live-test`)

// flowBytes reads the counting rules the test added in the mangle table: the
// bytes ns sent to and received from the test's port, each packet's length
// from its IP header on, as the OUTPUT and INPUT hooks saw them (where conntrack
// counts, and the socket's counters count the same packets).
func flowBytes(t *testing.T, ns string, v6 bool) (out, in uint64) {
	t.Helper()
	tool := "iptables-save"
	if v6 {
		tool = "ip6tables-save"
	}
	save, err := exec.Command("ip", "netns", "exec", ns, tool, "-c", "-t", "mangle").CombinedOutput()
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", tool, ns, err, save)
	}
	for _, l := range strings.Split(string(save), "\n") {
		m := countRuleRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseUint(m[2], 10, 64)
		if m[3] == "OUTPUT" {
			out = n
		} else {
			in = n
		}
	}
	return out, in
}

// TestLiveBytesWithoutConntrack: a long TCP connection the kernel fast path
// counts, which conntrack does not list (its packets kept out of conntrack in
// the raw table, as the fast path's notrack ruleset does, or its entry deleted
// while it lives), is reported along the way from its socket's live counts
// (every interval, growing, never going down) and ends once, with exactly the
// bytes its packets carried each way (counted by rules of the mangle table).
// IPv4 and IPv6. Without the live counts (LATCH_TEST_LIVE_BYTES=off, as on a
// kernel without the iterator) such a flow shows its bytes at its end only.
func TestLiveBytesWithoutConntrack(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("needs the conntrack tool: %v", err)
	}
	for _, c := range []struct {
		name, how string
		v6, live  bool
	}{
		{"notrack v4", "notrack", false, true},
		{"notrack v6", "notrack", true, true},
		{"deleted v4", "deleted", false, true},
		{"notrack v4 live off", "notrack", false, false},
	} {
		t.Run(c.name, func(t *testing.T) { testLiveBytes(t, c.how, c.v6, c.live) })
	}
}

func testLiveBytes(t *testing.T, how string, v6, live bool) {
	tp := newTopo(t)
	const port = 9301
	network, srvAddr := "tcp4", addrB
	if v6 {
		network, srvAddr = "tcp6", addr6LiveB
		for _, args := range [][]string{
			{"-n", tp.a, "-6", "addr", "add", addr6LiveA + "/64", "dev", tp.vethA, "nodad"},
			{"-n", tp.b, "-6", "addr", "add", addr6LiveB + "/64", "dev", tp.vethB, "nodad"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
	}
	dst := net.JoinHostPort(srvAddr, strconv.Itoa(port))
	// The server answers each 10,000 bytes with 1,000, and closes after the
	// client did.
	serveTCP(t, tp.b, dst, func(s net.Conn) {
		defer s.Close()
		s.SetDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 10_000)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf[:1000]); err != nil {
				return
			}
		}
	})
	p := strconv.Itoa(port)
	ipt(t, tp.a, v6, "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "--dport", p, "-m", "comment", "--comment", "latch-live-test")
	ipt(t, tp.a, v6, "-t", "mangle", "-A", "INPUT", "-p", "tcp", "--sport", p, "-m", "comment", "--comment", "latch-live-test")
	if how == "notrack" {
		// As the fast path's ruleset keeps its TCP flows out of conntrack.
		ipt(t, tp.a, v6, "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "--dport", p, "-j", "CT", "--notrack")
		ipt(t, tp.a, v6, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--sport", p, "-j", "CT", "--notrack")
	}
	env := []string{"LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=1s", "LATCH_TEST_SOCKET_ENDS=on", "LATCH_TEST_PRINT_ENDS=1"}
	if !live {
		env = append(env, "LATCH_TEST_LIVE_BYTES=off")
	}
	d := startDaemon(t, tp, "*=allow", env...)
	defer d.stop()

	var conn net.Conn
	if err := inNS(tp.a, func() (err error) {
		conn, err = net.DialTimeout(network, dst, 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	local, remote := conn.LocalAddr().String(), conn.RemoteAddr().String()
	// About 4 s of traffic: 4 intervals.
	const rounds, chunk = 16, 50_000
	for i := range rounds {
		if _, err := conn.Write(make([]byte, chunk)); err != nil {
			t.Fatalf("round %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(conn, make([]byte, chunk/10)); err != nil {
			t.Fatalf("round %d: read: %v", i, err)
		}
		switch {
		case i == 2 && how == "notrack":
			// The premise: conntrack has no entry for the flow.
			out, _ := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-p", "tcp", "--dport", p).CombinedOutput()
			if strings.Contains(string(out), "dport="+p) {
				t.Fatalf("conntrack lists the flow kept out of it: %s", out)
			}
		case i == 7 && how == "deleted":
			// After its first report from conntrack (about 1 s in).
			if out, err := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-D", "-p", "tcp", "--dport", p).CombinedOutput(); err != nil {
				t.Fatalf("conntrack -D: %v: %s", err, out)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	conn.(*net.TCPConn).CloseWrite()
	if n, err := io.Copy(io.Discard, conn); err != nil || n != 0 {
		t.Fatalf("read to the peer's close: %d, %v", n, err)
	}
	conn.Close()
	// The reports (along the way, then the end) and the socket's end, in
	// the order the daemon printed them.
	var along []trafficLine
	var end trafficLine
	var e endLine
	for deadline := time.Now().Add(5 * time.Second); !end.ended || e.local == ""; {
		l, ok := d.waitLine("", time.Until(deadline))
		if !ok {
			t.Fatalf("no ended report or socket end of %s -> %s (reports so far %+v, end %+v); stderr:\n%s", local, remote, along, e, d.errors())
		}
		switch {
		case strings.HasPrefix(l, "traffic "):
			if tl := parseTrafficLine(t, l); tl.local != local {
				continue
			} else if tl.ended {
				if end.ended {
					t.Errorf("ended twice: %+v and %+v", end, tl)
				}
				end = tl
			} else {
				along = append(along, tl)
			}
		case strings.HasPrefix(l, "end "):
			m := endLineRE.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("end line %q", l)
			}
			if m[1] == local && m[2] == remote {
				n := func(s string) uint64 { v, _ := strconv.ParseUint(s, 10, 64); return v }
				e = endLine{local: m[1], remote: m[2], counted: m[3] == "true", bytesOut: n(m[4]), bytesIn: n(m[5])}
			}
		}
	}
	out, in := flowBytes(t, tp.a, v6)
	t.Logf("reports along the way %+v; end %+v; socket end %+v; sent %d, received %d", along, end, e, out, in)
	if out < rounds*chunk || in < rounds*chunk/10 {
		t.Fatalf("the rules counted %d bytes out and %d in, want at least the payloads", out, in)
	}
	if end.out != out || end.in != in || e.bytesOut != out || e.bytesIn != in {
		t.Errorf("ended with %d bytes out and %d in (socket end %d and %d), want exactly what the packets carried: %d and %d", end.out, end.in, e.bytesOut, e.bytesIn, out, in)
	}
	if !live {
		if len(along) != 0 {
			t.Errorf("reports along the way without live counts: %+v", along)
		}
		return
	}
	// Up to 3 (at 1, 2 and 3 s); a loaded machine's reads may come late
	// enough to make one of them the end's.
	if len(along) < 2 {
		t.Errorf("%d reports along the way of a flow of about 4 intervals, want at least 2", len(along))
	}
	prev := trafficLine{}
	for _, tl := range append(along, end) {
		if tl.out < prev.out || tl.in < prev.in {
			t.Errorf("report %+v after %+v: totals went down", tl, prev)
		}
		prev = tl
	}
	st := d.stop()
	// Once ended, never again (d.stop's last read reports every flow not ended).
	for {
		tl, ok := waitTraffic(t, d, local, 100*time.Millisecond)
		if !ok {
			break
		}
		t.Errorf("a report after the end: %+v", tl)
	}
	if n := st.Extra["traffic_socket_counts"]; n < 2 {
		t.Errorf("%d reports from the sockets' counts, want at least 2", n)
	}
}
