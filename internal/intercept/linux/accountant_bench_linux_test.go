package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// createCt makes n established TCP conntrack entries with mark, from 198.18.b.x
// ports 10000+ to 198.18.2.1:443, in the current network namespace, and returns
// their original tuples.
func createCt(n int, b byte, mark uint32) ([]flowKey, error) {
	var keys []flowKey
	for i := range n {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, b, byte(i % 250)}), uint16(10000+i))
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, 1}), 443)
		ct := &netlink.ConntrackFlow{
			FamilyType: unix.AF_INET,
			Forward:    netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: net.IP(src.Addr().AsSlice()), DstIP: net.IP(dst.Addr().AsSlice()), SrcPort: src.Port(), DstPort: dst.Port()},
			Reverse:    netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: net.IP(dst.Addr().AsSlice()), DstIP: net.IP(src.Addr().AsSlice()), SrcPort: dst.Port(), DstPort: src.Port()},
			Mark:       mark,
			TimeOut:    3600,
			ProtoInfo:  &netlink.ProtoInfoTCP{State: 3},
		}
		if err := netlink.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, ct); err != nil {
			return nil, fmt.Errorf("create conntrack entry %d: %w", i, err)
		}
		keys = append(keys, newFlowKey(unix.IPPROTO_TCP, src, dst))
	}
	return keys, nil
}

// TestDumpCtByMark: the accountant's read of the conntrack table lists the entries
// latch allowed (MarkAllow, MarkRedecide, other bits outside MarkMask kept) and,
// filtered in the kernel, none of the others.
func TestDumpCtByMark(t *testing.T) {
	tp := newTopo(t)
	err := inNS(tp.a, func() error {
		want := map[flowKey]uint32{}
		for b, mark := range map[byte]uint32{11: MarkAllow, 12: MarkRedecide, 13: MarkAllow | 0x0000beef} {
			keys, err := createCt(5, b, mark)
			if err != nil {
				return err
			}
			for _, k := range keys {
				want[k] = mark
			}
		}
		for b, mark := range map[byte]uint32{21: 0, 22: MarkReject, 23: 0x0000beef} {
			if _, err := createCt(5, b, mark); err != nil {
				return err
			}
		}
		got := map[flowKey]uint32{}
		bad, err := dumpCt(ctDumpMark, ctDumpMarkMask, func(ci ctInfo) {
			if !ci.hasState || ci.tcpState != 3 {
				t.Errorf("entry %+v: want TCP state 3", ci)
			}
			got[ci.key] = ci.mark
		})
		if err != nil || bad != 0 {
			return fmt.Errorf("dumpCt: %d bad, %v", bad, err)
		}
		for k, m := range want {
			if got[k] != m {
				t.Errorf("entry %v: listed with mark %#x, want %#x", k, got[k], m)
			}
		}
		for k, m := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("entry %v with mark %#x listed; latch did not allow it", k, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkAccountantPoll measures one read of the conntrack table by the byte
// accountant, in a namespace holding 1,000 or 10,000 established TCP flows latch
// allowed and as many it did not: the cost every --traffic-interval of byte
// accounting (every 500 ms without conntrack events). "poll" is the accountant's
// read (a dump the kernel filters by mark, decoded in place); "library", the
// baseline in the same run, is how it read the table before: every entry of both
// families through vishvananda/netlink's ConntrackTableList.
func BenchmarkAccountantPoll(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		tp := newTopo(b)
		var a *accountant
		err := inNS(tp.a, func() error {
			flows := newFlowTable(2*n, time.Hour)
			keys, err := createCt(n, 1, MarkAllow)
			if err != nil {
				return err
			}
			if _, err := createCt(n, 3, 0); err != nil {
				return err
			}
			for i, k := range keys {
				flows.add(&engine.Request{ID: engine.RequestID(i + 1), Direction: engine.Outbound, Protocol: engine.TCP, Local: k.src(), Remote: k.dst()}, time.Now())
			}
			a = newAccountant(flows, 10*time.Second)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%d/poll", n), func(b *testing.B) {
			err := inNS(tp.a, func() error {
				now := time.Now()
				for i := 0; b.Loop(); i++ {
					if _, err := a.poll(now.Add(time.Duration(i)*time.Second), false); err != nil {
						return err
					}
				}
				if len(a.m) != n {
					return fmt.Errorf("accountant tracks %d flows, want %d", len(a.m), n)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
		b.Run(fmt.Sprintf("%d/library", n), func(b *testing.B) {
			err := inNS(tp.a, func() error {
				for b.Loop() {
					listed := 0
					for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
						cts, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
						if err != nil {
							return err
						}
						for _, ct := range cts {
							if ct.Mark&MarkMask == MarkAllow {
								_ = ctKey(ct)
								listed++
							}
						}
					}
					if listed != n {
						return fmt.Errorf("listed %d allowed flows, want %d", listed, n)
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestGetManyInBatches: the accountant's batched reads of single entries answer
// every key once, across several batches, with the entry or, for one that does not
// exist, ENOENT.
func TestGetManyInBatches(t *testing.T) {
	tp := newTopo(t)
	err := inNS(tp.a, func() error {
		keys, err := createCt(3*getBatch+5, 31, MarkAllow)
		if err != nil {
			return err
		}
		missing := map[flowKey]bool{}
		var ask []flowKey
		for i, k := range keys {
			ask = append(ask, k)
			if i%10 == 0 {
				m := newFlowKey(k.proto, k.src(), netip.AddrPortFrom(k.dst().Addr(), 444))
				missing[m] = true
				ask = append(ask, m)
			}
		}
		g, err := openCtGetter()
		if err != nil {
			return err
		}
		defer g.close()
		for round := range 2 { // the second round's sequence numbers follow the first's
			seen := map[flowKey]int{}
			g.getMany(ask, func(k flowKey, ci ctInfo, err error) {
				seen[k]++
				switch {
				case missing[k]:
					if !errors.Is(err, unix.ENOENT) {
						t.Errorf("round %d: missing entry %v: %+v, %v; want ENOENT", round, k, ci, err)
					}
				case err != nil:
					t.Errorf("round %d: entry %v: %v", round, k, err)
				case ci.key != k || ci.mark != MarkAllow || ci.tcpState != 3:
					t.Errorf("round %d: asked for %v, got %+v", round, k, ci)
				}
			})
			for _, k := range ask {
				if seen[k] != 1 {
					t.Errorf("round %d: %v answered %d times", round, k, seen[k])
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkGetMany measures the accountant's read of one conntrack entry at a
// flow's end (TIME_WAIT or CLOSE: events other than destroys carry no counters), in
// batches of 32 as the accountant asks: ns/op is per entry.
func BenchmarkGetMany(b *testing.B) {
	tp := newTopo(b)
	err := inNS(tp.a, func() error {
		keys, err := createCt(512, 32, MarkAllow)
		if err != nil {
			return err
		}
		g, err := openCtGetter()
		if err != nil {
			return err
		}
		defer g.close()
		b.ResetTimer()
		for i := 0; i < b.N; i += len(keys) {
			ask := keys[:min(len(keys), b.N-i)]
			var bad error
			g.getMany(ask, func(k flowKey, ci ctInfo, err error) {
				if err != nil {
					bad = err
				}
			})
			if bad != nil {
				return bad
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
