package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// movedAddr is the address TestLoopbackExemptMovedAddressDecided moves from
// A to B (a failover address: keepalived's VIP, a floating service address).
const movedAddr = "198.18.0.9"

// TestLoopbackExemptMovedAddressDecided (review25, a regression of review24's
// postrouting drop, fixed): a UDP flow from A to an address A had (over lo,
// the loopback return passes it and gives it MarkLoopbackExempt) whose local
// server answered (conntrack ESTABLISHED); then the address moves to B (a
// failover: keepalived's VIP) and A's next datagram on the same flow goes
// out the veth by A's ordinary routing. It is A's outbound flow to B like
// any other and is decided: with the port's rule allowing it reaches B,
// denied it does not. With review24's drop alone LATCH-OUT passed it at the
// protocol's last RETURN (an ESTABLISHED flow with neither MarkAllow nor
// MarkRedecide is taken for a flow from before latch) and LATCH-POST dropped
// it, never asked (the allow subtests fail); before review24 it passed
// undecided (the deny subtests fail). LATCH-OUT (nft's output chain) now
// holds a packet of a MarkLoopbackExempt flow that gets past the loopback
// returns: an allow saves MarkAllow over the mark, a deny drops it.
func TestLoopbackExemptMovedAddressDecided(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		for j, allow := range []bool{true, false} {
			port := uint16(9601 + i*8 + j*2)
			verdict := "deny"
			if allow {
				verdict = "allow"
			}
			t.Run(fw+"/"+verdict, func(t *testing.T) {
				tp, d, _ := forgedTCPTopo(t, fw, fmt.Sprintf("%d=%s,*=deny", port, verdict))
				defer d.stop()
				v := netip.MustParseAddr(movedAddr)
				ip := func(args ...string) {
					t.Helper()
					if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
						t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
					}
				}
				// A has the address (on lo); B has it too, but A's
				// local table wins until A gives it up. A's /24 on the
				// veth covers it: then it is on link, and B answers
				// A's neighbour solicitation for it.
				ip("-n", tp.a, "addr", "add", movedAddr+"/32", "dev", "lo")
				ip("-n", tp.b, "addr", "add", movedAddr+"/32", "dev", "lo")
				peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(v, port))
				local := listenUDPIn(t, tp.a, netip.AddrPortFrom(v, port))
				var c *net.UDPConn
				if err := inNS(tp.a, func() error {
					var err error
					c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addrA), port+1)))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				// Over lo: the local server gets it and answers (the
				// entry is ESTABLISHED, marked MarkLoopbackExempt).
				c.WriteToUDPAddrPort([]byte("latch-moved-1"), netip.AddrPortFrom(v, port))
				if !local.receives("latch-moved-1", 2*time.Second) {
					t.Fatal("the datagram to A's own address did not reach A's local server over lo")
				}
				local.send(t, netip.AddrPortFrom(netip.MustParseAddr(addrA), port+1), "latch-moved-reply")
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 100)
				if n, _, err := c.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != "latch-moved-reply" {
					t.Fatalf("A's client did not get its local server's answer: %q, %v", buf[:n], err)
				}
				out, _ := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-p", "udp", "--dport", fmt.Sprint(port)).CombinedOutput()
				t.Logf("A's entry before the move: %s", out)
				// The failover: A gives up the address.
				ip("-n", tp.a, "addr", "del", movedAddr+"/32", "dev", "lo")
				got := false
				for k := 0; k < 3 && !got; k++ {
					c.WriteToUDPAddrPort([]byte("latch-moved-2"), netip.AddrPortFrom(v, port))
					got = peer.receives("latch-moved-2", 700*time.Millisecond)
				}
				out, _ = exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-p", "udp", "--dport", fmt.Sprint(port)).CombinedOutput()
				t.Logf("A's entry after the move: %s", out)
				if got != allow {
					t.Errorf("the flow's datagram after its address moved to B (out the veth by A's own routing), the port's rule %s: reached B: %v, want %v", verdict, got, allow)
				}
			})
		}
	}
}

