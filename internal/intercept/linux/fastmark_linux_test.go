package linux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
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
// at once without being queued, and an unmarked one is still held and decided, as
// is one marked MarkFastFlow (an established fast socket's mark, which lets no SYN
// pass: the socket's next connect). Without Config.FastTCP (no fast path deciding TCP: the mark is left over from an
// earlier daemon's) a SYN marked MarkFastAllow is held and decided like any.
func TestFastPathMarks(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			srv := listenTCP(t, tp, 9001)
			d := startDaemon(t, tp, "*=deny", "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_FAST_TCP=1")
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
			// MarkFastFlow (an established fast socket's) lets no SYN
			// pass: the socket's next connect is held and decided.
			if err := dialMarked(tp, "9001", MarkFastFlow); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("a socket marked MarkFastFlow: err = %v, want ECONNREFUSED (held, denied)", err)
			}
			if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, ":9001") {
				t.Errorf("the SYN marked MarkFastFlow was not held (got %q)", l)
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
			d.stop()

			// No fast path deciding TCP: a leftover MarkFastAllow is no allow.
			d = startDaemon(t, tp, "*=deny", "LATCH_TEST_FIREWALL="+fw)
			defer d.stop()
			if err := dialMarked(tp, "9001", MarkFastAllow); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("without the fast path, a socket marked MarkFastAllow: err = %v, want ECONNREFUSED (held, denied)", err)
			}
			if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, ":9001") {
				t.Errorf("without the fast path, the marked connection was not held (got %q)", l)
			}
			if n := srv.accepted.Load(); n != 3 {
				t.Errorf("server accepted %d connections, want 3", n)
			}
		})
	}
}

// TestAllowedFlowLeavesAtOnce: with iptables-nft, the packets of a flow latch
// allowed leave LATCH-OUT at the rule that takes allowed flows early (its counter
// counts them, the chain's last RETURN for allowed flows counts none), and with each
// mechanism a packet marked for a reset on an allowed flow is still answered with
// one: that rule takes neither SYNs nor MarkReject.
func TestAllowedFlowLeavesAtOnce(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallNftables} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			serveTCP(t, tp.b, addrB+":9011", func(c net.Conn) { io.Copy(c, c); c.Close() })
			d := startDaemon(t, tp, "*=allow", "LATCH_TEST_FIREWALL="+fw)
			defer d.stop()
			var c net.Conn
			if err := inNS(tp.a, func() (err error) {
				c, err = net.DialTimeout("tcp4", addrB+":9011", 3*time.Second)
				return err
			}); err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer c.Close()
			const rounds = 20
			buf := make([]byte, 5)
			for i := 0; i < rounds; i++ {
				c.SetDeadline(time.Now().Add(3 * time.Second))
				if _, err := c.Write([]byte("hello")); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
			}
			if fw == FirewallIptablesNft {
				out, err := exec.Command("ip", "netns", "exec", tp.a, "iptables-save", "-c", "-t", "filter").CombinedOutput()
				if err != nil {
					t.Fatalf("iptables-save: %v: %s", err, out)
				}
				early, last := int64(-1), int64(-1)
				ctAllow := fmt.Sprintf("-A LATCH-OUT -m connmark --mark %#x/%#x -j RETURN", MarkAllow, MarkMask)
				for _, l := range strings.Split(string(out), "\n") {
					var pkts, bytes int64
					n, _ := fmt.Sscanf(l, "[%d:%d]", &pkts, &bytes)
					switch rule := l[strings.IndexByte(l, ']')+1:]; {
					case n != 2:
					case strings.Contains(rule, "-A LATCH-OUT -p tcp -m tcp ! --tcp-flags") && strings.Contains(rule, "-m connmark"):
						// The early return (issue 9) and the one after
						// the fast path's rules, which it leaves only the
						// source-routed packets.
						early = max(early, 0) + pkts
					case strings.TrimSpace(rule) == ctAllow:
						last = pkts
					}
				}
				if early < rounds || last != 0 {
					t.Errorf("allowed flow's packets: %d at the early rule (want >= %d), %d at the chain's last RETURN (want 0):\n%s", early, rounds, last, out)
				}
			}
			// A packet marked for a reset (as a verdict or the fast path marks it) on
			// the allowed flow still gets one.
			sc, err := c.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var serr error
			if err := sc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(MarkReject))
			}); err != nil || serr != nil {
				t.Fatalf("set the socket's mark: %v %v", err, serr)
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			_, err = c.Write([]byte("again"))
			if err == nil {
				_, err = io.ReadFull(c, buf)
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("a MarkReject packet on an allowed flow: err = %v, want ECONNRESET", err)
			}
		})
	}
}

