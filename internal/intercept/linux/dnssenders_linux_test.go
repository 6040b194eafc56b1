package linux

import (
	"errors"
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
	// Full: a third query is not kept while the others are fresh; once they expired, it is.
	q2 := dnsQuery("198.18.0.1:40000", srv, 8, "bank.test") // AAAA's id on the same flow
	tab.put(&q2, b, t0)
	if p, ok := tab.get(q2, t0); !ok || p != b {
		t.Fatalf("a second query on the flow: %v %v", p, ok)
	}
	q3 := dnsQuery("198.18.0.1:40002", srv, 9, "c.test")
	tab.put(&q3, b, t0.Add(time.Second))
	if _, ok := tab.get(q3, t0.Add(time.Second)); ok {
		t.Fatal("a full table took a record beyond its bound")
	}
	tab.put(&q3, b, t0.Add(10*time.Second))
	if p, ok := tab.get(q3, t0.Add(10*time.Second)); !ok || p != b || len(tab.m) != 1 {
		t.Fatalf("after expiry: %v %v, %d records", p, ok, len(tab.m))
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
