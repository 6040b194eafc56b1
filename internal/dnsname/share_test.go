package dnsname

import (
	"net/netip"
	"testing"
)

// Queries whose copy names no user count as one client, whatever their source
// address: a user may send from any address of 127.0.0.0/8, so counting them per
// address would be no bound at all.
func TestQueriesWithoutUserShareOneClient(t *testing.T) {
	l, _ := newTestLearner()
	tracked := 0
	for i := 0; i < MaxPendingQueries; i++ {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(i >> 8), byte(i), 2}), 5353)
		if ok, _ := l.Query(queryPkt(client, testServer, uint16(i), "flood.example.net", typeA), -1); ok {
			tracked++
		}
	}
	if tracked != MaxPendingPerClient {
		t.Errorf("%d queries without a user from as many addresses: %d tracked, want %d (one client's share)", MaxPendingQueries, tracked, MaxPendingPerClient)
	}
	if ok, why := l.Query(queryPkt(testClient, testServer, 1, "bank.example.com", typeA), 1000); !ok {
		t.Errorf("a user's query is not tracked (%s) after a flood of queries naming no user", why)
	}
}

// A query over TCP whose copy names no user (its data sent after the socket closed)
// counts as the user whose SYN began the connection.
func TestTCPQueryWithoutUserCountsAsSYNsUser(t *testing.T) {
	l, _ := newTestLearner()
	useSubuid(t, "1001:100000:65536\n")
	for i := 0; i < MaxPendingPerClient; i++ {
		client := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.3"), uint16(10000+i))
		if ok, why := l.Query(queryPkt(client, testServer, uint16(i), "flood.example.net", typeA), 100000+int64(i%8)); !ok {
			t.Fatalf("query %d not tracked: %s", i, why)
		}
	}
	client := netip.MustParseAddrPort("198.18.0.1:41000")
	server := netip.MustParseAddrPort("198.18.0.2:53")
	l.Segment(tcpPacket(client, server, 1000, tcpSYN, nil), 100042, true)
	q := framed(buildQuery(9, "tcp.example.com", typeA))
	l.Segment(tcpPacket(client, server, 1001, 0x18, q), -1, true)
	s := l.Stats()
	if s.Pending != MaxPendingPerClient || s.QueriesNotTracked[NotTrackedClientLimit] != 1 {
		t.Errorf("a TCP query naming no user on a connection user 1001's subordinate uid began: pending %d, client_limit %d; want %d and 1",
			s.Pending, s.QueriesNotTracked[NotTrackedClientLimit], MaxPendingPerClient)
	}
}

// One user's SYNs to port 53 replace that user's streams, the least recently used
// first; the table stays bounded and its per-user counts follow FIN and RST.
func TestTCPStreamsSharedPerUser(t *testing.T) {
	l, _ := newTestLearner()
	useSubuid(t, "1001:100000:65536\n")
	victim := netip.MustParseAddrPort("198.18.0.1:41000")
	server := netip.MustParseAddrPort("198.18.0.2:53")
	l.Segment(tcpPacket(victim, server, 1, tcpSYN, nil), 1000, true)
	far := netip.MustParseAddr("198.19.0.0")
	for i := 0; i < 3*maxTCPStreams; i++ {
		far = far.Next()
		src := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(20000+i))
		l.Segment(tcpPacket(src, netip.AddrPortFrom(far, 53), 7, tcpSYN, nil), 100000+int64(i%50), true)
	}
	l.tcp.mu.Lock()
	n, victims, attackers := len(l.tcp.streams), l.tcp.owners[1000], l.tcp.owners[1001]
	l.tcp.mu.Unlock()
	if n != maxTCPStreams || victims != 1 || attackers != maxTCPStreams-1 {
		t.Errorf("after %d SYNs of one user's subordinate uids: %d streams (user 1000: %d, 1001: %d), want %d (1, %d)",
			3*maxTCPStreams, n, victims, attackers, maxTCPStreams, maxTCPStreams-1)
	}
	l.Segment(tcpPacket(victim, server, 2, tcpFIN|0x10, nil), 1000, true)
	l.tcp.mu.Lock()
	_, left := l.tcp.owners[1000]
	l.tcp.mu.Unlock()
	if left {
		t.Errorf("user 1000 still counted after its stream's FIN")
	}
}
