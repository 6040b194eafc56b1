package linux

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Review 36 (issue 9's early returns): the same crafted TCP packets, sent
// through the ruleset with the early returns and through the one before them
// (withoutEarlyReturns, which gives main's text: checked by hand against
// 5f3da0c's iptablesRules for the daemon's defaults), must meet the same
// fate: delivered to the peer, reset by LATCH-OUT's REJECT, or neither
// (queued with no reader, or dropped). The packets are the ones the early
// returns' conditions single out: every TCP flags combination the "not a
// SYN" tests could get wrong (SYN|FIN, SYN|RST, SYN|ACK, no flags, ...),
// every packet mark a socket (SO_MARK) or the host's mangle rules may give,
// latch's values and others that carry its bits (a host mark such as
// 0x6d6f6c65, whose bits under MarkMask are MarkFastFlow's), IPv4 options or
// none, tracked (with and without the conntrack mark MarkAllow, which a
// host's CONNMARK sets here) and untracked (the raw table's notrack by a fast
// mark; port 53 stays tracked), outbound from a raw socket with SO_MARK and
// inbound to local sockets with fast marks (LATCH-RAW-SK), with host marks
// set in mangle PREROUTING after it.

// review36Out is the IPv4 packet of a TCP segment from src to dst with flags,
// with a 4-byte option field (NOPs) when opts.
func review36Packet(src, dst netip.AddrPort, flags uint8, opts bool) []byte {
	seg := rawSegment(src, dst, 1000, 1, flags)
	ihl := 5
	if opts {
		ihl = 6
	}
	h := make([]byte, ihl*4)
	h[0] = 0x40 | byte(ihl)
	binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(seg)))
	h[8], h[9] = 64, unix.IPPROTO_TCP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	if opts {
		copy(h[20:], []byte{1, 1, 1, 0})
	}
	return append(h, seg...)
}

// review36Sink collects, in namespace ns, the source ports of the TCP
// segments from addr to dst that a socket of kind (a raw TCP socket: what
// the input hook delivered; AF_PACKET on lo: what went out by lo) sees.
type review36Sink struct {
	fd     int
	packet bool
}

func newReview36Sink(t *testing.T, ns string, packet bool) *review36Sink {
	t.Helper()
	s := &review36Sink{packet: packet}
	if err := inNS(ns, func() error {
		var err error
		if packet {
			s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons36(unix.ETH_P_IP)))
			if err != nil {
				return err
			}
			return unix.Bind(s.fd, &unix.SockaddrLinklayer{Protocol: htons36(unix.ETH_P_IP), Ifindex: 1})
		}
		s.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	}); err != nil {
		t.Fatalf("sink in %s: %v", ns, err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	// Room for every case's segment: read only after the last is sent.
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
		t.Fatalf("SO_RCVBUFFORCE: %v", err)
	}
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return s
}

func htons36(v uint16) uint16 { return v<<8 | v>>8 }

// drain returns the source ports (destination ports with rev: a reset's) of
// the segments from src seen until 400ms pass without one.
func (s *review36Sink) drain(src netip.Addr, rev bool) map[uint16]bool {
	got := map[uint16]bool{}
	buf := make([]byte, 2000)
	quiet := time.Now().Add(400 * time.Millisecond)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(quiet) && time.Now().Before(end); {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil || n < 40 {
			continue
		}
		p := buf[:n]
		if p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP || netip.AddrFrom4([4]byte(p[12:16])) != src {
			continue
		}
		seg := p[int(p[0]&0xf)*4:]
		if len(seg) < 20 {
			continue
		}
		quiet = time.Now().Add(400 * time.Millisecond)
		if rev {
			if seg[13]&tcpRST != 0 {
				got[binary.BigEndian.Uint16(seg[2:])] = true
			}
			continue
		}
		got[binary.BigEndian.Uint16(seg[0:])] = true
	}
	return got
}

