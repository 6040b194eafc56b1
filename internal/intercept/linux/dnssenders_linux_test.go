package linux

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
)

func dnsQuery(client, server string, id uint16, name string) dnsname.Query {
	return dnsname.Query{Client: netip.MustParseAddrPort(client), Server: netip.MustParseAddrPort(server), ID: id,
		Question: dnsname.Question{Name: name, Type: 1, Class: 1}}
}

func TestDNSSendersTable(t *testing.T) {
	const srv = "198.18.0.2:53"
	q1 := dnsQuery("198.18.0.1:40000", srv, 7, "bank.test")
	a := dnsname.Program{Exe: "/usr/bin/a", UID: 1000}
	b := dnsname.Program{Exe: "/usr/bin/b", UID: 1000}
	t0 := time.Unix(1000, 0)
	tab := newDNSSenders(2, 5*time.Second)
	tab.put(&q1, a, t0)
	if p, ok := tab.get(q1, t0.Add(time.Second)); !ok || p != a {
		t.Fatalf("get after put: %v %v", p, ok)
	}
	// An IPv4-mapped copy of the same query is the same query.
	mapped := q1
	mapped.Client = netip.AddrPortFrom(netip.AddrFrom16(q1.Client.Addr().As16()), q1.Client.Port())
	if _, ok := tab.get(mapped, t0); !ok {
		t.Error("the IPv4-mapped form of the query was not found")
	}
	for name, q := range map[string]dnsname.Query{
		"another client port":                   dnsQuery("198.18.0.1:40001", srv, 7, "bank.test"),
		"another server":                        dnsQuery("198.18.0.1:40000", "198.18.0.3:53", 7, "bank.test"),
		"another id (a later query, same flow)": dnsQuery("198.18.0.1:40000", srv, 8, "bank.test"),
		"another question, same id":             dnsQuery("198.18.0.1:40000", srv, 7, "other.test"),
		"the name in other letter case":         dnsQuery("198.18.0.1:40000", srv, 7, "BANK.test"),
	} {
		if _, ok := tab.get(q, t0); ok {
			t.Errorf("%s was credited", name)
		}
	}
	if _, ok := tab.get(q1, t0.Add(6*time.Second)); ok {
		t.Fatal("a record older than its window was used")
	}
	// Full: a third query evicts the oldest record of the user holding the most (here
	// the only user), and that user is marked as having lost one.
	q2 := dnsQuery("198.18.0.1:40000", srv, 8, "bank.test") // AAAA's id on the same flow
	tab.put(&q2, b, t0)
	if p, ok := tab.get(q2, t0); !ok || p != b {
		t.Fatalf("a second query on the flow: %v %v", p, ok)
	}
	if tab.lostFor(1000, t0) {
		t.Fatal("a user counted as losing a record before the table was full")
	}
	q3 := dnsQuery("198.18.0.1:40002", srv, 9, "c.test")
	tab.put(&q3, b, t0.Add(time.Second))
	if p, ok := tab.get(q3, t0.Add(time.Second)); !ok || p != b || len(tab.m) != 2 {
		t.Fatalf("a full table: the newest record %v %v, %d records", p, ok, len(tab.m))
	}
	if _, ok := tab.get(q1, t0.Add(time.Second)); ok {
		t.Fatal("a full table kept the oldest record beyond its bound")
	}
	if !tab.lostFor(1000, t0.Add(time.Second)) || !tab.lostFor(-1, t0.Add(time.Second)) || tab.lostFor(1001, t0.Add(time.Second)) {
		t.Fatal("the loss is not remembered for its user (and only it)")
	}
	tab.put(&q3, b, t0.Add(10*time.Second))
	if p, ok := tab.get(q3, t0.Add(10*time.Second)); !ok || p != b || len(tab.m) != 1 {
		t.Fatalf("after expiry: %v %v, %d records", p, ok, len(tab.m))
	}
	if tab.lostFor(1000, t0.Add(10*time.Second)) {
		t.Fatal("a loss remembered past its window")
	}
}