// TestLoopbackExemptMarkSavedOver (review25, low, fixed; it takes the host's
// own policy routing by mark of a local destination, as review24's does): a
// host that routes by mark commonly saves the packet mark into the
// conntrack mark with the full mask (iptables' CONNMARK --save-mark, whose
// masks default to 0xffffffff; nft 'ct mark set meta mark'). That save
// overwrites MarkLoopbackExempt: here the host marks by DSCP (a traffic
// class any program may set, IPV6_TCLASS) and saves the mark. A program's
// first datagram over lo to A's own address (no class: not marked, the
// loopback return gives the flow MarkLoopbackExempt), answered by its own
// local server, then a datagram with the class: marked 0x24, saved over the
// conntrack mark (latch's bits gone), rerouted out the veth. When only a
// NEW flow got the mark, LATCH-OUT saw lo and LATCH-POST no loopback mark:
// it reached B undecided (the "save" subtests fail there). The mark is now
// given to every loopback packet of an entry without latch's bits, so
// LATCH-POST drops it; without the save (the "no-save" subtests) it is
// dropped either way.
func TestLoopbackExemptMarkSavedOver(t *testing.T) {
	port := uint16(9631)
	for _, fw := range []string{FirewallIptablesNft, FirewallNftables} {
		for _, save := range []bool{false, true} {
			port += 4
			name := fw + "/no-save"
			if save {
				name = fw + "/save"
			}
			t.Run(name, func(t *testing.T) {
				c := rerouteCase{fw: fw}
				tp, stop := c.topo(t)
				defer stop()
				self := selfAddr(false)
				saveRule := ""
				if save {
					saveRule = " ct mark set meta mark"
				}
				// The host's mangle-priority route chain: DSCP 10 to
				// this port gets mark 0x24 (and, with save, the
				// conntrack mark takes the packet mark).
				markReroute(t, tp, false, func() {
					nftIn(t, tp.a, fmt.Sprintf("add table ip6 r25route\nadd chain ip6 r25route out { type route hook output priority -150; }\n"+
						"add rule ip6 r25route out ip6 daddr %s udp dport %d ip6 dscp 10 meta mark set 0x24%s\n", self, port, saveRule))
				})
				peer := listenUDPIn(t, tp.b, netip.AddrPortFrom(self, port))
				local := listenUDPIn(t, tp.a, netip.AddrPortFrom(self, port))
				var c6 *net.UDPConn
				if err := inNS(tp.a, func() error {
					var err error
					c6, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(self, port+1)))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				defer c6.Close()
				c6.WriteToUDPAddrPort([]byte("latch-save-1"), netip.AddrPortFrom(self, port))
				if !local.receives("latch-save-1", 2*time.Second) {
					t.Fatal("the first datagram (no traffic class) did not reach A's local server over lo")
				}
				local.send(t, netip.AddrPortFrom(self, port+1), "latch-save-reply")
				c6.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 100)
				if n, _, err := c6.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != "latch-save-reply" {
					t.Fatalf("the client did not get its local server's answer: %q, %v", buf[:n], err)
				}
				raw, err := c6.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				var serr error
				raw.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, 10<<2)
				})
				if serr != nil {
					t.Fatalf("IPV6_TCLASS: %v", serr)
				}
				got := false
				for k := 0; k < 3 && !got; k++ {
					c6.WriteToUDPAddrPort([]byte("latch-save-2"), netip.AddrPortFrom(self, port))
					got = peer.receives("latch-save-2", 700*time.Millisecond)
				}
				out, _ := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-f", "ipv6", "-p", "udp", "--dport", fmt.Sprint(port)).CombinedOutput()
				t.Logf("A's entry: %s", out)
				if got {
					t.Errorf("a datagram of a loopback flow, rerouted by the host's mark out the veth (the mark saved into the conntrack mark: %v), reached B undecided (every rule denies)", save)
				}
			})
		}
	}
}

// TestLoopbackExemptRerouteReplyOut (review25, a guard of review24's drop
// for the reply direction): a TCP connection over lo to A's own address
// (the client's SYN gives the flow MarkLoopbackExempt); the host's mark
// (a route chain at mangle priority, on what the local server sends from
// its port) reroutes the server's SYN-ACK out the veth to B (which has A's
// address on its lo). With every rule denying, nothing of the flow may
// reach B: the conntrack mark is the entry's, both directions', and
// LATCH-POST drops the reply too. It fails without LATCH-POST (B counts the
// SYN-ACK and its retransmissions).
func TestLoopbackExemptRerouteReplyOut(t *testing.T) {
	port := uint16(9661)
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port += 2
		t.Run(fw, func(t *testing.T) {
			c := rerouteCase{fw: fw}
			tp, stop := c.topo(t)
			defer stop()
			self := selfAddr(false)
			markReroute(t, tp, false, func() {
				nftIn(t, tp.a, fmt.Sprintf("add table ip6 r25reply\nadd chain ip6 r25reply out { type route hook output priority -150; }\n"+
					"add rule ip6 r25reply out ip6 saddr %s tcp sport %d meta mark set 0x24\n", self, port))
			})
			nftIn(t, tp.b, fmt.Sprintf("add table ip6 r25count\nadd chain ip6 r25count in { type filter hook prerouting priority -300; }\n"+
				"add rule ip6 r25count in tcp sport %d counter\n", port))
			var ln net.Listener
			if err := inNS(tp.a, func() error {
				var err error
				ln, err = net.Listen("tcp6", netip.AddrPortFrom(self, port).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var conn net.Conn
			var derr error
			if err := inNS(tp.a, func() error {
				conn, derr = (&net.Dialer{Timeout: 2 * time.Second}).Dial("tcp6", netip.AddrPortFrom(self, port).String())
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if derr == nil {
				conn.Close()
			}
			out, err := exec.Command("ip", "netns", "exec", tp.b, "nft", "list", "chain", "ip6", "r25count", "in").CombinedOutput()
			if err != nil {
				t.Fatalf("list B's counter: %v: %s", err, out)
			}
			if !strings.Contains(string(out), "packets 0 ") {
				t.Errorf("the local server's answers on a loopback flow, rerouted by mark out the veth, reached B undecided (every rule denies; connect: %v):\n%s", derr, out)
			}
		})
	}
}
