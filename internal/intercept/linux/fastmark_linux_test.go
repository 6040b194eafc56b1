package linux

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dialMarked connects from namespace A to B:port from a socket whose mark is set
// as the kernel fast path sets it (internal/fastpath) before connect.
func dialMarked(tp *topo, port string, mark uint32) error {
	return inNS(tp.a, func() error {
		d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
			})
			return errors.Join(err, serr)
		}}
		c, err := d.Dial("tcp4", addrB+":"+port)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// TestFastPathMarks: with each firewall mechanism, a SYN from a socket the fast path
// marked MarkFastAllow passes without being queued, one marked MarkReject is refused
// at once without being queued, and an unmarked one is still held and decided.
func TestFastPathMarks(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft} {
		t.Run(fw, func(t *testing.T) {
			if fw == FirewallNftables {
				if err := probeNftQueue(DefaultQueue); err != nil {
					t.Skipf("no native nftables queue: %v", err)
				}
			}
			tp := newTopo(t)
			srv := listenTCP(t, tp, 9001)
			d := startDaemon(t, tp, "*=deny", "LATCH_TEST_FIREWALL="+fw)
			defer d.stop()
			for i := 0; i < 3; i++ {
				if err := dialMarked(tp, "9001", MarkFastAllow); err != nil {
					t.Fatalf("connect %d from a fast-allowed socket: %v", i, err)
				}
			}
			if err := dialMarked(tp, "9001", MarkReject); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("a fast-refused socket: err = %v, want ECONNREFUSED", err)
			}
			if l, ok := d.waitLine("held ", 300*time.Millisecond); ok {
				t.Errorf("a connection the fast path decided was queued: %q", l)
			}
			if _, err := dial(tp, 9001, 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("an unmarked socket: err = %v, want ECONNREFUSED (held, denied)", err)
			}
			if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, ":9001") {
				t.Errorf("the unmarked connection was not held (got %q)", l)
			}
			if n := srv.accepted.Load(); n != 3 {
				t.Errorf("server accepted %d connections, want 3", n)
			}
		})
	}
}
