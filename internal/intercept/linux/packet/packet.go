// Package packet parses the IP and transport headers of packets handed to latch by the
// kernel (NFQUEUE). It reads only what latch needs to describe a connection: addresses,
// protocol, ports, TCP flags and the ICMP type. It is strict: a packet whose headers do
// not add up is an error naming the field and offset, never a guess.
package packet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// IP protocol numbers the parser understands.
const (
	ProtoICMP    = 1
	ProtoTCP     = 6
	ProtoDCCP    = 33
	ProtoSCTP    = 132
	ProtoUDPLite = 136
	ProtoUDP     = 17
	ProtoICMPv6  = 58
)

// TCP flag bits as they appear in the 14th byte of the TCP header.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPPsh = 0x08
	TCPAck = 0x10
)

// ICMP types latch treats as the start of a flow.
const (
	ICMPEchoRequest   = 8
	ICMPv6EchoRequest = 128
)

// maxExtensionHeaders bounds the IPv6 extension header walk; real packets carry a few.
const maxExtensionHeaders = 8

// Packet is what latch needs from a packet's headers.
type Packet struct {
	Version  uint8      // 4 or 6
	Protocol uint8      // ProtoTCP, ProtoUDP, ProtoICMP or ProtoICMPv6
	Src, Dst netip.Addr // network layer addresses
	// SrcPort and DstPort are the TCP/UDP ports. For ICMP echo they are both the echo
	// identifier, which is what conntrack uses in place of ports.
	SrcPort, DstPort uint16
	TCPFlags         uint8 // TCP only
	ICMPType         uint8 // ICMP and ICMPv6 only
	ICMPCode         uint8
	// L4Offset is where the transport header starts in the parsed bytes.
	L4Offset int
	// SourceRoute: an IPv4 loose or strict source route option, or an IPv6
	// routing header with segments left. Dst is then the next waypoint, not
	// where the packet goes.
	SourceRoute bool
}

// IPv4 option types (RFC 791).
const (
	ipv4OptEnd  = 0
	ipv4OptNOP  = 1
	ipv4OptLSRR = 0x83
	ipv4OptSSRR = 0x89
)

// ipv4SourceRoute reports whether the options opts (the IPv4 header after its
// first 20 bytes) hold a source route; an error if an option's length runs out
// of them.
func ipv4SourceRoute(opts []byte) (bool, error) {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case ipv4OptEnd:
			return false, nil
		case ipv4OptNOP:
			i++
			continue
		}
		if i+2 > len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return false, errorf("ipv4 options", 20+i, "option %d runs past the header", opts[i])
		}
		if opts[i] == ipv4OptLSRR || opts[i] == ipv4OptSSRR {
			return true, nil
		}
		i += int(opts[i+1])
	}
	return false, nil
}

// Error is a malformed packet: which field at which byte offset was wrong.
type Error struct {
	Field  string
	Offset int
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("packet: %s at offset %d: %s", e.Field, e.Offset, e.Reason)
}

