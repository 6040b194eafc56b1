package linux

import (
	"fmt"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
)

// Review 40, finding 1 (low, as review 38 finding 4 which it revives; any local user
// can do the filling): the record of held DNS queries' senders (dnsSenders, which
// b2dfb00 made decide whom a held query is credited to) is one table of 4,096 for the
// whole machine, kept 5 s, and when it is full of unexpired records a new query is not
// recorded at all (put returns). queryProgram then falls back to the lookup by tuple
// — whichever socket holds the query's port when the copy is read — which is exactly
// the crediting review 38 finding 4 showed steerable: a program that may ask a server
// of its choosing (dig) sends ~820 queries a second, each a new flow to port 53 that
// the queue holds (new source port or server address each time), keeps the table full,
// then asks its server for bank.example.com and closes; the limited program that binds
// the port (or shares it by SO_REUSEPORT) gets the answer as its own name. The
// filling needs no DNS allowed: put runs while the datagram is held, before its
// verdict, so denied queries (or ones waiting on a question: vary only the source port
// and they share one) fill the table too. Any other user can fill it (it is not per
// user): then every quick resolver's
// queries (one query, one answer, close) lose their program and their names are
// shared only. The table should not let one sender's records crowd out everyone's
// (a per-user bound as the learner's 512, or evicting the oldest), and a query whose
// record could not be kept should not fall back to the port's current holder.
//
// Fails on the current code. Run (as root; the backend's New needs the firewall
// tools, else it skips):
// go test -count=1 -run TestReview40SendersTableFullRevivesPortTaker ./internal/intercept/linux/
func TestReview40SendersTableFullRevivesPortTaker(t *testing.T) {
	limited := procattr.Process{PID: 77, Exe: "/usr/bin/limited", Identity: engine.IdentityVerified, UID: 1000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: portTakerResolver{now: limited}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	dig := dnsname.Program{Exe: "/usr/bin/dig", Identity: uint8(engine.IdentityVerified), UID: 1000}
	now := time.Now()
	// The flood: held queries, each its own flow (a source port and server of its
	// own), all within the 5 s a record is kept. As the queue records them (put).
	for i := range 4096 {
		q := dnsQuery(fmt.Sprintf("198.18.0.1:%d", 20000+i%40000), fmt.Sprintf("198.18.%d.%d:53", 1+i/250, 1+i%250), uint16(i), "x.test")
		b.dnsSenders.put(&q, dig, now)
	}
	q := dnsQuery("198.18.0.1:40000", "198.18.0.66:53", 7, "bank.example.com")
	b.dnsSenders.put(&q, dig, now) // the queue held this query and saw dig send it
	if p := b.queryProgram(engine.UDP, q, 1000); p.Exe == limited.Exe {
		t.Errorf("the query dig sent (the queue saw it) was credited to %s, which holds its port now, "+
			"because 4096 other held queries filled the senders table: its answer becomes that program's own name", p.Exe)
	}
}
