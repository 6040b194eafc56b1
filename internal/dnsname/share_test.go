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
