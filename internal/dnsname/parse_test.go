package dnsname

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func ans(addr, name string, ttl uint32) Answer {
	return Answer{netip.MustParseAddr(addr), name, ttl}
}

func TestParseMessage(t *testing.T) {
	q := question("www.example.com", typeA)
	tests := []struct {
		name    string
		msg     []byte
		want    []Answer
		wantErr string
	}{
		{
			name: "CNAME chain labelled with the question name",
			msg: buildResponse(1, 0, q, []testRR{
				rrCNAME("www.example.com", "e1.cdn.net", 300),
				rrA("e1.cdn.net", "198.18.5.5", 60),
			}),
			want: []Answer{ans("198.18.5.5", "www.example.com", 60)},
		},
		{
			name: "address before the CNAME that leads to it; TTL is the chain's smallest",
			msg: buildResponse(1, 0, q, []testRR{
				rrA("e2.cdn.net", "198.18.5.6", 600),
				rrCNAME("e1.cdn.net", "e2.cdn.net", 30),
				rrCNAME("www.example.com", "e1.cdn.net", 300),
			}),
			want: []Answer{ans("198.18.5.6", "www.example.com", 30)},
		},
		{
			name: "AAAA question: AAAA records only; upper case question",
			msg: buildResponse(1, 0, question("WWW.Example.COM", typeAAAA), []testRR{
				rrA("www.EXAMPLE.com", "fd00::5", 120),
				rrA("www.example.com", "198.18.0.9", 120),
			}),
			want: []Answer{ans("fd00::5", "www.example.com", 120)},
		},
		{
			name: "A question: A records only",
			msg: buildResponse(1, 0, q, []testRR{
				rrA("www.example.com", "fd00::5", 120),
				rrA("www.example.com", "198.18.0.9", 120),
			}),
			want: []Answer{ans("198.18.0.9", "www.example.com", 120)},
		},
		{
			name: "other question types and classes teach nothing",
			msg: buildResponse(1, 0, question("www.example.com", 65), []testRR{ // HTTPS
				rrA("www.example.com", "198.18.0.9", 120),
			}),
			want: nil,
		},
		{
			name: "class CH question teaches nothing",
			msg: func() []byte {
				m := buildResponse(1, 0, q, []testRR{rrA("www.example.com", "198.18.0.9", 120)})
				m[12+len(q)-1] = 3 // CH
				return m
			}(),
			want: nil,
		},
		{
			name: "records not reached from the question are ignored",
			msg: buildResponse(1, 0, q, []testRR{
				rrA("evil.example.net", "198.18.6.6", 120),
				rrCNAME("other.example.com", "www.example.com", 120),
			}),
			want: nil,
		},
		{
			name: "other types skipped",
			msg: buildResponse(1, 0, q, []testRR{
				{"www.example.com", 16, 60, []byte("\x05hello")}, // TXT
				{"www.example.com", 15, 60, append([]byte{0, 10}, encodeName("mx.example.com")...)},
				rrA("www.example.com", "198.18.1.1", 60),
			}),
			want: []Answer{ans("198.18.1.1", "www.example.com", 60)},
		},
		{
			name: "CNAME loop ends",
			msg: buildResponse(1, 0, q, []testRR{
				rrCNAME("www.example.com", "a.example.com", 60),
				rrCNAME("a.example.com", "www.example.com", 60),
				rrA("a.example.com", "198.18.1.2", 60),
			}),
			want: []Answer{ans("198.18.1.2", "www.example.com", 60)},
		},
		{
			name: "NXDOMAIN has no answers",
			msg:  buildResponse(1, 3, q, []testRR{rrA("www.example.com", "198.18.1.1", 60)}),
			want: nil,
		},
		{
			name:    "query",
			msg:     func() []byte { m := buildResponse(1, 0, q, nil); m[2] &^= 0x80; return m }(),
			wantErr: "dns: offset 2: a query, not a response",
		},
		{
			name:    "short header",
			msg:     []byte{1, 2, 3},
			wantErr: "dns: offset 0: header: 3 bytes, want 12",
		},
		{
			name:    "two questions",
			msg:     func() []byte { m := buildResponse(1, 0, q, nil); m[5] = 2; return m }(),
			wantErr: "dns: offset 4: 2 questions, want 1",
		},
		{
			name:    "answer count beyond the data",
			msg:     func() []byte { m := buildResponse(1, 0, q, nil); m[7] = 1; return m }(),
			wantErr: "dns: offset 33: name at 33: runs past the message's end",
		},
		{
			name:    "A record of 5 bytes",
			msg:     buildResponse(1, 0, q, []testRR{{"www.example.com", typeA, 60, []byte{1, 2, 3, 4, 5}}}),
			wantErr: "dns: offset 58: answer 0: address length 5, want 4",
		},
		{
			name:    "label with a control character",
			msg:     buildResponse(1, 0, []byte("\x03w\x1bw\x00\x00\x01\x00\x01"), nil),
			wantErr: "dns: offset 14: name: byte 0x1b is not a letter, digit, '-' or '_'",
		},
		{
			name:    "label type 0x40",
			msg:     buildResponse(1, 0, []byte("\x41"), nil),
			wantErr: "dns: offset 12: name: label type 0x40 not supported",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseMessage(tt.msg)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				var pe *ParseError
				if !errors.As(err, &pe) {
					t.Fatalf("error %T, want *ParseError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Question != "www.example.com" {
				t.Errorf("question %q", r.Question)
			}
			if !reflect.DeepEqual(r.Answers, tt.want) {
				t.Errorf("answers %v, want %v", r.Answers, tt.want)
			}
		})
	}
}

