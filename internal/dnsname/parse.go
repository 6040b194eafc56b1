package dnsname

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
)

// ParseError says what is wrong with a DNS response and where.
type ParseError struct {
	Offset int    // byte offset in the input (the IP packet for ParsePacket, the DNS message for ParseMessage)
	Msg    string // what is wrong there
}

// Error returns e.g. "dns: offset 12: name: label length 70 over 63".
func (e *ParseError) Error() string { return fmt.Sprintf("dns: offset %d: %s", e.Offset, e.Msg) }

// Answer is one address a DNS response gave, labelled with the name the program asked
// for: a CNAME chain is followed back to the question name.
type Answer struct {
	Addr netip.Addr
	Name string // the question name: lower case, no trailing dot
	TTL  uint32 // the smallest TTL along the chain, in seconds
}

// Question is the question of a DNS message.
type Question struct {
	// Name is the name as it is on the wire: letter case kept (resolvers randomise it,
	// "0x20", and a response must echo it exactly), labels joined by dots, no trailing
	// dot ("" for the root).
	Name  string
	Type  uint16
	Class uint16
}

// Query is a DNS query: the question a client asked, with its transaction id.
type Query struct {
	// Client and Server are the packet's source and destination (ParseQueryPacket);
	// zero from ParseQuery.
	Client, Server netip.AddrPort
	ID             uint16
	Question       Question
}

// Response is what latch learns from one DNS response.
type Response struct {
	// Server and Client are the packet's source and destination (ParsePacket); zero
	// from ParseMessage.
	Server, Client netip.AddrPort
	ID             uint16
	Question       string // the question name: lower case, no trailing dot ("" for the root)
	QName          string // the question name as on the wire (see Question.Name)
	QType, QClass  uint16
	Truncated      bool     // TC: the answer did not fit; the client asks again over TCP
	RCode          uint16   // 0 no error, 3 NXDOMAIN, ...
	Answers        []Answer // addresses of the question's type reached from the question (directly or by CNAME)
}

// DNS wire constants (RFC 1035, RFC 3596).
const (
	typeA     = 1
	typeCNAME = 5
	typeAAAA  = 28
	classIN   = 1

	headerLen   = 12
	maxNameLen  = 253 // in text form, without the trailing dot
	maxPointers = 64  // compression pointers followed in one name
	maxCNAMEs   = 16  // CNAME hops followed from the question name
)

// udpDatagram reads an IPv4 or IPv6 packet carrying UDP and returns its addresses,
// its payload and the payload's offset in pkt. IPv6 extension headers are not
// followed: a UDP datagram behind one is an error.
func udpDatagram(pkt []byte) (src, dst netip.AddrPort, payload []byte, base int, err error) {
	if len(pkt) < 1 {
		return src, dst, nil, 0, &ParseError{0, "empty packet"}
	}
	var l4 int
	var sa, da netip.Addr
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return src, dst, nil, 0, &ParseError{0, fmt.Sprintf("IPv4 header: %d bytes, want at least 20", len(pkt))}
		}
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || ihl > len(pkt) {
			return src, dst, nil, 0, &ParseError{0, fmt.Sprintf("IPv4 header length %d outside 20-%d", ihl, len(pkt))}
		}
		if total := int(binary.BigEndian.Uint16(pkt[2:])); total < ihl || total > len(pkt) {
			return src, dst, nil, 0, &ParseError{2, fmt.Sprintf("IPv4 total length %d outside %d-%d", total, ihl, len(pkt))}
		} else {
			pkt = pkt[:total]
		}
		if frag := binary.BigEndian.Uint16(pkt[6:]); frag&0x3fff != 0 {
			return src, dst, nil, 0, &ParseError{6, "IPv4 fragment"}
		}
		if pkt[9] != 17 {
			return src, dst, nil, 0, &ParseError{9, fmt.Sprintf("IP protocol %d, want UDP (17)", pkt[9])}
		}
		sa, da = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
		l4 = ihl
	case 6:
		if len(pkt) < 40 {
			return src, dst, nil, 0, &ParseError{0, fmt.Sprintf("IPv6 header: %d bytes, want at least 40", len(pkt))}
		}
		if plen := int(binary.BigEndian.Uint16(pkt[4:])); 40+plen > len(pkt) {
			return src, dst, nil, 0, &ParseError{4, fmt.Sprintf("IPv6 payload length %d beyond the packet's %d bytes", plen, len(pkt)-40)}
		} else {
			pkt = pkt[:40+plen]
		}
		if pkt[6] != 17 {
			return src, dst, nil, 0, &ParseError{6, fmt.Sprintf("IPv6 next header %d, want UDP (17)", pkt[6])}
		}
		sa, da = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
		l4 = 40
	default:
		return src, dst, nil, 0, &ParseError{0, fmt.Sprintf("IP version %d, want 4 or 6", pkt[0]>>4)}
	}
	if len(pkt)-l4 < 8 {
		return src, dst, nil, 0, &ParseError{l4, fmt.Sprintf("UDP header: %d bytes, want 8", len(pkt)-l4)}
	}
	udp := pkt[l4:]
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < 8 || ulen > len(udp) {
		return src, dst, nil, 0, &ParseError{l4 + 4, fmt.Sprintf("UDP length %d outside 8-%d", ulen, len(udp))}
	}
	src = netip.AddrPortFrom(sa, binary.BigEndian.Uint16(udp))
	dst = netip.AddrPortFrom(da, binary.BigEndian.Uint16(udp[2:]))
	return src, dst, udp[8:ulen], l4 + 8, nil
}

