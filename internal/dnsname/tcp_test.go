package dnsname

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// tcpPacket builds an IPv4 TCP segment (checksums not filled: the parser does not
// check them, as the kernel already did).
func tcpPacket(src, dst netip.AddrPort, seq uint32, flags uint8, payload []byte) []byte {
	tcp := binary.BigEndian.AppendUint16(nil, src.Port())
	tcp = binary.BigEndian.AppendUint16(tcp, dst.Port())
	tcp = binary.BigEndian.AppendUint32(tcp, seq)
	tcp = binary.BigEndian.AppendUint32(tcp, 0)
	tcp = append(tcp, 5<<4, flags, 0xff, 0xff, 0, 0, 0, 0)
	tcp = append(tcp, payload...)
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(tcp)))
	h[8], h[9] = 64, 6
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return append(h, tcp...)
}

func framed(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// TestTCPAnswersTeach follows DNS over TCP: messages split over segments, a
// retransmitted segment, and what must teach nothing (a stream whose SYN latch did
// not see, a gap from a lost copy, an oversized message).
func TestTCPAnswersTeach(t *testing.T) {
	client := netip.MustParseAddrPort("198.18.0.1:41000")
	server := netip.MustParseAddrPort("198.18.0.2:53")
	addr := netip.MustParseAddr("198.18.9.9")
	run := func(t *testing.T, syn bool, mangle func(answer []byte) [][]byte) (int, *Learner) {
		l, _ := newTestLearner()
		const cseq, sseq = 1000, 5000
		if syn {
			l.Segment(tcpPacket(client, server, cseq, tcpSYN, nil), 1000, true)
			l.Segment(tcpPacket(server, client, sseq, tcpSYN|0x10, nil), -1, false)
		}
		q := framed(buildQuery(9, "tcp.example.com", typeA))
		// The query in two segments.
		l.Segment(tcpPacket(client, server, cseq+1, 0x18, q[:5]), 1000, true)
		l.Segment(tcpPacket(client, server, cseq+6, 0x18, q[5:]), 1000, true)
		answer := framed(buildResponse(9, 0, question("tcp.example.com", typeA), []testRR{rrA("tcp.example.com", addr.String(), 60)}))
		learned := 0
		seq := uint32(sseq + 1)
		for _, seg := range mangle(answer) {
			if seg == nil { // a lost copy: skip its bytes
				seq += 3
				continue
			}
			learned += l.Segment(tcpPacket(server, client, seq, 0x18, seg), -1, false)
			seq += uint32(len(seg))
		}
		return learned, l
	}
	whole := func(a []byte) [][]byte { return [][]byte{a} }
	for _, tc := range []struct {
		name   string
		syn    bool
		mangle func([]byte) [][]byte
		want   int
	}{
		{"one segment", true, whole, 1},
		{"byte by byte", true, func(a []byte) [][]byte {
			var s [][]byte
			for i := range a {
				s = append(s, a[i:i+1])
			}
			return s
		}, 1},
		{"stream begun before latch saw its SYN", false, whole, 0},
		{"a lost copy", true, func(a []byte) [][]byte { return [][]byte{a[:4], nil, a[7:]} }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, l := run(t, tc.syn, tc.mangle)
			if n != tc.want {
				t.Errorf("learned %d addresses, want %d", n, tc.want)
			}
			if name, ok := l.Cache().Lookup(addr); (tc.want > 0) != ok || (ok && name != "tcp.example.com") {
				t.Errorf("lookup: %q %v", name, ok)
			}
		})
	}
	// A retransmitted answer segment is not a second answer.
	l, _ := newTestLearner()
	l.Segment(tcpPacket(client, server, 1, tcpSYN, nil), 1000, true)
	l.Segment(tcpPacket(server, client, 7, tcpSYN|0x10, nil), -1, false)
	l.Segment(tcpPacket(client, server, 2, 0x18, framed(buildQuery(4, "r.example.com", typeA))), 1000, true)
	ans := framed(buildResponse(4, 0, question("r.example.com", typeA), []testRR{rrA("r.example.com", "198.18.9.8", 60)}))
	if n := l.Segment(tcpPacket(server, client, 8, 0x18, ans), -1, false); n != 1 {
		t.Fatalf("answer learned %d", n)
	}
	l.Segment(tcpPacket(server, client, 8, 0x18, ans), -1, false)
	if s := l.Stats(); s.Ignored[IgnoredDuplicate] != 0 || s.Answers != 1 {
		t.Errorf("a retransmission was read again: %+v", s)
	}
	// An oversized length prefix ends the stream's learning; the bound holds.
	big := binary.BigEndian.AppendUint16(nil, maxTCPMessage+1)
	l.Segment(tcpPacket(server, client, 8+uint32(len(ans)), 0x18, big), -1, false)
	if st := l.tcp.streams[streamKey{server, client}]; st == nil || !st.broken || len(st.buf) != 0 {
		t.Errorf("oversized message: stream %+v", st)
	}
}

// FuzzSegment feeds arbitrary segments to a Learner: nothing panics, and buffers stay
// bounded.
func FuzzSegment(f *testing.F) {
	client := netip.MustParseAddrPort("198.18.0.1:41000")
	server := netip.MustParseAddrPort("198.18.0.2:53")
	f.Add(tcpPacket(server, client, 1, tcpSYN, nil), false)
	f.Add(tcpPacket(client, server, 2, 0x18, framed(buildQuery(1, "a.example", typeA))), true)
	f.Add(tcpPacket(server, client, 2, 0x18, framed(buildResponse(1, 0, question("a.example", typeA), []testRR{rrA("a.example", "198.18.1.1", 60)}))), false)
	l, _ := newTestLearner()
	l.Segment(tcpPacket(client, server, 1, tcpSYN, nil), 0, true)
	l.Segment(tcpPacket(server, client, 1, tcpSYN, nil), 0, false)
	f.Fuzz(func(t *testing.T, pkt []byte, out bool) {
		l.Segment(pkt, 0, out)
		l.tcp.mu.Lock()
		defer l.tcp.mu.Unlock()
		if len(l.tcp.streams) > maxTCPStreams {
			t.Fatalf("%d streams", len(l.tcp.streams))
		}
		for _, s := range l.tcp.streams {
			if len(s.buf) > maxTCPMessage+2 {
				t.Fatalf("buffer %d bytes", len(s.buf))
			}
		}
	})
}
