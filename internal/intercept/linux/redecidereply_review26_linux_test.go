package linux

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoopbackExemptSpoofedPeerIn (review26, low, fixed): with
// Config.Inbound and the loopback exemption, two local programs talk over
// lo on A's own IPv6 address (a client P to a local server S; S answered:
// the entry is ESTABLISHED, conntrack mark MarkLoopbackExempt). Host B on
// the link sends a datagram with A's address and S's port as its source
// (IPV6_FREEBIND, no privilege on B; IPv6 has no martian-source check like
// IPv4's, which drops a local source arriving by another interface) to P's
// port: conntrack takes it as the reply direction of the loopback flow.
// Before review16's peer-push rule it passed LATCH-IN at the protocol's
// RETURN, undecided. Now the rule queues it (the flow's conntrack mark is
// not 0), and the daemon decides it as P's outbound flow to its own address
// ("held out udp [fd00::1]:P [fd00::1]:S": the question and the history
// name a loopback connection, not B), and an allow (a rule for the port, or
// the user answering what looks like a local connection) saves MarkAllow
// over MarkLoopbackExempt: B's datagrams reach P from then on, and the
// loopback flow lost the mark LATCH-POST drops rerouted packets by. Nothing
// of a loopback flow arrives by another interface but a forgery: LATCH-IN
// drops it now, as it drops a MarkLoopbackForged flow's packets.
func TestLoopbackExemptSpoofedPeerIn(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port := uint16(9700 + i*4)
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			addSecondAddresses(t, tp)
			time.Sleep(200 * time.Millisecond)
			d := startDaemonOn(t, tp, fw, fmt.Sprintf("%d=allow,*=deny", port), "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=procfs")
			defer d.stop()
			a := netip.MustParseAddr(addr6A)
			server := netip.AddrPortFrom(a, port)
			client := netip.AddrPortFrom(a, port+1)
			s := listenUDPIn(t, tp.a, server)
			p := listenUDPIn(t, tp.a, client)
			p.send(t, server, "latch-lo-query")
			if !s.receives("latch-lo-query", 2*time.Second) {
				t.Fatal("P's datagram over lo did not reach S")
			}
			s.send(t, client, "latch-lo-answer")
			if !p.receives("latch-lo-answer", 2*time.Second) {
				t.Fatal("S's answer over lo did not reach P")
			}
			ct := func() string {
				out, _ := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-f", "ipv6", "-p", "udp", "--dport", fmt.Sprint(port)).CombinedOutput()
				return strings.TrimSpace(string(out))
			}
			t.Logf("the loopback entry: %s", ct())
			d.drain()
			// B forges S's address and port (A's own address) on the link.
			f := freebindConn(t, tp.b, server)
			defer f.Close()
			got := false
			for k := 0; k < 3 && !got; k++ {
				if _, err := f.WriteToUDPAddrPort([]byte("latch-spoofed"), client); err != nil {
					t.Fatal(err)
				}
				got = p.receives("latch-spoofed", 700*time.Millisecond)
			}
			var held []string
			for _, l := range d.linesFor(200 * time.Millisecond) {
				if strings.HasPrefix(l, "held ") {
					held = append(held, l)
				}
			}
			after := ct()
			t.Logf("held: %q; the entry after: %s", held, after)
			if got {
				t.Errorf("B's datagram forging A's own address (S's) as its source, by the veth, reached P on the loopback flow (held as %q)", held)
			}
			if strings.Contains(after, fmt.Sprintf("mark=%d ", MarkAllow)) {
				t.Errorf("B's forged datagram turned the loopback flow's mark MarkLoopbackExempt into MarkAllow: %s", after)
			}
		})
	}
}

