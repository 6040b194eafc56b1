package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// anycastA is the subnet-router anycast address of A's fd00::/64 on the
// veth: a router (IPv6 forwarding) holds it. Neither `fib saddr type local`
// nor `-m addrtype --src-type LOCAL` calls it local (it is anycast), yet a
// packet to it is delivered here (over lo), so a socket bound to it with
// IPV6_FREEBIND (no privilege) gets its replies.
const anycastA = "fd00::"

// TestUntrackedPostOrphanAnycastSource (review31, low, fixed: it takes the
// host's NOTRACK of lo, its policy routing by mark of a local destination
// that starts while a connection is open, and IPv6 forwarding): the
// untracked drop (untrackedPost) since review30 takes only a packet with a
// socket or a local source. A program on a router binds a TCP socket with
// IPV6_FREEBIND to the subnet-router anycast address of A's prefix (not
// local to the address-type lookups, yet delivered here, so the handshake
// over lo completes) and connects to A's own address over lo. Once the host's
// mark reroutes that destination out the veth to B, its segments are
// dropped while the socket is open (the socket test); the program writes and
// closes, and the segments TCP sends after the close (the orphaned socket's
// retransmissions and FIN: skb->sk without sk_socket, no file) have neither
// a socket nor a local source: iptables RETURNs them, nft's postrouting-local
// has no rule that takes them, and they reach B undecided, every rule
// denying. The README's "Left" (a FREEBIND source that is not local) made
// concrete: the anycast source is what lets the connection exist at all.
// Fixed: the source test takes an anycast address as this host's.
func TestUntrackedPostOrphanAnycastSource(t *testing.T) {
	testOrphanAfterReroute(t, netip.MustParseAddr(anycastA), 9771)
}

// TestUntrackedPostOrphanLocalSource (review31, a guard of the untracked
// drop's source test): TestUntrackedPostOrphanAnycastSource's connection
// from A's own address instead (a local source; FREEBIND changes nothing): its segments
// after the close, without a socket, are dropped by the source's address
// type (nft: postrouting-local's fib saddr rule; iptables: the RETURN's
// addrtype), and none reaches B. Fails with that test taken out.
func TestUntrackedPostOrphanLocalSource(t *testing.T) {
	testOrphanAfterReroute(t, selfAddr(false), 9791)
}

