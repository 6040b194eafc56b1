package dnsname

import (
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/subid"
)

// useSubuid makes the learner read /etc/subuid lines from content for the test.
func useSubuid(t *testing.T, content string) {
	t.Helper()
	f := t.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	subid.SetFile(f)
	t.Cleanup(func() { subid.SetFile(subid.DefaultFile) })
}

// Review 38, finding 1 (medium, DoS of host rules across users): the name cache
// has no share per user or program. Pending queries are bounded per user so that
// "one user flooding queries costs only that user's names" (README, Hostnames), but
// the names themselves are not: one unprivileged user who asks for names whose
// answers carry many A records (a zone of its own, reached through the system's
// resolver like any lookup: 512 queries may wait at once, each answer may carry
// hundreds of addresses) replaces every other program's own names in the bounded
// maps (65,536 each, CLOCK eviction). Another user's browser that resolved
// bank.example.com a moment before (and has not connected yet, or last connected
// before the clock hand went round) then finds no own name for the address: its
// `--host bank.example.com --action allow` rule no longer matches (the connection
// becomes a question or the default), and a `--host ... --action deny` rule no longer
// matches either (a broader allow rule for the app then decides).
//
// Run: go test -count=1 -run TestReview38NameFloodEvictsOtherUsersOwnNames ./internal/dnsname/
func TestReview38NameFloodEvictsOtherUsersOwnNames(t *testing.T) {
	c := &fakeClock{}
	c.ns.Store(int64(1_000_000 * time.Second))
	l := NewLearner(NewCache(0)) // the daemon's size (DefaultMaxEntries)
	l.now = c.now
	l.cache.now = c.now

	victim := Program{Exe: "/usr/bin/firefox", Identity: 1, UID: 1000}
	attacker := Program{Exe: "/home/mallory/flood", Identity: 1, UID: 1001}
	victimClient := netip.MustParseAddrPort("198.18.0.1:40000")
	l.SetAttributor(func(tcp bool, q Query, uid int64) Program {
		if q.Client == victimClient {
			return victim
		}
		return attacker
	})

	// The victim resolves bank.example.com (its own name for 198.18.9.9).
	bank := netip.MustParseAddr("198.18.9.9")
	if ok, why := l.Query(queryPkt(victimClient, testServer, 1, "bank.example.com", typeA), 1000); !ok {
		t.Fatalf("victim's query not tracked: %s", why)
	}
	if n, why := l.Response(answerPkt(victimClient, testServer, 1, "bank.example.com", typeA, rrA("bank.example.com", bank.String(), 300))); n != 1 {
		t.Fatalf("victim's answer taught %d (%s)", n, why)
	}
	if name, own, _ := l.Cache().LookupFor(victim, bank); !own || name != "bank.example.com" {
		t.Fatalf("before the flood: %q own %v", name, own)
	}

	// Another user asks 160 names, each answered with 1,000 addresses (about 16 KB an
	// answer, what a resolver hands over TCP or EDNS), one query at a time: well
	// within its 512 waiting queries. Every answer matches its query.
	const perAnswer = 1000
	next := netip.MustParseAddr("198.19.0.0")
	for i := 0; i < 160; i++ {
		client := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.3"), uint16(20000+i))
		name := "x" + strconv.Itoa(i) + ".mallory.example.net"
		if ok, why := l.Query(queryPkt(client, testServer, uint16(i), name, typeA), 1001); !ok {
			t.Fatalf("attacker's query %d not tracked: %s", i, why)
		}
		rrs := make([]testRR, perAnswer)
		for j := range rrs {
			next = next.Next()
			b := next.As4()
			rrs[j] = testRR{name, typeA, 300, b[:]}
		}
		if n, why := l.Response(answerPkt(client, testServer, uint16(i), name, typeA, rrs...)); n != perAnswer {
			t.Fatalf("attacker's answer %d taught %d (%s)", i, n, why)
		}
		c.advance(5 * time.Millisecond) // 0.8 s in all
	}

	// The victim connects now, 0.8 s after its lookup: its own name must still be there.
	name, own, ok := l.Cache().LookupFor(victim, bank)
	if !ok || !own || name != "bank.example.com" {
		t.Errorf("after another user's flood of answers the victim's own name for %v is %q (own %v, found %v); "+
			"want bank.example.com, own: one user's answers replaced another user's names, so its host rules stop matching",
			bank, name, own, ok)
	}
	if name, ok := l.Cache().Lookup(bank); !ok || name != "bank.example.com" {
		t.Logf("machine-wide name for %v now %q (found %v)", bank, name, ok)
	}
}