// TestOutboundRedecidePeerPushNewSocketInbound (review26, fixed, a
// regression of review16's peer-push fix, medium): with Config.Inbound and
// the socket pin (its receive check on), a program's socket P opens a UDP
// flow from A:C to B:S (allowed: the rule for B's port S) and gets B's
// answer. Then another socket M gets B's datagrams to A:C: "closed", P
// closed and M bound the port (a listener that never sends to B); "shared",
// P is still open and M shares the port (both set SO_REUSEADDR, which UDP
// allows any user's socket; the kernel delivers to the last bound). No rule
// lets anything in to port C. While the flow is MarkAllow, B's datagrams
// delivered to M are dropped by the receive check (the flow is pinned to P:
// "a flow this host opened stays its sender's", PinMoved): the "no change"
// subtests, a control, pass. After a rule change that changes nothing for
// the flow (the same rules), review16's LATCH-IN rule holds B's next
// datagram and decides it as an outbound flow of M's program to B:S (the
// socket that receives it), under the rules for outbound connections, and
// its allow pins the flow to M (pinInbound): B's datagrams reach a socket
// that never sent to B, whose inbound rules deny them, and in "shared" what
// B sends on P's live flow goes to M (another user's socket, where
// SO_REUSEADDR is shared) until P's next datagram pins the flow back. Both
// "after a change" subtests fail; on 33c875a (before review16's merge) they
// pass: B's datagram passed LATCH-IN and the receive check dropped it.
// The receiving socket is not the flow's sender: its datagram is decided
// as an inbound one for it now (pinnedElsewhere).
func TestOutboundRedecidePeerPushNewSocketInbound(t *testing.T) {
	i := 0
	for _, mode := range []string{"closed", "shared"} {
		for _, change := range []bool{false, true} {
			name := mode + "/no change"
			if change {
				name = mode + "/after a change"
			}
			port := uint16(9720 + i*2)
			i++
			t.Run(name, func(t *testing.T) { testOutboundRedecidePeerPushNewSocket(t, mode, change, port) })
		}
	}
}

