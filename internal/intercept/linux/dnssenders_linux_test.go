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

func TestDNSSendersTable(t *testing.T) {
	c1, c2 := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.1:40001")
	srv := netip.MustParseAddrPort("198.18.0.2:53")
	a := dnsname.Program{Exe: "/usr/bin/a", UID: 1000}
	b := dnsname.Program{Exe: "/usr/bin/b", UID: 1000}
	t0 := time.Unix(1000, 0)
	tab := newDNSSenders(2, 5*time.Second)
	tab.put(c1, srv, a, t0)
	if p, ok := tab.get(c1, srv, t0.Add(time.Second)); !ok || p != a {
		t.Fatalf("get after put: %v %v", p, ok)
	}
	if _, ok := tab.get(c2, srv, t0); ok {
		t.Fatal("another client port was credited")
	}
	if _, ok := tab.get(c1, netip.MustParseAddrPort("198.18.0.3:53"), t0); ok {
		t.Fatal("another server was credited")
	}
	if _, ok := tab.get(c1, srv, t0.Add(6*time.Second)); ok {
		t.Fatal("a record older than its window was used")
	}
	// Full: a third flow is not kept while the others are fresh; once they expired, it is.
	tab.put(c2, srv, b, t0)
	c3 := netip.MustParseAddrPort("198.18.0.1:40002")
	tab.put(c3, srv, b, t0.Add(time.Second))
	if _, ok := tab.get(c3, srv, t0.Add(time.Second)); ok {
		t.Fatal("a full table took a record beyond its bound")
	}
	tab.put(c3, srv, b, t0.Add(10*time.Second))
	if p, ok := tab.get(c3, srv, t0.Add(10*time.Second)); !ok || p != b || len(tab.m) != 1 {
		t.Fatalf("after expiry: %v %v, %d records", p, ok, len(tab.m))
	}
}

// goneResolver finds no socket: the program closed it.
type goneResolver struct{ instantResolver }

func (goneResolver) ResolveDev(engine.Protocol, netip.AddrPort, netip.AddrPort, int32, int) (procattr.Process, error) {
	return procattr.Process{}, errors.New("no such socket")
}

// TestQueryProgramAfterSocketClosed: a DNS query whose socket is gone when the
// learner reads its copy is credited to the program the queue saw send it, and only
// to that flow and user; without a record, to nobody.
func TestQueryProgramAfterSocketClosed(t *testing.T) {
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: goneResolver{}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	client, srv := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:53")
	if p := b.queryProgram(engine.UDP, client, srv, 1000); p.Known() {
		t.Fatalf("credited with no record: %+v", p)
	}
	prog := dnsname.Program{Exe: "/usr/bin/dig", Identity: uint8(engine.IdentityVerified), UID: 1000}
	b.dnsSenders.put(client, srv, prog, time.Now())
	if p := b.queryProgram(engine.UDP, client, srv, 1000); p != prog {
		t.Errorf("socket gone, queue saw the sender: got %+v, want %+v", p, prog)
	}
	if p := b.queryProgram(engine.UDP, client, srv, 1001); p.Known() {
		t.Errorf("credited to the record although the copy's user differs: %+v", p)
	}
	if p := b.queryProgram(engine.TCP, client, srv, 1000); p.Known() {
		t.Errorf("a TCP query credited from a UDP record: %+v", p)
	}
}
