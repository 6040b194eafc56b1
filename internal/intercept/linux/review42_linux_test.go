package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
	"github.com/latchfw/latch/internal/procattr"
	"github.com/latchfw/latch/internal/subid"
)

// Review 42, finding 1 (low: same user, two programs, as review 38 finding 4; the
// lookup asks for the copy's uid, so another user's socket is not found): a held query whose copy is read more than the
// table's keep (5 s) after the queue recorded its sender is credited to whichever
// socket holds its port then. Records are stamped when the packet is held, before
// the verdict, and holds last up to HoldTimeout (5 min): a query held 6 s (a slow
// decision) whose program gave up and closed its socket (glibc: 5 s) reaches the
// learner with its record expired, its user never "lost" (expiry is not a loss),
// and queryProgram falls back to the socket lookup: the port's later holder is
// credited with the victim's names, the hole review 40 finding 1 meant to close.
// Fails on the current code.
func TestReview42HeldLongerThanKeepCreditedToPortHolder(t *testing.T) {
	taker := procattr.Process{PID: 77, Exe: "/usr/bin/taker", Identity: engine.IdentityVerified, UID: 1000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: portTakerResolver{now: taker}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	dig := dnsname.Program{Exe: "/usr/bin/dig", Identity: uint8(engine.IdentityVerified), UID: 1000}
	q := dnsQuery("198.18.0.1:40000", "198.18.0.66:53", 7, "bank.example.com")
	// Held at hold time (6 s ago); the verdict came now and the copy is read now.
	b.dnsSenders.put(&q, dig, time.Now().Add(-6*time.Second))
	if p := b.queryProgram(engine.UDP, q, 1000); p.Exe == taker.Exe {
		t.Errorf("a query the queue held (and recorded for %s) 6 s before its copy was read is credited to %s, the port's holder now", dig.Exe, p.Exe)
	}
}

// Review 42, finding 2 (low-medium, DoS of own names for every user): the memory of
// losses is bounded at 4,096 uids; past that every user counts as lost (lostAll). A
// user with subordinate uids (the default 65,536 on Debian/Ubuntu, a rootless
// container) sends one held query from each of ~8,200 uids within 5 s: the table is
// full of one-record users, each new put evicts one of them and marks it lost, the
// 4,097th distinct loss sets lostAll. For the next 5 s (repeatable at will) a victim
// who lost nothing has its record-less UDP queries (not held: later queries on an
// established flow, queries the fast path passed) credited to nobody, so its
// programs learn no own names (host rules naming them fail with
// --host-rules-match-shared off). Fails on the current code.
func TestReview42SubuidFloodMarksEveryoneLost(t *testing.T) {
	victim := procattr.Process{PID: 77, Exe: "/usr/bin/curl", Identity: engine.IdentityVerified, UID: 1001}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: portTakerResolver{now: victim}, Hostnames: dnsname.NewCache(1000)})
	if err != nil {
		t.Skipf("backend: %v", err)
	}
	now := time.Now()
	for i := range 8200 {
		uid := int32(100000 + i) // subordinate uids of one user
		f := dnsQuery(fmt.Sprintf("198.18.%d.%d:%d", 1+i/250%250, 1+i%250, 20000+i%40000), "198.18.0.53:53", uint16(i), "x.test")
		b.dnsSenders.put(&f, dnsname.Program{Exe: "/usr/bin/flood", Identity: uint8(engine.IdentityVerified), UID: uid}, now)
	}
	q := dnsQuery("198.18.0.1:40000", "198.18.0.66:53", 9, "bank.example.com")
	if p := b.queryProgram(engine.UDP, q, 1001); p.Exe != victim.Exe {
		t.Errorf("uid 1001 lost no record, yet its query (found on its own socket) is credited to %+v: another user's subuid flood made everyone lost", p)
	}
}

// Review 42, finding 3 (informational, latent: procattr returns PID 0 when it cannot
// read the exe, so today's resolver should not reach it): a held query attributed to
// a pid with no exe (programOf gives the zero Program, UID 0) is recorded under uid
// 0's share, not under the uid of the packet (req.UID). A user whose processes exit right after sending (exe no longer
// readable when attributed) thereby fills root's share: root becomes the biggest
// holder, root's genuine records are evicted and root is marked lost, so root's own
// record-less queries are credited to nobody — one user's flood evicting another
// user's records, what the fair share was meant to stop. Fails on the current code.
func TestReview42UnknownExeRecordedUnderRoot(t *testing.T) {
	tab := newDNSSenders(64, 5*time.Second)
	t0 := time.Unix(1000, 0)
	rootProg := dnsname.Program{Exe: "/usr/sbin/chronyd", Identity: uint8(engine.IdentityVerified), UID: 0}
	mine := dnsQuery("198.18.0.1:30000", "198.18.0.2:53", 1, "ntp.test")
	tab.put(&mine, rootProg, t0)
	for i := range 200 {
		// The held packet of uid 1000: attributed to a pid whose exe is gone.
		req := engine.Request{PID: 4242, UID: 1000}
		q := dnsQuery(fmt.Sprintf("198.18.0.1:%d", 20000+i), "198.18.0.2:53", uint16(i), "x.test")
		tab.put(&q, programOf(&req), t0.Add(time.Duration(i)*time.Millisecond))
	}
	now := t0.Add(time.Second)
	if _, ok := tab.get(mine, now); !ok || tab.lostFor(0, now) {
		t.Errorf("uid 1000's held queries (exe unreadable) evicted root's record (kept %v) and marked root lost (%v); uid 1000 lost: %v",
			ok, tab.lostFor(0, now), tab.lostFor(1000, now))
	}
}