// compressedResponse is www.example.com CNAME e1.<ptr example.com>, e1.example.com A
// 198.18.5.5, with every name after the question compressed.
func compressedResponse() []byte {
	m := []byte{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0}
	m = append(m, question("www.example.com", typeA)...) // name at 12, "example" at 16
	m = append(m, 0xc0, 12)                              // offset 33
	m = binary.BigEndian.AppendUint16(m, typeCNAME)
	m = binary.BigEndian.AppendUint16(m, classIN)
	m = binary.BigEndian.AppendUint32(m, 300)
	m = binary.BigEndian.AppendUint16(m, 5)
	m = append(m, 2, 'e', '1', 0xc0, 16) // rdata at 45
	m = append(m, 0xc0, 45)
	m = binary.BigEndian.AppendUint16(m, typeA)
	m = binary.BigEndian.AppendUint16(m, classIN)
	m = binary.BigEndian.AppendUint32(m, 30)
	m = binary.BigEndian.AppendUint16(m, 4)
	return append(m, 198, 18, 5, 5)
}

func TestParseCompression(t *testing.T) {
	r, err := ParseMessage(compressedResponse())
	if err != nil {
		t.Fatal(err)
	}
	if want := []Answer{ans("198.18.5.5", "www.example.com", 30)}; !reflect.DeepEqual(r.Answers, want) {
		t.Fatalf("answers %v, want %v", r.Answers, want)
	}

	self := compressedResponse()
	self[33], self[34] = 0xc0, 33 // owner points at itself
	if _, err := ParseMessage(self); err == nil || err.Error() != "dns: offset 33: name: compression pointer to 33 does not point backwards" {
		t.Errorf("self pointer: %v", err)
	}
	fwd := compressedResponse()
	fwd[48], fwd[49] = 0xc0, 60 // CNAME target points forwards
	if _, err := ParseMessage(fwd); err == nil || !strings.Contains(err.Error(), "offset 48: name: compression pointer to 60 does not point backwards") {
		t.Errorf("forward pointer: %v", err)
	}
	trunc := compressedResponse()[:34]
	if _, err := ParseMessage(trunc); err == nil || err.Error() != "dns: offset 33: name: compression pointer truncated" {
		t.Errorf("truncated pointer: %v", err)
	}
	// A chain of 100 pointers, each pointing at the one before, in the data of a
	// record that is skipped; the next record's owner points at the last one.
	chain := []byte{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 1}
	chain = append(chain, 0, 0, 16, 0, 1, 0, 0, 0, 60, 0, 200) // root TXT, 200 bytes of data at 28
	prev := 12
	for i := 0; i < 100; i++ {
		at := len(chain)
		chain = append(chain, 0xc0, byte(prev))
		prev = at
	}
	chain = append(chain, 0xc0|byte(prev>>8), byte(prev))
	chain = append(chain, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1)
	if _, err := ParseMessage(chain); err == nil || !strings.Contains(err.Error(), "more than 64 compression pointers") {
		t.Errorf("pointer chain: %v", err)
	}
}

func TestParseLongName(t *testing.T) {
	label := strings.Repeat("a", 63)
	name := strings.Join([]string{label, label, label, label}, ".") // 255 characters
	if _, err := ParseMessage(buildResponse(1, 0, question(name, typeA), nil)); err == nil || !strings.Contains(err.Error(), "longer than 253") {
		t.Errorf("255-character name: %v", err)
	}
	name = name[:253]
	r, err := ParseMessage(buildResponse(1, 0, question(name, typeA), nil))
	if err != nil || r.Question != name {
		t.Errorf("253-character name: %v", err)
	}
}