// review36Flags are the flag combinations the early returns' tests see.
var review36Flags = []uint8{tcpSYN, tcpSYN | tcpACK, tcpACK, tcpSYN | tcpFIN, tcpSYN | tcpRST, 0, tcpFIN | tcpACK, tcpRST, tcpPSH | tcpACK, tcpSYN | tcpFIN | tcpACK, tcpSYN | tcpURG}

// review36Install puts spec's IPv4 iptables ruleset (or the one before the
// early returns) into ns with restore (iptables-nft-restore,
// iptables-legacy-restore), and host rules in mangle: a conntrack mark
// MarkAllow for source ports 40000-41999 (out: this host's, in: the peer's),
// a packet mark for the peer's source ports 42000-43999 (MarkFastFlow's bits
// with others) and 44000-45999 (MarkReject).
func review36Install(t *testing.T, ns, restore string, spec ruleSpec, early bool) {
	t.Helper()
	var r string
	if restore == "nft" {
		review36Nft(t, ns, spec, early)
		restore = "iptables-nft-restore"
	} else {
		r = spec.iptablesRules(false, nil, map[string]bool{})
		if !early {
			r = withoutEarlyReturns(spec, false, r)
		}
	}
	r += "*mangle\n" +
		"-A OUTPUT -p tcp -m tcp --sport 40000:41999 -j CONNMARK --set-xmark 0x10000000/0x70000000\n" +
		"-A PREROUTING -p tcp -m tcp --sport 40000:41999 -j CONNMARK --set-xmark 0x10000000/0x70000000\n" +
		"-A PREROUTING -p tcp -m tcp --sport 42000:43999 -j MARK --set-xmark 0x6d6f6c65/0xffffffff\n" +
		"-A PREROUTING -p tcp -m tcp --sport 44000:45999 -j MARK --set-xmark 0x20000000/0x70000000\n" +
		"COMMIT\n"
	c := exec.Command("ip", "netns", "exec", ns, restore, "-w", "--noflush")
	c.Stdin = strings.NewReader(r)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s\n%s", restore, err, out, r)
	}
}

type review36Case struct {
	name string
	port uint16 // source port, the case's key
}

