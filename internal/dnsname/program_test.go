package dnsname

import (
	"net/netip"
	"testing"
	"time"
)

// TestLearnerKeepsNamesPerProgram: two programs resolve different names to one
// address; each looks up its own, a third program (and an unattributed query's
// answer) only the machine-wide latest, labelled not own. Another identity or user of
// the same path is another program.
func TestLearnerKeepsNamesPerProgram(t *testing.T) {
	l, clk := newTestLearner()
	browser := Program{Exe: "/usr/bin/browser", Identity: 1, UID: 1000}
	mailer := Program{Exe: "/usr/bin/mailer", Identity: 1, UID: 1000}
	clients := map[netip.AddrPort]Program{
		netip.MustParseAddrPort("198.18.0.1:40001"): browser,
		netip.MustParseAddrPort("198.18.0.1:40002"): mailer,
	}
	l.SetAttributor(func(tcp bool, q Query, uid int64) Program {
		client, server := q.Client, q.Server
		if server != testServer || uid != 1000 {
			t.Errorf("attributor asked for %v -> %v uid %d", client, server, uid)
		}
		return clients[client]
	})
	cdn := netip.MustParseAddr("198.18.7.7")
	ask := func(client string, id uint16, name string) {
		t.Helper()
		c := netip.MustParseAddrPort(client)
		if ok, why := l.Query(queryPkt(c, testServer, id, name, typeA), 1000); !ok {
			t.Fatalf("query not tracked: %s", why)
		}
		if n, why := l.Response(answerPkt(c, testServer, id, name, typeA, rrA(name, cdn.String(), 300))); n != 1 {
			t.Fatalf("answer taught %d (%s)", n, why)
		}
	}
	ask("198.18.0.1:40001", 1, "bank.example.com")
	ask("198.18.0.1:40002", 2, "cdn-other.example.net")
	ask("198.18.0.1:40003", 3, "third.example.org") // no program known: machine-wide only

	for _, tc := range []struct {
		prog Program
		name string
		own  bool
	}{
		{browser, "bank.example.com", true},
		{mailer, "cdn-other.example.net", true},
		{Program{Exe: "/usr/bin/other", Identity: 1, UID: 1000}, "third.example.org", false},
		{Program{Exe: "/usr/bin/browser", Identity: 2, UID: 1000}, "third.example.org", false}, // forged path
		{Program{Exe: "/usr/bin/browser", Identity: 1, UID: 1001}, "third.example.org", false}, // another user
		{Program{}, "third.example.org", false},
	} {
		name, own, ok := l.Cache().LookupFor(tc.prog, cdn)
		if !ok || name != tc.name || own != tc.own {
			t.Errorf("LookupFor(%+v) = %q own %v ok %v; want %q own %v", tc.prog, name, own, ok, tc.name, tc.own)
		}
	}
	if s := l.Stats(); s.Attributed != 2 || s.OwnNames != 2 || s.Names != 1 {
		t.Errorf("stats attributed %d own_names %d names %d; want 2 2 1", s.Attributed, s.OwnNames, s.Names)
	}
	// Own names expire with their TTL (raised to MinTTL, here 300 s).
	clk.advance(301 * time.Second)
	if name, _, ok := l.Cache().LookupFor(browser, cdn); ok {
		t.Errorf("after the TTL: still %q", name)
	}
}

// TestOwnNamesBounded: the per-program map holds at most its size, however many
// programs resolve, and recently used names survive a flood by another program of the
// same user (its names replace the user's least recently used), and names used or not
// a flood by other users (their names replace their own).
func TestOwnNamesBounded(t *testing.T) {
	for _, tc := range []struct {
		what    string
		users   int32
		lookups bool
	}{{"a program of the same user", 1, true}, {"programs of 10 other users", 10, false}} {
		c, _ := newTestCache(1024)
		hot := Program{Exe: "/usr/bin/hot", Identity: 1, UID: 0}
		hotAddr := netip.MustParseAddr("198.18.0.1")
		c.AddFor(hot, hotAddr, "hot.example.com", time.Hour)
		a := netip.MustParseAddr("198.19.0.0")
		for i := 0; i < 50000; i++ {
			a = a.Next()
			uid := int32(i) % tc.users
			if tc.users > 1 {
				uid++
			}
			c.AddFor(Program{Exe: "/tmp/flood", Identity: 1, UID: uid}, a, "x.example.com", time.Hour)
			if i%100 == 0 {
				if _, own, _ := c.own.lookupNoMark(hotAddr, hot, tc.lookups); !own {
					t.Fatalf("flood by %s: a name was evicted after %d others", tc.what, i)
				}
			}
		}
		if n := c.OwnLen(); n > 1024 {
			t.Errorf("flood by %s: own names %d, bound 1024", tc.what, n)
		}
	}
}

// lookupNoMark is LookupFor's own-name lookup, marking the entry used only if mark.
func (t *table[K]) lookupNoMark(addr netip.Addr, p Program, mark bool) (string, bool, bool) {
	k := keyOf(addr)
	s := &t.shards[ownShardIndex(k, p)]
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.index[any(ownKey{k, p}).(K)]
	if ok && mark {
		s.used[e.slot].Store(1)
	}
	return e.name, ok, ok
}