// testOrphanAfterReroute connects over lo in A from src (IPV6_FREEBIND) to
// A's own address, starts the host's reroute by mark of that destination
// out the veth (NOTRACK of lo), writes and closes, and fails if a segment
// from src reaches B: none may while the socket is open, nor after.
func testOrphanAfterReroute(t *testing.T, src netip.Addr, port uint16) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		c := rerouteCase{fw: fw, late: true}
		port += 2
		t.Run(fw, func(t *testing.T) {
			tp, stop := c.topo(t)
			defer stop()
			self := selfAddr(false)
			if out, err := exec.Command("ip", "netns", "exec", tp.a, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1").CombinedOutput(); err != nil {
				t.Fatalf("forwarding: %v: %s", err, out)
			}
			markReroute(t, tp, false, func() {})
			hostNotrackLo(t, tp.a, fw)
			// B counts what reaches it from the anycast source.
			nftIn(t, tp.b, fmt.Sprintf("add table ip6 r31\nadd chain ip6 r31 pre { type filter hook prerouting priority -400; }\n"+
				"add rule ip6 r31 pre ip6 saddr %s tcp dport %d counter\n", src, port))
			var ln net.Listener
			if err := inNS(tp.a, func() error {
				var err error
				ln, err = net.Listen("tcp6", net.JoinHostPort(self.String(), strconv.Itoa(int(port))))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var fd int
			if err := inNS(tp.a, func() error {
				var err error
				fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
				if err != nil {
					return err
				}
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
					return err
				}
				if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: src.As16()}); err != nil {
					return fmt.Errorf("bind [%s]: %w", src, err)
				}
				if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: self.As16(), Port: int(port)}); err != nil {
					return fmt.Errorf("connect [%s]:%d from [%s] over lo: %w", self, port, src, err)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			closed := false
			defer func() {
				if !closed {
					unix.Close(fd)
				}
			}()
			// The host's reroute by mark of A's own address starts (a VPN
			// coming up, say) while the connection is open.
			nftIn(t, tp.a, fmt.Sprintf("add table ip6 r31route\nadd chain ip6 r31route out { type route hook output priority 10; }\n"+
				"add rule ip6 r31route out ip6 daddr %s tcp dport %d meta mark set 0x24\n", self, port))
			unix.Write(fd, []byte("latch-after-close"))
			time.Sleep(1500 * time.Millisecond)
			if n := r31Count(t, tp.b); n != 0 {
				t.Fatalf("while the socket is open, %d segments from [%s] reached B (the socket test should drop them)", n, src)
			}
			unix.Close(fd)
			closed = true
			deadline := time.Now().Add(6 * time.Second)
			for time.Now().Before(deadline) {
				if n := r31Count(t, tp.b); n != 0 {
					t.Errorf("after the close, %d TCP segments of a loopback connection from [%s] (IPV6_FREEBIND) to A's own address, untracked and rerouted by mark out the veth, reached B undecided (every rule denies)", n, src)
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}

// r31Count is the packet count of B's counter (TestUntrackedPostOrphanAnycastSource).
func r31Count(t *testing.T, ns string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip6", "r31").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	m := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no counter in %s", strings.TrimSpace(string(out)))
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestUntrackedPostAnycastICMPError (review31, open, low, nftables only: it
// takes the host's NOTRACK of lo, its policy routing by mark of a local
// destination and IPv6 forwarding): a program sends over lo, from A's own
// address, a datagram to a closed port of the subnet-router anycast address
// of A's prefix (no privilege). The kernel answers with an ICMPv6 port
// unreachable from that anycast address (icmp6_send takes an anycast
// destination as the error's source) to A's own address, carrying the
// datagram's payload, sent by the per-namespace ICMPv6 socket: a kernel
// socket, with a struct socket but no file. Rerouted by the host's mark out
// the veth, it must not reach B. The datagram is not loopback-exempt (an
// anycast destination is not local): here a rule allows it (nft: the
// ruleset with an accept for it first, no queue, every other rule denying;
// iptables: the daemon with every rule allowing, the error being the
// untracked drop's alone). iptables drops the error (--socket-exists sees
// the kernel socket: those subtests pass, A's counter showing the errors
// were sent); nft's
// postrouting-local does not ('meta skuid' needs a file, and `fib saddr
// type local` does not take an anycast address), so the error, unmarked
// (no fwmark_reflect), with the payload, reaches B, to which the program
// was allowed nothing: the allowed datagram relayed by the kernel to
// another destination. Fixed: the source test takes an anycast address as
// this host's (nft's postrouting-local drops it).
func TestUntrackedPostAnycastICMPError(t *testing.T) {
	port := uint16(9811)
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		c := rerouteCase{fw: fw, late: true}
		port += 2
		t.Run(fw, func(t *testing.T) {
			var tp *topo
			if fw == FirewallNftables {
				tp, _ = c.topo(t)
				// The program's datagram to the anycast address is decided
				// and allowed (a rule for it; no queue here: an accept first).
				nftIn(t, tp.a, fmt.Sprintf("insert rule inet %s output ip6 daddr %s udp dport %d accept\n", nftTable, anycastA, port))
			} else {
				// The daemon, every rule allowing: the datagram is allowed;
				// the error, unmarked and over lo by its first route, is
				// for the untracked drop alone.
				var d *daemon
				tp, d, _ = forgedTCPTopo(t, fw, "*=allow")
				defer d.stop()
			}
			self := selfAddr(false)
			if out, err := exec.Command("ip", "netns", "exec", tp.a, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1").CombinedOutput(); err != nil {
				t.Fatalf("forwarding: %v: %s", err, out)
			}
			markReroute(t, tp, false, func() {
				nftIn(t, tp.a, fmt.Sprintf("add table ip6 r31route\nadd chain ip6 r31route out { type route hook output priority 10; }\n"+
					"add rule ip6 r31route out ip6 daddr %s meta l4proto ipv6-icmp meta mark set 0x24\n", self))
			})
			hostNotrackLo(t, tp.a, fw)
			// A resolves B by hand: NDP is not what this tests.
			mac, err := exec.Command("ip", "netns", "exec", tp.b, "cat", "/sys/class/net/"+tp.vethB+"/address").Output()
			if err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("ip", "-n", tp.a, "neigh", "replace", addr6B, "lladdr", strings.TrimSpace(string(mac)), "dev", tp.vethA, "nud", "permanent").CombinedOutput(); err != nil {
				t.Fatalf("neigh: %v: %s", err, out)
			}
			nftIn(t, tp.b, fmt.Sprintf("add table ip6 r31\nadd chain ip6 r31 pre { type filter hook prerouting priority -400; }\n"+
				"add rule ip6 r31 pre ip6 saddr %s icmpv6 type destination-unreachable counter\n", anycastA))
			nftIn(t, tp.a, fmt.Sprintf("add table ip6 r31\nadd chain ip6 r31 out { type filter hook output priority -400; }\n"+
				"add rule ip6 r31 out ip6 saddr %s icmpv6 type destination-unreachable counter\n", anycastA))
			var c6 *net.UDPConn
			if err := inNS(tp.a, func() error {
				var err error
				c6, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(self, port+1)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c6.Close()
			for i := 0; i < 3; i++ {
				c6.WriteToUDPAddrPort([]byte("latch-icmp-payload"), netip.AddrPortFrom(netip.MustParseAddr(anycastA), port))
				time.Sleep(300 * time.Millisecond)
			}
			// The errors were sent (A counts them on its output hook).
			if n := r31Count(t, tp.a); n == 0 {
				t.Fatalf("no ICMPv6 error from [%s] left A's output hook: the test did not take place", anycastA)
			}
			if n := r31Count(t, tp.b); n != 0 {
				t.Errorf("%d ICMPv6 errors from [%s] (anycast) to A's own address, carrying a program's datagram, untracked and rerouted by mark out the veth, reached B, to which the program is allowed nothing (every other rule denies)", n, anycastA)
			}
		})
	}
}
