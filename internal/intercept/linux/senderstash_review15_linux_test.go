package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestUDPRedecideDoubleFlip (review15): with the socket
// pin, a datagram of a UDP flow that has seen a reply (conntrack ESTABLISHED,
// direction original) leaves LATCH-OUT undecided, by the final "-p udp
// RETURN" meant for flows from before latch (mark 0), if the flow's
// conntrack mark is MarkRedecide when it passes "allowed mark, other
// socket: queue" (7's queue, after the stash), MarkAllow when it passes the
// MarkRedecide queue rule (6) and the pinned allowed RETURN after it, and
// MarkRedecide again at the queue rule right after that (288f051): two
// flips on other CPUs, a verdict's CONNMARK (Redecide -> Allow: the flow's
// queued datagram allowed) and then a rule change's re-mark (Allow ->
// Redecide), inside one walk of the chain (well under a microsecond). In
// both the state before and the state after (MarkRedecide) the datagram is
// queued, and in the state between (MarkAllow, a socket the pin does not
// know) too. No single flip does it: every pair of consecutive rules that
// test the mark is covered by a queue rule after it. The flips are made by
// two CONNMARK rules the test inserts at those places; every datagram is
// denied, so one that arrives was never decided. Control: without the
// flip rules the datagram is held. The attacker cannot time a rule change,
// so this was a theoretical hole; LATCH-OUT now queues, after that queue
// rule, a packet other than TCP of direction original with any of latch's
// marks (no rule sets a mark back to 0).
func TestUDPRedecideDoubleFlip(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallNftables} {
		t.Run(fw, func(t *testing.T) { testUDPRedecideDoubleFlip(t, fw) })
	}
}

