package packet

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func ipv4(proto uint8, src, dst string, l4 []byte) []byte {
	b := make([]byte, 20, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(l4)))
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, l4...)
}

func ipv6(next uint8, src, dst string, rest []byte) []byte {
	b := make([]byte, 40, 40+len(rest))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(rest)))
	b[6] = next
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	return append(b, rest...)
}

func tcp(sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	b[13] = flags
	return b
}

func udp(sport, dport uint16, payload int) []byte {
	b := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+payload))
	return b
}

func icmpEcho(typ uint8, id uint16) []byte {
	b := make([]byte, 8)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	return b
}

func TestParseValid(t *testing.T) {
	hopByHop := append([]byte{ProtoTCP, 0, 1, 4, 0, 0, 0, 0}, tcp(40000, 443, TCPSyn)...)
	frag := append([]byte{ProtoUDP, 0, 0, 1, 0, 0, 0, 7}, udp(5353, 53, 4)...)
	tests := []struct {
		name string
		in   []byte
		want Packet
	}{
		{"ipv4 tcp syn", ipv4(ProtoTCP, "198.18.0.1", "198.18.0.2", tcp(40000, 80, TCPSyn)),
			Packet{Version: 4, Protocol: ProtoTCP, Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 40000, DstPort: 80, TCPFlags: TCPSyn, L4Offset: 20}},
		{"ipv4 udp", ipv4(ProtoUDP, "198.18.0.1", "198.18.0.2", udp(5000, 53, 12)),
			Packet{Version: 4, Protocol: ProtoUDP, Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 5000, DstPort: 53, L4Offset: 20}},
		{"ipv4 icmp echo", ipv4(ProtoICMP, "198.18.0.1", "198.18.0.2", icmpEcho(ICMPEchoRequest, 77)),
			Packet{Version: 4, Protocol: ProtoICMP, Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 77, DstPort: 77, ICMPType: ICMPEchoRequest, L4Offset: 20}},
		{"ipv6 tcp syn", ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2", tcp(40000, 443, TCPSyn)),
			Packet{Version: 6, Protocol: ProtoTCP, Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2"), SrcPort: 40000, DstPort: 443, TCPFlags: TCPSyn, L4Offset: 40}},
		{"ipv6 hop-by-hop then tcp", ipv6(0, "2001:db8::1", "2001:db8::2", hopByHop),
			Packet{Version: 6, Protocol: ProtoTCP, Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2"), SrcPort: 40000, DstPort: 443, TCPFlags: TCPSyn, L4Offset: 48}},
		{"ipv6 first fragment udp", ipv6(44, "2001:db8::1", "2001:db8::2", frag),
			Packet{Version: 6, Protocol: ProtoUDP, Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2"), SrcPort: 5353, DstPort: 53, L4Offset: 48}},
		{"ipv6 icmpv6 echo", ipv6(ProtoICMPv6, "2001:db8::1", "2001:db8::2", icmpEcho(ICMPv6EchoRequest, 9)),
			Packet{Version: 6, Protocol: ProtoICMPv6, Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2"), SrcPort: 9, DstPort: 9, ICMPType: ICMPv6EchoRequest, L4Offset: 40}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got != tt.want {
				t.Errorf("Parse =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

// TestParseEveryICMPType: the ruleset holds every ICMP message, so every type must
// parse (and become a Request) with its type and code, whatever follows the header.
func TestParseEveryICMPType(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for typ := 0; typ < 256; typ++ {
			body := append(icmpEcho(uint8(typ), 0x4c41), "data carried along"...)
			body[1] = 3
			var in []byte
			if v6 {
				in = ipv6(ProtoICMPv6, "fd00::1", "fd00::2", body)
			} else {
				in = ipv4(ProtoICMP, "198.18.0.1", "198.18.0.2", body)
			}
			p, err := Parse(in)
			if err != nil {
				t.Fatalf("v6=%v type %d: %v", v6, typ, err)
			}
			if p.ICMPType != uint8(typ) || p.ICMPCode != 3 {
				t.Fatalf("v6=%v type %d: parsed type %d code %d", v6, typ, p.ICMPType, p.ICMPCode)
			}
		}
	}
}

func TestParseTruncatedPayloadIsFine(t *testing.T) {
	// NFQUEUE copies only the first bytes; the IP length may claim more.
	b := ipv4(ProtoUDP, "198.18.0.1", "198.18.0.2", udp(5000, 53, 500))
	if _, err := Parse(b[:40]); err != nil {
		t.Fatalf("Parse of a packet truncated after the UDP header: %v", err)
	}
}

func TestParseMalformed(t *testing.T) {
	good := ipv4(ProtoTCP, "198.18.0.1", "198.18.0.2", tcp(40000, 80, TCPSyn))
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name  string
		in    []byte
		field string
	}{
		{"empty", nil, "version"},
		{"version 5", mut(func(b []byte) []byte { b[0] = 0x55; return b }), "version"},
		{"short ipv4", good[:19], "ipv4 header"},
		{"ihl 4", mut(func(b []byte) []byte { b[0] = 0x44; return b }), "ipv4 ihl"},
		{"ihl beyond", mut(func(b []byte) []byte { b[0] = 0x4f; return b[:40] }), "ipv4 ihl"},
		{"total < ihl", mut(func(b []byte) []byte { b[3] = 10; return b }), "ipv4 total length"},
		{"total cuts tcp", mut(func(b []byte) []byte { b[3] = 30; return b }), "tcp header"},
		{"fragment", mut(func(b []byte) []byte { b[7] = 1; return b }), "ipv4 fragment offset"},
		{"tcp doff 4", mut(func(b []byte) []byte { b[32] = 4 << 4; return b }), "tcp data offset"},
		{"tcp doff beyond", mut(func(b []byte) []byte { b[32] = 15 << 4; return b }), "tcp data offset"},
		{"tcp port 0", mut(func(b []byte) []byte { b[22], b[23] = 0, 0; return b }), "tcp port"},
		{"sctp without ports", ipv4(ProtoSCTP, "198.18.0.1", "198.18.0.2", []byte{1, 2}), "transport header"},
		{"udp length 3", func() []byte {
			b := ipv4(ProtoUDP, "198.18.0.1", "198.18.0.2", udp(1, 2, 0))
			b[25] = 3
			return b
		}(), "udp length"},
		{"short icmp", ipv4(ProtoICMP, "198.18.0.1", "198.18.0.2", []byte{8, 0, 0}), "icmp header"},
		{"icmpv6 in ipv4", ipv4(ProtoICMPv6, "198.18.0.1", "198.18.0.2", icmpEcho(ICMPv6EchoRequest, 1)), "ipv4 protocol"},
		{"short ipv6", ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2", nil)[:39], "ipv6 header"},
		{"ipv6 ext beyond", ipv6(60, "2001:db8::1", "2001:db8::2", []byte{ProtoTCP, 9, 0, 0, 0, 0, 0, 0}), "ipv6 extension header"},
		{"ipv6 hop-by-hop late", ipv6(60, "2001:db8::1", "2001:db8::2", append([]byte{0, 0, 0, 0, 0, 0, 0, 0, ProtoTCP, 0, 0, 0, 0, 0, 0, 0}, tcp(1, 2, TCPSyn)...)), "ipv6 hop-by-hop header"},
		{"ipv6 fragment later", ipv6(44, "2001:db8::1", "2001:db8::2", append([]byte{ProtoUDP, 0, 0, 8, 0, 0, 0, 1}, udp(1, 2, 0)...)), "ipv6 fragment offset"},
		{"ipv6 header loop", ipv6(60, "2001:db8::1", "2001:db8::2", func() []byte {
			var b []byte
			for range 10 {
				b = append(b, 60, 0, 0, 0, 0, 0, 0, 0)
			}
			return b
		}()), "ipv6 extension header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("Parse = %v, want a *packet.Error", err)
			}
			if perr.Field != tt.field {
				t.Errorf("error field = %q, want %q (%v)", perr.Field, tt.field, err)
			}
		})
	}
}

// FuzzParsePacket checks that no input crashes Parse and that a successful parse is
// self-consistent. Seeds live in testdata/fuzz/FuzzParsePacket and are added below.
func FuzzParsePacket(f *testing.F) {
	f.Add(ipv4(ProtoTCP, "198.18.0.1", "198.18.0.2", tcp(40000, 80, TCPSyn)))
	f.Add(ipv4(ProtoUDP, "198.18.0.1", "198.18.0.2", udp(5000, 53, 4)))
	f.Add(ipv4(ProtoICMP, "198.18.0.1", "198.18.0.2", icmpEcho(ICMPEchoRequest, 1)))
	f.Add(ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2", tcp(40000, 443, TCPSyn)))
	f.Add(ipv6(0, "2001:db8::1", "2001:db8::2", append([]byte{ProtoUDP, 0, 1, 4, 0, 0, 0, 0}, udp(1, 53, 0)...)))
	f.Add(ipv6(44, "2001:db8::1", "2001:db8::2", append([]byte{ProtoICMPv6, 0, 0, 1, 0, 0, 0, 7}, icmpEcho(ICMPv6EchoRequest, 3)...)))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("error %v is not a *packet.Error", err)
			}
			if perr.Offset < 0 || perr.Offset > len(b) {
				t.Fatalf("error offset %d outside packet of %d bytes", perr.Offset, len(b))
			}
			return
		}
		if p.Version == 4 && (!p.Src.Is4() || !p.Dst.Is4()) || p.Version == 6 && (!p.Src.Is6() || !p.Dst.Is6()) {
			t.Fatalf("version %d with addresses %v -> %v", p.Version, p.Src, p.Dst)
		}
		switch p.Protocol {
		case ProtoTCP:
			if p.L4Offset+20 > len(b) {
				t.Fatalf("tcp header at %d beyond packet of %d bytes", p.L4Offset, len(b))
			}
		case ProtoUDP, ProtoICMP, ProtoICMPv6:
			if p.L4Offset+8 > len(b) {
				t.Fatalf("transport header at %d beyond packet of %d bytes", p.L4Offset, len(b))
			}
		default:
			// Other protocols parse without ports (TestParseOtherProtocols).
			if p.L4Offset > len(b) || p.SrcPort != 0 && p.Protocol != ProtoDCCP && p.Protocol != ProtoSCTP && p.Protocol != ProtoUDPLite {
				t.Fatalf("protocol %d: transport header at %d of %d bytes, ports %d %d", p.Protocol, p.L4Offset, len(b), p.SrcPort, p.DstPort)
			}
		}
	})
}

// TestWriteSeedCorpus regenerates testdata/fuzz/FuzzParsePacket when LATCH_WRITE_SEEDS
// is set; CI only reads the corpus.
func TestWriteSeedCorpus(t *testing.T) {
	if os.Getenv("LATCH_WRITE_SEEDS") == "" {
		t.Skip("set LATCH_WRITE_SEEDS=1 to regenerate the seed corpus")
	}
	seeds := map[string][]byte{
		"ipv4-tcp-syn":   ipv4(ProtoTCP, "198.18.0.1", "198.18.0.2", tcp(40000, 80, TCPSyn)),
		"ipv4-udp":       ipv4(ProtoUDP, "198.18.0.1", "198.18.0.2", udp(5000, 53, 20)),
		"ipv4-icmp-echo": ipv4(ProtoICMP, "198.18.0.1", "198.18.0.2", icmpEcho(ICMPEchoRequest, 42)),
		"ipv4-options-tcp": func() []byte {
			b := ipv4(ProtoTCP, "198.18.0.1", "198.18.0.2", nil)
			b[0] = 0x46
			b = append(b, 1, 1, 1, 0)
			b = append(b, tcp(1234, 22, TCPSyn)...)
			binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
			return b
		}(),
		"ipv6-tcp-syn":       ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2", tcp(40000, 443, TCPSyn)),
		"ipv6-hbh-udp":       ipv6(0, "2001:db8::1", "2001:db8::2", append([]byte{ProtoUDP, 0, 1, 4, 0, 0, 0, 0}, udp(1, 53, 0)...)),
		"ipv6-routing-tcp":   ipv6(43, "2001:db8::1", "2001:db8::2", append([]byte{ProtoTCP, 0, 0, 0, 0, 0, 0, 0}, tcp(2, 3, TCPSyn)...)),
		"ipv6-frag-icmpv6":   ipv6(44, "2001:db8::1", "2001:db8::2", append([]byte{ProtoICMPv6, 0, 0, 1, 0, 0, 0, 7}, icmpEcho(ICMPv6EchoRequest, 3)...)),
		"ipv6-ah-udp":        ipv6(51, "2001:db8::1", "2001:db8::2", append([]byte{ProtoUDP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, udp(9, 10, 0)...)),
		"ipv4-truncated-tcp": ipv4(ProtoTCP, "198.18.0.1", "198.18.0.2", tcp(1, 2, TCPSyn))[:30],
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParsePacket")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		content := "go test fuzz v1\n[]byte(" + quote(b) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func quote(b []byte) string {
	s := `"`
	for _, c := range b {
		s += `\x` + string("0123456789abcdef"[c>>4]) + string("0123456789abcdef"[c&15])
	}
	return s + `"`
}

func BenchmarkParse(b *testing.B) {
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{
		{"ipv4-tcp-syn", ipv4(ProtoTCP, "198.18.0.1", "198.18.0.2", tcp(40000, 80, TCPSyn))},
		{"ipv6-hbh-tcp", ipv6(0, "2001:db8::1", "2001:db8::2", append([]byte{ProtoTCP, 0, 1, 4, 0, 0, 0, 0}, tcp(40000, 443, TCPSyn)...))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := Parse(bc.pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Protocols beyond TCP, UDP and ICMP are connections too: they parse (with ports where
// the protocol has them) so the firewall can hold and decide them instead of passing
// or dropping what it does not know.
func TestParseOtherProtocols(t *testing.T) {
	ports := []byte{0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 0}
	tests := []struct {
		name     string
		in       []byte
		proto    uint8
		src, dst uint16
	}{
		{"sctp v4", ipv4(ProtoSCTP, "198.18.0.1", "198.18.0.2", ports), ProtoSCTP, 40000, 80},
		{"udplite v6", ipv6(ProtoUDPLite, "2001:db8::1", "2001:db8::2", ports), ProtoUDPLite, 40000, 80},
		{"dccp v4", ipv4(ProtoDCCP, "198.18.0.1", "198.18.0.2", ports), ProtoDCCP, 40000, 80},
		{"gre v4", ipv4(47, "198.18.0.1", "198.18.0.2", make([]byte, 4)), 47, 0, 0},
		{"esp v6", ipv6(50, "2001:db8::1", "2001:db8::2", make([]byte, 16)), 50, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if p.Protocol != tt.proto || p.SrcPort != tt.src || p.DstPort != tt.dst {
				t.Errorf("Parse = protocol %d ports %d->%d, want %d ports %d->%d", p.Protocol, p.SrcPort, p.DstPort, tt.proto, tt.src, tt.dst)
			}
		})
	}
}

// ipv4Opts is ipv4 with the options opts (a multiple of 4 bytes) in its header.
func ipv4Opts(opts []byte, l4 []byte) []byte {
	b := ipv4(ProtoUDP, "198.18.0.1", "198.18.0.2", nil)
	b[0] = 0x40 | byte((20+len(opts))/4)
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(opts)+len(l4)))
	return append(append(b, opts...), l4...)
}

// TestParseSourceRoute: a packet whose destination is a waypoint (an IPv4 loose
// or strict source route, an IPv6 routing header with segments left) says so;
// other options do not; an option that runs past the header is an error.
func TestParseSourceRoute(t *testing.T) {
	route := func(typ byte) []byte { // one hop (198.18.2.2), pointer at it, padded with an end
		return []byte{typ, 7, 4, 198, 18, 2, 2, ipv4OptEnd}
	}
	rthdr := func(left byte) []byte { // a type 4 (segment routing) header, one segment, then UDP
		h := make([]byte, 24)
		h[0], h[1], h[2], h[3] = ProtoUDP, 2, 4, left
		return append(h, udp(1, 9002, 0)...)
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"lsrr", ipv4Opts(route(ipv4OptLSRR), udp(1, 9002, 0)), true},
		{"ssrr after a nop", ipv4Opts(append([]byte{ipv4OptNOP, ipv4OptNOP, ipv4OptNOP, ipv4OptNOP}, route(ipv4OptSSRR)...), udp(1, 9002, 0)), true},
		{"record route", ipv4Opts(route(0x07), udp(1, 9002, 0)), false},
		{"router alert", ipv4Opts([]byte{0x94, 4, 0, 0}, udp(1, 9002, 0)), false},
		{"no options", ipv4(ProtoUDP, "198.18.0.1", "198.18.0.2", udp(1, 9002, 0)), false},
		{"ipv6 routing header", ipv6(43, "fd00::1", "fd00::2", rthdr(1)), true},
		{"ipv6 routing header, no segment left", ipv6(43, "fd00::1", "fd00::2", rthdr(0)), false},
	} {
		p, err := Parse(tc.pkt)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if p.SourceRoute != tc.want || p.Protocol != ProtoUDP || p.DstPort != 9002 {
			t.Errorf("%s: %+v, want SourceRoute %t", tc.name, p, tc.want)
		}
	}
	var pe *Error
	if _, err := Parse(ipv4Opts([]byte{ipv4OptLSRR, 11, 4, 198}, udp(1, 9002, 0))); !errors.As(err, &pe) || pe.Field != "ipv4 options" {
		t.Errorf("an option longer than the header: %v, want an ipv4 options error", err)
	}
}