// TestInvalidResetLeavesEarly: with each mechanism, a TCP reset conntrack
// cannot place (INVALID: its flow's entry is gone, as a fast socket's is never
// made) still reaches the peer, and with iptables-nft it leaves LATCH-OUT at the
// rule that takes INVALID TCP early (its counter counts it; the chain's TCP
// RETURN at its end counts nothing); one marked MarkReject is still dropped
// (REJECT sends nothing for a reset): that rule takes no MarkReject packet.
func TestInvalidResetLeavesEarly(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("no conntrack tool")
	}
	for _, fw := range []string{FirewallIptablesNft, FirewallNftables} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			ends := make(chan error, 4)
			serveTCP(t, tp.b, addrB+":9012", func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, 5)
				if _, err := io.ReadFull(c, buf); err != nil {
					ends <- err
					return
				}
				c.Write(buf)
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, err := c.Read(buf)
				ends <- err
			})
			d := startDaemon(t, tp, "*=allow", "LATCH_TEST_FIREWALL="+fw)
			defer d.stop()
			// closeInvalid connects, exchanges a message, deletes the flow's
			// conntrack entry and closes with a reset (SO_LINGER 0) from a
			// socket marked mark; it returns what the server's read then got.
			closeInvalid := func(mark uint32) error {
				var c *net.TCPConn
				if err := inNS(tp.a, func() error {
					nc, err := net.DialTimeout("tcp4", addrB+":9012", 3*time.Second)
					if err == nil {
						c = nc.(*net.TCPConn)
					}
					return err
				}); err != nil {
					t.Fatalf("connect: %v", err)
				}
				c.SetDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 5)
				if _, err := c.Write([]byte("hello")); err != nil {
					t.Fatalf("write: %v", err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					t.Fatalf("read: %v", err)
				}
				port := c.LocalAddr().(*net.TCPAddr).Port
				if out, err := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-D", "-p", "tcp",
					"--sport", fmt.Sprint(port), "--dport", "9012").CombinedOutput(); err != nil {
					t.Fatalf("conntrack -D: %v: %s", err, out)
				}
				sc, err := c.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				var serr error
				if err := sc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
				}); err != nil || serr != nil {
					t.Fatalf("set the socket's mark: %v %v", err, serr)
				}
				c.SetLinger(0)
				c.Close()
				select {
				case err := <-ends:
					return err
				case <-time.After(5 * time.Second):
					t.Fatal("the server's read never ended")
				}
				return nil
			}
			if err := closeInvalid(0); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("an untracked reset: the server's read got %v, want ECONNRESET", err)
			}
			if fw == FirewallIptablesNft {
				out, err := exec.Command("ip", "netns", "exec", tp.a, "iptables-save", "-c", "-t", "filter").CombinedOutput()
				if err != nil {
					t.Fatalf("iptables-save: %v: %s", err, out)
				}
				early, last := int64(-1), int64(-1)
				for _, l := range strings.Split(string(out), "\n") {
					var pkts, bytes int64
					n, _ := fmt.Sscanf(l, "[%d:%d]", &pkts, &bytes)
					switch rule := strings.TrimSpace(l[strings.IndexByte(l, ']')+1:]); {
					case n != 2:
					case strings.HasPrefix(rule, "-A LATCH-OUT -p tcp") && strings.Contains(rule, "--ctstate INVALID"):
						early = pkts
					case rule == "-A LATCH-OUT -p tcp -j RETURN":
						last = pkts
					}
				}
				if early < 1 || last != 0 {
					t.Errorf("untracked reset: %d at the early rule (want >= 1), %d at the chain's TCP RETURN (want 0):\n%s", early, last, out)
				}
			}
			if err := closeInvalid(MarkReject); !errors.Is(err, syscall.ETIMEDOUT) && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("an untracked reset marked MarkReject: the server's read got %v, want a timeout (the reset dropped)", err)
			}
		})
	}
}
