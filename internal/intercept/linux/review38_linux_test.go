package linux

import (
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
)

// portTakerResolver finds, on every port, the socket another program bound there
// after the query's sender closed its own (or one sharing the port by SO_REUSEPORT,
// which the lookup by tuple returns whichever sent).
type portTakerResolver struct {
	instantResolver
	now procattr.Process
}

func (r portTakerResolver) ResolveDev(engine.Protocol, netip.AddrPort, netip.AddrPort, int32, int) (procattr.Process, error) {
	return r.now, nil
}

// Review 38, finding 4 (low; same user, two programs): a DNS query's copy is
// credited to whatever socket holds its source port when the copy is read (a lookup
// by tuple, "a live socket on that port is always asked first"), not to the socket
// that sent it, even when the queue held that very query and recorded its sender.
// A program that may send DNS to a server of its choosing (dig, allowed udp/53)
// asks that server for bank.example.com from port P and closes; a program of the
// same user limited to `--host '*.example.com'` binds P before latch reads the copy
// (or shares P with SO_REUSEPORT): the answer — the chosen server's address — becomes
// the limited program's own name for bank.example.com, and its connections there
// are allowed. The connection path credits a shared port's datagram only to the
// socket that sent it (procattr.ResolveSender); the query path does not.
//
// Run (as root; the backend's New needs the firewall tools, else it skips):
// go test -count=1 -run TestReview38QueryCreditedToPortTaker ./internal/intercept/linux/
func TestReview38QueryCreditedToPortTaker(t *testing.T) {
	limited := procattr.Process{PID: 77, Exe: "/usr/bin/limited", Identity: engine.IdentityVerified, UID: 1000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: portTakerResolver{now: limited}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	q := dnsQuery("198.18.0.1:40000", "198.18.0.66:53", 7, "bank.example.com")
	dig := dnsname.Program{Exe: "/usr/bin/dig", Identity: uint8(engine.IdentityVerified), UID: 1000}
	b.dnsSenders.put(&q, dig, time.Now()) // the queue held this query and saw dig send it
	if p := b.queryProgram(engine.UDP, q, 1000); p.Exe == limited.Exe {
		t.Errorf("the query dig sent (the queue saw it) was credited to %s, which holds its port now: "+
			"its answer becomes that program's own name", p.Exe)
	}
}
