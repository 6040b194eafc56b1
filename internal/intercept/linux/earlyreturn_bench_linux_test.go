package linux

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tcpStreamCPU writes n 64-byte messages on c (TCP_NODELAY, and the
// namespace's autocorking off: a segment each) and returns the CPU time its
// thread spent per write: the output hooks run in it, and so, on a veth, does
// the peer's receive and the ACKs' way back in through the input hooks. The
// thread's CPU time, unlike a round trip's wall time, leaves out the waits
// for other programs on a loaded machine.
func tcpStreamCPU(b *testing.B, c net.Conn, n int) time.Duration {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 64)
	var before, after syscall.Rusage
	syscall.Getrusage(1, &before) // RUSAGE_THREAD
	for i := 0; i < n; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Getrusage(1, &after)
	cpu := func(r syscall.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	return (cpu(after) - cpu(before)) / time.Duration(n)
}

// withoutEarlyReturns is an iptables ruleset text (a family's, notrack on)
// as before issue 9: without LATCH-OUT's and LATCH-IN's early returns and
// LATCH-POST's return of the fast path's packets, with LATCH-RAW-SK's rule
// pairs, and the jump from LATCH-RAW-PRE for every socket found.
func withoutEarlyReturns(spec ruleSpec, v6 bool, rules string) string {
	for _, early := range []string{
		spec.iptablesEarlyReturns(chainOut, v6, spec.leaseMatch()),
		spec.iptablesEarlyReturnsIn(chainIn),
		fmt.Sprintf("-A %s -m conntrack --ctstate UNTRACKED -m mark ! --mark 0x0/%#x -j RETURN\n", chainPost, MarkMask),
	} {
		rules = strings.Replace(rules, early, "", 1)
	}
	rules = strings.Replace(rules, " --restore-skmark -m mark ! --mark 0x0 -j ", " --restore-skmark -j ", 1)
	at := strings.Index(rules, "-A "+chainRawSk+" ")
	end := strings.Index(rules[at:], "COMMIT\n")
	var old strings.Builder
	for _, m := range fastMarks {
		fmt.Fprintf(&old, "-A %s -m mark --mark %#x/%#x -j MARK --set-xmark %#x/0xffffffff\n", chainRawSk, m, MarkMask, m)
		fmt.Fprintf(&old, "-A %s -m mark --mark %#x -j CT --notrack\n", chainRawSk, m)
	}
	fmt.Fprintf(&old, "-A %s", chainRawSk)
	for _, m := range fastMarks {
		fmt.Fprintf(&old, " -m mark ! --mark %#x", m)
	}
	old.WriteString(" -j MARK --set-xmark 0x0/0xffffffff\n")
	return rules[:at] + old.String() + rules[at+end:]
}

// BenchmarkEarlyReturns (issue 9): what the early returns save the packets
// of a connection, by TCP streams from
// namespace A to B over the veth with the iptables-nft ruleset of the
// daemon's defaults with notrack (fail-open, no reader, loopback exempt, the
// DNS log, the fast path's TCP rules, no lease, socket pin or UDP match: they
// need pinned programs), with and without them (withoutEarlyReturns),
// alternated in rounds: a fast socket's connection (socket mark
// MarkFastFlow: untracked both ways by the raw rules), an allowed flow's
// (conntrack mark MarkAllow, packet mark 0: the connect carried MarkAllow,
// whose CONNMARK rule saved it, and the socket's mark went back to 0), and a
// flow from before the ruleset (conntrack mark 0: walks everything, and the
// early returns' failing tests on top), IPv4 and IPv6, each a stream of
// 64-byte writes (tcpStreamCPU). Reports the median over rounds of the
// writing thread's CPU time per write, and logs the median of the per-round
// ratios (-benchtime sets the writes per round: 20000x; LATCH_BENCH_ROUNDS
// the rounds, 10; LATCH_BENCH_ONLY=with or without runs one ruleset only,
// to profile it with perf record -a; LATCH_BENCH_KIND=fastflow-v4, one of the
// kinds, runs that one only).
func BenchmarkEarlyReturns(b *testing.B) {
	if _, err := exec.LookPath("iptables-nft-restore"); err != nil {
		b.Skip("needs iptables-nft")
	}
	tp := newTopo(b)
	for _, args := range [][]string{
		{"-n", tp.a, "addr", "add", addrA6 + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "add", addrB6 + "/64", "dev", tp.vethB, "nodad"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	spec := ruleSpec{queue: testQueue, failOpen: true, exemptLoopback: true, dnsLogGroup: DefaultDNSLogGroup,
		fastTCP: true, notrack: true, inbound: true}
	restore := func(cmd, text string) {
		c := exec.Command("ip", "netns", "exec", tp.a, cmd, "-w", "--noflush")
		c.Stdin = strings.NewReader(text)
		if out, err := c.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s\n%s", cmd, err, out, text)
		}
	}
	jumped := map[string]bool{}
	install := func(with bool) {
		for i, cmd := range []string{"iptables-nft-restore", "ip6tables-nft-restore"} {
			r := spec.iptablesRules(i == 1, nil, jumped)
			if !with {
				old := withoutEarlyReturns(spec, i == 1, r)
				if old == r || strings.Contains(old, "--and-mark") {
					b.Fatalf("withoutEarlyReturns changed nothing")
				}
				r = old
			}
			restore(cmd, r)
		}
		jumped = map[string]bool{chainOut: true, chainIn: true, chainPost: true, chainRawOut: true, chainRawPre: true}
	}
	install(true)
	if out, err := exec.Command("ip", "netns", "exec", tp.a, "sysctl", "-qw", "net.ipv4.tcp_autocorking=0").CombinedOutput(); err != nil {
		b.Fatalf("sysctl tcp_autocorking: %v: %s", err, out)
	}
	type kind struct {
		name, addr string
		port       int
		mark       uint32 // the socket's mark while it connects
		after      uint32 // and after
	}
	var kinds []kind
	for _, fam := range []struct{ name, addr string }{{"v4", addrB}, {"v6", addrB6}} {
		kinds = append(kinds,
			kind{"fastflow-" + fam.name, fam.addr, 9721, MarkFastFlow, MarkFastFlow},
			kind{"allowed-" + fam.name, fam.addr, 9722, MarkAllow, 0},
			kind{"unmarked-" + fam.name, fam.addr, 9723, 0, 0})
	}
	if only := os.Getenv("LATCH_BENCH_KIND"); only != "" {
		kinds = slices.DeleteFunc(kinds, func(k kind) bool { return k.name != only })
	}
	conns := map[string]net.Conn{}
	for _, k := range kinds {
		serveTCP(b, tp.b, net.JoinHostPort(k.addr, fmt.Sprint(k.port)), func(c net.Conn) {
			defer c.Close()
			io.Copy(io.Discard, c)
		})
	}
	for _, k := range kinds {
		c := dialMarkedB(b, tp, k.addr, k.port, k.mark)
		if k.after != k.mark {
			rc, err := c.(*net.TCPConn).SyscallConn()
			if err != nil {
				b.Fatal(err)
			}
			var serr error
			rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(k.after))
			})
			if serr != nil {
				b.Fatal(serr)
			}
		}
		conns[k.name] = c
		tcpStreamCPU(b, c, 1000) // warm up
	}
	n := b.N
	if n < 1000 {
		n = 1000
	}
	rounds := 10
	if v, err := strconv.Atoi(os.Getenv("LATCH_BENCH_ROUNDS")); err == nil && v > 1 {
		rounds = v
	}
	per := map[string][]time.Duration{}
	ratio := map[string][]float64{}
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		got := map[string]time.Duration{}
		order := []bool{r%2 == 0, r%2 != 0}
		switch os.Getenv("LATCH_BENCH_ONLY") {
		case "with":
			order = []bool{true}
		case "without":
			order = []bool{false}
		}
		for _, with := range order {
			name := "without"
			if with {
				name = "with"
			}
			install(with)
			for _, k := range kinds {
				d := tcpStreamCPU(b, conns[k.name], n)
				got[k.name+"-"+name] = d
				per[k.name+"-"+name] = append(per[k.name+"-"+name], d)
			}
		}
		for _, k := range kinds {
			if got[k.name+"-with"] != 0 && got[k.name+"-without"] != 0 {
				ratio[k.name] = append(ratio[k.name], float64(got[k.name+"-with"])/float64(got[k.name+"-without"]))
			}
		}
	}
	b.StopTimer()
	median := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		v = append([]float64(nil), v...)
		sort.Float64s(v)
		return v[len(v)/2]
	}
	var ratios []string
	for _, k := range kinds {
		for _, w := range []string{"with", "without"} {
			var v []float64
			for _, d := range per[k.name+"-"+w] {
				v = append(v, float64(d.Nanoseconds()))
			}
			b.ReportMetric(median(v), "cpu-ns/write-"+k.name+"-"+w)
		}
		ratios = append(ratios, fmt.Sprintf("%s %.3f", k.name, median(ratio[k.name])))
	}
	b.Logf("with/without the early returns, median of the per-round ratios of CPU per write: %s", strings.Join(ratios, "; "))
}
