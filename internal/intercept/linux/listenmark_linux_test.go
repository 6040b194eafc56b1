package linux

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFastMarkedListenerInbound (review1): a listening socket whose mark has
// one of the fast path's values under MarkMask: a socket that kept a gone
// daemon's MarkFastAllow in TCP_CLOSE (which the sweep cannot see, and which
// only a connect's TCP_CONNECT_CB clears) and calls listen(2) instead of
// connect, or an application's own mark (a VPN's fwmark, Mullvad's
// 0x6d6f6c65 is MarkFastFlow there). With inbound connections held and
// notrack, the peer's SYN to it gets the socket's mark in the raw table
// (--restore-skmark), is not tracked, and LATCH-IN's first rule queues an
// untracked SYN whatever its mark: also the same packet coming back from its
// verdict (NF_REPEAT with MarkAllow or MarkReject), which is queued again,
// decided again, and so on for ever. The connection neither fails fast
// (reject) nor connects (allow), and the daemon decides one SYN without end
// (122621 decisions in about 2 s here). Mark 0 is the control. Fails on the
// current code: the untracked-SYN rule of LATCH-IN (nft: input's "tcp flags &
// (syn|ack) == syn ct state untracked" rule) must not take a packet with a
// verdict's mark (MarkAllow, MarkReject), or come after the verdict rules.
// Nothing is accepted that a verdict rejected: the packet is held, not
// leaked.
func TestFastMarkedListenerInbound(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		for _, mark := range []uint32{0, MarkFastAllow, 0x6d6f6c65} {
			t.Run(fw+"/"+strconv.FormatUint(uint64(mark), 16), func(t *testing.T) {
				testFastMarkedListener(t, fw, mark)
			})
		}
	}
}

func testFastMarkedListener(t *testing.T, fw string, mark uint32) {
	needFirewall(t, fw)
	tp := newTopo(t)
	h := newFastHits(t) // the hooks on a cgroup of no socket here
	d := startDaemon(t, tp, "9203=reject,9204=allow,*=deny", append([]string{"LATCH_TEST_FIREWALL=" + fw, "LATCH_TEST_NOTRACK=on", "LATCH_TEST_INBOUND=1"}, h.env[:1]...)...)
	defer d.stop()
	if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
		t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
	}
	// Listening after the daemon's sweep: the socket was in TCP_CLOSE then.
	accepted := listenMarked(t, tp, mark, 9203, 9204)
	dial := func(port int) error { return dialFromB(tp, port) }
	if err := dial(9203); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a peer's connect to a listener with mark %#x, inbound rejected: err = %v, want ECONNREFUSED", mark, err)
	}
	if err := dial(9204); err != nil {
		t.Errorf("a peer's connect to a listener with mark %#x, inbound allowed: %v", mark, err)
	}
	held := map[int]int{}
	for _, l := range d.linesFor(300 * time.Millisecond) {
		for port := range accepted {
			if strings.HasPrefix(l, "held in tcp "+addrA+":"+strconv.Itoa(port)+" ") {
				held[port]++
			}
		}
	}
	for port, n := range held {
		// One SYN, and its retransmissions within the dial's 2 s.
		if n > 3 {
			t.Errorf("the peer's connect to port %d (listener mark %#x) was decided %d times", port, mark, n)
		}
	}
	if held[9203] == 0 || held[9204] == 0 {
		t.Errorf("the peer's SYNs were not held: %v", held)
	}
	if n := accepted[9203].Load(); n != 0 {
		t.Errorf("the listener accepted %d connections the verdict rejected", n)
	}
	if n := accepted[9204].Load(); n != 1 {
		t.Errorf("the listener accepted %d connections the verdict allowed, want 1", n)
	}
}

// TestNftFastMarkedListenerInbound is TestFastMarkedListenerInbound for the
// native nftables ruleset on kernels that cannot queue from nftables (its
// queue statements become drops): a chain of the test's own at priority
// mangle gives the peer's SYN the mark a verdict would give it on its way
// back (NF_REPEAT: MarkReject for port 9203, MarkAllow for 9204). The input
// chain must carry that verdict out, not queue the SYN again (here: drop
// it, a timeout), and its accept by the listener's fast socket mark must not
// take the rejected one: port 9203 refuses, 9204 connects.
func TestNftFastMarkedListenerInbound(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	spec := ruleSpec{queue: testQueue, inbound: true, notrack: true}
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop")
	rules += fmt.Sprintf("add table ip latchtest\nadd chain ip latchtest pre { type filter hook prerouting priority mangle; }\n"+
		"add rule ip latchtest pre tcp dport 9203 meta mark set %#x\nadd rule ip latchtest pre tcp dport 9204 meta mark set %#x\n", MarkReject, MarkAllow)
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	accepted := listenMarked(t, tp, MarkFastAllow, 9203, 9204)
	dial := func(port int) error { return dialFromB(tp, port) }
	if err := dial(9203); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a peer's SYN back from a reject verdict to a listener with mark %#x: err = %v, want ECONNREFUSED", MarkFastAllow, err)
	}
	if err := dial(9204); err != nil {
		t.Errorf("a peer's SYN back from an allow verdict to a listener with mark %#x: %v", MarkFastAllow, err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := accepted[9203].Load(); n != 0 {
		t.Errorf("the listener accepted %d connections the verdict rejected", n)
	}
	if n := accepted[9204].Load(); n != 1 {
		t.Errorf("the listener accepted %d connections the verdict allowed, want 1", n)
	}
}

// listenMarked listens in ns A on addrA at each port from a socket with the
// given mark, and counts the connections each accepts.
func listenMarked(t *testing.T, tp *topo, mark uint32, ports ...int) map[int]*atomic.Int64 {
	t.Helper()
	accepted := map[int]*atomic.Int64{}
	for _, port := range ports {
		n := new(atomic.Int64)
		accepted[port] = n
		var ln net.Listener
		if err := inNS(tp.a, func() error {
			lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
				})
				return errors.Join(err, serr)
			}}
			var err error
			ln, err = lc.Listen(nil, "tcp4", net.JoinHostPort(addrA, strconv.Itoa(port)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				n.Add(1)
				c.Close()
			}
		}()
	}
	return accepted
}

// dialFromB connects from ns B to addrA:port within 2 s, and closes.
func dialFromB(tp *topo, port int) error {
	return inNS(tp.b, func() error {
		c, err := net.DialTimeout("tcp4", net.JoinHostPort(addrA, strconv.Itoa(port)), 2*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}
