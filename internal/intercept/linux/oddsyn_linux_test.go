package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/fastpath"
)

// TCP header flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

// rawSegment returns a TCP segment without options or payload from src to
// dst, its checksum over the pseudo header of IPv4 or IPv6.
func rawSegment(src, dst netip.AddrPort, seq, ack uint32, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], src.Port())
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], ack)
	b[12] = 5 << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	var pseudo []byte
	if src.Addr().Is4() {
		s, d := src.Addr().As4(), dst.Addr().As4()
		pseudo = append(append(append(pseudo, s[:]...), d[:]...), 0, unix.IPPROTO_TCP, 0, byte(len(b)))
	} else {
		s, d := src.Addr().As16(), dst.Addr().As16()
		pseudo = append(append(append(pseudo, s[:]...), d[:]...), 0, 0, 0, byte(len(b)), 0, 0, 0, unix.IPPROTO_TCP)
	}
	var sum uint32
	for _, p := range [][]byte{pseudo, b} {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(p[i:]))
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[16:], ^uint16(sum))
	return b
}

// rawPeer is a TCP peer in its own namespace that writes its segments itself
// (a raw socket), as a host that wants a connection latch never allowed.
type rawPeer struct {
	fd          int
	local, peer netip.AddrPort // the peer's address, the local socket's
}

// newRawPeer opens a raw TCP socket in namespace ns, for segments from local
// to peer.
func newRawPeer(t *testing.T, ns string, local, peer netip.AddrPort) *rawPeer {
	t.Helper()
	family := unix.AF_INET
	if local.Addr().Is6() {
		family = unix.AF_INET6
	}
	var fd int
	if err := inNS(ns, func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	}); err != nil {
		t.Fatalf("raw socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &rawPeer{fd: fd, local: local, peer: peer}
}

// send writes one segment to the local socket.
func (p *rawPeer) send(t *testing.T, seq, ack uint32, flags uint8) {
	t.Helper()
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: p.peer.Addr().As16()}
	if p.peer.Addr().Is4() {
		sa = &unix.SockaddrInet4{Addr: p.peer.Addr().As4()}
	}
	if err := unix.Sendto(p.fd, rawSegment(p.local, p.peer, seq, ack, flags), 0, sa); err != nil {
		t.Fatalf("send flags %#x from %s to %s: %v", flags, p.local, p.peer, err)
	}
}

// await waits up to timeout for a segment of the local socket whose flags
// under mask are want and returns its sequence number.
func (p *rawPeer) await(mask, want uint8, timeout time.Duration) (uint32, bool) {
	buf := make([]byte, 1500)
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			continue
		}
		seg := buf[:n]
		if p.local.Addr().Is4() {
			// IPv4 raw sockets read the IP header too.
			if n < 20 {
				continue
			}
			seg = seg[int(seg[0]&0xf)*4:]
		}
		if len(seg) < 20 || binary.BigEndian.Uint16(seg[0:]) != p.peer.Port() || binary.BigEndian.Uint16(seg[2:]) != p.local.Port() {
			continue
		}
		if seg[13]&mask == want {
			return binary.BigEndian.Uint32(seg[4:]), true
		}
	}
	return 0, false
}