// TestReview42SendersChurnInvariants (held up): random puts (many users, repeats of
// the same query, expiry, clock jitter) keep the O(1) bookkeeping consistent: per-user
// counts match the records, byCount holds each user once under its count, top is the
// largest count, the lists hold exactly the map's records, at most max records, and
// an eviction always takes the biggest holder's oldest record.
func TestReview42SendersChurnInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 42))
	for round := range 30 {
		limit := 1 + r.IntN(50)
		tab := newDNSSenders(limit, 5*time.Second)
		now := time.Unix(1000, 0)
		for op := range 3000 {
			now = now.Add(time.Duration(r.IntN(300)) * time.Millisecond)
			uid := int32(r.IntN(1 + r.IntN(12)))
			q := dnsQuery(fmt.Sprintf("198.18.0.%d:%d", 1+r.IntN(3), 40000+r.IntN(20)), "198.18.0.2:53", uint16(r.IntN(4)), fmt.Sprintf("n%d.test", r.IntN(3)))
			// Expected victim if the put must evict (computed before, from the records).
			k := flowOf(&q)
			type snap struct {
				key dnsFlow
				at  time.Time
				uid int32
			}
			var live []snap
			counts := map[int32]int{}
			oldest := map[int32]time.Time{}
			for key, s := range tab.m {
				if now.Sub(s.at) <= tab.keep && key != k {
					live = append(live, snap{key, s.at, s.prog.UID})
					counts[s.prog.UID]++
					if o, ok := oldest[s.prog.UID]; !ok || s.at.Before(o) {
						oldest[s.prog.UID] = s.at
					}
				}
			}
			tab.put(&q, dnsname.Program{Exe: "/x", UID: uid}, now)
			check(t, tab, round, op)
			topc := 0
			for _, c := range counts {
				topc = max(topc, c)
			}
			for _, s := range live {
				if got := tab.m[s.key]; got == nil || got.at != s.at {
					if len(live) < limit || counts[s.uid] != topc || oldest[s.uid] != s.at {
						t.Fatalf("round %d op %d: evicted uid %d's record (holds %d, top %d, %d live of max %d)", round, op, s.uid, counts[s.uid], topc, len(live), limit)
					}
				}
			}
		}
	}
}

func check(t *testing.T, tab *dnsSenders, round, op int) {
	t.Helper()
	if len(tab.m) > tab.max {
		t.Errorf("round %d op %d: %d records over max %d", round, op, len(tab.m), tab.max)
	}
	counts := map[int64]int{} // by owner: the table's share keys
	n := 0
	var prev *dnsSender
	for s := tab.old; s != nil; s = s.next {
		if s.prev != prev {
			t.Fatalf("round %d op %d: broken prev link", round, op)
		}
		if tab.m[s.key] != s {
			t.Fatalf("round %d op %d: a listed record not in the map", round, op)
		}
		if prev != nil && s.at.Before(prev.at) {
			t.Fatalf("round %d op %d: list not oldest first", round, op)
		}
		counts[ownerOf(uidOf(s.prog.UID))]++
		prev = s
		n++
		if n > len(tab.m)+1 {
			t.Fatalf("round %d op %d: list cycle", round, op)
		}
	}
	if tab.new != prev || n != len(tab.m) {
		t.Fatalf("round %d op %d: list holds %d, map %d", round, op, n, len(tab.m))
	}
	if len(tab.users) != len(counts) {
		t.Fatalf("round %d op %d: %d users kept, %d with records (leak)", round, op, len(tab.users), len(counts))
	}
	top := 0
	for uid, c := range counts {
		u := tab.users[uid]
		if u == nil || u.n != c {
			t.Fatalf("round %d op %d: uid %d count %v, want %d", round, op, uid, u, c)
		}
		k := 0
		var up *dnsSender
		for s := u.old; s != nil; s = s.unext {
			if s.uprev != up || ownerOf(uidOf(s.prog.UID)) != uid {
				t.Fatalf("round %d op %d: uid %d list broken", round, op, uid)
			}
			up = s
			k++
		}
		if k != c || u.new != up {
			t.Fatalf("round %d op %d: uid %d list holds %d, count %d", round, op, uid, k, c)
		}
		if _, ok := tab.byCount[c][uid]; !ok {
			t.Fatalf("round %d op %d: uid %d not in byCount[%d]", round, op, uid, c)
		}
		top = max(top, c)
	}
	members := 0
	for c, b := range tab.byCount {
		if len(b) == 0 {
			t.Fatalf("round %d op %d: empty bucket %d kept", round, op, c)
		}
		for uid := range b {
			if counts[uid] != c {
				t.Fatalf("round %d op %d: uid %d in bucket %d, holds %d", round, op, uid, c, counts[uid])
			}
			members++
		}
	}
	if members != len(counts) || tab.top != top {
		t.Fatalf("round %d op %d: %d bucket members for %d users; top %d, want %d", round, op, members, len(counts), tab.top, top)
	}
}

