package linux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// withoutUntrackedPost is an iptables ruleset text without the untracked
// drop (untrackedPost): LATCH-POST as before it.
func withoutUntrackedPost(rules string) string {
	return strings.Replace(rules, untrackedPost(false), "", 1)
}

// tcpPingPong runs n round trips of a 64-byte message on c (the peer echoes)
// and returns the mean time of one; it stops after limit.
func tcpPingPong(b *testing.B, c net.Conn, n int, limit time.Duration) time.Duration {
	buf := make([]byte, 64)
	start := time.Now()
	i := 0
	for ; i < n && time.Since(start) < limit; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatalf("round trip %d: %v", i, err)
		}
	}
	return time.Since(start) / time.Duration(i)
}

// BenchmarkUntrackedPost: what LATCH-POST's untracked drop (untrackedPost)
// costs the packets that cross it, by TCP ping-pong (64 bytes, one
// connection each, round trips in a row) from namespace A to B over the veth
// with the iptables-nft ruleset (fail-open, no reader, loopback exempt), with
// and without the drop, alternated in rounds: a tracked connection (stops
// at the conntrack state), an untracked one whose socket carries
// MarkFastFlow as the fast path's notrack flows do (stops at the packet
// mark), and an untracked one without a mark, IPv4 and IPv6 (the host's own
// NOTRACK: pays the address type, a local-table lookup for IPv4, a route
// lookup for IPv6). The host's raw rules keep the last three out of
// conntrack both ways. Reports ns per round trip (-benchtime sets the round
// trips per round: 20000x).
func BenchmarkUntrackedPost(b *testing.B) {
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
	spec := ruleSpec{queue: testQueue, failOpen: true, exemptLoopback: true}
	restore := func(cmd, text string) {
		c := exec.Command("ip", "netns", "exec", tp.a, cmd, "-w", "--noflush")
		c.Stdin = strings.NewReader(text)
		if out, err := c.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s\n%s", cmd, err, out, text)
		}
	}
	// The first install adds the jumps; later ones (jumps in place) only
	// replace the chains' rules.
	jumped := map[string]bool{}
	install := func(with bool) {
		for i, cmd := range []string{"iptables-nft-restore", "ip6tables-nft-restore"} {
			r := spec.iptablesRules(i == 1, nil, jumped)
			if !with {
				r = withoutUntrackedPost(r)
			}
			restore(cmd, r)
		}
		jumped = map[string]bool{chainOut: true, chainPost: true}
	}
	install(true)
	if untrackedDrops(b, tp.a, FirewallIptablesNft) != 2 {
		b.Fatal("no untracked drop installed")
	}
	for _, ipt := range []string{"iptables-nft", "ip6tables-nft"} {
		for _, args := range [][]string{
			{"-t", "raw", "-A", "OUTPUT", "-p", "tcp", "--dport", "9702:9703", "-j", "NOTRACK"},
			{"-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--sport", "9702:9703", "-j", "NOTRACK"},
		} {
			if out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a, ipt, "-w"}, args...)...).CombinedOutput(); err != nil {
				b.Fatalf("%s %v: %v: %s", ipt, args, err, out)
			}
		}
	}
	kinds := []struct {
		name, addr string
		port       int
		mark       uint32
	}{
		{"tracked", addrB, 9701, 0},
		{"untracked-fastmark", addrB, 9702, MarkFastFlow},
		{"untracked-v4", addrB, 9703, 0},
		{"untracked-v6", addrB6, 9703, 0},
	}
	conns := map[string]net.Conn{}
	for _, k := range kinds {
		serveTCP(b, tp.b, net.JoinHostPort(k.addr, fmt.Sprint(k.port)), func(c net.Conn) {
			defer c.Close()
			io.Copy(c, c)
		})
	}
	for _, k := range kinds {
		c := dialMarkedB(b, tp, k.addr, k.port, k.mark)
		conns[k.name] = c
		tcpPingPong(b, c, 1000, 5*time.Second) // warm up
	}
	n := b.N
	if n < 1000 {
		n = 1000
	}
	const rounds = 6
	sums := map[string]time.Duration{}
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		for _, with := range []bool{r%2 == 0, r%2 != 0} {
			name := "without"
			if with {
				name = "with"
			}
			install(with)
			for _, k := range kinds {
				sums[k.name+"-"+name] += tcpPingPong(b, conns[k.name], n, 20*time.Second)
			}
		}
	}
	b.StopTimer()
	var ratios []string
	for _, k := range kinds {
		w, wo := sums[k.name+"-with"], sums[k.name+"-without"]
		b.ReportMetric(float64(w.Nanoseconds())/rounds, "ns/rt-"+k.name+"-with")
		b.ReportMetric(float64(wo.Nanoseconds())/rounds, "ns/rt-"+k.name+"-without")
		ratios = append(ratios, fmt.Sprintf("%s %.3f", k.name, float64(w)/float64(wo)))
	}
	b.Logf("with/without the untracked drop: %s", strings.Join(ratios, "; "))
}

// dialMarkedB connects from namespace A to addr:port from a socket with
// SO_MARK mark (0: none).
func dialMarkedB(b *testing.B, tp *topo, addr string, port int, mark uint32) net.Conn {
	b.Helper()
	var c net.Conn
	if err := inNS(tp.a, func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		if mark != 0 {
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
				})
				return errors.Join(err, serr)
			}
		}
		var err error
		c, err = d.Dial("tcp", net.JoinHostPort(addr, fmt.Sprint(port)))
		return err
	}); err != nil {
		b.Fatalf("connect to %s port %d: %v", addr, port, err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}
