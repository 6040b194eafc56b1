package dnsname

import (
	"encoding/binary"
	"net/netip"
	"strings"
)

// Builders for DNS messages and the packets that carry them, shared by the tests and
// the responder of the kernel test.

type testRR struct {
	name string
	typ  uint16
	ttl  uint32
	data []byte
}

func encodeName(name string) []byte {
	var b []byte
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if l == "" {
			continue
		}
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0)
}

func rrA(name, addr string, ttl uint32) testRR {
	a := netip.MustParseAddr(addr)
	if a.Is4() {
		b := a.As4()
		return testRR{name, typeA, ttl, b[:]}
	}
	b := a.As16()
	return testRR{name, typeAAAA, ttl, b[:]}
}

func rrCNAME(name, target string, ttl uint32) testRR {
	return testRR{name, typeCNAME, ttl, encodeName(target)}
}

// question returns the encoded question section for name and type.
func question(name string, qtype uint16) []byte {
	q := encodeName(name)
	q = binary.BigEndian.AppendUint16(q, qtype)
	return binary.BigEndian.AppendUint16(q, classIN)
}

// buildQuery returns a standard query (RD) for name and type.
func buildQuery(id uint16, name string, qtype uint16) []byte {
	m := binary.BigEndian.AppendUint16(nil, id)
	m = append(m, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0)
	return append(m, question(name, qtype)...)
}

// buildResponse returns a response with id, rcode, the raw question q and answers,
// without compression.
func buildResponse(id uint16, rcode uint16, q []byte, answers []testRR) []byte {
	m := binary.BigEndian.AppendUint16(nil, id)
	m = binary.BigEndian.AppendUint16(m, 0x8180|rcode) // QR, RD, RA
	m = binary.BigEndian.AppendUint16(m, 1)
	m = binary.BigEndian.AppendUint16(m, uint16(len(answers)))
	m = binary.BigEndian.AppendUint16(m, 0)
	m = binary.BigEndian.AppendUint16(m, 0)
	m = append(m, q...)
	for _, r := range answers {
		m = append(m, encodeName(r.name)...)
		m = binary.BigEndian.AppendUint16(m, r.typ)
		m = binary.BigEndian.AppendUint16(m, classIN)
		m = binary.BigEndian.AppendUint32(m, r.ttl)
		m = binary.BigEndian.AppendUint16(m, uint16(len(r.data)))
		m = append(m, r.data...)
	}
	return m
}

// udpPacket wraps payload in UDP and IPv4 or IPv6 (checksums left zero: the parser
// does not check them, the kernel already has).
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	udp := binary.BigEndian.AppendUint16(nil, src.Port())
	udp = binary.BigEndian.AppendUint16(udp, dst.Port())
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(payload)))
	udp = binary.BigEndian.AppendUint16(udp, 0)
	udp = append(udp, payload...)
	if src.Addr().Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(udp)))
		h[8] = 64
		h[9] = 17
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(h, udp...)
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(udp)))
	h[6] = 17
	h[7] = 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, udp...)
}