// review36Run sends every case through a fresh pair of namespaces with the
// ruleset (early or not) and returns each case's fate.
func review36Run(t *testing.T, restore string, spec ruleSpec, early bool) (map[string]string, int) {
	tp := newTopo(t)
	review36Install(t, tp.a, restore, spec, early)
	a, b := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
	fate := map[string]string{}
	var cases []review36Case

	// Inbound: local sockets in A (listeners on addrA) with these marks;
	// one port with no socket.
	inMarks := []uint32{0, MarkFastAllow, MarkFastFlow, MarkFastRedecide, 0x6d6f6c65, 1, 0x30000001}
	for i, m := range inMarks {
		port := 8001 + i
		if err := inNS(tp.a, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			t.Cleanup(func() { unix.Close(fd) })
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(m)); err != nil {
				return err
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: a.As4(), Port: port}); err != nil {
				return err
			}
			return unix.Listen(fd, 16)
		}); err != nil {
			t.Fatalf("listener %d mark %#x: %v", port, m, err)
		}
	}
	inSink := newReview36Sink(t, tp.a, false)
	var peer int
	if err := inNS(tp.b, func() error {
		var err error
		peer, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(peer)
	n := map[uint16]int{40000: 0, 42000: 0, 44000: 0, 50000: 0}
	for _, base := range []uint16{50000, 40000, 42000, 44000} {
		for i := range len(inMarks) + 1 {
			for _, f := range review36Flags {
				sport := base + uint16(n[base])
				n[base]++
				name := fmt.Sprintf("in base %d listener %d flags %#x", base, 8001+i, f)
				cases = append(cases, review36Case{name, sport})
				pkt := review36Packet(netip.AddrPortFrom(b, sport), netip.AddrPortFrom(a, uint16(8001+i)), f, false)
				if err := unix.Sendto(peer, pkt, 0, &unix.SockaddrInet4{Addr: a.As4()}); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
		}
	}
	got := inSink.drain(b, false)
	// The packets to the fast sockets (8002-8004) were kept out of
	// conntrack (LATCH-RAW-SK): else the early returns' untracked cases
	// were not what this test sent.
	if out, err := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-p", "tcp", "-s", addrB).CombinedOutput(); err != nil {
		t.Fatalf("conntrack -L: %v: %s", err, out)
	} else {
		for _, l := range strings.Split(string(out), "\n") {
			for _, p := range []string{"dport=8002 ", "dport=8003 ", "dport=8004 "} {
				if strings.Contains(l, "src="+addrB+" ") && strings.Contains(l, p) {
					t.Errorf("a packet to a fast socket is tracked: %s", l)
				}
			}
		}
	}
	for _, c := range cases {
		fate[c.name] = map[bool]string{true: "delivered", false: "stopped"}[got[c.port]]
	}

	// Outbound: a raw socket in A with SO_MARK, to B's ports 80 and 53.
	cases = cases[:0]
	outSink := newReview36Sink(t, tp.b, false)
	resets := newReview36Sink(t, tp.a, true)
	var raw int
	if err := inNS(tp.a, func() error {
		var err error
		raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	marks := []uint32{0, MarkAllow, MarkReject, MarkFastAllow, OwnMark, MarkFastRedecide, MarkFastFlow, MarkRedecideReply, 0x6d6f6c65, 0x30000001, 0x0d6f6c65}
	n = map[uint16]int{40000: 0, 50000: 0}
	sendErr := map[uint16]string{}
	for _, base := range []uint16{50000, 40000} {
		for _, m := range marks {
			if err := unix.SetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_MARK, int(m)); err != nil {
				t.Fatal(err)
			}
			for _, dport := range []uint16{80, 53} {
				for _, opts := range []bool{false, true} {
					for _, f := range review36Flags {
						sport := base + uint16(n[base])
						n[base]++
						name := fmt.Sprintf("out base %d mark %#x dport %d options %v flags %#x", base, m, dport, opts, f)
						cases = append(cases, review36Case{name, sport})
						pkt := review36Packet(netip.AddrPortFrom(a, sport), netip.AddrPortFrom(b, dport), f, opts)
						// A drop or queue without a reader in the output
						// hook fails the send (EPERM): part of the fate.
						if err := unix.Sendto(raw, pkt, 0, &unix.SockaddrInet4{Addr: b.As4()}); err != nil {
							sendErr[sport] = err.Error()
						}
					}
				}
			}
		}
	}
	delivered := outSink.drain(a, false)
	reset := resets.drain(b, true)
	for _, c := range cases {
		f := "stopped"
		switch {
		case delivered[c.port] && reset[c.port]:
			f = "delivered+reset"
		case delivered[c.port]:
			f = "delivered"
		case reset[c.port]:
			f = "reset"
		}
		if e := sendErr[c.port]; e != "" {
			f += ", send: " + e
		}
		fate[c.name] = f
	}

	for k, v := range review36Lo(t, tp, raw) {
		fate[k] = v
	}
	for k, v := range review36CtMarks(t, tp.a) {
		fate[k] = v
	}
	return fate, len(delivered) + len(got)
}

// TestReview36EarlyReturnsSameFate: the ruleset with the early returns and
// the one before them give every crafted packet the same fate, with
// iptables-nft and with iptables-legacy.
func TestReview36EarlyReturnsSameFate(t *testing.T) {
	base := ruleSpec{queue: testQueue, exemptLoopback: true, dnsLogGroup: DefaultDNSLogGroup,
		fastTCP: true, notrack: true, inbound: true}
	for _, restore := range []string{"iptables-nft-restore", "iptables-legacy-restore", "nft"} {
		// The lease (a stand-in program, see pinLease): none, held, and
		// released (a dead daemon's): the fast SYN's early return reads it
		// first. iptables only: the nft ruleset runs it from a rule the
		// daemon adds over netlink.
		for _, lease := range []string{"", "held", "released"} {
			if lease != "" && restore == "nft" {
				continue
			}
			t.Run(strings.TrimSuffix(restore+"-lease-"+lease, "-lease-"), func(t *testing.T) {
				if _, err := exec.LookPath(restore); err != nil {
					t.Skipf("needs %s", restore)
				}
				spec := base
				if lease != "" {
					path, release := pinLease(t)
					spec.lease = path
					if lease == "released" {
						release()
					}
				}
				with, nw := review36Run(t, restore, spec, true)
				without, nwo := review36Run(t, restore, spec, false)
				if nw == 0 || nwo == 0 {
					t.Fatalf("nothing delivered (%d with, %d without): the test sees nothing", nw, nwo)
				}
				var diffs []string
				for name, f := range without {
					if with[name] != f {
						diffs = append(diffs, fmt.Sprintf("%s: %s before the early returns, %s with them", name, f, with[name]))
					}
				}
				sort.Strings(diffs)
				for _, d := range diffs {
					// The conntrack marks are logged, not failed: one entry
					// in several hundred differs now and then with the same
					// ruleset on both sides (a race with the listeners'
					// answers over lo this test does not pin down).
					if strings.HasPrefix(d, "conntrack ") {
						t.Log(d)
						continue
					}
					t.Error(d)
				}
				count := map[string]int{}
				for _, f := range with {
					count[f]++
				}
				t.Logf("%d cases, fates with the early returns: %v", len(with), count)
			})
		}
	}
}

// review36Ext is an IPv6 extension header chain before a TCP segment: the
// header numbers in order.
type review36Ext []uint8

// review36Packet6 is the IPv6 packet of a TCP segment from src to dst with
// flags behind the extension headers exts (8 bytes each: hop-by-hop and
// destination options padded with PadN, a routing header of type 0 with no
// segments left, an atomic fragment header).
func review36Packet6(src, dst netip.AddrPort, flags uint8, exts review36Ext) []byte {
	seg := rawSegment(src, dst, 1000, 1, flags)
	var chain []byte
	for i, e := range exts {
		next := uint8(unix.IPPROTO_TCP)
		if i+1 < len(exts) {
			next = exts[i+1]
		}
		h := make([]byte, 8)
		h[0] = next
		switch e {
		case unix.IPPROTO_HOPOPTS, unix.IPPROTO_DSTOPTS:
			h[2], h[3] = 1, 4 // PadN over the other 4
		case unix.IPPROTO_ROUTING:
			h[2], h[3] = 0, 0 // type 0, no segments left
		case unix.IPPROTO_FRAGMENT:
			h[1] = 0
			binary.BigEndian.PutUint32(h[4:], 0x3600)
		}
		chain = append(chain, h...)
	}
	first := uint8(unix.IPPROTO_TCP)
	if len(exts) > 0 {
		first = exts[0]
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(chain)+len(seg)))
	h[6], h[7] = first, 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, chain...), seg...)
}

