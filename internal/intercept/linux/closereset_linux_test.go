package linux

import (
	"errors"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// ctInvalid sums conntrack's count of packets it could not place (INVALID)
// over the CPUs of ns.
func ctInvalid(t *testing.T, ns string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-S").Output()
	if err != nil {
		t.Fatalf("conntrack -S in %s: %v", ns, err)
	}
	n := 0
	for _, m := range regexp.MustCompile(`\binvalid=(\d+)`).FindAllSubmatch(out, -1) {
		v, _ := strconv.Atoi(string(m[1]))
		n += v
	}
	return n
}

// TestNotrackCloseResetUntracked: a fast connection (kernel fast path,
// notrack) closed with SO_LINGER 0 sends its reset to the peer, which reads
// ECONNRESET, and the reset leaves untracked like the flow's other packets:
// conntrack makes no entry for it (its count of INVALID packets stays). With
// the socket's mark cleared before the reset is built (as at the socket's
// other ends), conntrack saw it as an INVALID packet of no flow, one per close.
// IPv4 and IPv6, iptables-nft and native nftables.
func TestNotrackCloseResetUntracked(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("needs conntrack: %v", err)
	}
	for _, fw := range []string{FirewallIptablesNft, FirewallNftables} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			addV6(t, tp)
			// The server writes 100 bytes to each connection, then reads
			// until an error, which it reports.
			ended := make(chan error, 64)
			for _, addr := range []string{addrB, addrB6} {
				serveTCP(t, tp.b, net.JoinHostPort(addr, "9101"), func(c net.Conn) {
					c.Write(make([]byte, 100))
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					buf := make([]byte, 4096)
					for {
						if _, err := c.Read(buf); err != nil {
							ended <- err
							return
						}
					}
				})
			}
			h := newFastHits(t, addrB+":9101", "["+addrB6+"]:9101")
			d := startDaemon(t, tp, "9101=allow,*=deny", append([]string{"LATCH_TEST_FIREWALL=" + fw, "LATCH_TEST_NOTRACK=on"}, h.env...)...)
			if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
				t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
			}
			for _, addr := range []string{addrB, addrB6} {
				const n = 5
				var conns []net.Conn
				for i := 0; i < n; i++ {
					c, err := h.dial(t, tp, addr, 9101, 0)
					if err != nil {
						t.Fatalf("%s: a fast connect: %v", addr, err)
					}
					if err := readN(c, 100); err != nil {
						t.Fatalf("%s: read what the server sent: %v", addr, err)
					}
					conns = append(conns, c)
				}
				before := ctInvalid(t, tp.a)
				for _, c := range conns {
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}
				for i := 0; i < n; i++ {
					if err := <-ended; !errors.Is(err, syscall.ECONNRESET) {
						t.Errorf("%s: a server's read ended with %v, want the client's reset", addr, err)
					}
				}
				if got := ctInvalid(t, tp.a) - before; got != 0 {
					t.Errorf("%s: %d closes with a reset made conntrack see %d INVALID packets, want none", addr, n, got)
				}
				lines := d.linesFor(300 * time.Millisecond)
				for _, c := range conns {
					if hits := hitFor(lines, c); hits != 1 {
						t.Errorf("%s: the fast path decided %v %d times, want 1", addr, c.LocalAddr(), hits)
					}
				}
			}
		})
	}
}
