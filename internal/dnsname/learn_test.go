package dnsname

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	testClient = netip.MustParseAddrPort("198.18.0.1:40000")
	testServer = netip.MustParseAddrPort("198.18.0.2:53")
)

// newTestLearner returns a Learner and its cache on a clock the test moves (with
// advance).
func newTestLearner() (*Learner, *fakeClock) {
	c := &fakeClock{}
	c.ns.Store(int64(1_000_000 * time.Second))
	l := NewLearner(NewCache(1024))
	l.now = c.now
	l.cache.now = c.now
	return l, c
}

func queryPkt(client, server netip.AddrPort, id uint16, name string, qtype uint16) []byte {
	return udpPacket(client, server, buildQuery(id, name, qtype))
}

func answerPkt(client, server netip.AddrPort, id uint16, name string, qtype uint16, answers ...testRR) []byte {
	return udpPacket(server, client, buildResponse(id, 0, question(name, qtype), answers))
}

func TestLearnerBindsAnswersToQueries(t *testing.T) {
	other := netip.MustParseAddrPort("198.18.0.3:53")
	otherPort := netip.MustParseAddrPort("198.18.0.1:40001")
	a := func(name, addr string) testRR { return rrA(name, addr, 60) }
	tests := []struct {
		name   string
		before func(l *Learner, c *fakeClock) // after the query
		pkt    []byte                         // the response
		reason string                         // "" : learned 198.18.9.9
	}{
		{name: "the answer", pkt: answerPkt(testClient, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9"))},
		{name: "4.9 s later", before: func(l *Learner, c *fakeClock) { c.advance(AnswerWindow - 100*time.Millisecond) },
			pkt: answerPkt(testClient, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9"))},
		{name: "6 s later", before: func(l *Learner, c *fakeClock) { c.advance(6 * time.Second) },
			pkt: answerPkt(testClient, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9")), reason: IgnoredLate},
		{name: "retransmitted query restarts the window", before: func(l *Learner, c *fakeClock) {
			c.advance(4 * time.Second)
			l.Query(queryPkt(testClient, testServer, 7, "www.example.com", typeA), 0)
			c.advance(4 * time.Second)
		}, pkt: answerPkt(testClient, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9"))},
		{name: "second answer", before: func(l *Learner, c *fakeClock) {
			l.Response(answerPkt(testClient, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.8")))
		}, pkt: answerPkt(testClient, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9")), reason: IgnoredDuplicate},
		{name: "first answer malformed, then a good one", before: func(l *Learner, c *fakeClock) {
			bad := buildResponse(7, 0, question("www.example.com", typeA), []testRR{{"www.example.com", typeA, 60, []byte{1, 2, 3}}})
			if _, r := l.Response(udpPacket(testServer, testClient, bad)); r != IgnoredMalformed {
				panic("malformed answer: " + r)
			}
		}, pkt: answerPkt(testClient, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9")), reason: IgnoredDuplicate},
		{name: "wrong id", pkt: answerPkt(testClient, testServer, 8, "www.example.com", typeA, a("www.example.com", "198.18.9.9")), reason: IgnoredUnmatched},
		{name: "other name", pkt: answerPkt(testClient, testServer, 7, "bank.example.com", typeA, a("bank.example.com", "198.18.9.9")), reason: IgnoredMismatched},
		{name: "other letter case", pkt: answerPkt(testClient, testServer, 7, "WWW.example.com", typeA, a("www.example.com", "198.18.9.9")), reason: IgnoredMismatched},
		{name: "other type", pkt: answerPkt(testClient, testServer, 7, "www.example.com", typeAAAA, a("www.example.com", "198.18.9.9")), reason: IgnoredMismatched},
		{name: "other class", pkt: func() []byte {
			m := buildResponse(7, 0, question("www.example.com", typeA), []testRR{a("www.example.com", "198.18.9.9")})
			m[12+len(question("www.example.com", typeA))-1] = 3
			return udpPacket(testServer, testClient, m)
		}(), reason: IgnoredMismatched},
		{name: "other server address", pkt: answerPkt(testClient, other, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9")), reason: IgnoredUnmatched},
		{name: "other client port", pkt: answerPkt(otherPort, testServer, 7, "www.example.com", typeA, a("www.example.com", "198.18.9.9")), reason: IgnoredUnmatched},
		{name: "truncated", pkt: func() []byte {
			m := buildResponse(7, 0x200, question("www.example.com", typeA), []testRR{a("www.example.com", "198.18.9.9")})
			return udpPacket(testServer, testClient, m)
		}(), reason: IgnoredTruncated},
		{name: "unanswered question type", pkt: answerPkt(testClient, testServer, 9, "www.example.com", 65, a("www.example.com", "198.18.9.9")), reason: IgnoredOtherType},
		{name: "not a DNS response", pkt: udpPacket(testServer, testClient, []byte{1, 2, 3}), reason: IgnoredMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, c := newTestLearner()
			if ok, why := l.Query(queryPkt(testClient, testServer, 7, "www.example.com", typeA), 0); !ok {
				t.Fatalf("query not tracked: %s", why)
			}
			if tt.before != nil {
				tt.before(l, c)
			}
			n, reason := l.Response(tt.pkt)
			if reason != tt.reason {
				t.Fatalf("response: learned %d, reason %q; want reason %q", n, reason, tt.reason)
			}
			name, ok := l.cache.Lookup(netip.MustParseAddr("198.18.9.9"))
			if tt.reason == "" && (n != 1 || name != "www.example.com") {
				t.Errorf("learned %d, 198.18.9.9 labelled %q %v; want www.example.com", n, name, ok)
			}
			if tt.reason != "" && ok {
				t.Errorf("198.18.9.9 labelled %q by a response ignored as %s", name, tt.reason)
			}
			s := l.Stats()
			if tt.reason != "" && s.Ignored[tt.reason] == 0 {
				t.Errorf("stats %+v do not count %s", s, tt.reason)
			}
		})
	}
}

func TestLearnerIPv6AndTypes(t *testing.T) {
	l, _ := newTestLearner()
	cl, sv := netip.MustParseAddrPort("[fd00::1]:40000"), netip.MustParseAddrPort("[fd00::2]:53")
	l.Query(queryPkt(cl, sv, 1, "v6.example.com", typeAAAA), 0)
	l.Query(queryPkt(cl, sv, 2, "v6.example.com", typeA), 0)
	// An AAAA question answered with both: only the AAAA teaches.
	if n, r := l.Response(answerPkt(cl, sv, 1, "v6.example.com", typeAAAA, rrA("v6.example.com", "fd00::9", 60), rrA("v6.example.com", "198.18.9.1", 60))); n != 1 || r != "" {
		t.Fatalf("AAAA answer: learned %d, %q", n, r)
	}
	if _, ok := l.cache.Lookup(netip.MustParseAddr("198.18.9.1")); ok {
		t.Error("an A record in the answer to an AAAA question was learned")
	}
	if n, r := l.Response(answerPkt(cl, sv, 2, "v6.example.com", typeA, rrA("v6.example.com", "fd00::8", 60))); n != 0 || r != "" {
		t.Fatalf("A answer with an AAAA record: learned %d, %q", n, r)
	}
	if name, ok := l.cache.Lookup(netip.MustParseAddr("fd00::9")); !ok || name != "v6.example.com" {
		t.Errorf("fd00::9: %q %v", name, ok)
	}
	if _, ok := l.cache.Lookup(netip.MustParseAddr("fd00::8")); ok {
		t.Error("an AAAA record in the answer to an A question was learned")
	}
	// IPv4-mapped addresses and zones do not make another socket.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(testClient.Addr().As16()), testClient.Port())
	if got := keyAP(mapped); got != testClient {
		t.Errorf("keyAP(%v) = %v", mapped, got)
	}
}

func TestLearnerBounds(t *testing.T) {
	l, c := newTestLearner()
	server := testServer
	q := func(uid int64, port uint16, id uint16) (bool, string) {
		client := netip.AddrPortFrom(testClient.Addr(), port)
		return l.Query(queryPkt(client, server, id, fmt.Sprintf("u%d-%d.example.com", uid, id), typeA), uid)
	}
	// Per client: user 1000's 513th query is not tracked; root's still is.
	for i := 0; i < MaxPendingPerClient; i++ {
		if ok, why := q(1000, uint16(10000+i%50), uint16(i)); !ok {
			t.Fatalf("query %d of user 1000: %s", i, why)
		}
	}
	if ok, why := q(1000, 20000, 9999); ok || why != NotTrackedClientLimit {
		t.Fatalf("query over the per-client share: %v %q", ok, why)
	}
	if ok, why := q(0, 20000, 1); !ok {
		t.Fatalf("root's query while user 1000 is at its share: %s", why)
	}
	// The table: 7 more users fill it; the next user's query is refused, and no query
	// already waiting is evicted for it.
	for uid := int64(1001); uid < 1008; uid++ {
		for i := 0; i < MaxPendingPerClient && l.Stats().Pending < MaxPendingQueries; i++ {
			q(uid, 30000, uint16(i))
		}
	}
	if p := l.Stats().Pending; p != MaxPendingQueries {
		t.Fatalf("%d waiting, want the table full (%d)", p, MaxPendingQueries)
	}
	if ok, why := q(2000, 40000, 1); ok || why != NotTrackedTableFull {
		t.Fatalf("query into a full table: %v %q", ok, why)
	}
	client := netip.AddrPortFrom(testClient.Addr(), 10000)
	if n, r := l.Response(answerPkt(client, server, 0, "u1000-0.example.com", typeA, rrA("u1000-0.example.com", "198.18.9.1", 60))); n != 1 {
		t.Fatalf("the first query's answer after the table filled: %d %q", n, r)
	}
	// Queries stop waiting after AnswerWindow: the table empties, memory with it.
	c.advance(AnswerWindow + time.Millisecond)
	if s := l.Stats(); s.Pending != 0 || len(l.perClient) != 0 || len(l.byID) != 0 {
		t.Fatalf("after the window: %d waiting, %d clients, %d ids", s.Pending, len(l.perClient), len(l.byID))
	}
	if len(l.recent) > recentKept || len(l.ring) > recentKept {
		t.Fatalf("recent queries: %d (ring %d), want at most %d", len(l.recent), len(l.ring), recentKept)
	}
	// Without a user, every query is one client's, whatever its address (a user may
	// send from any of 127.0.0.0/8).
	l2, _ := newTestLearner()
	for i := 0; i < MaxPendingPerClient; i++ {
		l2.Query(queryPkt(netip.AddrPortFrom(testClient.Addr(), uint16(1000+i)), server, 1, "x.example.com", typeA), -1)
	}
	if ok, _ := l2.Query(queryPkt(netip.MustParseAddrPort("198.18.0.5:1000"), server, 1, "x.example.com", typeA), -1); ok {
		t.Errorf("another address's query naming no user got tracked over the share of queries naming none")
	}
	if ok, why := l2.Query(queryPkt(netip.MustParseAddrPort("198.18.0.5:1000"), server, 1, "x.example.com", typeA), 1000); !ok {
		t.Errorf("a user's query: %s", why)
	}
}

func TestParseQuery(t *testing.T) {
	q, err := ParseQueryPacket(queryPkt(testClient, testServer, 0xbeef, "WwW.Example.com", typeAAAA))
	if err != nil {
		t.Fatal(err)
	}
	want := Query{Client: testClient, Server: testServer, ID: 0xbeef, Question: Question{"WwW.Example.com", typeAAAA, classIN}}
	if *q != want {
		t.Errorf("query %+v, want %+v", *q, want)
	}
	resp := buildResponse(1, 0, question("x.example.com", typeA), nil)
	for _, tt := range []struct {
		name, err string
		pkt       []byte
	}{
		{"a response", "dns: offset 30: a response, not a query", udpPacket(testClient, testServer, resp)},
		{"to port 5353", "dns: offset 22: UDP destination port 5353, want 53", queryPkt(testClient, netip.AddrPortFrom(testServer.Addr(), 5353), 1, "x.example.com", typeA)},
		{"two questions", "dns: offset 32: 2 questions, want 1", func() []byte {
			m := buildQuery(1, "x.example.com", typeA)
			m[5] = 2
			return udpPacket(testClient, testServer, m)
		}()},
		{"opcode 5", "dns: offset 30: opcode 5, want 0 (query)", func() []byte {
			m := buildQuery(1, "x.example.com", typeA)
			m[2] |= 5 << 3
			return udpPacket(testClient, testServer, m)
		}()},
		{"no type", "dns: offset 55: question type and class: truncated", udpPacket(testClient, testServer, buildQuery(1, "x.example.com", typeA)[:27])},
	} {
		if _, err := ParseQueryPacket(tt.pkt); err == nil || err.Error() != tt.err {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.err)
		}
	}
}

// FuzzQueryMatch feeds a query and a response, each a DNS message put in a UDP packet
// between a fixed client and server (or raw packets, with mode bit 0), through a
// Learner. It checks that nothing panics, that parse errors name an offset inside the
// input, and that a name is learned only from the first answer that matches the
// query exactly, with addresses of the asked type only.
func FuzzQueryMatch(f *testing.F) {
	for _, s := range matchSeeds() {
		f.Add(s.query, s.response, s.mode)
	}
	f.Fuzz(func(t *testing.T, query, response []byte, mode uint8) {
		qpkt, rpkt := query, response
		if mode&1 == 0 {
			qpkt = udpPacket(testClient, testServer, query)
			server := testServer
			if mode&2 != 0 {
				server = netip.MustParseAddrPort("198.18.0.3:53")
			}
			rpkt = udpPacket(server, testClient, response)
		}
		for _, in := range [][]byte{qpkt, query} {
			for _, parse := range []func([]byte) (*Query, error){ParseQueryPacket, ParseQuery} {
				if _, err := parse(in); err != nil {
					var pe *ParseError
					if !errors.As(err, &pe) || pe.Offset < 0 || pe.Offset > len(in) {
						t.Fatalf("query error %v: not a ParseError with an offset in 0-%d", err, len(in))
					}
				}
			}
		}
		l, c := newTestLearner()
		l.Query(qpkt, int64(mode>>4))
		if mode&4 != 0 {
			c.advance(AnswerWindow + time.Second)
		}
		n, reason := l.Response(rpkt)
		if n > 0 || reason == "" {
			q, qerr := ParseQueryPacket(qpkt)
			r, rerr := ParsePacket(rpkt)
			if qerr != nil || rerr != nil {
				t.Fatalf("learned %d from a query (%v) or response (%v) that does not parse", n, qerr, rerr)
			}
			if r.ID != q.ID || r.QName != q.Question.Name || r.QType != q.Question.Type || r.QClass != q.Question.Class ||
				keyAP(r.Client) != keyAP(q.Client) || keyAP(r.Server) != keyAP(q.Server) || r.Truncated || mode&4 != 0 {
				t.Fatalf("learned %d from response %+v to query %+v (late %v)", n, r, q, mode&4 != 0)
			}
			for _, a := range r.Answers {
				if a.Addr.Is4() != (q.Question.Type == typeA) || a.Name != Normalize(q.Question.Name) {
					t.Fatalf("answer %+v to question %+v", a, q.Question)
				}
			}
		}
		if n2, reason2 := l.Response(rpkt); n2 != 0 || reason == "" && reason2 != IgnoredDuplicate && reason2 != IgnoredMalformed {
			t.Fatalf("the same response again: learned %d, %q (first: %d, %q)", n2, reason2, n, reason)
		}
	})
}

type matchSeed struct {
	query, response []byte
	mode            uint8
}

func matchSeeds() []matchSeed {
	q := buildQuery(0x1234, "WwW.example.com", typeA)
	r := buildResponse(0x1234, 0, question("WwW.example.com", typeA), []testRR{
		rrCNAME("www.example.com", "e1.cdn.net", 300), rrA("e1.cdn.net", "198.18.5.5", 60), rrA("e1.cdn.net", "fd00::5", 60)})
	q6 := buildQuery(7, "v6.example.com", typeAAAA)
	r6 := buildResponse(7, 0, question("v6.example.com", typeAAAA), []testRR{rrA("v6.example.com", "fd00::6", 60)})
	return []matchSeed{
		{q, r, 0},
		{q, r, 2},
		{q, r, 4},
		{q6, r6, 0x10},
		{q, buildResponse(0x1234, 0x200, question("WwW.example.com", typeA), nil), 0},
		{udpPacket(netip.MustParseAddrPort("[fd00::1]:5000"), netip.MustParseAddrPort("[fd00::2]:53"), q6),
			udpPacket(netip.MustParseAddrPort("[fd00::2]:53"), netip.MustParseAddrPort("[fd00::1]:5000"), r6), 1},
	}
}

// TestWriteMatchSeeds refreshes testdata/fuzz/FuzzQueryMatch from matchSeeds when
// LATCH_WRITE_SEEDS=1.
func TestWriteMatchSeeds(t *testing.T) {
	if os.Getenv("LATCH_WRITE_SEEDS") != "1" {
		t.Skip("set LATCH_WRITE_SEEDS=1 to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzQueryMatch")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range matchSeeds() {
		body := "go test fuzz v1\n[]byte(" + goQuote(s.query) + ")\n[]byte(" + goQuote(s.response) + ")\n" + fmt.Sprintf("uint8(%d)\n", s.mode)
		if err := os.WriteFile(filepath.Join(dir, "seed"+strconv.Itoa(i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkLearnerQueryAndAnswer is what a query and its answer cost the reader
// (compare BenchmarkParsePacket, the response's parse alone).
func BenchmarkLearnerQueryAndAnswer(b *testing.B) {
	l := NewLearner(NewCache(0))
	qs := make([][]byte, 256)
	rs := make([][]byte, 256)
	for i := range qs {
		client := netip.AddrPortFrom(testClient.Addr(), uint16(30000+i))
		name := "www" + strings.Repeat("x", i%8) + ".example.com"
		qs[i] = queryPkt(client, testServer, uint16(i), name, typeA)
		rs[i] = udpPacket(testServer, client, buildResponse(uint16(i), 0, question(name, typeA), []testRR{
			rrCNAME(name, "e1.cdn.net", 300), rrA("e1.cdn.net", "198.18.5.5", 60)}))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Query(qs[i%256], 0)
		if n, r := l.Response(rs[i%256]); n != 1 {
			b.Fatalf("learned %d, %q", n, r)
		}
		i++
	}
}