func errorf(field string, off int, format string, args ...any) error {
	return &Error{Field: field, Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// Parse parses an IPv4 or IPv6 packet with a TCP, UDP, ICMP or ICMPv6 header, or the
// ports of DCCP, SCTP and UDP-Lite; other transport protocols parse without ports. b may be
// truncated after the transport header (NFQUEUE copy range); everything Parse reads must
// be inside b and consistent with the length fields.
func Parse(b []byte) (Packet, error) {
	if len(b) < 1 {
		return Packet{}, errorf("version", 0, "empty packet")
	}
	switch v := b[0] >> 4; v {
	case 4:
		return parseIPv4(b)
	case 6:
		return parseIPv6(b)
	default:
		return Packet{}, errorf("version", 0, "IP version %d, want 4 or 6", v)
	}
}

func parseIPv4(b []byte) (Packet, error) {
	if len(b) < 20 {
		return Packet{}, errorf("ipv4 header", 0, "%d bytes, want at least 20", len(b))
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 {
		return Packet{}, errorf("ipv4 ihl", 0, "header length %d, want at least 20", ihl)
	}
	if ihl > len(b) {
		return Packet{}, errorf("ipv4 ihl", 0, "header length %d beyond packet of %d bytes", ihl, len(b))
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total == 0 {
		// BIG TCP GSO packets beyond 64 KiB carry 0; the captured bytes are the bound.
		total = len(b)
	}
	if total < ihl {
		return Packet{}, errorf("ipv4 total length", 2, "%d shorter than header length %d", total, ihl)
	}
	frag := binary.BigEndian.Uint16(b[6:8])
	if frag&0x8000 != 0 {
		return Packet{}, errorf("ipv4 flags", 6, "reserved flag set")
	}
	if frag&0x1fff != 0 {
		return Packet{}, errorf("ipv4 fragment offset", 6, "non-first fragment (offset %d) has no transport header", frag&0x1fff*8)
	}
	p := Packet{
		Version:  4,
		Protocol: b[9],
		Src:      netip.AddrFrom4([4]byte(b[12:16])),
		Dst:      netip.AddrFrom4([4]byte(b[16:20])),
	}
	var err error
	if p.SourceRoute, err = ipv4SourceRoute(b[20:ihl]); err != nil {
		return Packet{}, err
	}
	// The transport header must lie within both the captured bytes and the length the
	// IP header claims.
	end := min(total, len(b))
	if err := parseL4(&p, b[:end], ihl); err != nil {
		return Packet{}, err
	}
	if p.Protocol == ProtoICMPv6 {
		return Packet{}, errorf("ipv4 protocol", 9, "ICMPv6 inside IPv4")
	}
	return p, nil
}

func parseIPv6(b []byte) (Packet, error) {
	if len(b) < 40 {
		return Packet{}, errorf("ipv6 header", 0, "%d bytes, want at least 40", len(b))
	}
	payload := int(binary.BigEndian.Uint16(b[4:6]))
	p := Packet{
		Version: 6,
		Src:     netip.AddrFrom16([16]byte(b[8:24])),
		Dst:     netip.AddrFrom16([16]byte(b[24:40])),
	}
	// A payload length of 0 means a jumbogram (hop-by-hop option) or a GSO packet the
	// kernel has not yet split; the captured bytes are then the only bound.
	end := len(b)
	if payload != 0 {
		end = min(40+payload, len(b))
	}
	b = b[:end]
	next := b[6]
	off := 40
	for i := 0; ; i++ {
		switch next {
		case ProtoTCP, ProtoUDP, ProtoICMPv6:
			p.Protocol = next
			return p, parseL4(&p, b, off)
		case ProtoICMP:
			return Packet{}, errorf("ipv6 next header", off, "ICMPv4 inside IPv6")
		}
		if i >= maxExtensionHeaders {
			return Packet{}, errorf("ipv6 extension header", off, "more than %d extension headers", maxExtensionHeaders)
		}
		var hdrLen int
		switch next {
		case 0, 43, 60, 135, 139, 140: // hop-by-hop, routing, destination options, mobility, HIP, shim6
			if off+2 > len(b) {
				return Packet{}, errorf("ipv6 extension header", off, "truncated (type %d)", next)
			}
			hdrLen = (int(b[off+1]) + 1) * 8
			if next == 43 && off+4 <= len(b) && b[off+3] != 0 {
				p.SourceRoute = true // segments left
			}
			if next == 0 && off != 40 {
				return Packet{}, errorf("ipv6 hop-by-hop header", off, "not first after the IPv6 header")
			}
		case 44: // fragment
			hdrLen = 8
			if off+8 > len(b) {
				return Packet{}, errorf("ipv6 fragment header", off, "truncated")
			}
			if fo := binary.BigEndian.Uint16(b[off+2:off+4]) >> 3; fo != 0 {
				return Packet{}, errorf("ipv6 fragment offset", off+2, "non-first fragment (offset %d) has no transport header", int(fo)*8)
			}
		case 51: // authentication header
			if off+2 > len(b) {
				return Packet{}, errorf("ipv6 authentication header", off, "truncated")
			}
			hdrLen = (int(b[off+1]) + 2) * 4
		default:
			// Not an extension header: the transport protocol.
			p.Protocol = next
			return p, parseL4(&p, b, off)
		}
		if off+hdrLen > len(b) {
			return Packet{}, errorf("ipv6 extension header", off, "length %d beyond packet of %d bytes (type %d)", hdrLen, len(b), next)
		}
		next = b[off]
		off += hdrLen
	}
}

// parseL4 parses the transport header of p.Protocol starting at off.
func parseL4(p *Packet, b []byte, off int) error {
	p.L4Offset = off
	rest := len(b) - off
	switch p.Protocol {
	case ProtoTCP:
		if rest < 20 {
			return errorf("tcp header", off, "%d bytes, want at least 20", rest)
		}
		doff := int(b[off+12]>>4) * 4
		if doff < 20 {
			return errorf("tcp data offset", off+12, "header length %d, want at least 20", doff)
		}
		if doff > rest {
			return errorf("tcp data offset", off+12, "header length %d beyond the %d bytes left", doff, rest)
		}
		p.SrcPort = binary.BigEndian.Uint16(b[off:])
		p.DstPort = binary.BigEndian.Uint16(b[off+2:])
		p.TCPFlags = b[off+13]
		if p.SrcPort == 0 || p.DstPort == 0 {
			return errorf("tcp port", off, "port 0")
		}
	case ProtoUDP:
		if rest < 8 {
			return errorf("udp header", off, "%d bytes, want 8", rest)
		}
		if l := int(binary.BigEndian.Uint16(b[off+4:])); l != 0 && l < 8 {
			// 0 is legal for GSO super-packets and IPv6 jumbograms.
			return errorf("udp length", off+4, "%d shorter than the header", l)
		}
		p.SrcPort = binary.BigEndian.Uint16(b[off:])
		p.DstPort = binary.BigEndian.Uint16(b[off+2:])
		if p.DstPort == 0 {
			return errorf("udp destination port", off+2, "port 0")
		}
	case ProtoICMP, ProtoICMPv6:
		if rest < 8 {
			return errorf("icmp header", off, "%d bytes, want 8", rest)
		}
		p.ICMPType = b[off]
		p.ICMPCode = b[off+1]
		if isEcho(p.Protocol, p.ICMPType) {
			id := binary.BigEndian.Uint16(b[off+4:])
			p.SrcPort, p.DstPort = id, id
		}
	case ProtoDCCP, ProtoSCTP, ProtoUDPLite:
		// Their headers start with the two ports, like UDP's.
		if rest < 4 {
			return errorf("transport header", off, "%d bytes, want at least 4 (protocol %d ports)", rest, p.Protocol)
		}
		p.SrcPort = binary.BigEndian.Uint16(b[off:])
		p.DstPort = binary.BigEndian.Uint16(b[off+2:])
	default:
		// Any other protocol (GRE, ESP, ...) is still a connection to decide, without
		// ports: a firewall that passed what it cannot parse would leak.
	}
	return nil
}

func isEcho(proto, typ uint8) bool {
	switch proto {
	case ProtoICMP:
		return typ == ICMPEchoRequest || typ == 0
	case ProtoICMPv6:
		return typ == ICMPv6EchoRequest || typ == 129
	}
	return false
}
