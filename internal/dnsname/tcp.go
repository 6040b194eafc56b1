package dnsname

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
)

// DNS over TCP (RFC 7766): each message is preceded by its length in two bytes. The
// NFLOG rules copy the segments of TCP connections to and from port 53; the Learner
// follows each direction of each connection from its SYN, in order, in a bounded
// buffer, and hands every whole message to the same checks as UDP (a response teaches
// only as the first answer to a query sent on that connection). A gap (a lost copy),
// a message longer than maxTCPMessage or a stream begun before latch saw its SYN ends
// the stream's learning; so do FIN and RST.
//
// Streams are counted per user (the owner of the socket that sent the SYN, a
// subordinate uid as its owner, see clientOf; a server's direction as its client's):
// when maxTCPStreams are followed, a new SYN drops the least recently used stream of
// the user following the most (its own when it ties), so one user's SYNs, even ones
// latch then blocks, drop only that user's streams.
const (
	maxTCPStreams = 512      // streams followed at once (each direction is one)
	maxTCPMessage = 16 << 10 // longest DNS message reassembled; longer ones teach nothing
)

type streamKey struct {
	src, dst netip.AddrPort
}

type stream struct {
	next   uint32 // sequence number of the next byte expected
	buf    []byte // bytes not yet forming a whole message
	broken bool   // a gap or an oversized message: ignore until the stream ends
	seen   uint64 // when it was last used, for eviction
	uid    int64  // the user whose socket sent the SYN (-1: unknown)
	owner  int64  // whose share the stream counts against (clientOf)
}

type tcpStreams struct {
	mu      sync.Mutex
	streams map[streamKey]*stream
	owners  map[int64]int // streams per owner
	tick    uint64
}

// tcpSegment reads an IPv4 or IPv6 packet carrying a TCP segment.
func tcpSegment(pkt []byte) (src, dst netip.AddrPort, seq uint32, flags uint8, payload []byte, err error) {
	var l4 int
	var sa, da netip.Addr
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:]))
		if ihl < 20 || total < ihl || total > len(pkt) {
			return src, dst, 0, 0, nil, &ParseError{0, "IPv4 header lengths"}
		}
		if binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 || pkt[9] != 6 {
			return src, dst, 0, 0, nil, &ParseError{9, "not an unfragmented TCP segment"}
		}
		pkt = pkt[:total]
		sa, da, l4 = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])), ihl
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		plen := int(binary.BigEndian.Uint16(pkt[4:]))
		if 40+plen > len(pkt) || pkt[6] != 6 {
			return src, dst, 0, 0, nil, &ParseError{4, "not an IPv6 TCP segment"}
		}
		pkt = pkt[:40+plen]
		sa, da, l4 = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), 40
	default:
		return src, dst, 0, 0, nil, &ParseError{0, "not an IPv4 or IPv6 packet"}
	}
	if len(pkt)-l4 < 20 {
		return src, dst, 0, 0, nil, &ParseError{l4, "TCP header: short"}
	}
	tcp := pkt[l4:]
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return src, dst, 0, 0, nil, &ParseError{l4 + 12, fmt.Sprintf("TCP data offset %d", off)}
	}
	src = netip.AddrPortFrom(sa, binary.BigEndian.Uint16(tcp))
	dst = netip.AddrPortFrom(da, binary.BigEndian.Uint16(tcp[2:]))
	return src, dst, binary.BigEndian.Uint32(tcp[4:]), tcp[13], tcp[off:], nil
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
)

// isTCP reports whether pkt is an IPv4 or IPv6 packet whose protocol is TCP.
func isTCP(pkt []byte) bool {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		return pkt[9] == 6
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		return pkt[6] == 6
	}
	return false
}

