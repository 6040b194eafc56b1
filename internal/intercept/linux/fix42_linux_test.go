package linux

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
	"github.com/latchfw/latch/internal/procattr"
	"github.com/latchfw/latch/internal/subid"
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

// TestDNSSendersLostMarksBounded: losses of more users than the table holds forget
// the oldest marks, never mark a user who lost nothing, and keep the memory bounded.
func TestDNSSendersLostMarksBounded(t *testing.T) {
	tab := newDNSSenders(64, 5*time.Second)
	now := time.Unix(1000, 0)
	for i := range 1000 {
		q := dnsQuery(fmt.Sprintf("198.18.0.1:%d", 20000+i), "198.18.0.2:53", uint16(i), "x.test")
		tab.put(&q, dnsname.Program{Exe: "/x", UID: int32(5000 + i)}, now.Add(time.Duration(i)*time.Millisecond))
	}
	end := now.Add(time.Second)
	last := int64(tab.lostNew.owner) // the last put's victim
	if len(tab.lost) > 64 || tab.lostFor(1001, end) || !tab.lostFor(last, end) {
		t.Errorf("%d marks (max 64); never lost 1001: %v; the latest loser %d: %v", len(tab.lost), tab.lostFor(1001, end), last, tab.lostFor(last, end))
	}
	n := 0
	for m := tab.lostOld; m != nil; m = m.next {
		if tab.lost[m.owner] != m {
			t.Fatal("a listed mark not in the map")
		}
		n++
	}
	if n != len(tab.lost) {
		t.Fatalf("%d marks listed, %d mapped", n, len(tab.lost))
	}
}

// TestDNSSendersSubuidsOneShare: a user's subordinate uids share its records and
// its losses.
func TestDNSSendersSubuidsOneShare(t *testing.T) {
	f := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(f, []byte("1002:100000:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	subid.SetFile(f)
	t.Cleanup(func() { subid.SetFile(subid.DefaultFile) })
	tab := newDNSSenders(8, 5*time.Second)
	now := time.Unix(1000, 0)
	other := dnsQuery("198.18.0.1:30000", "198.18.0.2:53", 1, "mine.test")
	tab.put(&other, dnsname.Program{Exe: "/usr/bin/curl", UID: 1001}, now)
	for i := range 100 {
		q := dnsQuery(fmt.Sprintf("198.18.0.1:%d", 20000+i), "198.18.0.2:53", uint16(i), "x.test")
		tab.put(&q, dnsname.Program{Exe: "/x", UID: int32(100000 + i)}, now)
	}
	if _, ok := tab.get(other, now); !ok || tab.lostFor(1001, now) || !tab.lostFor(1002, now) || !tab.lostFor(100500, now) || len(tab.users) != 2 {
		t.Errorf("kept %v, lost 1001 %v, 1002 %v, a subuid %v; %d shares", ok, tab.lostFor(1001, now), tab.lostFor(1002, now), tab.lostFor(100500, now), len(tab.users))
	}
}
