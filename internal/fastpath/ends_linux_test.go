package fastpath

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
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

// waitEnd waits up to 2 s for the end of the socket local → remote, which
// must carry the time it ended (between the call and now).
func waitEnd(t *testing.T, ends <-chan End, want End) {
	t.Helper()
	since := time.Now()
	deadline := time.After(2 * time.Second)
	for {
		select {
		case e := <-ends:
			if e.Local == want.Local && e.Remote == want.Remote {
				// The socket closed before waitEnd was called, well within a second.
				if e.Time.Before(since.Add(-time.Second)) || e.Time.After(time.Now()) {
					t.Errorf("the end of %v -> %v at %v, want between %v and now", e.Local, e.Remote, e.Time, since.Add(-time.Second))
				}
				return
			}
		case <-deadline:
			t.Fatalf("no end of the socket %v -> %v within 2 s", want.Local, want.Remote)
		}
	}
}

// TestSocketEnds: the sock_ops program reports the end of every TCP socket of the
// namespace (it serves the root cgroup, whatever cgroup the connect hooks serve),
// not only of the connections the fast path decided, whether it closes
// with FIN (both sides closed, TIME_WAIT) or a reset, IPv4, IPv6 and IPv4-mapped.
func TestSocketEnds(t *testing.T) {
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
