package linux

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// knownHoles reports whether the tests of open holes run
// (LATCH_TEST_KNOWN_HOLES=1).
func review26Holes(t *testing.T) {
	t.Helper()
	if os.Getenv("LATCH_TEST_KNOWN_HOLES") != "1" {
		t.Skip("an open hole (review26): run with LATCH_TEST_KNOWN_HOLES=1")
	}
}

// TestLoopbackExemptSpoofedPeerIn (review26, open, low): with
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
// of a loopback flow arrives by another interface but a forgery: it should
// be dropped, as LATCH-IN drops a MarkLoopbackForged flow's packets.
func TestLoopbackExemptSpoofedPeerIn(t *testing.T) {
	review26Holes(t)
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