func testUDPRedecideDoubleFlip(t *testing.T, fw string) {
	needFirewall(t, fw)
	const tool = "iptables-nft"
	tp := newTopo(t)
	d, stash := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_POLICY=*=deny")
	defer d.stop()
	if stash == 0 {
		t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
	}
	run := func(tool string, args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a, tool}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %q: %v: %s", tool, args, err, out)
		}
		return string(out)
	}
	ipt := func(args ...string) string { t.Helper(); return run(tool, args...) }
	nft := func(args ...string) string { t.Helper(); return run("nft", args...) }
	for i, flip := range []bool{false, true} {
		name := "control"
		if flip {
			name = "double-flip"
		}
		t.Run(name, func(t *testing.T) {
			port := 40450 + i
			to := netip.MustParseAddrPort(net.JoinHostPort(addrB, strconv.Itoa(9110+i)))
			from := netip.MustParseAddrPort(net.JoinHostPort(addrA, strconv.Itoa(port)))
			peer := listenUDPIn(t, tp.b, to)
			// An established flow latch never saw (as from before the
			// daemon, passed by a rule ahead of LATCH-OUT), then marked
			// MarkRedecide as a rule change marks an allowed flow.
			dport := strconv.Itoa(int(to.Port()))
			ipt("-I", "OUTPUT", "1", "-p", "udp", "--dport", dport, "-j", "ACCEPT")
			var fd int
			if err := inNS(tp.a, func() error {
				var err error
				if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
					return err
				}
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: from.Addr().As4()}); err != nil {
					return err
				}
				return unix.Sendto(fd, []byte("latch-before"), 0, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()})
			}); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if !peer.receives("latch-before", 2*time.Second) {
				t.Fatal("the flow's first datagram (passed ahead of LATCH-OUT) did not arrive")
			}
			peer.send(t, from, "latch-reply")
			time.Sleep(200 * time.Millisecond)
			ipt("-D", "OUTPUT", "-p", "udp", "--dport", dport, "-j", "ACCEPT")
			if err := inNS(tp.a, func() error {
				return setConntrackMark(unix.AF_INET, netlink.IPTuple{Protocol: unix.IPPROTO_UDP,
					SrcIP: net.IP(from.Addr().AsSlice()), DstIP: net.IP(to.Addr().AsSlice()),
					SrcPort: from.Port(), DstPort: to.Port()}, MarkRedecide, MarkMask)
			}); err != nil {
				t.Fatalf("mark the flow MarkRedecide: %v", err)
			}
			if flip && fw == FirewallNftables {
				// The same places in table inet latch's output chain, by
				// handle: the flip rule goes right after each.
				rules := strings.Split(nft("-a", "list", "chain", "inet", nftTable, "output"), "\n")
				redecide := fmt.Sprintf("== %#x", MarkRedecide)
				allowed := fmt.Sprintf("== %#x", MarkAllow)
				other, after := "", ""
				seenRedecide := false
				for _, r := range rules {
					i := strings.LastIndex(r, "# handle ")
					if i < 0 {
						continue
					}
					h := strings.TrimSpace(r[i+len("# handle "):])
					switch {
					case other == "" && strings.Contains(r, "l4proto != tcp") && strings.Contains(r, allowed) && strings.Contains(r, "queue") && !strings.Contains(r, "direction"):
						other = h
					case strings.Contains(r, redecide) && strings.Contains(r, "queue"):
						seenRedecide = true
					case seenRedecide && after == "" && strings.Contains(r, "l4proto != tcp") && strings.Contains(r, allowed) && strings.Contains(r, "jump "+nftSockPin):
						after = h
					}
				}
				if other == "" || after == "" {
					t.Fatalf("no queue rule for other sockets (%q) or pinned allowed jump after the MarkRedecide queue rule (%q) in output:\n%s", other, after, strings.Join(rules, "\n"))
				}
				set := func(at string, mark uint32) {
					nft("add", "rule", "inet", nftTable, "output", "position", at, "udp", "dport", dport,
						"ct", "mark", "set", "ct", "mark", "and", fmt.Sprintf("%#x", ^MarkMask), "or", fmt.Sprintf("%#x", mark))
				}
				set(after, MarkRedecide)
				set(other, MarkAllow)
			} else if flip {
				rules := strings.Split(ipt("-S", chainOut), "\n")
				pos, other, after := 0, 0, 0
				redecide := fmt.Sprintf("--mark %#x/%#x", MarkRedecide, MarkMask)
				allowed := fmt.Sprintf("--mark %#x/%#x", MarkAllow, MarkMask)
				seenRedecide := false
				for _, r := range rules {
					if !strings.HasPrefix(r, "-A ") {
						continue
					}
					pos++
					switch {
					case other == 0 && strings.Contains(r, "! -p tcp") && strings.Contains(r, allowed) && strings.Contains(r, "NFQUEUE"):
						other = pos
					case strings.Contains(r, redecide) && strings.Contains(r, "NFQUEUE"):
						seenRedecide = true
					case seenRedecide && after == 0 && strings.Contains(r, "! -p tcp") && strings.Contains(r, allowed) && strings.Contains(r, "bpf") && strings.Contains(r, "RETURN"):
						after = pos
					}
				}
				if other == 0 || after == 0 {
					t.Fatalf("no queue rule for other sockets (%d) or pinned allowed RETURN after the MarkRedecide queue rule (%d) in %s:\n%s", other, after, chainOut, strings.Join(rules, "\n"))
				}
				// The later one first: inserting shifts what follows.
				ipt("-I", chainOut, strconv.Itoa(after+1), "-p", "udp", "--dport", dport,
					"-j", "CONNMARK", "--set-xmark", fmt.Sprintf("%#x/%#x", MarkRedecide, MarkMask))
				ipt("-I", chainOut, strconv.Itoa(other+1), "-p", "udp", "--dport", dport,
					"-j", "CONNMARK", "--set-xmark", fmt.Sprintf("%#x/%#x", MarkAllow, MarkMask))
			}
			d.drain()
			if err := inNS(tp.a, func() error {
				return unix.Sendto(fd, []byte("latch-flipped"), 0, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()})
			}); err != nil {
				t.Fatal(err)
			}
			if peer.receives("latch-flipped", 1500*time.Millisecond) {
				held := heldCount(d.linesFor(100*time.Millisecond), to.String())
				t.Errorf("a datagram of an established flow marked MarkRedecide before and after (flips: %v) left with no decision (every datagram is denied; held lines for it: %d)", flip, held)
			} else if held := heldCount(d.linesFor(100*time.Millisecond), to.String()); held == 0 && !flip {
				t.Errorf("control: the datagram neither arrived nor was held")
			}
		})
	}
}

