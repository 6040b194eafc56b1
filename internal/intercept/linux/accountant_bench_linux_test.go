package linux

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// BenchmarkAccountantPoll measures one read of the conntrack table by the byte
// accountant, in a namespace holding 1,000 or 10,000 established TCP flows latch
// allowed: the cost every 500 ms of byte accounting.
func BenchmarkAccountantPoll(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tp := newTopo(b)
			err := inNS(tp.a, func() error {
				flows := newFlowTable(2*n, time.Hour)
				for i := range n {
					src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i % 250)}), uint16(10000+i))
					dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, 1}), 443)
					ct := &netlink.ConntrackFlow{
						FamilyType: unix.AF_INET,
						Forward:    netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: net.IP(src.Addr().AsSlice()), DstIP: net.IP(dst.Addr().AsSlice()), SrcPort: src.Port(), DstPort: dst.Port()},
						Reverse:    netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: net.IP(dst.Addr().AsSlice()), DstIP: net.IP(src.Addr().AsSlice()), SrcPort: dst.Port(), DstPort: src.Port()},
						Mark:       MarkAllow,
						TimeOut:    3600,
						ProtoInfo:  &netlink.ProtoInfoTCP{State: 3},
					}
					if err := netlink.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, ct); err != nil {
						return fmt.Errorf("create conntrack entry %d: %w", i, err)
					}
					flows.add(&engine.Request{ID: engine.RequestID(i + 1), Direction: engine.Outbound, Protocol: engine.TCP, Local: src, Remote: dst}, time.Now())
				}
				a := newAccountant(flows, 10*time.Second)
				now := time.Now()
				b.ResetTimer()
				for i := range b.N {
					if _, err := a.poll(now.Add(time.Duration(i)*time.Second), false); err != nil {
						return err
					}
				}
				b.StopTimer()
				if len(a.m) != n {
					return fmt.Errorf("accountant tracks %d flows, want %d", len(a.m), n)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