// heldSocket starts, in namespace ns, a connect from local to remote whose SYN
// the daemon holds: the socket stays in SYN_SENT.
func heldSocket(t *testing.T, ns string, local, remote netip.AddrPort) int {
	t.Helper()
	family := unix.AF_INET6
	var la, ra unix.Sockaddr = &unix.SockaddrInet6{Addr: local.Addr().As16(), Port: int(local.Port())}, &unix.SockaddrInet6{Addr: remote.Addr().As16(), Port: int(remote.Port())}
	if local.Addr().Is4() {
		family = unix.AF_INET
		la, ra = &unix.SockaddrInet4{Addr: local.Addr().As4(), Port: int(local.Port())}, &unix.SockaddrInet4{Addr: remote.Addr().As4(), Port: int(remote.Port())}
	}
	var fd int
	if err := inNS(ns, func() error {
		var err error
		if fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, la); err != nil {
			return err
		}
		if err := unix.Connect(fd, ra); !errors.Is(err, unix.EINPROGRESS) {
			return fmt.Errorf("connect: %v, want EINPROGRESS", err)
		}
		return nil
	}); err != nil {
		t.Fatalf("a connect from %s to %s: %v", local, remote, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// tcpState returns the TCP state of socket fd (unix.BPF_TCP_*: 1 established).
func tcpState(t *testing.T, fd int) uint8 {
	t.Helper()
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// oddSynCase is a segment a peer sends to a local socket whose SYN is held.
type oddSynCase struct {
	name  string
	flags uint8
	want  bool // the connection is established
}

// oddSynCases are the segments TestInboundOddSynHeld sends; control: a plain
// SYN to local port 9399, which the inbound policy allows.
var oddSynCases = []oddSynCase{
	{"control SYN, inbound allowed", tcpSYN, true},
	{"SYN FIN", tcpSYN | tcpFIN, false},
	{"SYN FIN PSH", tcpSYN | tcpFIN | tcpPSH, false},
	{"SYN FIN URG", tcpSYN | tcpFIN | tcpURG, false},
	{"SYN FIN ACK", tcpSYN | tcpFIN | tcpACK, false},
	{"SYN PSH", tcpSYN | tcpPSH, false},
	{"SYN ECE CWR", tcpSYN | tcpECE | tcpCWR, false},
	// A SYN-ACK: with the right acknowledgment number (the held SYN's
	// sequence number plus one, 1 in 2^32 for a guess, the peer never saw
	// it) it would establish the connection; with a wrong one the socket
	// answers with a reset, which shows that it reached the socket.
	{"SYN ACK (a guess)", tcpSYN | tcpACK, false},
}

// oddSyn runs c from namespace tp.b against a socket in tp.a whose connect
// from local port to the peer's peerPort the daemon d holds (d nil: the
// ruleset drops what it would hold).
func oddSyn(t *testing.T, tp *topo, d *daemon, a, b string, port, peerPort uint16, c oddSynCase) {
	t.Helper()
	local := netip.AddrPortFrom(netip.MustParseAddr(a), port)
	peer := netip.AddrPortFrom(netip.MustParseAddr(b), peerPort)
	fd := heldSocket(t, tp.a, local, peer)
	defer unix.Close(fd)
	if d != nil {
		if l, ok := d.waitLine("held ", 3*time.Second); !ok {
			t.Fatalf("%s: the local SYN was not held (%q)", c.name, l)
		}
		defer d.drain()
	}
	p := newRawPeer(t, tp.b, peer, local)
	const isn = 0x10000000
	if c.flags&tcpACK != 0 && c.flags&tcpFIN == 0 {
		p.send(t, isn, 0x4c415443, c.flags)
		if _, ok := p.await(tcpRST, tcpRST, time.Second); ok {
			t.Errorf("%s: the segment reached the held socket (it answered with a reset)", c.name)
		}
	} else {
		p.send(t, isn, 0, c.flags)
		if seq, ok := p.await(tcpSYN|tcpACK, tcpSYN|tcpACK, time.Second); ok {
			p.send(t, isn+1, seq+1, tcpACK)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if got := tcpState(t, fd) == unix.BPF_TCP_ESTABLISHED; got != c.want {
		t.Errorf("%s: established %t, want %t (state %d)", c.name, got, c.want, tcpState(t, fd))
	}
}

// dropPeerResets keeps the peer's kernel from resetting what its raw socket
// starts.
func dropPeerResets(t *testing.T, tp *topo) {
	t.Helper()
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if out, err := exec.Command("ip", "netns", "exec", tp.b, ipt, "-w", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP").CombinedOutput(); err != nil {
			t.Fatalf("%s in the peer's namespace: %v: %s", ipt, err, out)
		}
	}
}

// TestInboundOddSynHeld: with inbound connections held, a local socket whose
// own SYN is held in the queue (a connect latch has not allowed) must not be
// connected by the peer's half of a simultaneous open that escapes the queue:
// a SYN with FIN (conntrack calls it INVALID; Linux's SYN_SENT state takes it
// as the peer's SYN and answers with a SYN-ACK), with FIN and PSH or URG, with
// PSH, with ECE and CWR; IPv4 and IPv6. The peer writes its segments with a
// raw socket and answers the local SYN-ACK, if any, with the ACK that would
// complete the handshake. Control: a plain SYN to a local port the inbound
// policy allows completes it (the machinery works).
func TestInboundOddSynHeld(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			addV6(t, tp)
			dropPeerResets(t, tp)
			// Outbound connects are held 20 s, then denied; inbound ones
			// to local port 9399 are allowed, the rest denied.
			d := startDaemon(t, tp, "9399=allow,*=deny@20s", "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_INBOUND=1")
			defer d.stop()
			port := uint16(9400)
			for _, fam := range []struct{ name, a, b string }{{"IPv4", addrA, addrB}, {"IPv6", addrA6, addrB6}} {
				for _, c := range oddSynCases {
					port++
					local := port
					if c.want {
						local = 9399
					}
					t.Run(fam.name+" "+c.name, func(t *testing.T) { oddSyn(t, tp, d, fam.a, fam.b, local, 9500+port-9400, c) })
				}
			}
		})
	}
}

// TestNftInboundOddSynHeld is TestInboundOddSynHeld for the native nftables
// ruleset, on kernels that cannot queue from nftables (its queue statements
// become drops: the local SYN is held for good, and nothing is allowed in).
func TestNftInboundOddSynHeld(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	addV6(t, tp)
	dropPeerResets(t, tp)
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, inbound: true, exemptLoopback: true}.nftRules(), "counter drop")
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	port := uint16(9400)
	for _, fam := range []struct{ name, a, b string }{{"IPv4", addrA, addrB}, {"IPv6", addrA6, addrB6}} {
		for _, c := range oddSynCases[1:] {
			port++
			t.Run(fam.name+" "+c.name, func(t *testing.T) { oddSyn(t, tp, nil, fam.a, fam.b, port, 9500+port-9400, c) })
		}
	}
}

