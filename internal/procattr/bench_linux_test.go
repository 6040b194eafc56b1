package procattr

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// backgroundConns is how many idle TCP connections the benchmarks' namespace holds
// besides the one being resolved (each has two sockets, plus the listener): what a
// dump must walk through and a single lookup does not.
const backgroundConns = 256

// benchSetup makes a namespace with backgroundConns loopback connections and one more
// made by this process after the Resolver (so its hooks saw it). It returns the
// Resolver and the tuple of that last connection.
func benchSetup(b *testing.B, opts Options) (r *Resolver, local, remote netip.AddrPort) {
	requireRoot(b)
	ns := newNetns(b)
	r = newResolverIn(b, ns, opts)
	ln := listenIn(b, ns, "127.0.0.1:0")
	var conns []net.Conn
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	inNetns(b, ns, func() {
		for range backgroundConns + 1 {
			c, err := net.Dial("tcp", ln.String())
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
	})
	last := conns[len(conns)-1]
	local = netip.MustParseAddrPort(last.LocalAddr().String())
	remote = netip.MustParseAddrPort(last.RemoteAddr().String())
	if opts.DisableEBPF && opts.DisableProcfs {
		return r, local, remote
	}
	p, err := r.Resolve(engine.TCP, local, remote, 0)
	if err != nil || p.PID != int32(os.Getpid()) {
		b.Fatalf("Resolve = %+v, %v; want this process (%d)", p, err, os.Getpid())
	}
	return r, local, remote
}

// BenchmarkResolveEBPF is the hot path: sock_diag lookup, eBPF map lookup, /proc/PID
// stat, exe and cmdline.
func BenchmarkResolveEBPF(b *testing.B) {
	r, local, remote := benchSetup(b, Options{DisableProcfs: true})
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.Resolve(engine.TCP, local, remote, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveProcfs is the fallback once its cache knows the socket (one
// readlink confirms the fd still points at it).
func BenchmarkResolveProcfs(b *testing.B) {
	r, local, remote := benchSetup(b, Options{DisableEBPF: true})
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.Resolve(engine.TCP, local, remote, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProcfsFullScan is what the fallback costs for a socket it has not seen:
// a walk over every /proc/*/fd on this host.
func BenchmarkProcfsFullScan(b *testing.B) {
	r, _, _ := benchSetup(b, Options{DisableEBPF: true})
	b.ResetTimer()
	for b.Loop() {
		r.procfs.mu.Lock()
		err := r.procfs.fullScan()
		r.procfs.mu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(r.procfs.byInode)), "sockets")
}

// BenchmarkSockDiagLookup is one SOCK_DIAG_BY_FAMILY request for the exact tuple.
func BenchmarkSockDiagLookup(b *testing.B) {
	r, local, remote := benchSetup(b, Options{DisableEBPF: true, DisableProcfs: true})
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.diag.lookup(engine.TCP, local, remote, 0, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSockDiagDump is the baseline a single lookup replaces: a dump of every
// IPv4 TCP socket in the namespace.
// It also reports how many single lookups one dump costs, both timed in this run.
func BenchmarkSockDiagDump(b *testing.B) {
	r, local, remote := benchSetup(b, Options{DisableEBPF: true, DisableProcfs: true})
	const lookups = 2000
	start := time.Now()
	for range lookups {
		if _, err := r.diag.lookup(engine.TCP, local, remote, 0, false); err != nil {
			b.Fatal(err)
		}
	}
	perLookup := time.Since(start) / lookups
	n := 0
	b.ResetTimer()
	for b.Loop() {
		var err error
		if n, err = r.diag.dump(unix.AF_INET, unix.IPPROTO_TCP); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n), "sockets")
	perDump := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(perDump)/float64(perLookup), "lookups/dump")
}

// BenchmarkResolveProcfsHolders is what the check that every holder of a socket runs
// the same program (sharedWithOthers, a walk over every /proc/*/fd) adds to the
// procfs fallback for a verified program: rounds with and without it, interleaved,
// reported as ns per lookup each and their ratio.
func BenchmarkResolveProcfsHolders(b *testing.B) {
	r, local, remote := benchSetup(b, Options{DisableEBPF: true})
	si, err := r.diag.lookup(engine.TCP, local, remote, 0, false)
	if err != nil {
		b.Fatal(err)
	}
	owner := Process{}
	const round = 20
	var with, without time.Duration
	b.ResetTimer()
	for b.Loop() {
		for _, check := range []bool{false, true} {
			start := time.Now()
			for range round {
				p, err := r.viaProcfs(si, owner, check)
				if err != nil || p.Identity != engine.IdentityVerified {
					b.Fatalf("viaProcfs = %+v, %v; want this process, verified", p, err)
				}
			}
			if check {
				with += time.Since(start)
			} else {
				without += time.Since(start)
			}
		}
	}
	n := float64(b.N * round)
	b.ReportMetric(float64(without)/n, "ns/lookup-cached")
	b.ReportMetric(float64(with)/n, "ns/lookup-holders")
	b.ReportMetric(float64(with)/float64(without), "x")
}

// BenchmarkHooksLookup: the eBPF record lookup every attribution makes, by the direct
// bpf(2) call (cgroupHooks.lookup) against ebpf.Map.Lookup as the baseline, in
// interleaved rounds of 2,000 lookups each. It prints each round's ns per lookup
// and the median ratio.
func BenchmarkHooksLookup(b *testing.B) {
	r, local, remote := benchSetup(b, Options{DisableProcfs: true})
	si, err := r.diag.lookup(engine.TCP, local, remote, 0, false)
	if err != nil {
		b.Fatal(err)
	}
	const perRound = 2000
	var direct, lib, ratios []float64
	b.ResetTimer()
	for round := range b.N {
		for i := range 2 {
			t0 := time.Now()
			if (i+round)%2 == 0 {
				for range perRound {
					if _, ok := r.hooks.lookup(si.Cookie); !ok {
						b.Fatal("no record")
					}
				}
				direct = append(direct, float64(time.Since(t0).Nanoseconds())/perRound)
			} else {
				var rec connRecord
				for range perRound {
					if err := r.hooks.conns.Lookup(si.Cookie, &rec); err != nil {
						b.Fatal(err)
					}
				}
				lib = append(lib, float64(time.Since(t0).Nanoseconds())/perRound)
			}
		}
		ratios = append(ratios, direct[round]/lib[round])
	}
	b.StopTimer()
	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	var out strings.Builder
	fmt.Fprintf(&out, "median over %d rounds: direct %.0f ns, ebpf.Map.Lookup %.0f ns, ratio %.2f×", b.N, med(direct), med(lib), med(ratios))
	for i := range direct {
		fmt.Fprintf(&out, "\nround %d: direct %.0f ns, ebpf.Map.Lookup %.0f ns (%.2f×)", i+1, direct[i], lib[i], ratios[i])
	}
	b.Log(out.String())
	b.ReportMetric(med(direct), "ns-direct")
	b.ReportMetric(med(lib), "ns-ebpf.Map.Lookup")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDNSQueryAttribution: what attributing one query to the local resolver
// costs, in interleaved rounds of 1,000 queries per arm. Each query is a datagram
// that this process sends from a connected socket to a socket standing for the
// resolver, which reads it ("none": that alone, the baseline), then attributes it
// by the record of its sending socket ("record": DNSQueries.Resolve, one bpf(2)
// call) or by a sock_diag request and the socket's eBPF record ("sock_diag":
// Resolve, three system calls). The record's program runs on every arm's sends. It
// prints the medians and each arm's cost over the baseline, then each round's.
func BenchmarkDNSQueryAttribution(b *testing.B) {
	requireRoot(b)
	ns := newNetns(b)
	r := newResolverIn(b, ns, Options{DisableProcfs: true})
	var srv, cl *net.UDPConn
	inNetns(b, ns, func() {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv = pc.(*net.UDPConn)
		c, err := net.Dial("udp", pc.LocalAddr().String())
		if err != nil {
			b.Fatal(err)
		}
		cl = c.(*net.UDPConn)
	})
	b.Cleanup(func() { srv.Close(); cl.Close() })
	server := netip.MustParseAddrPort(srv.LocalAddr().String())
	q, err := r.WatchDNSQueries(server, "")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	arms := []struct {
		name    string
		resolve func(client netip.AddrPort, id uint16) (Process, error)
	}{
		{"none", nil},
		{"record", func(client netip.AddrPort, id uint16) (Process, error) { return q.Resolve(client, server, id) }},
		{"sock_diag", func(client netip.AddrPort, id uint16) (Process, error) {
			return r.Resolve(engine.UDP, client, server, -1)
		}},
	}
	msg := []byte{0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	buf := make([]byte, 64)
	var id uint16
	query := func(resolve func(netip.AddrPort, uint16) (Process, error)) {
		id++
		msg[0], msg[1] = byte(id>>8), byte(id)
		if _, err := cl.Write(msg); err != nil {
			b.Fatal(err)
		}
		_, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			b.Fatal(err)
		}
		if resolve == nil {
			return
		}
		if p, err := resolve(from, id); err != nil || p.PID != int32(os.Getpid()) {
			b.Fatalf("attributed to %+v, %v; want this process", p, err)
		}
	}
	for _, a := range arms { // warm up (the first query binds this process's identity)
		for range 50 {
			query(a.resolve)
		}
	}
	const perRound = 1000
	means := make([][]float64, len(arms))
	b.ResetTimer()
	for round := range b.N {
		for i := range arms {
			k := (i + round) % len(arms)
			t0 := time.Now()
			for range perRound {
				query(arms[k].resolve)
			}
			means[k] = append(means[k], float64(time.Since(t0).Nanoseconds())/perRound)
		}
	}
	b.StopTimer()
	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	var out strings.Builder
	base := med(means[0])
	fmt.Fprintf(&out, "median over %d rounds of %d queries per arm: none (send and read) %.0f ns", b.N, perRound, base)
	for k := 1; k < len(arms); k++ {
		var d []float64
		for r := range b.N {
			d = append(d, means[k][r]-means[0][r])
		}
		fmt.Fprintf(&out, "; %s %.0f ns (attribution %.0f ns)", arms[k].name, med(means[k]), med(d))
		b.ReportMetric(med(d), "ns-attribution-"+arms[k].name)
	}
	for r := range b.N {
		fmt.Fprintf(&out, "\nround %d: none %.0f ns", r+1, means[0][r])
		for k := 1; k < len(arms); k++ {
			fmt.Fprintf(&out, ", %s %.0f ns (+%.0f)", arms[k].name, means[k][r], means[k][r]-means[0][r])
		}
	}
	b.Log(out.String())
	b.ReportMetric(0, "ns/op")
}