// Review 38, finding 3 (low, DoS of names over TCP across users): the DNS-over-TCP
// streams latch follows are bounded at 512 for the whole machine, the least recently
// used dropped first, with no share per user. A SYN to any address's port 53 opens a
// stream (its copy is taken first in LATCH-OUT, before latch decides the connection,
// so even SYNs latch then drops count): one unprivileged user sending 512 SYNs (a
// non-blocking connect loop to unreachable addresses) between another program's SYN
// and its answer drops that program's streams, and its answer over TCP (what
// resolvers fall back to for a truncated answer) teaches nothing: its host rules do
// not match.
//
// Run: go test -count=1 -run TestReview38TCPStreamFloodDropsOtherUsersStream ./internal/dnsname/
func TestReview38TCPStreamFloodDropsOtherUsersStream(t *testing.T) {
	l, _ := newTestLearner()
	client := netip.MustParseAddrPort("198.18.0.1:41000")
	server := netip.MustParseAddrPort("198.18.0.2:53")
	addr := netip.MustParseAddr("198.18.9.9")
	const cseq, sseq = 1000, 5000
	l.Segment(tcpPacket(client, server, cseq, tcpSYN, nil), 1000, true)
	l.Segment(tcpPacket(server, client, sseq, tcpSYN|0x10, nil), -1, false)

	// Another user's SYNs to 512 addresses (never answered).
	far := netip.MustParseAddr("198.19.0.0")
	for i := 0; i < maxTCPStreams; i++ {
		far = far.Next()
		src := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(50000+i))
		l.Segment(tcpPacket(src, netip.AddrPortFrom(far, 53), 7, tcpSYN, nil), 1001, true)
	}

	q := framed(buildQuery(9, "tcp.example.com", typeA))
	l.Segment(tcpPacket(client, server, cseq+1, 0x18, q), 1000, true)
	answer := framed(buildResponse(9, 0, question("tcp.example.com", typeA), []testRR{rrA("tcp.example.com", addr.String(), 60)}))
	if n := l.Segment(tcpPacket(server, client, sseq+1, 0x18, answer), -1, false); n != 1 {
		t.Errorf("the answer over TCP taught %d addresses after another user's %d SYNs; want 1: "+
			"one user's SYNs to port 53 end another user's DNS-over-TCP learning", n, maxTCPStreams)
	}
}

// Review 38, finding 5 (medium, DoS of every user's names): the pending-query table
// (4,096) is shared out per user id, 512 each, on the reasoning that "eight users must
// flood at once to fill the table". But one unprivileged user commonly owns many user
// ids: the subordinate ranges of /etc/subuid (65,536 by default for every user adduser
// and useradd create, for rootless containers); newuidmap maps them into a user
// namespace that still shares the host's network namespace, so its sockets' queries
// pass LATCH-OUT and carry those uids (NFLOG reports the kernel uid). Eight of them
// fill the table; queries are copied before latch decides them, so they need not
// even be allowed, and each waits AnswerWindow (5 s): about 820 queries a second keep
// it full. Every other user's query is then `table_full`, its answer teaches nothing,
// and no host rule matches for anyone.
//
// Run: go test -count=1 -run TestReview38SubordinateUIDsFillPendingTable ./internal/dnsname/
func TestReview38SubordinateUIDsFillPendingTable(t *testing.T) {
	l, _ := newTestLearner()
	// The attacker's subordinate uids 100000-100007 (its own /etc/subuid range).
	useSubuid(t, "1001:100000:65536\n")
	// Whether the flood's queries are tracked is the flooder's loss, not checked here
	// (with the fix, its uids share its 512).
	n := 0
	for u := int64(100000); u < 100008; u++ {
		for i := 0; i < MaxPendingPerClient; i++ {
			client := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.3"), uint16(10000+n))
			l.Query(queryPkt(client, testServer, uint16(n), "flood.example.net", typeA), u)
			n++
		}
	}
	// Another user's query.
	if ok, why := l.Query(queryPkt(testClient, testServer, 1, "bank.example.com", typeA), 1000); !ok {
		t.Errorf("another user's query is not tracked (%s) once one user's %d subordinate uids have %d queries waiting: "+
			"its answer teaches nothing and its host rules stop matching", why, 8, n)
	}
}