// TestOutboundHeldSimultaneousOpen: without inbound connections held, a local
// socket whose own SYN is held in the queue (a connect latch has not allowed)
// must not be connected by the peer it tries to reach: the peer's plain SYN
// (or SYN|FIN) to the socket's port is the peer's half of a simultaneous open,
// the socket answers with a SYN-ACK and the peer's ACK establishes a
// connection whose own SYN latch still holds (and then denies). The peer
// needs no more than the local port (the destination of a held connect can
// try every ephemeral port). IPv4 and IPv6.
//
// It fails on the ruleset alone (review finding: LATCH-OUT cannot tell the
// socket's SYN-ACK from a listener's, and without inbound held nothing looks
// at the peer's SYN); LATCH_TEST_KNOWN_HOLES=1 runs it. The kernel fast path
// closes it: TestFastPathOutboundHeldSimultaneousOpen.
func TestOutboundHeldSimultaneousOpen(t *testing.T) {
	if os.Getenv("LATCH_TEST_KNOWN_HOLES") == "" {
		t.Skip("a known hole without the fast path (see the comment); LATCH_TEST_KNOWN_HOLES=1 runs it")
	}
	outboundHeldSimultaneousOpen(t, false)
}

// TestFastPathOutboundHeldSimultaneousOpen is TestOutboundHeldSimultaneousOpen
// with the kernel fast path loaded in the local namespace (as the daemon loads
// it by default): its cgroup_skb ingress program drops a SYN without ACK to a
// socket in SYN_SENT, and counts it (simultaneous_open_dropped).
func TestFastPathOutboundHeldSimultaneousOpen(t *testing.T) {
	outboundHeldSimultaneousOpen(t, true)
}

// simOpenCases are the peer's halves of a simultaneous open.
var simOpenCases = []oddSynCase{{"SYN", tcpSYN, false}, {"SYN FIN", tcpSYN | tcpFIN, false}, {"SYN PSH", tcpSYN | tcpPSH, false}}

