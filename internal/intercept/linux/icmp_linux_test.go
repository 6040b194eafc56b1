package linux

// ICMP and raw-socket tests: every ICMP message is held but errors about a known
// flow, answers to the peer's own queries, and the link's bookkeeping (IGMP, IPv6
// neighbour discovery, MLD); packets conntrack cannot place are held too.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	addrB2  = "198.18.0.3" // B's second address: what no rule allows
	addr6A  = "fd00::1"
	addr6B  = "fd00::2"
	addr6B2 = "fd00::3"
	// mcast4 and mcast6 are the groups A joins to make its kernel report them.
	mcast4 = "239.76.65.84"
	mcast6 = "ff12::4c41:5443"
)

// addSecondAddresses gives A and B IPv6 addresses and B a second address of each
// family. No DAD: the addresses are usable at once, and no neighbour discovery
// happens before the test wants it.
func addSecondAddresses(t *testing.T, tp *topo) {
	t.Helper()
	for _, args := range [][]string{
		{"-n", tp.a, "addr", "add", addr6A + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "add", addr6B + "/64", "dev", tp.vethB, "nodad"},
		{"-n", tp.b, "addr", "add", addr6B2 + "/64", "dev", tp.vethB, "nodad"},
		{"-n", tp.b, "addr", "add", addrB2 + "/24", "dev", tp.vethB},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// rawSock is a raw IP socket of one protocol in one namespace: it sends what the test
// writes and, with capture, records every packet of its protocol the host receives.
type rawSock struct {
	fd   int
	v6   bool
	mu   sync.Mutex
	pkts [][]byte
	done chan struct{}
}

func openRaw(t *testing.T, ns string, v6 bool, proto int, bind string) *rawSock {
	t.Helper()
	r := &rawSock{v6: v6, done: make(chan struct{})}
	err := inNS(ns, func() error {
		fam := unix.AF_INET
		if v6 {
			fam = unix.AF_INET6
		}
		fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("raw socket protocol %d: %w", proto, err)
		}
		r.fd = fd
		if bind != "" {
			if err := unix.Bind(fd, sockaddr(bind)); err != nil {
				unix.Close(fd)
				return fmt.Errorf("bind raw socket to %s: %w", bind, err)
			}
		}
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		t.Fatalf("in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		close(r.done)
		time.Sleep(60 * time.Millisecond) // the reader's timeout: it has left the fd
		unix.Close(r.fd)
	})
	return r
}

func sockaddr(addr string) unix.Sockaddr {
	a := netip.MustParseAddr(addr)
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Addr: a.As16()}
}

// capture records, until the test ends, every packet the socket receives.
func (r *rawSock) capture() *rawSock {
	go func() {
		buf := make([]byte, 65536)
		for {
			select {
			case <-r.done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(r.fd, buf, 0)
			if err != nil {
				continue
			}
			r.mu.Lock()
			r.pkts = append(r.pkts, bytes.Clone(buf[:n]))
			r.mu.Unlock()
		}
	}()
	return r
}

// saw reports whether a received packet contains marker.
func (r *rawSock) saw(marker string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pkts {
		if bytes.Contains(p, []byte(marker)) {
			return true
		}
	}
	return false
}

// waitSaw waits up to d for a packet containing marker.
func (r *rawSock) waitSaw(marker string, d time.Duration) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if r.saw(marker) {
			return true
		}
	}
	return r.saw(marker)
}

// send sends msg to dst with the given TTL / hop limit (0: the default).
func (r *rawSock) send(t *testing.T, dst string, msg []byte, hops int) {
	t.Helper()
	if err := r.trySend(dst, msg, hops); err != nil {
		t.Fatal(err)
	}
}

// trySend is send that returns its error: a packet a firewall drops on the way out
// fails with EPERM.
func (r *rawSock) trySend(dst string, msg []byte, hops int) error {
	if hops > 0 {
		level, opt := unix.IPPROTO_IP, unix.IP_TTL
		if r.v6 {
			level, opt = unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS
		}
		if err := unix.SetsockoptInt(r.fd, level, opt, hops); err != nil {
			return err
		}
	}
	if err := unix.Sendto(r.fd, msg, 0, sockaddr(dst)); err != nil {
		return fmt.Errorf("send %d bytes to %s: %w", len(msg), dst, err)
	}
	return nil
}