// TestUDPInboundRedecideReplyUnpinned (review15): with Config.Inbound and
// the socket pin, a UDP flow the peer opened and an allow verdict marked
// MarkAllow passes what this host sends on it (conntrack direction reply)
// only from the socket the pin recorded; another socket on the port
// (SO_REUSEADDR, here another user's: nobody, whom the test's decider denies)
// is queued and decided for its own program. After a rule change marks the
// flow MarkRedecide (simulated here with the same netlink update Redecide
// makes), LATCH-OUT queued only the side that opened it (6: direction
// original), and the reply direction left at the final "-p udp RETURN" from
// any socket, with no decision and no pin, until the peer's next datagram was
// decided again, and for ever if that was denied: nobody's datagram, held and
// denied while the flow was MarkAllow (control), arrived once it was
// MarkRedecide. Now LATCH-OUT holds this host's side of such a flow too
// (MarkRedecideReply) and it is decided as the inbound flow, for the program
// of the socket that sent it: nobody's datagram is held (as inbound) and
// denied; the server's own answer is held once, allowed (the rules allow the
// flow) and arrives, and the flow is then MarkAllow and pinned to the server
// again (its next answer passes unheld, nobody's is held and denied).
func TestUDPInboundRedecideReplyUnpinned(t *testing.T) {
	fw := FirewallIptablesNft
	needFirewall(t, fw)
	tp := newTopo(t)
	const port = 40460
	d, stash := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_INBOUND=1",
		fmt.Sprintf("LATCH_TEST_POLICY=%d=allow,*=deny", port), "LATCH_TEST_DENY_UID=65534")
	defer d.stop()
	if stash == 0 {
		t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
	}
	local := netip.MustParseAddrPort(net.JoinHostPort(addrA, strconv.Itoa(port)))
	remote := netip.MustParseAddrPort(net.JoinHostPort(addrB, "9120"))
	peer := listenUDPIn(t, tp.b, remote)
	var server int
	if err := inNS(tp.a, func() error {
		var err error
		if server, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(server, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		return unix.Bind(server, &unix.SockaddrInet4{Port: port, Addr: local.Addr().As4()})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(server)
	answer := func(msg string) {
		t.Helper()
		if err := inNS(tp.a, func() error {
			return unix.Sendto(server, []byte(msg), 0, &unix.SockaddrInet4{Port: int(remote.Port()), Addr: remote.Addr().As4()})
		}); err != nil {
			t.Fatal(err)
		}
	}
	nobody := func(msg string) {
		t.Helper()
		sendAsNobody(t, tp, "LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+remote.String(),
			"LATCH_TEST_UDP_MSGS="+msg, "LATCH_TEST_UDP_REUSE=1")
	}
	// heldIn counts the daemon's "held in" lines (inbound requests) for the
	// flow with uid.
	heldIn := func(lines []string, uid int) int {
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, fmt.Sprintf("held in udp %s %s uid=%d ", local, remote, uid)) {
				n++
			}
		}
		return n
	}
	peer.send(t, local, "latch-hello")
	buf := make([]byte, 64)
	if err := inNS(tp.a, func() error {
		tv := unix.Timeval{Sec: 3}
		if err := unix.SetsockoptTimeval(server, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		_, _, err := unix.Recvfrom(server, buf, 0)
		return err
	}); err != nil {
		t.Fatalf("the peer's datagram (inbound, allowed) did not arrive: %v", err)
	}
	answer("latch-answer")
	if !peer.receives("latch-answer", 2*time.Second) {
		t.Fatal("the allowed server's answer did not arrive")
	}
	d.drain()
	nobody("latch-nobody-allowed-mark")
	if peer.receives("latch-nobody-allowed-mark", time.Second) {
		t.Fatal("control: nobody's datagram on the allowed flow (MarkAllow) arrived; want it held and denied")
	}
	if err := inNS(tp.a, func() error {
		return setConntrackMark(unix.AF_INET, netlink.IPTuple{Protocol: unix.IPPROTO_UDP,
			SrcIP: net.IP(remote.Addr().AsSlice()), DstIP: net.IP(local.Addr().AsSlice()),
			SrcPort: remote.Port(), DstPort: local.Port()}, MarkRedecide, MarkMask)
	}); err != nil {
		t.Fatalf("mark the flow MarkRedecide: %v", err)
	}
	d.drain()
	nobody("latch-nobody-redecide")
	if peer.receives("latch-nobody-redecide", time.Second) {
		t.Fatal("nobody's datagram on a flow the peer opened, marked MarkRedecide, left with no decision (denied while the flow was MarkAllow)")
	}
	if n := heldIn(d.linesFor(200*time.Millisecond), 65534); n != 1 {
		t.Errorf("nobody's datagram on the flow marked MarkRedecide was held %d times as inbound; want 1 (decided as the flow the peer opened, and denied)", n)
	}
	answer("latch-answer-redecide")
	if !peer.receives("latch-answer-redecide", 2*time.Second) {
		t.Fatal("the server's answer on the flow marked MarkRedecide did not arrive; want it held once and allowed (the rules allow the flow)")
	}
	if n := heldIn(d.linesFor(200*time.Millisecond), 0); n != 1 {
		t.Errorf("the server's answer on the flow marked MarkRedecide was held %d times as inbound; want 1", n)
	}
	answer("latch-answer-after")
	if !peer.receives("latch-answer-after", 2*time.Second) {
		t.Fatal("the server's answer after the flow was allowed again did not arrive")
	}
	nobody("latch-nobody-after")
	if peer.receives("latch-nobody-after", time.Second) {
		t.Error("nobody's datagram after the flow was allowed again for the server arrived; want it held and denied (the pin is the server's)")
	}
	lines := d.linesFor(200 * time.Millisecond)
	if n := heldIn(lines, 0); n != 0 {
		t.Errorf("the server's answer after the flow was allowed again was held %d times; want 0 (MarkAllow, pinned to it)", n)
	}
	if t.Failed() {
		for _, l := range lines {
			t.Logf("daemon: %s", l)
		}
	}
}