func outboundHeldSimultaneousOpen(t *testing.T, fast bool) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			addV6(t, tp)
			dropPeerResets(t, tp)
			var fp *fastpath.FastPath
			if fast {
				fp = openFastPath(t, tp.a)
			}
			// Outbound connects are held 20 s, then denied.
			d := startDaemon(t, tp, "*=deny@20s", "LATCH_TEST_FIREWALL="+fw)
			defer d.stop()
			port := uint16(9600)
			for _, fam := range []struct{ name, a, b string }{{"IPv4", addrA, addrB}, {"IPv6", addrA6, addrB6}} {
				for _, c := range simOpenCases {
					port++
					t.Run(fam.name+" "+c.name, func(t *testing.T) { oddSyn(t, tp, d, fam.a, fam.b, port, 9700+port-9600, c) })
				}
			}
			if fp != nil {
				checkSimOpenDropped(t, fp, 2*len(simOpenCases))
			}
		})
	}
}

// openFastPath opens the kernel fast path in namespace ns (its hooks on the
// root cgroup, as the daemon's by default) until the test ends.
func openFastPath(t *testing.T, ns string) *fastpath.FastPath {
	t.Helper()
	var fp *fastpath.FastPath
	if err := inNS(ns, func() (err error) {
		fp, err = fastpath.Open(fastpath.Config{})
		return err
	}); err != nil {
		t.Skipf("no kernel fast path: %v", err)
	}
	t.Cleanup(func() { fp.Close() })
	if st := fp.Stats(); !st.SimultaneousOpenGuard {
		t.Fatalf("the fast path has no simultaneous open guard: %s", st.SimultaneousOpenGuardWhy)
	}
	return fp
}

// checkSimOpenDropped checks that the fast path counted at least n segments
// it dropped as the peer's half of a simultaneous open.
func checkSimOpenDropped(t *testing.T, fp *fastpath.FastPath, n int) {
	t.Helper()
	if got := fp.Stats().SimultaneousOpenDropped; got < uint64(n) {
		t.Errorf("simultaneous_open_dropped %d, want at least %d", got, n)
	}
}

// TestNftOutboundHeldSimultaneousOpen is TestOutboundHeldSimultaneousOpen for
// the native nftables ruleset (its queue statements become drops: the local
// SYN is held for good).
func TestNftOutboundHeldSimultaneousOpen(t *testing.T) {
	if os.Getenv("LATCH_TEST_KNOWN_HOLES") == "" {
		t.Skip("a known hole without the fast path (see TestOutboundHeldSimultaneousOpen); LATCH_TEST_KNOWN_HOLES=1 runs it")
	}
	nftOutboundHeldSimultaneousOpen(t, false)
}

// TestFastPathNftOutboundHeldSimultaneousOpen is
// TestNftOutboundHeldSimultaneousOpen with the kernel fast path loaded in the
// local namespace.
func TestFastPathNftOutboundHeldSimultaneousOpen(t *testing.T) {
	nftOutboundHeldSimultaneousOpen(t, true)
}

func nftOutboundHeldSimultaneousOpen(t *testing.T, fast bool) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	addV6(t, tp)
	dropPeerResets(t, tp)
	var fp *fastpath.FastPath
	if fast {
		fp = openFastPath(t, tp.a)
	}
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, exemptLoopback: true}.nftRules(), "counter drop")
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	port := uint16(9600)
	for _, fam := range []struct{ name, a, b string }{{"IPv4", addrA, addrB}, {"IPv6", addrA6, addrB6}} {
		for _, c := range simOpenCases {
			port++
			t.Run(fam.name+" "+c.name, func(t *testing.T) { oddSyn(t, tp, nil, fam.a, fam.b, port, 9700+port-9600, c) })
		}
	}
	if fp != nil {
		checkSimOpenDropped(t, fp, 2*len(simOpenCases))
	}
}