// TestDNSSendersFairShare: one user's flood of held queries evicts its own records,
// not another user's; the other user's next record evicts the flooder's.
func TestDNSSendersFairShare(t *testing.T) {
	const srv = "198.18.0.2:53"
	flooder := dnsname.Program{Exe: "/usr/bin/dig", UID: 1000}
	other := dnsname.Program{Exe: "/usr/bin/curl", UID: 1001}
	t0 := time.Unix(1000, 0)
	tab := newDNSSenders(64, 5*time.Second)
	mine := dnsQuery("198.18.0.1:30000", srv, 1, "mine.test")
	tab.put(&mine, other, t0)
	for i := range 1000 {
		q := dnsQuery(fmt.Sprintf("198.18.0.1:%d", 20000+i), srv, uint16(i), "x.test")
		tab.put(&q, flooder, t0.Add(time.Duration(i)*time.Millisecond))
	}
	now := t0.Add(time.Second)
	if p, ok := tab.get(mine, now); !ok || p != other {
		t.Fatalf("another user's flood evicted its record: %v %v", p, ok)
	}
	if len(tab.m) != 64 || tab.lostFor(1001, now) || !tab.lostFor(1000, now) {
		t.Fatalf("%d records; lost: other %v, flooder %v", len(tab.m), tab.lostFor(1001, now), tab.lostFor(1000, now))
	}
	for i := range 10 {
		q := dnsQuery(fmt.Sprintf("198.18.0.1:%d", 31000+i), srv, uint16(i), "more.test")
		tab.put(&q, other, now)
	}
	if p, ok := tab.get(mine, now); !ok || p != other || tab.users[1001].n != 11 || tab.users[1000].n != 53 {
		t.Fatalf("the other user's records evicted the flooder's? %v %v, users %d/%d", p, ok, tab.users[1001].n, tab.users[1000].n)
	}
}

// goneResolver finds no socket: the program closed it.
type goneResolver struct{ instantResolver }

func (goneResolver) ResolveDev(engine.Protocol, netip.AddrPort, netip.AddrPort, int32, int) (procattr.Process, error) {
	return procattr.Process{}, errors.New("no such socket")
}

// TestQueryProgramAfterSocketClosed: a DNS query whose socket is gone when the
// learner reads its copy is credited to the program the queue saw send that very
// query, and only for that user; without a record, to nobody.
func TestQueryProgramAfterSocketClosed(t *testing.T) {
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: goneResolver{}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	q := dnsQuery("198.18.0.1:40000", "198.18.0.2:53", 7, "bank.test")
	if p := b.queryProgram(engine.UDP, q, 1000); p.Known() {
		t.Fatalf("credited with no record: %+v", p)
	}
	prog := dnsname.Program{Exe: "/usr/bin/dig", Identity: uint8(engine.IdentityVerified), UID: 1000}
	b.dnsSenders.put(&q, prog, time.Now())
	if p := b.queryProgram(engine.UDP, q, 1000); p != prog {
		t.Errorf("socket gone, queue saw the sender: got %+v, want %+v", p, prog)
	}
	if p := b.queryProgram(engine.UDP, q, 1001); p.Known() {
		t.Errorf("credited to the record although the copy's user differs: %+v", p)
	}
	if p := b.queryProgram(engine.TCP, q, 1000); p.Known() {
		t.Errorf("a TCP query credited from a UDP record: %+v", p)
	}
	later := dnsQuery("198.18.0.1:40000", "198.18.0.2:53", 9, "chosen.test")
	if p := b.queryProgram(engine.UDP, later, 1000); p.Known() {
		t.Errorf("another query on the same sockets (not held by the queue) credited to the record: %+v", p)
	}
}

// TestQueryProgramRecordDropped: a held query whose record a flood of the same
// user's held queries evicted is credited to nobody, not to the port's holder; a
// query of another user, not held, is still credited by the socket lookup.
func TestQueryProgramRecordDropped(t *testing.T) {
	limited := procattr.Process{PID: 77, Exe: "/usr/bin/limited", Identity: engine.IdentityVerified, UID: 1000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: portTakerResolver{now: limited}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	dig := dnsname.Program{Exe: "/usr/bin/dig", Identity: uint8(engine.IdentityVerified), UID: 1000}
	now := time.Now()
	q := dnsQuery("198.18.0.1:40000", "198.18.0.66:53", 7, "bank.example.com")
	b.dnsSenders.put(&q, dig, now)
	for i := range 4096 {
		f := dnsQuery(fmt.Sprintf("198.18.0.1:%d", 20000+i%40000), fmt.Sprintf("198.18.%d.%d:53", 1+i/250, 1+i%250), uint16(i), "x.test")
		b.dnsSenders.put(&f, dig, now)
	}
	if p := b.queryProgram(engine.UDP, q, 1000); p.Known() {
		t.Errorf("a held query whose record was evicted credited to %s (the port's holder now)", p.Exe)
	}
	if p := b.queryProgram(engine.UDP, q, 1001); p.Exe != limited.Exe {
		t.Errorf("another user's query (no loss of its own) not credited by the lookup: %+v", p)
	}
}