// flipResolver finds no socket (the sender closed it: the attribution of the held
// query fails) until taken, then finds the taker on every port.
type flipResolver struct {
	instantResolver
	taken *atomic.Bool
	taker procattr.Process
}

func (r flipResolver) ResolveDev(engine.Protocol, netip.AddrPort, netip.AddrPort, int32, int) (procattr.Process, error) {
	if r.taken.Load() {
		return r.taker, nil
	}
	return procattr.Process{UID: -1}, errors.New("no such socket")
}

// Review 42, finding 6 (low: same user, two programs, as finding 1): a held query whose attribution fails (PID 0:
// the sender closed its socket before the daemon read the queued packet, e.g. a
// backlog the attacker makes by flooding new flows; or the sender stash cannot
// tell the sender) gets no record and marks nobody lost; when its copy is read, the
// socket lookup credits it to whoever holds the port then. The queue did hold it,
// so it should be credited to nobody (a record of "unknown sender", or marking the
// packet's uid lost). Drives Backend.handle with the queued datagram. Fails on the
// current code.
func TestReview42HeldUnattributedCreditedToPortHolder(t *testing.T) {
	var taken atomic.Bool
	taker := procattr.Process{PID: 77, Exe: "/usr/bin/taker", Identity: engine.IdentityVerified, UID: 1000}
	b, err := New(Config{Firewall: FirewallIptablesNft, Resolver: flipResolver{taken: &taken, taker: taker}, Hostnames: dnsname.NewCache(1000)})
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
	allow := intercept.DeciderFunc(func(_ *engine.Request, verdict func(engine.Verdict)) {
		verdict(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule})
	})
	p := nfq.Packet{ID: 1, HWProto: 0x0800, Hook: hookLocalOut, HasUID: true, UID: 1000, Payload: udp4Packet(client, server, 1, msg), Time: time.Now()}
	b.handle(&p, allow)
	for deadline := time.Now().Add(2 * time.Second); b.attributionFailed.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if b.attributionFailed.Load() == 0 {
		t.Fatal("the held query's attribution did not run (or did not fail) within 2 s")
	}
	time.Sleep(50 * time.Millisecond)
	taken.Store(true) // another program of the user (or, by lookup without a uid, anyone) binds the port
	q := dnsQuery(client.String(), server.String(), 7, "bank.example.com")
	if pr := b.queryProgram(engine.UDP, q, 1000); pr.Exe == taker.Exe {
		t.Errorf("a query the queue held (sender unknown then) is credited to %s, the port's holder when the copy is read", pr.Exe)
	}
}

// Review 42, finding 2b (low-medium, same cause as finding 2: one share per uid, and a
// user with subordinate uids has thousands): with every share down to one record, an
// eviction picks any one-record uid, the victim's included. A victim's held query
// (one record) during another user's flood from 8,200 subuids is dropped and the
// victim marked lost: the query is credited to nobody, its names not learned as the
// program's own. Fails on the current code (almost surely: the victim survives
// ~20,000 random picks among ~4,096 with probability ~e^-5 or less).
func TestReview42SubuidFloodEvictsVictimRecord(t *testing.T) {
	// uids 100000-165535 are uid 1002's subordinate uids (fix 42: the test's premise,
	// which this machine's empty /etc/subuid does not give).
	f := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(f, []byte("1002:100000:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	subid.SetFile(f)
	t.Cleanup(func() { subid.SetFile(subid.DefaultFile) })
	tab := newDNSSenders(4096, 5*time.Second)
	now := time.Unix(1000, 0)
	curl := dnsname.Program{Exe: "/usr/bin/curl", Identity: uint8(engine.IdentityVerified), UID: 1001}
	mine := dnsQuery("198.18.0.1:30000", "198.18.0.66:53", 1, "bank.example.com")
	tab.put(&mine, curl, now)
	for i := range 20000 {
		uid := int32(100000 + i%8200)
		f := dnsQuery(fmt.Sprintf("198.18.%d.%d:%d", 1+i/250%250, 1+i%250, 20000+i%40000), "198.18.0.53:53", uint16(i), "x.test")
		tab.put(&f, dnsname.Program{Exe: "/usr/bin/flood", UID: uid}, now.Add(time.Duration(i)*100*time.Microsecond))
	}
	at := now.Add(2 * time.Second)
	if _, ok := tab.get(mine, at); !ok {
		t.Errorf("uid 1001's only record was evicted by another user's subuid flood (uid 1001 lost: %v)", tab.lostFor(1001, at))
	}
}