// joinGroup makes the socket's host a member of group on interface ifname.
func (r *rawSock) joinGroup(t *testing.T, ns, ifname, group string) {
	t.Helper()
	err := inNS(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		g := netip.MustParseAddr(group)
		if g.Is4() {
			return unix.SetsockoptIPMreqn(r.fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP,
				&unix.IPMreqn{Multiaddr: g.As4(), Ifindex: int32(ifi.Index)})
		}
		return unix.SetsockoptIPv6Mreq(r.fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP,
			&unix.IPv6Mreq{Multiaddr: g.As16(), Interface: uint32(ifi.Index)})
	})
	if err != nil {
		t.Fatalf("join %s on %s in %s: %v", group, ifname, ns, err)
	}
}

// checksum is the Internet checksum (RFC 1071), for ICMPv4 and IGMP; the kernel
// computes ICMPv6's itself.
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// icmpMsg is an ICMP message: type, code, checksum, a 16-bit identifier and sequence
// number 1, then body.
func icmpMsg(typ, code uint8, id uint16, body []byte, v4 bool) []byte {
	b := []byte{typ, code, 0, 0, byte(id >> 8), byte(id), 0, 1}
	b = append(b, body...)
	if v4 {
		binary.BigEndian.PutUint16(b[2:], checksum(b))
	}
	return b
}

// heldMessage is one message no rule allows, and how to send it.
type heldMessage struct {
	name   string
	v6     bool
	proto  int
	msg    []byte
	hops   int
	marker string
}

// heldMessages lists messages that must be held, each carrying a marker.
func heldMessages() []heldMessage {
	m := func(s string) string { return "latch-marker-" + s }
	timestamps := make([]byte, 12)
	var hm []heldMessage
	add := func(name string, v6 bool, proto int, build func(marker []byte) []byte, hops int) {
		hm = append(hm, heldMessage{name: name, v6: v6, proto: proto, msg: build([]byte(m(name))), hops: hops, marker: m(name)})
	}
	// First, while the entries from before the daemon started live (30 s).
	add("icmp echo on a stale conntrack entry", false, unix.IPPROTO_ICMP, func(mk []byte) []byte {
		return icmpMsg(8, 0, staleEchoID, mk, true)
	}, 0)
	add("icmpv6 echo on a stale conntrack entry", true, unix.IPPROTO_ICMPV6, func(mk []byte) []byte {
		return icmpMsg(128, 0, staleEchoID, mk, false)
	}, 0)
	add("icmp timestamp (13)", false, unix.IPPROTO_ICMP, func(mk []byte) []byte {
		return icmpMsg(13, 0, 0x4c01, append(timestamps, mk...), true)
	}, 0)
	add("icmp extended echo (42)", false, unix.IPPROTO_ICMP, func(mk []byte) []byte {
		return icmpMsg(42, 0, 0x4c02, mk, true)
	}, 0)
	add("icmp address mask request (17)", false, unix.IPPROTO_ICMP, func(mk []byte) []byte {
		return icmpMsg(17, 0, 0x4c03, append(make([]byte, 4), mk...), true)
	}, 0)
	add("icmp error about no flow", false, unix.IPPROTO_ICMP, func(mk []byte) []byte {
		// Port unreachable quoting a datagram conntrack never saw.
		inner := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 3, 198, 18, 0, 1, 0x30, 0x39, 0x30, 0x3a, 0, 8, 0, 0}
		binary.BigEndian.PutUint16(inner[10:], checksum(inner[:20]))
		return icmpMsg(3, 3, 0, append(inner, mk...), true)
	}, 0)
	add("igmp with a routable ttl", false, unix.IPPROTO_IGMP, func(mk []byte) []byte {
		b := append([]byte{0x16, 0, 0, 0, 239, 76, 65, 84}, mk...)
		binary.BigEndian.PutUint16(b[2:], checksum(b))
		return b
	}, 64)
	add("icmpv6 node information query (139)", true, unix.IPPROTO_ICMPV6, func(mk []byte) []byte {
		return icmpMsg(139, 0, 0x4c04, append(make([]byte, 4), mk...), false)
	}, 0)
	add("icmpv6 extended echo (160)", true, unix.IPPROTO_ICMPV6, func(mk []byte) []byte {
		return icmpMsg(160, 0, 0x4c06, mk, false)
	}, 0)
	add("icmpv6 echo with data", true, unix.IPPROTO_ICMPV6, func(mk []byte) []byte {
		return icmpMsg(128, 0, 0x4c05, mk, false)
	}, 0)
	add("icmpv6 neighbour solicitation with a routable hop limit", true, unix.IPPROTO_ICMPV6, func(mk []byte) []byte {
		return icmpMsg(135, 0, 0, append(netip.MustParseAddr(addr6B2).AsSlice()[4:], mk...), false)
	}, 64)
	add("icmpv6 inverse neighbour discovery (141)", true, unix.IPPROTO_ICMPV6, func(mk []byte) []byte {
		return icmpMsg(141, 0, 0, mk, false)
	}, 255)
	add("sctp abort out of the blue", false, unix.IPPROTO_SCTP, func(mk []byte) []byte {
		// Common header (ports 5000 -> 5001, tag 0, checksum unchecked on output),
		// then an ABORT chunk whose error cause carries the data.
		b := []byte{0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0}
		binary.BigEndian.PutUint16(b[14:], uint16(4+len(mk)))
		return append(b, mk...)
	}, 0)
	add("udp with a bad length field", false, unix.IPPROTO_UDP, func(mk []byte) []byte {
		// Length 4 < 8: conntrack calls the datagram INVALID.
		return append([]byte{0x13, 0x88, 0x13, 0x89, 0, 4, 0, 0}, mk...)
	}, 0)
	return hm
}