// TestFastPathSimultaneousOpenStillConnects: with the kernel fast path loaded
// in the local namespace, a legitimate simultaneous open still connects. The
// local socket's SYN is held at first (a drop rule in OUTPUT) and the peer's
// socket connects to it: its SYN reaches the local socket in SYN_SENT, which
// the fast path drops (counted); then the rule goes (the local SYN allowed),
// the local socket's next SYN reaches the peer in SYN_SENT, which answers it
// with a SYN-ACK, and both sockets are established. IPv4 and IPv6.
func TestFastPathSimultaneousOpenStillConnects(t *testing.T) {
	tp := newTopo(t)
	addV6(t, tp)
	fp := openFastPath(t, tp.a)
	port := uint16(9800)
	for _, fam := range []struct{ name, a, b, ipt string }{{"IPv4", addrA, addrB, "iptables"}, {"IPv6", addrA6, addrB6, "ip6tables"}} {
		port += 2
		t.Run(fam.name, func(t *testing.T) {
			local := netip.AddrPortFrom(netip.MustParseAddr(fam.a), port)
			peer := netip.AddrPortFrom(netip.MustParseAddr(fam.b), port+1)
			hold := []string{"-p", "tcp", "--syn", "-d", fam.b, "--dport", fmt.Sprint(peer.Port()), "-j", "DROP"}
			ipt := func(op string) {
				args := append([]string{"netns", "exec", tp.a, fam.ipt, "-w", op, "OUTPUT"}, hold...)
				if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("%s %s in %s: %v: %s", fam.ipt, op, tp.a, err, out)
				}
			}
			ipt("-I")
			before := fp.Stats().SimultaneousOpenDropped
			a := heldSocket(t, tp.a, local, peer)
			b := heldSocket(t, tp.b, peer, local)
			// The peer's SYN reaches the local socket, in SYN_SENT: dropped.
			deadline := time.Now().Add(3 * time.Second)
			for fp.Stats().SimultaneousOpenDropped == before && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if fp.Stats().SimultaneousOpenDropped == before {
				t.Fatalf("the peer's SYN to the local socket in SYN_SENT was not dropped (local state %d, peer %d)", tcpState(t, a), tcpState(t, b))
			}
			ipt("-D")
			deadline = time.Now().Add(6 * time.Second)
			for (tcpState(t, a) != unix.BPF_TCP_ESTABLISHED || tcpState(t, b) != unix.BPF_TCP_ESTABLISHED) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if sa, sb := tcpState(t, a), tcpState(t, b); sa != unix.BPF_TCP_ESTABLISHED || sb != unix.BPF_TCP_ESTABLISHED {
				t.Errorf("local state %d, peer %d; want both established (%d)", sa, sb, unix.BPF_TCP_ESTABLISHED)
			}
		})
	}
}

// TestFastPathSelfConnectStillConnects: with the kernel fast path loaded, a
// socket that connects to its own address and port (whose own SYN comes back
// to it in SYN_SENT, which Linux takes as a simultaneous open) still connects:
// no other host takes part. IPv4 and IPv6.
func TestFastPathSelfConnectStillConnects(t *testing.T) {
	tp := newTopo(t)
	addV6(t, tp)
	fp := openFastPath(t, tp.a)
	before := fp.Stats().SimultaneousOpenDropped
	for i, a := range []string{addrA, addrA6} {
		self := netip.AddrPortFrom(netip.MustParseAddr(a), uint16(9850+i))
		fd := heldSocket(t, tp.a, self, self)
		deadline := time.Now().Add(3 * time.Second)
		for tcpState(t, fd) != unix.BPF_TCP_ESTABLISHED && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if st := tcpState(t, fd); st != unix.BPF_TCP_ESTABLISHED {
			t.Errorf("a socket connecting to itself at %s: state %d, want established (%d)", self, st, unix.BPF_TCP_ESTABLISHED)
		}
	}
	if got := fp.Stats().SimultaneousOpenDropped; got != before {
		t.Errorf("simultaneous_open_dropped went from %d to %d: a socket's own SYN was dropped", before, got)
	}
}
