package linux

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
	"github.com/latchfw/latch/internal/subid"
)

// Review 45, finding 1 (low, configuration-dependent): dnsSenders keys shares and
// loss marks by int32(subid.Owner(uid)). Owner returns Unknown(start) = 1<<32|start
// for a range whose user name is not found (a directory user the build cannot see,
// or one past maxNSSLookups), promised to be "above every uid" so that no other uid
// counts as it; int32 truncates it to start, the very number of the uid start. When
// uid start is a login uid (/etc/passwd: a user of its own even inside the range),
// that user and the unresolved range's owner share one share and one loss mark: the
// range owner's flood of held queries from its subordinate uids (a rootless
// container) evicts the login user's records (oldest of the shared share first) and
// marks it lost, so its queries are credited to nobody and its programs learn no own
// names. (The same for a resolved owner whose uid equals another range's start, and
// int32 of an owner >= 2^31 is negative: 0xFFFFFFFF is unknownOwner.) Fails on the
// current code.
func TestReview45UnresolvedRangeSharesLoginUidShare(t *testing.T) {
	dir := t.TempDir()
	sub, pw := filepath.Join(dir, "subuid"), filepath.Join(dir, "passwd")
	if err := os.WriteFile(sub, []byte("review45-no-such-user:100000:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pw, []byte("root:x:0:0::/root:/bin/sh\nvictim:x:100000:100000::/home/victim:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	subid.SetFile(sub)
	subid.SetPasswdFile(pw)
	t.Cleanup(func() { subid.SetFile(subid.DefaultFile); subid.SetPasswdFile(subid.DefaultPasswdFile) })
	if o := subid.Owner(100001); o != subid.Unknown(100000) {
		t.Skipf("premise: uid 100001 counts as %#x, not Unknown(100000) (the name was found?)", o)
	}
	if o := subid.Owner(100000); o != 100000 {
		t.Skipf("premise: login uid 100000 counts as %#x", o)
	}
	tab := newDNSSenders(64, 5*time.Second)
	now := time.Unix(1000, 0)
	victim := dnsname.Program{Exe: "/usr/bin/curl", Identity: uint8(engine.IdentityVerified), UID: 100000}
	mine := dnsQuery("198.18.0.1:30000", "198.18.0.66:53", 1, "bank.example.com")
	tab.put(&mine, victim, now)
	for i := range 200 {
		q := dnsQuery(fmt.Sprintf("198.18.0.2:%d", 20000+i), "198.18.0.53:53", uint16(i), "x.test")
		tab.put(&q, dnsname.Program{Exe: "/usr/bin/flood", UID: int32(100001 + i%50)}, now.Add(time.Duration(i)*time.Millisecond))
	}
	at := now.Add(time.Second)
	if _, ok := tab.get(mine, at); !ok || tab.lostFor(100000, at) {
		t.Errorf("login uid 100000's only record evicted (kept %v) and uid 100000 marked lost (%v) by the flood of another user's unresolved subuid range starting at 100000 (int32(Unknown(100000)) == 100000)",
			ok, tab.lostFor(100000, at))
	}
}

// Review 45, finding 2 (low-medium; precondition: the learner reads the copy more
// than keep after the verdict): the fix for review 42 finding 1 counts a record's 5 s
// from the verdict, but the copy is read by the learner whenever it gets to it (one
// reader, a 1 MiB NFLOG buffer, a socket lookup for every copy without a record: a
// user's flood of queries on an established flow, which the queue never sees but
// NFLOG copies, backs it up). Once any put sweeps the expired record the query is
// neither found nor "held" nor lost, and queryProgram falls back to the socket
// lookup. A held query whose sender closed its socket during the hold has its
// verdict copy carry no uid (NFULA_UID needs the socket's file), so that lookup is
// made for any uid: another user who bound the port is credited with the victim's
// query (cross-user, not only review 42's same-user case). Fails on the current code.
func TestReview45CopyReadAfterKeepCreditedToOtherUser(t *testing.T) {
	taker := procattr.Process{PID: 77, Exe: "/usr/bin/taker", Identity: engine.IdentityVerified, UID: 2000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: uidTakerResolver{taker: taker}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	dig := dnsname.Program{Exe: "/usr/bin/dig", Identity: uint8(engine.IdentityVerified), UID: 1000}
	q := dnsQuery("198.18.0.1:40000", "198.18.0.66:53", 7, "bank.example.com")
	// Recorded at its verdict (finish), 6 s before the learner reads the copy.
	b.dnsSenders.put(&q, dig, time.Now().Add(-6*time.Second))
	// Any other held query since sweeps the expired record.
	other := dnsQuery("198.18.0.9:41000", "198.18.0.66:53", 8, "other.test")
	b.dnsSenders.put(&other, dnsname.Program{Exe: "/usr/bin/x", UID: 3000}, time.Now())
	if p := b.queryProgram(engine.UDP, q, -1); p.Exe == taker.Exe {
		t.Errorf("a query the queue held (recorded for %s, uid %d) whose copy was read 6 s after its verdict is credited to %s of uid %d, the port's holder now",
			dig.Exe, dig.UID, p.Exe, p.UID)
	}
}

// Review 45, finding 3 (low, uids >= 2^31: a user's subordinate range up there, e.g.
// "alice:2147483648:65536"): ownerOf and queryProgram treat every uid above 2^31-1
// as unknown. A copy sent by such a uid is then looked up by socket for any uid
// (req.UID -1): whichever user's socket holds the port is credited with it; and its
// held records (prog.UID, an int32, negative) never match the copy's uid, so such a
// user's programs never get their own names. Fails on the current code.
func TestReview45HighUidCopyCreditedToOtherUser(t *testing.T) {
	taker := procattr.Process{PID: 77, Exe: "/usr/bin/taker", Identity: engine.IdentityVerified, UID: 2000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: uidTakerResolver{taker: taker}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	const high = int64(1)<<31 + 5
	q := dnsQuery("198.18.0.1:40000", "198.18.0.66:53", 7, "bank.example.com")
	if p := b.queryProgram(engine.UDP, q, high); p.Exe == taker.Exe {
		t.Errorf("a query sent by uid %d is credited to %s of uid %d (socket lookup made for any uid)", high, p.Exe, p.UID)
	}
}

// uidTakerResolver finds taker's socket on every port, as procattr does: only for a
// lookup made for taker's uid or for any uid (-1).
type uidTakerResolver struct {
	instantResolver
	taker procattr.Process
}

func (r uidTakerResolver) ResolveDev(_ engine.Protocol, _, _ netip.AddrPort, uid int32, _ int) (procattr.Process, error) {
	if uid >= 0 && uid != r.taker.UID {
		return procattr.Process{UID: -1}, errors.New("no socket of that uid")
	}
	return r.taker, nil
}