// staleEchoID is the identifier of echo requests sent before the daemon starts, so
// that their conntrack entries are ESTABLISHED when a later request reuses them.
const staleEchoID = 0x4c4c

// TestICMPHeld: ICMP messages that are neither errors about a known flow nor answers
// to the peer's queries, and packets conntrack cannot place, are held (a question) and
// with no allow rule never reach the peer; neighbour discovery, MLD, IGMP, echo once
// allowed and errors about allowed flows still work, in both directions.
func TestICMPHeld(t *testing.T) {
	for _, c := range []struct {
		firewall string
		inbound  bool
	}{
		{FirewallIptablesNft, true},
		{FirewallIptablesLegacy, true},
		{FirewallIptablesNft, false},
		{FirewallNftables, true},
	} {
		t.Run(fmt.Sprintf("%s inbound=%v", c.firewall, c.inbound), func(t *testing.T) {
			testICMPHeld(t, c.firewall, c.inbound)
		})
	}
}

func testICMPHeld(t *testing.T, firewall string, inbound bool) {
	tp := newTopo(t)
	addSecondAddresses(t, tp)
	// A's raw sockets send and see what arrives at A; B's see what arrives at B.
	a4 := openRaw(t, tp.a, false, unix.IPPROTO_ICMP, addrA).capture()
	a6 := openRaw(t, tp.a, true, unix.IPPROTO_ICMPV6, addr6A).capture()
	b4 := openRaw(t, tp.b, false, unix.IPPROTO_ICMP, "").capture()
	b6 := openRaw(t, tp.b, true, unix.IPPROTO_ICMPV6, "").capture()
	bIGMP := openRaw(t, tp.b, false, unix.IPPROTO_IGMP, "").capture()
	bIGMP.joinGroup(t, tp.b, tp.vethB, "224.0.0.22") // where IGMPv3 reports go
	b6.joinGroup(t, tp.b, tp.vethB, "ff02::16")      // where MLDv2 reports go
	bSCTP := openRaw(t, tp.b, false, unix.IPPROTO_SCTP, "").capture()
	bUDP := openRaw(t, tp.b, false, unix.IPPROTO_UDP, "").capture()
	senders := map[string]*rawSock{}
	sender := func(ns string, v6 bool, proto int, bind string) *rawSock {
		k := fmt.Sprint(ns, v6, proto)
		if senders[k] == nil {
			senders[k] = openRaw(t, ns, v6, proto, bind)
		}
		return senders[k]
	}
	receiver := func(v6 bool, proto int) *rawSock {
		switch {
		case proto == unix.IPPROTO_IGMP:
			return bIGMP
		case proto == unix.IPPROTO_SCTP:
			return bSCTP
		case proto == unix.IPPROTO_UDP:
			return bUDP
		case v6:
			return b6
		}
		return b4
	}

	// Conntrack entries from before the daemon: an echo exchange with B2 whose
	// identifier a later request reuses. A namespace tracks connections only once a
	// rule asks for conntrack, as most hosts' firewalls do before latch starts.
	track := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	track.Stdin = strings.NewReader("add table inet latchtest\nadd chain inet latchtest out { type filter hook output priority 0; }\nadd rule inet latchtest out ct state new counter\n")
	if out, err := track.CombinedOutput(); err != nil {
		t.Fatalf("turn conntrack on in %s: %v: %s", tp.a, err, out)
	}
	a4.send(t, addrB2, icmpMsg(8, 0, staleEchoID, []byte("stale-4"), true), 0)
	a6.send(t, addr6B2, icmpMsg(128, 0, staleEchoID, []byte("stale-6"), false), 0)
	if !a4.waitSaw("stale-4", 3*time.Second) || !a6.waitSaw("stale-6", 3*time.Second) {
		t.Fatal("no echo replies before the daemon started")
	}

	env := []string{"LATCH_TEST_FIREWALL=" + firewall, "LATCH_TEST_ADDR_POLICY=" + addrB + "=allow," + addr6B + "=allow"}
	if inbound {
		env = append(env, "LATCH_TEST_INBOUND=1")
	}
	d := spawnDaemon(t, tp, "*=deny", env...)
	if _, ok := d.waitLine("ready", readyWithin); !ok {
		if firewall == FirewallNftables && strings.Contains(d.errors(), "nft_queue missing") {
			t.Skip("this kernel cannot queue from nftables; the ruleset's syntax is checked by TestNftRulesetSyntax")
		}
		t.Fatalf("daemon did not become ready: %s; stderr:\n%s", d.progress(), d.errors())
	}
	defer d.stop()

	held := func(dir, src, dst string, v6 bool, proto int) string {
		p := map[int]string{unix.IPPROTO_ICMP: "icmp", unix.IPPROTO_ICMPV6: "icmpv6", unix.IPPROTO_IGMP: "2", unix.IPPROTO_SCTP: "132", unix.IPPROTO_UDP: "udp"}[proto]
		if proto == unix.IPPROTO_SCTP || proto == unix.IPPROTO_UDP {
			return fmt.Sprintf("held %s %s ", dir, p)
		}
		ap := func(a string) string { return netip.AddrPortFrom(netip.MustParseAddr(a), 0).String() }
		return fmt.Sprintf("held %s %s %s %s ", dir, p, ap(src), ap(dst))
	}

	t.Run("outbound held", func(t *testing.T) {
		for _, m := range heldMessages() {
			src, dst := addrA, addrB2
			if m.v6 {
				src, dst = addr6A, addr6B2
			}
			d.drain()
			sender(tp.a, m.v6, m.proto, src).send(t, dst, m.msg, m.hops)
			if m.proto == unix.IPPROTO_UDP {
				continue // malformed: dropped, never a question
			}
			if l, ok := d.waitLine(held("out", src, dst, m.v6, m.proto), 3*time.Second); !ok {
				t.Errorf("%s: not held (no question)", m.name)
			} else {
				t.Logf("%s: %s", m.name, l)
			}
		}
		time.Sleep(300 * time.Millisecond)
		for _, m := range heldMessages() {
			if receiver(m.v6, m.proto).saw(m.marker) {
				t.Errorf("%s: reached the peer with no allow rule", m.name)
			}
		}
	})

	t.Run("unprivileged extended echo held", func(t *testing.T) {
		// Ping sockets let any user in ping_group_range send echo and, since Linux
		// 5.13, extended echo requests (RFC 8335), with data.
		allowPingSockets(t, tp.a)
		d.drain()
		c := spawnChild(t, tp, "unpriv-icmp", "")
		if _, ok := c.waitLine("done", 10*time.Second); !ok {
			t.Fatalf("the unprivileged sender did not finish; stderr:\n%s", c.errors())
		}
		lines := d.linesFor(500 * time.Millisecond)
		for _, want := range []string{held("out", addrA, addrB2, false, unix.IPPROTO_ICMP), held("out", addr6A, addr6B2, true, unix.IPPROTO_ICMPV6)} {
			if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, want) }) {
				t.Errorf("no question %q for the unprivileged echo and extended echo requests; got %q", want, lines)
			}
		}
		for _, m := range []string{"ping4-8", "ping4-42", "ping6-128", "ping6-160"} {
			rcv := b4
			if strings.HasPrefix(m, "ping6") {
				rcv = b6
			}
			if rcv.saw("latch-marker-unprivileged-" + m) {
				t.Errorf("an unprivileged %s reached the peer with no allow rule", m)
			}
		}
	})

	t.Run("echo allowed: neighbour discovery works", func(t *testing.T) {
		// No traffic between A and B's first addresses before: A must resolve
		// fd00::2 (neighbour solicitation out, advertisement in) for the reply.
		d.drain()
		a4.send(t, addrB, icmpMsg(8, 0, 0x4c10, []byte("ping-4"), true), 0)
		a6.send(t, addr6B, icmpMsg(128, 0, 0x4c10, []byte("ping-6"), false), 0)
		if !a4.waitSaw("ping-4", 3*time.Second) {
			t.Error("no echo reply from the peer to an allowed IPv4 echo")
		}
		if !a6.waitSaw("ping-6", 3*time.Second) {
			t.Error("no echo reply from the peer to an allowed IPv6 echo (neighbour discovery held?)")
		}
		// Only the two echo requests are questions: neither the solicitation nor the
		// advertisement (nor the replies, which belong to allowed flows).
		for _, l := range d.linesFor(200 * time.Millisecond) {
			if strings.HasPrefix(l, "held ") && !strings.HasPrefix(l, "held out icmp "+addrA+":0 "+addrB+":0 ") &&
				!strings.HasPrefix(l, "held out icmpv6 [fd00::1]:0 [fd00::2]:0 ") {
				t.Errorf("held while pinging: %q", l)
			}
		}
	})

	t.Run("errors about allowed flows arrive", func(t *testing.T) {
		for _, dst := range []string{addrB, addr6B} {
			if err := udpRefused(tp.a, "", dst); err != nil {
				t.Errorf("UDP from A to a closed port on %s: %v", dst, err)
			}
		}
		// A's kernel answers B's datagram to a closed port with an error: out.
		for src, dst := range map[string]string{addrB: addrA, addr6B: addr6A} {
			if err := udpRefused(tp.b, src, dst); err != nil {
				t.Errorf("UDP from B to a closed port on %s: %v", dst, err)
			}
		}
	})

	t.Run("membership reports pass", func(t *testing.T) {
		d.drain()
		aj4 := openRaw(t, tp.a, false, unix.IPPROTO_IGMP, "")
		aj4.joinGroup(t, tp.a, tp.vethA, mcast4)
		aj6 := openRaw(t, tp.a, true, unix.IPPROTO_ICMPV6, "")
		aj6.joinGroup(t, tp.a, tp.vethA, mcast6)
		g4, g6 := netip.MustParseAddr(mcast4).AsSlice(), netip.MustParseAddr(mcast6).AsSlice()
		if !bIGMP.waitSaw(string(g4), 3*time.Second) {
			t.Error("the peer got no IGMP report for a group A joined")
		}
		if !b6.waitSaw(string(g6), 3*time.Second) {
			t.Error("the peer got no MLD report for a group A joined")
		}
		for _, l := range d.linesFor(100 * time.Millisecond) {
			if strings.HasPrefix(l, "held ") && !strings.Contains(l, " udp ") {
				t.Errorf("held while joining groups: %q", l)
			}
		}
	})

	if !inbound {
		return
	}
	t.Run("inbound held", func(t *testing.T) {
		for _, m := range heldMessages() {
			if m.proto != unix.IPPROTO_ICMP && m.proto != unix.IPPROTO_ICMPV6 || strings.Contains(m.name, "stale") || strings.Contains(m.name, "error") {
				continue
			}
			src, dst := addrB2, addrA
			if m.v6 {
				src, dst = addr6B2, addr6A
			}
			d.drain()
			sender(tp.b, m.v6, m.proto, src).send(t, dst, m.msg, m.hops)
			if _, ok := d.waitLine(held("in", dst, src, m.v6, m.proto), 3*time.Second); !ok {
				t.Errorf("%s: inbound not held (no question)", m.name)
			}
			time.Sleep(100 * time.Millisecond)
			rcv := a4
			if m.v6 {
				rcv = a6
			}
			if rcv.saw(m.marker) {
				t.Errorf("%s: reached this host with no allow rule", m.name)
			}
		}
	})
}

