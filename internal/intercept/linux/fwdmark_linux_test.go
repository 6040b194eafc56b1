package linux

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestForwardSegmentsNotUntrackedByLocalListener (review1): with notrack, raw
// PREROUTING gives a packet its local socket's mark (-m socket --nowildcard
// --restore-skmark) and, for a fast mark, takes it out of conntrack. A
// forwarded packet has no local socket, but xt_socket's listener lookup
// matches a local listener bound to the wildcard address on the packet's
// destination port (--nowildcard: wildcard listeners count) whatever the
// destination address. If that listener's mark has a fast value (a gone
// daemon's MarkFastAllow kept in TCP_CLOSE, then listen(2); or an
// application's own mark such as 0x6d6f6c65), a container's forwarded TCP
// segments to that port on any host become UNTRACKED, and LATCH-FWD, which
// holds a segment conntrack calls NEW and drops one it calls INVALID
// (TestForwardTCPWithoutHandshake), passes them at its last TCP RETURN: the
// container's raw socket has a SYN-less channel out although every verdict is
// drop. Fails on the current code: LATCH-RAW-PRE should look up sockets only
// for packets addressed to this host (-m addrtype --dst-type LOCAL; nft: fib
// daddr type local), and LATCH-FWD should hold or drop UNTRACKED TCP.
func TestForwardSegmentsNotUntrackedByLocalListener(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			c := addContainer(t, tp)
			src, dst := netip.MustParseAddr(addrC), netip.MustParseAddr(addrB)
			out := openRaw(t, c, false, unix.IPPROTO_TCP, src.String())
			seen := openRaw(t, tp.b, false, unix.IPPROTO_TCP, "").capture()
			time.Sleep(300 * time.Millisecond)
			out.send(t, dst.String(), tcpSegment(src, dst, 41000, 7003, 0x01, "latch-fin-before"), 0)
			if !seen.waitSaw("latch-fin-before", 3*time.Second) {
				t.Fatal("without latch a forwarded segment did not reach B: the topology is broken")
			}
			h := newFastHits(t)
			d := startDaemonOn(t, tp, fw, "*=drop", append([]string{"LATCH_TEST_FORWARD=1", "LATCH_TEST_NOTRACK=on"}, h.env[:1]...)...)
			defer d.stop()
			if l, ok := d.waitLine("notrack ", 5*time.Second); !ok || l != "notrack <nil>" {
				t.Fatalf("notrack: %q; stderr:\n%s", l, d.errors())
			}
			const ack, psh, fin = 0x10, 0x08, 0x01
			// The control: without the listener such a segment is held
			// (NEW) and dropped.
			out.send(t, dst.String(), tcpSegment(src, dst, 41003, 7003, ack|psh, "latch-no-listener"), 0)
			time.Sleep(time.Second)
			if seen.saw("latch-no-listener") {
				t.Fatal("without the marked listener a forwarded segment without a handshake passed")
			}
			// A listener of A on the wildcard address, port 7003, with a
			// fast-valued mark.
			var ln net.Listener
			if err := inNS(tp.a, func() error {
				lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
					var serr error
					err := rc.Control(func(fd uintptr) {
						serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(MarkFastAllow))
					})
					return errors.Join(err, serr)
				}}
				var err error
				ln, err = lc.Listen(nil, "tcp4", "0.0.0.0:7003")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			out.send(t, dst.String(), tcpSegment(src, dst, 41001, 7003, ack|psh, "latch-midstream"), 0)
			out.send(t, dst.String(), tcpSegment(src, dst, 41002, 7003, fin, "latch-bare-fin"), 0)
			time.Sleep(time.Second)
			for _, p := range []string{"latch-midstream", "latch-bare-fin"} {
				if seen.saw(p) {
					t.Errorf("a forwarded TCP segment without a handshake (%s) to %v:7003 passed, every verdict drop, because A has a listener on *:7003 with mark %#x", p, dst, MarkFastAllow)
				}
			}
		})
	}
}

// TestNftForwardSegmentsNotUntrackedByLocalListener is
// TestForwardSegmentsNotUntrackedByLocalListener for the native nftables
// ruleset, on kernels that cannot queue from nftables (its queue statements
// become drops, so every verdict is drop): rawpre's socket lookup (socket
// mark) finds A's listener on *:7003 for a forwarded segment too, and must
// not untrack it (fib daddr type local), else the forward chain accepts the
// container's SYN-less segments at its TCP accept.
func TestNftForwardSegmentsNotUntrackedByLocalListener(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	c := addContainer(t, tp)
	src, dst := netip.MustParseAddr(addrC), netip.MustParseAddr(addrB)
	out := openRaw(t, c, false, unix.IPPROTO_TCP, src.String())
	seen := openRaw(t, tp.b, false, unix.IPPROTO_TCP, "").capture()
	time.Sleep(300 * time.Millisecond)
	out.send(t, dst.String(), tcpSegment(src, dst, 41000, 7003, 0x01, "latch-fin-before"), 0)
	if !seen.waitSaw("latch-fin-before", 3*time.Second) {
		t.Fatal("without latch a forwarded segment did not reach B: the topology is broken")
	}
	spec := ruleSpec{queue: testQueue, exemptLoopback: true, forward: true, notrack: true}
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop")
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	const ack, psh, fin = 0x10, 0x08, 0x01
	out.send(t, dst.String(), tcpSegment(src, dst, 41003, 7003, ack|psh, "latch-no-listener"), 0)
	time.Sleep(time.Second)
	if seen.saw("latch-no-listener") {
		t.Fatal("without the marked listener a forwarded segment without a handshake passed")
	}
	var ln net.Listener
	if err := inNS(tp.a, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(MarkFastAllow))
			})
			return errors.Join(err, serr)
		}}
		var err error
		ln, err = lc.Listen(nil, "tcp4", "0.0.0.0:7003")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out.send(t, dst.String(), tcpSegment(src, dst, 41001, 7003, ack|psh, "latch-midstream"), 0)
	out.send(t, dst.String(), tcpSegment(src, dst, 41002, 7003, fin, "latch-bare-fin"), 0)
	time.Sleep(time.Second)
	for _, p := range []string{"latch-midstream", "latch-bare-fin"} {
		if seen.saw(p) {
			t.Errorf("a forwarded TCP segment without a handshake (%s) to %v:7003 passed the nftables ruleset (every verdict drop), because A has a listener on *:7003 with mark %#x", p, dst, MarkFastAllow)
		}
	}
}
