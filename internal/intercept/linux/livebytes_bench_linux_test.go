package linux

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/fastpath"
)

// BenchmarkSocketCounts measures one read of the live counts of n open TCP
// sockets the kernel fast path counts (FastPath.SocketCounts: an iterator over
// their storage, or over the namespace's TCP sockets, which here also walks the
// n accepted ones) against the same-run baseline of the accountant's periodic
// read of conntrack's table with n flows latch allowed (dumpCt), in a network
// namespace of its own, with interleaved rounds; it prints each round's times
// and ratio, and the medians.
func BenchmarkSocketCounts(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchSocketCounts(b, n) })
	}
}

func benchSocketCounts(b *testing.B, n int) {
	tp := newTopo(b)
	var fp *fastpath.FastPath
	var conns []net.Conn
	var lns []net.Listener
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		for _, l := range lns {
			l.Close()
		}
		if fp != nil {
			fp.Close()
		}
	})
	if err := inNS(tp.a, func() (err error) {
		if fp, err = fastpath.Open(fastpath.Config{}); err != nil {
			return err
		}
		if !fp.Stats().TCPLiveBytes {
			return fmt.Errorf("no live counts: %s", fp.Stats().TCPLiveBytesWhy)
		}
		// Never accepted (the descriptors of both ends would pass the limit):
		// listeners whose queues hold them, 2000 each (the namespace's
		// somaxconn is 4096).
		var ln net.Listener
		for i := range n {
			if i%2000 == 0 {
				if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
					return err
				}
				lns = append(lns, ln)
			}
			c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			conns = append(conns, c)
			if _, err := c.Write([]byte("x")); err != nil {
				return err
			}
		}
		_, err = createCt(n, 30, MarkAllow)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	reads := max(2, 20000/n)
	sockets := func() (time.Duration, error) {
		var d time.Duration
		err := inNS(tp.a, func() error {
			start := time.Now()
			for range reads {
				got := 0
				if err := fp.SocketCounts(func(netip.AddrPort, netip.AddrPort, fastpath.Counts) { got++ }); err != nil {
					return err
				}
				if got != n {
					return fmt.Errorf("%d sockets listed, want %d", got, n)
				}
			}
			d = time.Since(start) / time.Duration(reads)
			return nil
		})
		return d, err
	}
	conntrack := func() (time.Duration, error) {
		var d time.Duration
		err := inNS(tp.a, func() error {
			start := time.Now()
			for range reads {
				got := 0
				if _, err := dumpCt(ctDumpMark, ctDumpMarkMask, func(ctInfo) { got++ }); err != nil {
					return err
				}
				if got != n {
					return fmt.Errorf("%d conntrack entries listed, want %d", got, n)
				}
			}
			d = time.Since(start) / time.Duration(reads)
			return nil
		})
		return d, err
	}
	const rounds = 5
	var ss, cs, ratios []float64
	b.ResetTimer()
	for r := 1; r <= rounds; r++ {
		s, err := sockets()
		if err != nil {
			b.Fatal(err)
		}
		c, err := conntrack()
		if err != nil {
			b.Fatal(err)
		}
		ss, cs = append(ss, float64(s.Microseconds())), append(cs, float64(c.Microseconds()))
		ratios = append(ratios, float64(s)/float64(c))
		b.Logf("round %d: %d sockets %v per read (%s), conntrack (%d flows) %v per read: ratio %.2f", r, n, s, fp.Stats().TCPLiveBytesVia, n, c, ratios[len(ratios)-1])
	}
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	b.Logf("median: sockets %.0f µs, conntrack %.0f µs per read; sockets / conntrack %.2f", med(ss), med(cs), med(ratios))
	b.ReportMetric(med(ss), "µs/sockets-read")
	b.ReportMetric(med(cs), "µs/conntrack-read")
	b.ReportMetric(med(ratios), "sockets/conntrack")
}