// ParsePacket parses an IPv4 or IPv6 packet carrying a UDP datagram from port 53 and
// returns the DNS response in it (see ParseMessage). Offsets in errors count from the
// start of pkt. IPv6 extension headers are not followed: a DNS response behind one is
// an error.
func ParsePacket(pkt []byte) (*Response, error) {
	r, err := parseResponsePacket(pkt)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// parseResponsePacket is ParsePacket, except that a response whose header and
// question were read but whose records are malformed is returned too, with the error
// and no answers: it still answers a query (see Learner).
func parseResponsePacket(pkt []byte) (*Response, error) {
	src, dst, msg, base, err := udpDatagram(pkt)
	if err != nil {
		return nil, err
	}
	if src.Port() != 53 {
		return nil, &ParseError{base - 8, fmt.Sprintf("UDP source port %d, want 53", src.Port())}
	}
	r, err := parseMessage(msg, base)
	if r != nil {
		r.Server, r.Client = src, dst
	}
	return r, err
}

// ParseQueryPacket parses an IPv4 or IPv6 packet carrying a UDP datagram to port 53
// and returns the DNS query in it (see ParseQuery). Offsets in errors count from the
// start of pkt.
func ParseQueryPacket(pkt []byte) (*Query, error) {
	src, dst, msg, base, err := udpDatagram(pkt)
	if err != nil {
		return nil, err
	}
	if dst.Port() != 53 {
		return nil, &ParseError{base - 6, fmt.Sprintf("UDP destination port %d, want 53", dst.Port())}
	}
	q, err := parseQuery(msg, base)
	if err != nil {
		return nil, err
	}
	q.Client, q.Server = src, dst
	return q, nil
}

// ParseQuery parses a DNS query message (RFC 1035 wire format): a standard query
// (opcode 0) with exactly one question, whose name is letters, digits, '-' and '_'
// (see ParseMessage). The other sections are not read. Offsets in errors count from
// the start of msg.
func ParseQuery(msg []byte) (*Query, error) { return parseQuery(msg, 0) }

func parseQuery(msg []byte, base int) (*Query, error) {
	p := parser{msg, base}
	if _, err := p.header(false); err != nil {
		return nil, err
	}
	q, _, err := p.question()
	if err != nil {
		return nil, err
	}
	return &Query{ID: binary.BigEndian.Uint16(msg), Question: q}, nil
}

// ParseMessage parses a DNS response message (RFC 1035 wire format). It reads the
// header, the question (exactly one) and the answer section; the authority and
// additional sections are not read, so a record there teaches nothing. Only what the
// question asked for is returned: for a question of type A (class IN) the A records,
// for AAAA the AAAA records, reached from the question name directly or along a chain
// of CNAME records; records not reached from the question, of other types or classes
// are skipped, and a question of any other type or class gives no answers. A response
// with an error code (NXDOMAIN...) has no answers; a query is an error. Offsets in
// errors count from the start of msg.
func ParseMessage(msg []byte) (*Response, error) {
	r, err := parseMessage(msg, 0)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// parser reads one DNS message; base is the message's offset in the caller's input,
// added to every offset reported.
type parser struct {
	msg  []byte
	base int
}

func (p *parser) errorf(off int, format string, args ...any) error {
	return &ParseError{p.base + off, fmt.Sprintf(format, args...)}
}

// header checks the header of a standard query or response with one question and
// returns its flags.
func (p *parser) header(response bool) (uint16, error) {
	if len(p.msg) < headerLen {
		return 0, p.errorf(0, "header: %d bytes, want 12", len(p.msg))
	}
	flags := binary.BigEndian.Uint16(p.msg[2:])
	switch {
	case response && flags&0x8000 == 0:
		return 0, p.errorf(2, "a query, not a response")
	case !response && flags&0x8000 != 0:
		return 0, p.errorf(2, "a response, not a query")
	}
	if op := flags >> 11 & 0xf; op != 0 {
		return 0, p.errorf(2, "opcode %d, want 0 (query)", op)
	}
	if qd := binary.BigEndian.Uint16(p.msg[4:]); qd != 1 {
		return 0, p.errorf(4, "%d questions, want 1", qd)
	}
	return flags, nil
}

// question reads the question at offset 12 and returns it and the offset after it.
func (p *parser) question() (Question, int, error) {
	name, off, err := p.name(headerLen, true)
	if err != nil {
		return Question{}, 0, err
	}
	if off+4 > len(p.msg) {
		return Question{}, 0, p.errorf(off, "question type and class: truncated")
	}
	return Question{name, binary.BigEndian.Uint16(p.msg[off:]), binary.BigEndian.Uint16(p.msg[off+2:])}, off + 4, nil
}

// parseMessage parses a response. When the header and question are read but a record
// is malformed, it returns the response without answers and the error.
func parseMessage(msg []byte, base int) (*Response, error) {
	p := parser{msg, base}
	flags, err := p.header(true)
	if err != nil {
		return nil, err
	}
	q, off, err := p.question()
	if err != nil {
		return nil, err
	}
	resp := &Response{
		ID: binary.BigEndian.Uint16(msg), Question: lower(q.Name), QName: q.Name, QType: q.Type, QClass: q.Class,
		Truncated: flags&0x0200 != 0, RCode: flags & 0xf,
	}
	an := int(binary.BigEndian.Uint16(msg[6:]))
	if resp.RCode != 0 {
		an = 0 // NXDOMAIN, SERVFAIL...: nothing to learn, but not malformed
	}
	want := uint16(0) // the address type the question asks for
	if q.Class == classIN && (q.Type == typeA || q.Type == typeAAAA) {
		want = q.Type
	}

	// Collect the records first: a CNAME may follow the addresses it leads to.
	type record struct {
		owner  string
		typ    uint16
		ttl    uint32
		target string     // CNAME
		addr   netip.Addr // A, AAAA
	}
	var records []record
	for i := 0; i < an; i++ {
		var owner string
		if owner, off, err = p.name(off, false); err != nil {
			return resp, err
		}
		if off+10 > len(msg) {
			return resp, p.errorf(off, "answer %d: record header truncated", i)
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		class := binary.BigEndian.Uint16(msg[off+2:])
		ttl := binary.BigEndian.Uint32(msg[off+4:])
		rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
		rdata := off + 10
		if rdata+rdlen > len(msg) {
			return resp, p.errorf(off+8, "answer %d: data length %d beyond the message's end", i, rdlen)
		}
		off = rdata + rdlen
		if class != classIN {
			continue
		}
		switch typ {
		case typeA, typeAAAA:
			want := 4
			if typ == typeAAAA {
				want = 16
			}
			if rdlen != want {
				return resp, p.errorf(rdata-2, "answer %d: address length %d, want %d", i, rdlen, want)
			}
			addr, _ := netip.AddrFromSlice(msg[rdata : rdata+rdlen])
			records = append(records, record{owner: owner, typ: typ, ttl: ttl, addr: addr.Unmap()})
		case typeCNAME:
			target, end, err := p.name(rdata, false)
			if err != nil {
				return resp, err
			}
			if end != off {
				return resp, p.errorf(rdata, "answer %d: CNAME target ends at %d, data at %d", i, p.base+end, p.base+off)
			}
			records = append(records, record{owner: owner, typ: typ, ttl: ttl, target: target})
		}
	}
	if want == 0 {
		return resp, nil
	}

	// Follow the chain from the question: names[i] is reached after i CNAME hops, and
	// ttls[i] is the smallest TTL on the way there.
	question := resp.Question
	names := []string{question}
	ttls := []uint32{^uint32(0)}
	for hop := 0; hop < maxCNAMEs; hop++ {
		cur := names[len(names)-1]
		next := ""
		var ttl uint32
		for _, r := range records {
			if r.typ == typeCNAME && r.owner == cur {
				next, ttl = r.target, r.ttl
				break
			}
		}
		if next == "" || contains(names, next) {
			break
		}
		names = append(names, next)
		ttls = append(ttls, min(ttls[len(ttls)-1], ttl))
	}
	for _, r := range records {
		if r.typ != want {
			continue
		}
		for i, n := range names {
			if r.owner == n {
				resp.Answers = append(resp.Answers, Answer{Addr: r.addr, Name: question, TTL: min(ttls[i], r.ttl)})
				break
			}
		}
	}
	return resp, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// name reads a possibly compressed domain name at off and returns it without the
// trailing dot, in lower case unless keepCase, and the offset just after it in the
// original stream.
// Compression pointers must point strictly backwards (which rules out loops), at most
// maxPointers are followed, and the name must fit in 253 characters of letters, digits,
// '-' and '_' (anything else could not be shown safely or matched by a rule).
func (p *parser) name(off int, keepCase bool) (string, int, error) {
	var buf [maxNameLen + 2]byte
	n := 0
	end := -1 // where the name ends in the stream: after the first pointer, if any
	pointers := 0
	start := off
	for {
		if off >= len(p.msg) {
			return "", 0, p.errorf(off, "name at %d: runs past the message's end", p.base+start)
		}
		l := int(p.msg[off])
		switch l & 0xc0 {
		case 0x00:
		case 0xc0:
			if off+1 >= len(p.msg) {
				return "", 0, p.errorf(off, "name: compression pointer truncated")
			}
			target := int(binary.BigEndian.Uint16(p.msg[off:]) & 0x3fff)
			if target >= off {
				return "", 0, p.errorf(off, "name: compression pointer to %d does not point backwards", p.base+target)
			}
			if pointers++; pointers > maxPointers {
				return "", 0, p.errorf(off, "name: more than %d compression pointers", maxPointers)
			}
			if end < 0 {
				end = off + 2
			}
			off = target
			continue
		default:
			return "", 0, p.errorf(off, "name: label type 0x%02x not supported", l&0xc0)
		}
		if l == 0 {
			off++
			break
		}
		if off+1+l > len(p.msg) {
			return "", 0, p.errorf(off, "name: label of %d bytes runs past the message's end", l)
		}
		if n > 0 {
			buf[n] = '.'
			n++
		}
		if n+l > maxNameLen {
			return "", 0, p.errorf(off, "name: longer than %d characters", maxNameLen)
		}
		for i, c := range p.msg[off+1 : off+1+l] {
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			case 'A' <= c && c <= 'Z':
				if !keepCase {
					c += 'a' - 'A'
				}
			default:
				return "", 0, p.errorf(off+1+i, "name: byte 0x%02x is not a letter, digit, '-' or '_'", c)
			}
			buf[n] = c
			n++
		}
		off += 1 + l
	}
	if end < 0 {
		end = off
	}
	return string(buf[:n]), end, nil
}

// lower returns name, made of the characters name() allows, in lower case.
func lower(name string) string {
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}

// Normalize returns name in the form Answer.Name and Response.Question use: lower
// case, without a trailing dot.
func Normalize(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
