package dnsname

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// withAdditional appends records to msg's additional section.
func withAdditional(msg []byte, rrs ...testRR) []byte {
	m := append([]byte(nil), msg...)
	binary.BigEndian.PutUint16(m[10:], binary.BigEndian.Uint16(m[10:])+uint16(len(rrs)))
	for _, r := range rrs {
		m = append(m, encodeName(r.name)...)
		m = binary.BigEndian.AppendUint16(m, r.typ)
		m = binary.BigEndian.AppendUint16(m, classIN)
		m = binary.BigEndian.AppendUint32(m, r.ttl)
		m = binary.BigEndian.AppendUint16(m, uint16(len(r.data)))
		m = append(m, r.data...)
	}
	return m
}

// udpIn opens an unconnected UDP socket on addr in namespace ns. With uid > 0 the
// socket belongs to that user (its file's credentials), as if that user had opened it.
func udpIn(t *testing.T, ns, addr string, uid int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		if uid > 0 {
			runtime.LockOSThread() // setfsuid is per thread: undo it before unlocking
			defer runtime.UnlockOSThread()
			unix.Setfsuid(uid)
			defer unix.Setfsuid(0)
		}
		pc, err := net.ListenPacket("udp", addr)
		if err == nil {
			c = pc.(*net.UDPConn)
		}
		return err
	})
	if err != nil {
		t.Fatalf("UDP socket on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitStats polls the learner until cond holds, at most 3 s.
func (n *dnsNet) waitStats(t *testing.T, what string, cond func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		s := n.learner.Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: learner stats %+v", what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNFLOGLearnsOnlyBoundAnswers is issue 14's second finding on the real kernel,
// over IPv4 and IPv6: after a real query, answers that are late, carry another
// transaction id or question (letter case included), come a second time, come from
// another server address, are truncated, claim names not reached from the question,
// are of another type than asked, or arrive in a flood teach nothing; the real answer
// still does. And a user flooding queries does not keep another user's from being
// tracked.
func TestNFLOGLearnsOnlyBoundAnswers(t *testing.T) {
	n := newDNSNet(t)
	type family struct {
		name               string
		client, srv, other string // the client's address; the DNS server's; another address of the server's host
		qtype              uint16 // the question this family's client asks
		forged             func(i int) string
		otherType          string // an address of the type not asked for
	}
	families := []family{
		{"IPv4", "198.18.7.1", "198.18.7.2", "198.18.7.3", typeA, func(i int) string { return fmt.Sprintf("198.18.66.%d", i) }, "fd00:66::1"},
		{"IPv6", "fd00:7::1", "fd00:7::2", "fd00:7::3", typeAAAA, func(i int) string { return fmt.Sprintf("fd00:66::%x", i+2) }, "198.18.66.200"},
	}
	type lateCase struct {
		c    *net.UDPConn
		srv  net.PacketConn
		resp []byte
		addr string
	}
	var lates []lateCase
	ap := func(a string, port int) string { return net.JoinHostPort(a, fmt.Sprint(port)) }
	servers := map[string]*net.UDPConn{}
	for _, f := range families {
		// Opened here: the late answers are sent after the subtests.
		srv := udpIn(t, n.srv, ap(f.srv, 53), 0)
		other := udpIn(t, n.srv, ap(f.other, 53), 0)
		cli := udpIn(t, n.cli, ap(f.client, 0), 0)
		servers[f.name] = srv
		t.Run(f.name, func(t *testing.T) {
			cliAddr := cli.LocalAddr()
			srvAddr := netip.MustParseAddrPort(ap(f.srv, 53))
			var id uint16 = 0x1000
			ask := func(name string) uint16 {
				t.Helper()
				id++
				before := n.learner.Stats().Queries
				if _, err := cli.WriteToUDPAddrPort(buildQuery(id, name, f.qtype), srvAddr); err != nil {
					t.Fatal(err)
				}
				n.waitStats(t, "query "+name+" tracked", func(s Stats) bool { return s.Queries > before })
				return id
			}
			answer := func(from net.PacketConn, msg []byte) {
				t.Helper()
				if _, err := from.WriteTo(msg, cliAddr); err != nil {
					t.Fatal(err)
				}
			}
			rr := func(name, addr string) testRR { return rrA(name, addr, 300) }
			// expect sends msg from the server and waits until the learner has counted it
			// under reason ("" for learned).
			expect := func(from net.PacketConn, msg []byte, reason string) {
				t.Helper()
				before := n.learner.Stats()
				answer(from, msg)
				n.waitStats(t, fmt.Sprintf("response counted as %q", reason), func(s Stats) bool {
					if reason == "" {
						return s.Answers > before.Answers
					}
					return s.Ignored[reason] > before.Ignored[reason]
				})
			}
			labelled := func(addr string) (string, bool) { return n.cache.Lookup(netip.MustParseAddr(addr)) }
			q := func(name string) []byte { return question(name, f.qtype) }

			// Late: the answer to a real query comes 6 s later (sent at the end).
			lid := ask("late.latch.test")
			lates = append(lates, lateCase{cli, srv, buildResponse(lid, 0, q("late.latch.test"), []testRR{rr("late.latch.test", f.forged(1))}), f.forged(1)})

			// The real answer teaches; a second answer to the same query does not.
			rid := ask("www.latch.test")
			expect(srv, buildResponse(rid, 0, q("www.latch.test"), []testRR{rr("www.latch.test", f.forged(0))}), "")
			if name, ok := labelled(f.forged(0)); !ok || name != "www.latch.test" {
				t.Errorf("the real answer did not label %s: %q %v", f.forged(0), name, ok)
			}
			expect(srv, buildResponse(rid, 0, q("www.latch.test"), []testRR{rr("www.latch.test", f.forged(2))}), IgnoredDuplicate)

			// Wrong id, other question, other letter case, other type: then the real one.
			rid = ask("WwW.latch.test")
			expect(srv, buildResponse(rid^0x5a5a, 0, q("WwW.latch.test"), []testRR{rr("WwW.latch.test", f.forged(3))}), IgnoredUnmatched)
			expect(srv, buildResponse(rid, 0, q("bank.latch.test"), []testRR{rr("bank.latch.test", f.forged(4))}), IgnoredMismatched)
			expect(srv, buildResponse(rid, 0, q("www.latch.test"), []testRR{rr("www.latch.test", f.forged(5))}), IgnoredMismatched)
			otherQ := typeA + typeAAAA - f.qtype
			expect(srv, buildResponse(rid, 0, question("WwW.latch.test", otherQ), []testRR{rr("WwW.latch.test", f.otherType)}), IgnoredMismatched)
			// From another address of the server's host, on a flow the client opened to
			// it: not the server the query went to.
			if _, err := cli.WriteToUDPAddrPort(buildQuery(0x7777, "x.latch.test", 16), netip.MustParseAddrPort(ap(f.other, 53))); err != nil {
				t.Fatal(err)
			}
			n.waitStats(t, "TXT query seen", func(s Stats) bool { return s.QueriesNotTracked[NotTrackedOtherType] > 0 })
			expect(other, buildResponse(rid, 0, q("WwW.latch.test"), []testRR{rr("WwW.latch.test", f.forged(6))}), IgnoredUnmatched)
			// The real answer, exactly as asked, still teaches (lower-cased).
			expect(srv, buildResponse(rid, 0, q("WwW.latch.test"), []testRR{rr("WwW.latch.test", f.forged(7))}), "")
			if name, ok := labelled(f.forged(7)); !ok || name != "www.latch.test" {
				t.Errorf("the real answer to a mixed-case question did not label %s: %q %v", f.forged(7), name, ok)
			}

			// Truncated: consumes the query, teaches nothing.
			rid = ask("tc.latch.test")
			expect(srv, buildResponse(rid, 0x200, q("tc.latch.test"), []testRR{rr("tc.latch.test", f.forged(8))}), IgnoredTruncated)
			expect(srv, buildResponse(rid, 0, q("tc.latch.test"), []testRR{rr("tc.latch.test", f.forged(9))}), IgnoredDuplicate)

			// Records not reached from the question, in the answer and additional
			// sections, and records of the type not asked for.
			rid = ask("evil.latch.test")
			msg := buildResponse(rid, 0, q("evil.latch.test"), []testRR{
				rr("bank.latch.test", f.forged(10)),
				rr("evil.latch.test", f.otherType),
				rrCNAME("other.latch.test", "evil.latch.test", 60),
			})
			expect(srv, withAdditional(msg, rr("bank.latch.test", f.forged(11)), rr("evil.latch.test", f.forged(12))), "")

			// Two questions: malformed, whatever they say.
			rid = ask("two.latch.test")
			two := buildResponse(rid, 0, q("two.latch.test"), []testRR{rr("two.latch.test", f.forged(13))})
			binary.BigEndian.PutUint16(two[4:], 2)
			expect(srv, two, IgnoredMalformed)

			// A flood of answers on the client's flow: every id, other names.
			rid = ask("flood.latch.test")
			before := n.learner.Stats()
			for i := 0; i < 4096; i++ {
				name := fmt.Sprintf("n%d.flood.latch.test", i)
				answer(srv, buildResponse(uint16(i*16+1), 0, q(name), []testRR{rr(name, f.forged(14))}))
				if i%64 == 63 {
					time.Sleep(2 * time.Millisecond) // within the socket buffer
				}
			}
			s := n.waitStats(t, "flood counted", func(s Stats) bool {
				return s.Ignored[IgnoredUnmatched]+s.Overflows > before.Ignored[IgnoredUnmatched]+before.Overflows+4000
			})
			if s.Answers != before.Answers || s.Learned != before.Learned {
				t.Errorf("the flood taught: answers %d -> %d, learned %d -> %d", before.Answers, s.Answers, before.Learned, s.Learned)
			}
			expect(srv, buildResponse(rid, 3, q("flood.latch.test"), nil), "")

			for i := 2; i <= 14; i++ {
				if i == 7 {
					continue
				}
				if name, ok := labelled(f.forged(i)); ok {
					t.Errorf("forged address %s labelled %q", f.forged(i), name)
				}
			}
			if name, ok := labelled(f.otherType); ok {
				t.Errorf("an address of a type not asked for, %s, labelled %q", f.otherType, name)
			}
		})
	}

	t.Run("query flood", func(t *testing.T) {
		// User 65534 floods queries that nobody answers; root's query is still tracked
		// and its answer teaches.
		srvAddr := netip.MustParseAddrPort("198.18.7.2:53")
		srv := servers["IPv4"]
		flooder := udpIn(t, n.cli, "198.18.7.1:0", 65534)
		before := n.learner.Stats()
		for i := 0; i < MaxPendingPerClient+100; i++ {
			if _, err := flooder.WriteToUDPAddrPort(buildQuery(uint16(i), fmt.Sprintf("f%d.latch.test", i), typeA), srvAddr); err != nil {
				t.Fatal(err)
			}
		}
		s := n.waitStats(t, "query flood counted", func(s Stats) bool {
			return s.QueriesNotTracked[NotTrackedClientLimit] >= before.QueriesNotTracked[NotTrackedClientLimit]+100
		})
		t.Logf("after the flood: %d waiting, not tracked %v", s.Pending, s.QueriesNotTracked)
		cli := udpIn(t, n.cli, "198.18.7.1:0", 0)
		if _, err := cli.WriteToUDPAddrPort(buildQuery(0x4242, "root.latch.test", typeA), srvAddr); err != nil {
			t.Fatal(err)
		}
		n.waitStats(t, "root's query tracked", func(st Stats) bool { return st.Queries > s.Queries })
		srv.WriteTo(buildResponse(0x4242, 0, question("root.latch.test", typeA), []testRR{rrA("root.latch.test", "198.18.67.1", 60)}), cli.LocalAddr())
		n.waitStats(t, "root's answer", func(st Stats) bool { return st.Answers > s.Answers })
		if name, ok := n.cache.Lookup(netip.MustParseAddr("198.18.67.1")); !ok || name != "root.latch.test" {
			t.Errorf("root's answer during another user's query flood: %q %v", name, ok)
		}
	})

	// The late answers, 6 s after their queries: nobody waits for them any more.
	time.Sleep(AnswerWindow + time.Second)
	for _, l := range lates {
		before := n.learner.Stats()
		if _, err := l.srv.WriteTo(l.resp, l.c.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		n.waitStats(t, "late answer counted", func(s Stats) bool { return s.Ignored[IgnoredLate] > before.Ignored[IgnoredLate] })
		if name, ok := n.cache.Lookup(netip.MustParseAddr(l.addr)); ok {
			t.Errorf("a late answer labelled %s %q", l.addr, name)
		}
	}
}