// udpRefused sends a datagram from ns (from src, if set) to a port nobody listens on at dst and
// reports an error unless the ICMP port unreachable comes back (ECONNREFUSED).
func udpRefused(ns, src, dst string) error {
	var c *net.UDPConn
	if err := inNS(ns, func() error {
		var err error
		var laddr *net.UDPAddr
		if src != "" {
			laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0))
		}
		c, err = net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(dst), 9409)))
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("anyone?")); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := c.Read(make([]byte, 10))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("read: %v, want ECONNREFUSED (the ICMP error did not arrive)", err)
	}
	return nil
}

// TestNftICMPRuleset checks what the native nftables ruleset does with ICMP on
// kernels that cannot queue from nftables (these machines): its queue statements
// become drops, so what would be held must not reach the peer, and what the network
// needs must pass without any verdict: neighbour discovery, MLD and IGMP reports,
// the echo replies to the peer's pings and the errors about its flows.
func TestNftICMPRuleset(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	tp := newTopo(t)
	addSecondAddresses(t, tp)
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(ruleSpec{queue: testQueue, exemptLoopback: true}.nftRules(), "counter drop")
	install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
	install.Stdin = strings.NewReader(rules)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
	}
	a4 := openRaw(t, tp.a, false, unix.IPPROTO_ICMP, addrA).capture()
	a6 := openRaw(t, tp.a, true, unix.IPPROTO_ICMPV6, addr6A).capture()
	b4 := openRaw(t, tp.b, false, unix.IPPROTO_ICMP, addrB).capture()
	b6 := openRaw(t, tp.b, true, unix.IPPROTO_ICMPV6, "").capture()
	bIGMP := openRaw(t, tp.b, false, unix.IPPROTO_IGMP, "").capture()
	bIGMP.joinGroup(t, tp.b, tp.vethB, "224.0.0.22")
	b6.joinGroup(t, tp.b, tp.vethB, "ff02::16")
	bOther := map[int]*rawSock{
		unix.IPPROTO_SCTP: openRaw(t, tp.b, false, unix.IPPROTO_SCTP, "").capture(),
		unix.IPPROTO_UDP:  openRaw(t, tp.b, false, unix.IPPROTO_UDP, "").capture(),
		unix.IPPROTO_IGMP: bIGMP,
	}

	for _, m := range heldMessages() {
		if strings.Contains(m.name, "stale") {
			continue // no conntrack entries from before here
		}
		dst, snd := addrB2, a4
		if m.v6 {
			dst, snd = addr6B2, a6
		}
		if m.proto != unix.IPPROTO_ICMP && m.proto != unix.IPPROTO_ICMPV6 {
			snd = openRaw(t, tp.a, false, m.proto, addrA)
		}
		if err := snd.trySend(dst, m.msg, m.hops); err == nil {
			t.Errorf("%s: sent, want dropped on the way out (EPERM)", m.name)
		} else if !errors.Is(err, unix.EPERM) {
			t.Fatal(err)
		}
	}
	// The peer pings A (not held: no inbound chain): A's neighbour advertisement
	// and echo replies go out.
	b4.send(t, addrA, icmpMsg(8, 0, 0x4c20, []byte("peer-ping-4"), true), 0)
	b6.send(t, addr6A, icmpMsg(128, 0, 0x4c20, []byte("peer-ping-6"), false), 0)
	if !b4.waitSaw("peer-ping-4", 3*time.Second) {
		t.Error("A's echo reply to the peer's IPv4 ping did not arrive")
	}
	if !b6.waitSaw("peer-ping-6", 3*time.Second) {
		t.Error("A's echo reply to the peer's IPv6 ping did not arrive (neighbour discovery dropped?)")
	}
	for src, dst := range map[string]string{addrB: addrA, addr6B: addr6A} {
		if err := udpRefused(tp.b, src, dst); err != nil {
			t.Errorf("UDP from B to a closed port on %s: %v", dst, err)
		}
	}
	aj4 := openRaw(t, tp.a, false, unix.IPPROTO_IGMP, "")
	aj4.joinGroup(t, tp.a, tp.vethA, mcast4)
	aj6 := openRaw(t, tp.a, true, unix.IPPROTO_ICMPV6, "")
	aj6.joinGroup(t, tp.a, tp.vethA, mcast6)
	if !bIGMP.waitSaw(string(netip.MustParseAddr(mcast4).AsSlice()), 3*time.Second) {
		t.Error("the peer got no IGMP report for a group A joined")
	}
	if !b6.waitSaw(string(netip.MustParseAddr(mcast6).AsSlice()), 3*time.Second) {
		t.Error("the peer got no MLD report for a group A joined")
	}
	for _, m := range heldMessages() {
		rcv := b4
		if m.v6 {
			rcv = b6
		}
		if o := bOther[m.proto]; o != nil {
			rcv = o
		}
		if rcv.saw(m.marker) {
			t.Errorf("%s: reached the peer", m.name)
		}
	}
}

