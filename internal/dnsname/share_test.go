package dnsname

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
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

// The per-user bookkeeping of a shard stays consistent through adds, replacements and
// answers that move an address from one user to another; a user under its share gets
// its names in, and the flooder holds the rest.
func TestCacheSharesPerUser(t *testing.T) {
	c, _ := newTestCache(1024) // 64 per shard
	check := func(when string) {
		t.Helper()
		for _, tb := range []interface{ consistent() error }{&c.shared, &c.own} {
			if err := tb.consistent(); err != nil {
				t.Fatalf("%s: %v", when, err)
			}
		}
	}
	victim := Program{Exe: "/usr/bin/firefox", Identity: 1, UID: 1000}
	for i := 0; i < 20000; i++ {
		a := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8 & 7), byte(i)}) // 2,048 addresses: later ones move between users
		c.AddFor(Program{Exe: "/tmp/flood", Identity: 1, UID: int32(1001 + i%3)}, a, "x.example.net", time.Hour)
		if i%397 == 0 {
			c.AddFor(victim, a, "v.example.com", time.Hour)
		}
	}
	check("after the flood")
	victims := 0
	for i := 0; i < 20000; i += 397 {
		a := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8 & 7), byte(i)})
		if name, own, _ := c.LookupFor(victim, a); own && name == "v.example.com" {
			victims++
		}
	}
	if want := 20000/397 + 1; victims != want {
		t.Errorf("the victim holds %d of its %d own names after 3 users' flood", victims, want)
	}
}

// consistent checks every shard's per-user bookkeeping.
func (t *table[K]) consistent() error {
	for si := range t.shards {
		s := &t.shards[si]
		s.mu.RLock()
		held := 0
		if len(s.list) != len(s.owners) {
			s.mu.RUnlock()
			return fmt.Errorf("shard %d: %d owners, %d listed", si, len(s.owners), len(s.list))
		}
		for o, h := range s.owners {
			if len(h.slots) == 0 || h.owner != o || s.list[h.at] != h {
				s.mu.RUnlock()
				return fmt.Errorf("shard %d: owner %d (%d) holds %d slots, listed at %d", si, o, h.owner, len(h.slots), h.at)
			}
			for p, i := range h.slots {
				if s.slots[i].h != h || int(s.slots[i].pos) != p {
					s.mu.RUnlock()
					return fmt.Errorf("shard %d: slot %d listed for owner %d at %d, says %d", si, i, o, p, s.slots[i].pos)
				}
			}
			held += len(h.slots)
		}
		if held != len(s.slots) || len(s.index) != len(s.slots) || len(s.slots) > s.limit {
			s.mu.RUnlock()
			return fmt.Errorf("shard %d: %d slots, %d held by owners, %d indexed, limit %d", si, len(s.slots), held, len(s.index), s.limit)
		}
		for k, e := range s.index {
			if s.slots[e.slot].key != k {
				s.mu.RUnlock()
				return fmt.Errorf("shard %d: index and slot %d disagree", si, e.slot)
			}
		}
		s.mu.RUnlock()
	}
	return nil
}