// listenUDPReuse is listenUDPIn for a socket with SO_REUSEADDR set.
func listenUDPReuse(t *testing.T, ns string, addr netip.AddrPort) *udpPeer {
	t.Helper()
	p := &udpPeer{got: make(chan string, 16)}
	if err := inNS(ns, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); err != nil {
				return err
			}
			return serr
		}}
		c, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
		if err != nil {
			return err
		}
		p.c = c.(*net.UDPConn)
		return nil
	}); err != nil {
		t.Fatalf("listen udp %v (SO_REUSEADDR) in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { p.c.Close() })
	go func() {
		buf := make([]byte, 2000)
		for {
			n, _, err := p.c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			p.got <- string(buf[:n])
		}
	}()
	return p
}

func testOutboundRedecidePeerPushNewSocket(t *testing.T, mode string, change bool, port uint16) {
	tp := newTopo(t)
	allow := fmt.Sprintf("%d=allow,*=deny", port)
	d := startPinned(t, tp, 5*time.Second, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=procfs", "LATCH_TEST_POLICY="+allow,
		"LATCH_TEST_POLICY_AFTER="+allow, "LATCH_TEST_REDECIDE_PORT="+fmt.Sprint(port))
	defer d.stop()
	if l, ok := d.waitLine("receive-check ", 5*time.Second); !ok || !strings.HasPrefix(l, "receive-check true") {
		t.Skipf("no receive check here: %q", l)
	}
	server := netip.AddrPortFrom(netip.MustParseAddr(addrB), port)
	client := netip.AddrPortFrom(netip.MustParseAddr(addrA), port+100)
	peer := listenUDPIn(t, tp.b, server)
	prog := listenUDPReuse(t, tp.a, client)
	prog.send(t, server, "latch-subscribe")
	if !peer.receives("latch-subscribe", 3*time.Second) {
		t.Fatal("the program's allowed datagram did not reach B")
	}
	peer.send(t, client, "latch-answer")
	if !prog.receives("latch-answer", 2*time.Second) {
		t.Fatal("B's answer did not reach the program")
	}
	if mode == "closed" {
		prog.c.Close()
		time.Sleep(100 * time.Millisecond)
	}
	m := listenUDPReuse(t, tp.a, client) // M: a listener on the port
	if change {
		redecideAfterChange(t, d, 1)
	}
	d.drain()
	got := false
	for k := 0; k < 3 && !got; k++ {
		peer.send(t, client, "latch-unsolicited")
		got = m.receives("latch-unsolicited", time.Second)
	}
	var held []string
	for _, l := range d.linesFor(200 * time.Millisecond) {
		if strings.HasPrefix(l, "held ") {
			held = append(held, l)
		}
	}
	if got {
		t.Errorf("B's datagram reached M, a socket that never sent to B (no rule lets anything in to port %d; the flow is P's, %s); held as %q", port+100, mode, held)
	}
}

// TestOwnFlowReplyMarkSaved (review26, low, fixed; a regression of
// review16's peer-push rule): the daemon's own sockets (SO_MARK OwnMark,
// Control: the DNS proxy's upstream queries) are never held. On a host that
// saves the packet mark into the conntrack mark with the full mask
// (CONNMARK --save-mark's default masks, nft 'ct mark set meta mark'; the
// host's routing by mark, as in review25), such a flow's conntrack mark is
// OwnMark (0x40000000, under MarkMask). review16's LATCH-IN rule takes any
// conntrack mark under MarkMask but 0 for latch's own, so with --inbound
// the upstream's answer is held and decided as an outbound flow of the
// daemon's own program: with rules that do not name latch (here every
// rule denies) the answer is dropped and the DNS proxy's upstream queries
// never get one. Before, it passed (conntrack mark not MarkAllow, the
// protocol's RETURN). The "no save" subtest (a control) passes; "save"
// failed. The rule takes latch's redecide marks exactly now (MarkRedecide;
// MarkAllow for the race its comment names), not any value.
func TestOwnFlowReplyMarkSaved(t *testing.T) {
	for i, save := range []bool{false, true} {
		name := "no save"
		if save {
			name = "save"
		}
		port := uint16(9740 + i)
		t.Run(name, func(t *testing.T) {
			needFirewall(t, FirewallIptablesNft)
			tp := newTopo(t)
			if save {
				if out, err := exec.Command("ip", "netns", "exec", tp.a, "iptables-nft", "-t", "mangle", "-A", "OUTPUT", "-j", "CONNMARK", "--save-mark").CombinedOutput(); err != nil {
					t.Fatalf("the host's save of the packet mark: %v: %s", err, out)
				}
			}
			d := startDaemonOn(t, tp, FirewallIptablesNft, "*=deny", "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=procfs")
			defer d.stop()
			server := netip.AddrPortFrom(netip.MustParseAddr(addrB), port)
			upstream := listenUDPIn(t, tp.b, server)
			// The daemon's own socket (what Control makes).
			own := &udpPeer{got: make(chan string, 16)}
			if err := inNS(tp.a, func() error {
				lc := net.ListenConfig{Control: Control}
				c, err := lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort(addrA, fmt.Sprint(port+100)))
				if err != nil {
					return err
				}
				own.c = c.(*net.UDPConn)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			defer own.c.Close()
			go func() {
				buf := make([]byte, 2000)
				for {
					n, _, err := own.c.ReadFromUDP(buf)
					if err != nil {
						return
					}
					own.got <- string(buf[:n])
				}
			}()
			own.send(t, server, "latch-own-query")
			if !upstream.receives("latch-own-query", 2*time.Second) {
				t.Fatal("the daemon's own datagram did not reach B")
			}
			d.drain()
			upstream.send(t, netip.AddrPortFrom(netip.MustParseAddr(addrA), port+100), "latch-own-answer")
			got := own.receives("latch-own-answer", 2*time.Second)
			var held []string
			for _, l := range d.linesFor(200 * time.Millisecond) {
				if strings.HasPrefix(l, "held ") {
					held = append(held, l)
				}
			}
			out, _ := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-p", "udp", "--dport", fmt.Sprint(port)).CombinedOutput()
			t.Logf("the entry: %s", strings.TrimSpace(string(out)))
			if !got {
				t.Errorf("B's answer to the daemon's own socket did not reach it; held as %q", held)
			}
			if len(held) != 0 {
				t.Errorf("B's answer to the daemon's own socket was held: %q", held)
			}
		})
	}
}