// TestUnprivilegedICMPIsEchoOnly checks the premise of the ICMP exceptions: a
// process without CAP_NET_RAW can send ICMP only through ping sockets, and those
// carry echo requests only (held by latch); raw sockets, which could forge errors
// about known flows or neighbour discovery, are refused.
func TestUnprivilegedICMPIsEchoOnly(t *testing.T) {
	tp := newTopo(t)
	addSecondAddresses(t, tp)
	allowPingSockets(t, tp.a)
	d := spawnChild(t, tp, "unpriv-icmp", "")
	lines := map[string]string{}
	for {
		l, ok := d.waitLine("", 10*time.Second)
		if !ok {
			break
		}
		if k, v, ok := strings.Cut(l, " "); ok {
			lines[k] = v
		}
		if l == "done" {
			break
		}
	}
	if _, ok := lines["uid"]; !ok {
		t.Fatalf("the child printed nothing useful: %v; stderr:\n%s", lines, d.errors())
	}
	want := map[string]string{
		"uid":       "65534",
		"raw4":      "operation not permitted",
		"raw6":      "operation not permitted",
		"ping4-8":   "ok",
		"ping4-13":  "invalid argument",
		"ping4-42":  "ok", // extended echo (RFC 8335 PROBE), since Linux 5.13
		"ping4-3":   "invalid argument",
		"ping6-128": "ok",
		"ping6-160": "ok", // extended echo
		"ping6-139": "invalid argument",
		"ping6-135": "invalid argument",
		"ping6-1":   "invalid argument",
	}
	for k, v := range want {
		if lines[k] != v {
			t.Errorf("%s: %q, want %q", k, lines[k], v)
		}
	}
}

