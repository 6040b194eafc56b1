package linux

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
	"github.com/latchfw/latch/internal/procattr"
)

// TestDNSSendersStampedAtVerdict: a held DNS query's record is kept from its
// verdict, not from when it was held (a hold may wait on the user for minutes).
func TestDNSSendersStampedAtVerdict(t *testing.T) {
	dig := procattr.Process{PID: 77, Exe: "/usr/bin/dig", Identity: engine.IdentityVerified, UID: 1000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: portTakerResolver{now: dig}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	client, server := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.66:53")
	msg := binary.BigEndian.AppendUint16(nil, 7)
	msg = append(msg, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0)
	for _, l := range []string{"bank", "example", "com"} {
		msg = append(msg, byte(len(l)))
		msg = append(msg, l...)
	}
	msg = append(msg, 0, 0, 1, 0, 1)
	verdicts := make(chan func(engine.Verdict), 1)
	later := intercept.DeciderFunc(func(_ *engine.Request, verdict func(engine.Verdict)) { verdicts <- verdict })
	p := nfq.Packet{ID: 1, HWProto: 0x0800, Hook: hookLocalOut, HasUID: true, UID: 1000, Payload: udp4Packet(client, server, 1, msg), Time: time.Now()}
	b.handle(&p, later)
	var verdict func(engine.Verdict)
	select {
	case verdict = <-verdicts:
	case <-time.After(2 * time.Second):
		t.Fatal("no decision asked within 2 s")
	}
	q := dnsQuery(client.String(), server.String(), 7, "bank.example.com")
	at := func() time.Time {
		b.dnsSenders.mu.Lock()
		defer b.dnsSenders.mu.Unlock()
		if s := b.dnsSenders.m[flowOf(&q)]; s != nil {
			return s.at
		}
		return time.Time{}
	}
	held := at()
	if held.IsZero() {
		t.Fatal("the held query has no record")
	}
	time.Sleep(50 * time.Millisecond)
	given := time.Now()
	verdict(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule})
	if got := at(); got.Before(given) {
		t.Errorf("record stamped %v after the hold, not at the verdict (%v after the hold)", got.Sub(held), given.Sub(held))
	}
	if pr := b.queryProgram(engine.UDP, q, 1000); pr.Exe != dig.Exe {
		t.Errorf("credited to %+v, want %s", pr, dig.Exe)
	}
}