func TestParsePacket(t *testing.T) {
	msg := buildResponse(7, 0, question("api.example.com", typeA), []testRR{rrA("api.example.com", "198.18.2.2", 90)})
	want := []Answer{ans("198.18.2.2", "api.example.com", 90)}
	for _, src := range []string{"198.18.0.2:53", "[fd00::2]:53"} {
		s := netip.MustParseAddrPort(src)
		d := netip.AddrPortFrom(s.Addr().Prev(), 40000)
		pkt := udpPacket(s, d, msg)
		r, err := ParsePacket(pkt)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if !reflect.DeepEqual(r.Answers, want) {
			t.Errorf("%s: answers %v, want %v", src, r.Answers, want)
		}
		if r.Server != s || r.Client != d || r.ID != 7 || r.QName != "api.example.com" || r.QType != typeA || r.QClass != classIN {
			t.Errorf("%s: response %+v: want server %v, client %v, id 7 and the question", src, r, s, d)
		}
		// Offsets count from the packet's start.
		bad := append([]byte(nil), pkt...)
		l4 := len(pkt) - len(msg) - 8
		bad[l4+8+2] &^= 0x80
		if _, err := ParsePacket(bad); err == nil || !strings.Contains(err.Error(), "a query") || err.(*ParseError).Offset != l4+8+2 {
			t.Errorf("%s: query in packet: %v", src, err)
		}
		notDNS := udpPacket(netip.AddrPortFrom(s.Addr(), 5353), d, msg)
		if _, err := ParsePacket(notDNS); err == nil || err.Error() != "dns: offset "+strconv.Itoa(l4)+": UDP source port 5353, want 53" {
			t.Errorf("%s: source port 5353: %v", src, err)
		}
		if _, err := ParsePacket(pkt[:len(pkt)-3]); err == nil {
			t.Errorf("%s: truncated packet parsed", src)
		}
	}
}

// FuzzParseResponse checks that the parsers never panic, that errors are ParseErrors
// naming an offset inside the input, and that every answer carries a name a rule could
// match and an address of the type the question asked for.
func FuzzParseResponse(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, parse := range []func([]byte) (*Response, error){ParseMessage, ParsePacket} {
			r, err := parse(data)
			if err != nil {
				var pe *ParseError
				if !errors.As(err, &pe) || pe.Offset < 0 || pe.Offset > len(data) {
					t.Fatalf("error %v: not a ParseError with an offset in 0-%d", err, len(data))
				}
				continue
			}
			if r.Question != Normalize(r.QName) {
				t.Fatalf("question %q is not the wire name %q normalized", r.Question, r.QName)
			}
			for _, a := range r.Answers {
				if !a.Addr.IsValid() || a.Addr.Is4In6() || a.Name != r.Question || len(a.Name) > maxNameLen || a.Name != Normalize(a.Name) {
					t.Fatalf("bad answer %+v for question %q", a, r.Question)
				}
				if r.QClass != classIN || a.Addr.Is4() != (r.QType == typeA) || a.Addr.Is6() != (r.QType == typeAAAA) {
					t.Fatalf("answer %v to a question of type %d class %d", a.Addr, r.QType, r.QClass)
				}
			}
		}
	})
}

func fuzzSeeds() [][]byte {
	q := question("www.example.com", typeA)
	chain := buildResponse(1, 0, q, []testRR{rrCNAME("www.example.com", "e1.cdn.net", 300), rrA("e1.cdn.net", "198.18.5.5", 60), rrA("e1.cdn.net", "fd00::5", 60)})
	return [][]byte{
		chain,
		compressedResponse(),
		buildResponse(2, 3, q, nil),
		udpPacket(netip.MustParseAddrPort("198.18.0.2:53"), netip.MustParseAddrPort("198.18.0.1:40000"), chain),
		udpPacket(netip.MustParseAddrPort("[fd00::2]:53"), netip.MustParseAddrPort("[fd00::1]:40000"), compressedResponse()),
	}
}

// TestWriteFuzzSeeds refreshes testdata/fuzz/FuzzParseResponse from fuzzSeeds when
// LATCH_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("LATCH_WRITE_SEEDS") != "1" {
		t.Skip("set LATCH_WRITE_SEEDS=1 to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseResponse")
	for i, s := range fuzzSeeds() {
		body := "go test fuzz v1\n[]byte(" + goQuote(s) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, "seed"+strconv.Itoa(i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func goQuote(b []byte) string {
	var s strings.Builder
	s.WriteByte('"')
	for _, c := range b {
		s.WriteString(`\x`)
		s.WriteByte("0123456789abcdef"[c>>4])
		s.WriteByte("0123456789abcdef"[c&15])
	}
	s.WriteByte('"')
	return s.String()
}