// allowPingSockets lets every group use ping sockets in namespace ns, as systemd
// sets it up on most distributions.
func allowPingSockets(t *testing.T, ns string) {
	t.Helper()
	// /proc/sys/net is the namespace of the thread that opens it.
	if err := inNS(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0o644)
	}); err != nil {
		t.Fatalf("allow ping sockets in %s: %v", ns, err)
	}
}

// unprivilegedICMP is the child side of TestUnprivilegedICMPIsEchoOnly: it becomes
// nobody and reports what each way of sending ICMP gives.
func unprivilegedICMP() int {
	if err := syscall.Setgroups(nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := syscall.Setresgid(65534, 65534, 65534); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := syscall.Setresuid(65534, 65534, 65534); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("uid", os.Getuid())
	res := func(err error) string {
		if err == nil {
			return "ok"
		}
		return err.Error()
	}
	for _, c := range []struct {
		name  string
		fam   int
		proto int
	}{{"raw4", unix.AF_INET, unix.IPPROTO_ICMP}, {"raw6", unix.AF_INET6, unix.IPPROTO_ICMPV6}} {
		fd, err := unix.Socket(c.fam, unix.SOCK_RAW, c.proto)
		if err == nil {
			unix.Close(fd)
		}
		fmt.Println(c.name, res(err))
	}
	for _, c := range []struct {
		name  string
		v6    bool
		types []uint8
	}{{"ping4", false, []uint8{8, 13, 42, 3}}, {"ping6", true, []uint8{128, 160, 139, 135, 1}}} {
		fam, proto, dst := unix.AF_INET, unix.IPPROTO_ICMP, addrB2
		if c.v6 {
			fam, proto, dst = unix.AF_INET6, unix.IPPROTO_ICMPV6, addr6B2
		}
		fd, err := unix.Socket(fam, unix.SOCK_DGRAM, proto)
		if err != nil {
			fmt.Println(c.name, "socket:", err)
			continue
		}
		for _, typ := range c.types {
			marker := fmt.Sprintf("latch-marker-unprivileged-%s-%d", c.name, typ)
			err := unix.Sendto(fd, icmpMsg(typ, 0, 0, []byte(marker), !c.v6), 0, sockaddr(dst))
			fmt.Printf("%s-%d %s\n", c.name, typ, res(err))
		}
		unix.Close(fd)
	}
	fmt.Println("done")
	return 0
}