// Segment handles a copy of a TCP segment of a DNS connection: one this host sends to
// port 53 (outbound, from a socket of user uid, -1 if unknown) or receives from port
// 53. Whole messages are handled as Query and Response handle UDP ones. It returns
// how many addresses the segment's messages taught.
func (l *Learner) Segment(pkt []byte, uid int64, outbound bool) int {
	src, dst, seq, flags, payload, err := tcpSegment(pkt)
	if err != nil || (outbound && dst.Port() != 53) || (!outbound && src.Port() != 53) {
		l.ignore(IgnoredMalformed)
		return 0
	}
	key := streamKey{keyAP(src), keyAP(dst)}
	msgs, synUID := l.tcp.add(key, seq, flags, payload, uid)
	if uid < 0 {
		uid = synUID // data sent after its socket closed: the copy names no user
	}
	learned := 0
	for _, m := range msgs {
		if outbound {
			q, err := ParseQuery(m)
			if err != nil {
				l.notTrack(NotTrackedMalformed)
				continue
			}
			q.Client, q.Server = src, dst
			l.query(q, uid, true)
			continue
		}
		r, err := parseMessage(m, 0)
		if r != nil {
			r.Server, r.Client = src, dst
		}
		n, _ := l.response(r, err, true)
		learned += n
	}
	return learned
}

// add appends a segment of user uid (-1: unknown) to its stream and returns the whole
// messages it completes, and the user whose SYN began the stream (-1: unknown).
func (t *tcpStreams) add(key streamKey, seq uint32, flags uint8, payload []byte, uid int64) ([][]byte, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.streams == nil {
		t.streams = make(map[streamKey]*stream)
		t.owners = make(map[int64]int)
	}
	t.tick++
	s := t.streams[key]
	if flags&tcpSYN != 0 {
		if s == nil || s.buf == nil || s.next != seq+1 { // a new SYN, or the same one again
			if uid < 0 {
				// The server's SYN-ACK (the copy names no user) is its client's.
				if c := t.streams[streamKey{key.dst, key.src}]; c != nil {
					uid = c.uid
				}
			}
			owner := clientOf(uid).uid
			if s == nil {
				if len(t.streams) >= maxTCPStreams {
					t.evict(owner)
				}
				s = &stream{}
				t.streams[key] = s
			} else {
				t.release(s.owner)
			}
			*s = stream{next: seq + 1, uid: uid, owner: owner}
			t.owners[owner]++
		}
	}
	if s == nil {
		return nil, -1 // begun before latch saw it: message boundaries unknown
	}
	s.seen = t.tick
	var msgs [][]byte
	if !s.broken && len(payload) > 0 {
		switch d := int32(seq - s.next); {
		case d > 0:
			s.broken = true // a copy was lost
		case -d >= int32(len(payload)):
			// all seen before: a retransmission
		default:
			payload = payload[-d:]
			if len(s.buf)+len(payload) > maxTCPMessage+2 {
				s.broken = true
				break
			}
			s.buf = append(s.buf, payload...)
			s.next += uint32(len(payload))
			for len(s.buf) >= 2 {
				n := int(binary.BigEndian.Uint16(s.buf))
				if n > maxTCPMessage {
					s.broken = true
					break
				}
				if len(s.buf) < 2+n {
					break
				}
				msgs = append(msgs, append([]byte(nil), s.buf[2:2+n]...))
				s.buf = s.buf[2+n:]
			}
			if len(s.buf) == 0 {
				s.buf = s.buf[:0:0]
			}
		}
	}
	if s.broken {
		s.buf = nil
	}
	if s.buf == nil && !s.broken {
		s.buf = []byte{}
	}
	if flags&(tcpFIN|tcpRST) != 0 {
		delete(t.streams, key)
		t.release(s.owner)
	}
	return msgs, s.uid
}

// release counts one stream of owner less. t.mu is held.
func (t *tcpStreams) release(owner int64) {
	if t.owners[owner]--; t.owners[owner] <= 0 {
		delete(t.owners, owner)
	}
}

// evict drops the least recently used stream of the owner following the most
// streams: newcomer's own when newcomer follows as many. t.mu is held.
func (t *tcpStreams) evict(newcomer int64) {
	heaviest, most := newcomer, t.owners[newcomer]
	for o, n := range t.owners {
		if n > most {
			heaviest, most = o, n
		}
	}
	var oldest streamKey
	var at uint64 = ^uint64(0)
	for k, s := range t.streams {
		if s.owner == heaviest && s.seen < at {
			oldest, at = k, s.seen
		}
	}
	if at == ^uint64(0) {
		return // nobody follows any stream: not while the table is full
	}
	delete(t.streams, oldest)
	t.release(heaviest)
}