// review36Run6 is review36Run's outbound half over IPv6, with extension
// headers: ip6tables' early returns take a packet only without a routing
// header (xt_ipv6header ! --header ipv6-route --soft), wherever it is in
// the chain.
func review36Run6(t *testing.T, restore string, spec ruleSpec, early bool) (map[string]string, int) {
	tp := newTopo(t)
	for _, args := range [][]string{
		{"-n", tp.a, "addr", "add", addrA6 + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "add", addrB6 + "/64", "dev", tp.vethB, "nodad"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	r := spec.iptablesRules(true, nil, map[string]bool{})
	if !early {
		r = withoutEarlyReturns(spec, true, r)
	}
	if restore == "nft" {
		review36Nft(t, tp.a, spec, early)
		r, restore = "", "iptables-nft-restore"
	}
	r += "*mangle\n" +
		"-A OUTPUT -p tcp -m tcp --sport 40000:41999 -j CONNMARK --set-xmark 0x10000000/0x70000000\n" +
		"COMMIT\n"
	c := exec.Command("ip", "netns", "exec", tp.a, strings.Replace(restore, "iptables", "ip6tables", 1), "-w", "--noflush")
	c.Stdin = strings.NewReader(r)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s\n%s", restore, err, out, r)
	}
	a, b := netip.MustParseAddr(addrA6), netip.MustParseAddr(addrB6)
	var sink, raw int
	if err := inNS(tp.b, func() error {
		var err error
		sink, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sink)
	unix.SetsockoptInt(sink, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(sink, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := inNS(tp.a, func() error {
		var err error
		raw, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	type cs struct {
		name string
		port uint16
	}
	var cases []cs
	sendErr := map[uint16]string{}
	exts := []review36Ext{nil, {unix.IPPROTO_ROUTING}, {unix.IPPROTO_HOPOPTS}, {unix.IPPROTO_DSTOPTS},
		{unix.IPPROTO_HOPOPTS, unix.IPPROTO_ROUTING}, {unix.IPPROTO_DSTOPTS, unix.IPPROTO_ROUTING},
		{unix.IPPROTO_FRAGMENT}, {unix.IPPROTO_ROUTING, unix.IPPROTO_FRAGMENT}, {unix.IPPROTO_HOPOPTS, unix.IPPROTO_DSTOPTS, unix.IPPROTO_ROUTING}}
	marks := []uint32{0, MarkAllow, MarkReject, MarkFastAllow, MarkFastRedecide, MarkFastFlow, 0x6d6f6c65}
	flags := []uint8{tcpSYN, tcpSYN | tcpACK, tcpACK, tcpSYN | tcpFIN, tcpSYN | tcpRST, 0, tcpRST}
	n := map[uint16]int{}
	for _, base := range []uint16{50000, 40000} {
		for _, m := range marks {
			if err := unix.SetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_MARK, int(m)); err != nil {
				t.Fatal(err)
			}
			for _, dport := range []uint16{80, 53} {
				for _, e := range exts {
					for _, f := range flags {
						sport := base + uint16(n[base])
						n[base]++
						name := fmt.Sprintf("v6 out base %d mark %#x dport %d exts %v flags %#x", base, m, dport, []uint8(e), f)
						cases = append(cases, cs{name, sport})
						pkt := review36Packet6(netip.AddrPortFrom(a, sport), netip.AddrPortFrom(b, dport), f, e)
						if err := unix.Sendto(raw, pkt, 0, &unix.SockaddrInet6{Addr: b.As16()}); err != nil {
							sendErr[sport] = err.Error()
						}
					}
				}
			}
		}
	}
	// IPv6 raw sockets read from the transport header: the segment's
	// source port is what arrived (from A: only A sends here).
	got := map[uint16]bool{}
	buf := make([]byte, 2000)
	quiet := time.Now().Add(400 * time.Millisecond)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(quiet) && time.Now().Before(end); {
		k, from, err := unix.Recvfrom(sink, buf, 0)
		if err != nil || k < 20 {
			continue
		}
		if sa, ok := from.(*unix.SockaddrInet6); !ok || netip.AddrFrom16(sa.Addr) != a {
			continue
		}
		quiet = time.Now().Add(400 * time.Millisecond)
		got[binary.BigEndian.Uint16(buf[0:])] = true
	}
	fate := map[string]string{}
	for _, c := range cases {
		f := map[bool]string{true: "delivered", false: "stopped"}[got[c.port]]
		if e := sendErr[c.port]; e != "" {
			f += ", send: " + e
		}
		fate[c.name] = f
	}
	return fate, len(got)
}

// TestReview36EarlyReturnsSameFateIPv6: the same over IPv6 with extension
// headers before the segment (ip6tables-nft, -legacy).
func TestReview36EarlyReturnsSameFateIPv6(t *testing.T) {
	spec := ruleSpec{queue: testQueue, exemptLoopback: true, dnsLogGroup: DefaultDNSLogGroup,
		fastTCP: true, notrack: true, inbound: true}
	for _, restore := range []string{"iptables-nft-restore", "iptables-legacy-restore", "nft"} {
		t.Run(restore, func(t *testing.T) {
			if _, err := exec.LookPath(restore); err != nil {
				t.Skipf("needs %s", restore)
			}
			with, nw := review36Run6(t, restore, spec, true)
			without, nwo := review36Run6(t, restore, spec, false)
			if nw == 0 || nwo == 0 {
				t.Fatalf("nothing delivered (%d with, %d without): the test sees nothing", nw, nwo)
			}
			var diffs []string
			for name, f := range without {
				if with[name] != f {
					diffs = append(diffs, fmt.Sprintf("%s: %s before the early returns, %s with them", name, f, with[name]))
				}
			}
			sort.Strings(diffs)
			for _, d := range diffs {
				// The conntrack marks are logged, not failed: one entry
				// in several hundred differs now and then with the same
				// ruleset on both sides (a race with the listeners'
				// answers over lo this test does not pin down).
				if strings.HasPrefix(d, "conntrack ") {
					t.Log(d)
					continue
				}
				t.Error(d)
			}
			count := map[string]int{}
			for _, f := range with {
				count[f]++
			}
			t.Logf("%d cases, fates with the early returns: %v", len(with), count)
		})
	}
}

// review36Lo sends over lo (the loopback exemption, the forged-flow mark),
// from raw (a raw socket in tp.a), from this host's address and from one
// that is not (a forged flow) to the listeners on A, each case's packet and
// then a plain ACK without a mark on the same tuple (sequence 2000), whose
// fate shows what the first left in the flow's conntrack mark. It returns
// each packet's fate.
func review36Lo(t *testing.T, tp *topo, raw int) map[string]string {
	a, forged := netip.MustParseAddr(addrA), netip.MustParseAddr("198.18.0.77")
	sink := newReview36Sink(t, tp.a, false)
	type loCase struct {
		name     string
		from, to netip.AddrPort
	}
	var los []loCase
	sendErr := map[string]string{}
	send := func(name string, from, to netip.AddrPort, seq uint32, f uint8) {
		pkt := review36Packet(from, to, f, false)
		seg := pkt[20:]
		binary.BigEndian.PutUint32(seg[4:], seq)
		// Checksum again over the new sequence number.
		fixed := rawSegment(from, to, seq, 1, f)
		copy(seg, fixed)
		if err := unix.Sendto(raw, pkt, 0, &unix.SockaddrInet4{Addr: to.Addr().As4()}); err != nil {
			sendErr[name] = err.Error()
		}
	}
	n := map[uint16]int{}
	for _, base := range []uint16{52000, 40500} {
		for _, src := range []netip.Addr{a, forged} {
			for _, m := range []uint32{0, MarkAllow, MarkReject, MarkFastAllow, MarkFastFlow, MarkFastRedecide, 0x6d6f6c65} {
				if err := unix.SetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_MARK, int(m)); err != nil {
					t.Fatal(err)
				}
				for _, dport := range []uint16{8001, 8003} {
					for _, f := range review36Flags {
						sport := base + uint16(n[base])
						n[base]++
						c := loCase{fmt.Sprintf("lo base %d from %s mark %#x dport %d flags %#x", base, src, m, dport, f),
							netip.AddrPortFrom(src, sport), netip.AddrPortFrom(a, dport)}
						los = append(los, c)
						send(c.name, c.from, c.to, 1000, f)
					}
				}
			}
		}
	}
	if err := unix.SetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_MARK, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range los {
		send(c.name+" then ACK", c.from, c.to, 2000, tcpACK)
	}
	// What the input hook delivered: by source, port and sequence number.
	got := map[string]bool{}
	buf := make([]byte, 2000)
	quiet := time.Now().Add(400 * time.Millisecond)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(quiet) && time.Now().Before(end); {
		k, _, err := unix.Recvfrom(sink.fd, buf, 0)
		if err != nil || k < 40 || buf[9] != unix.IPPROTO_TCP {
			continue
		}
		seg := buf[int(buf[0]&0xf)*4 : k]
		quiet = time.Now().Add(400 * time.Millisecond)
		got[fmt.Sprintf("%s:%d:%d", netip.AddrFrom4([4]byte(buf[12:16])), binary.BigEndian.Uint16(seg[0:]), binary.BigEndian.Uint32(seg[4:]))] = true
	}
	fate := map[string]string{}
	for _, c := range los {
		for _, p := range []struct {
			suffix string
			seq    uint32
		}{{"", 1000}, {" then ACK", 2000}} {
			f := map[bool]string{true: "delivered", false: "stopped"}[got[fmt.Sprintf("%s:%d:%d", c.from.Addr(), c.from.Port(), p.seq)]]
			if e := sendErr[c.name+p.suffix]; e != "" {
				f += ", send: " + e
			}
			fate[c.name+p.suffix] = f
		}
	}
	return fate
}

// review36CtMarks returns the conntrack mark of every TCP entry in ns, by
// its original tuple (but those to port 8003).
func review36CtMarks(t *testing.T, ns string) map[string]string {
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp").CombinedOutput()
	if err != nil {
		t.Fatalf("conntrack -L: %v: %s", err, out)
	}
	marks := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		var tuple []string
		mark := "mark=0"
		for _, w := range f {
			switch {
			case len(tuple) < 4 && (strings.HasPrefix(w, "src=") || strings.HasPrefix(w, "dst=") || strings.HasPrefix(w, "sport=") || strings.HasPrefix(w, "dport=")):
				tuple = append(tuple, w)
			case strings.HasPrefix(w, "mark="):
				mark = w
			}
		}
		// Not the flows to the listener with MarkFastFlow: its answers
		// (untracked, to a local port without a socket or a host that
		// is not there) race the snapshot, and one such entry in a few
		// hundred shows mark 0 with the same ruleset twice.
		// Nor the entries the listeners' answers open, once the case's
		// entry is gone: only those of the cases' packets (their ports).
		if len(tuple) == 4 && tuple[3] != "dport=8003" && tuple[2] >= "sport=40000" && len(tuple[2]) == len("sport=40000") {
			marks["conntrack "+strings.Join(tuple, " ")] = mark
		}
	}
	if len(marks) == 0 {
		t.Fatalf("no conntrack entries in %s: %s", ns, out)
	}
	return marks
}

// review36Nft puts spec's nftables ruleset into ns, its queue rules dropping
// instead (this kernel has no nft_queue; a queue without a reader drops too),
// without the early returns (nftEarlyReturns, nftEarlyReturnsIn: the
// ruleset before them, which had nothing else of issue 9's) unless early.
func review36Nft(t *testing.T, ns string, spec ruleSpec, early bool) {
	t.Helper()
	rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop")
	if !early {
		n := 0
		for _, chain := range []struct {
			name  string
			rules []string
		}{{"output", spec.nftEarlyReturns()}, {"input", spec.nftEarlyReturnsIn()}} {
			for _, e := range chain.rules {
				l := "add rule inet latch " + chain.name + " " + e + "\n"
				if !strings.Contains(rules, l) {
					t.Fatalf("no %q in the nft ruleset", l)
				}
				rules = strings.Replace(rules, l, "", 1)
				n++
			}
		}
		if n == 0 {
			t.Fatal("no early returns to take out")
		}
	}
	c := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, rules)
	}
}
