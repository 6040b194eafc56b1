package linux

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// withoutPost is an iptables ruleset text without what review24 added: the
// MarkLoopbackExempt rules of LATCH-OUT and the mangle table's LATCH-POST.
func withoutPost(rules string) string {
	var b strings.Builder
	skip := false
	for _, l := range strings.SplitAfter(rules, "\n") {
		switch {
		case l == "*mangle\n":
			skip = true
		case skip && l == "COMMIT\n":
			skip = false
		case skip, strings.Contains(l, fmt.Sprintf("--set-xmark %#x/", MarkLoopbackExempt)):
		default:
			b.WriteString(l)
		}
	}
	return b.String()
}

// pingPong runs n UDP round trips from c to its connected peer (which
// echoes) and returns the mean time of one; it stops after limit.
func pingPong(b *testing.B, c *net.UDPConn, n int, limit time.Duration) time.Duration {
	buf := make([]byte, 64)
	msg := []byte("latch-pingpong")
	start := time.Now()
	i := 0
	for ; i < n && time.Since(start) < limit; i++ {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(buf); err != nil {
			b.Fatalf("round trip %d: %v", i, err)
		}
	}
	return time.Since(start) / time.Duration(i)
}

// echoUDP echoes every datagram to addr in namespace ns until the test ends.
func echoUDP(b *testing.B, ns, addr string) {
	var s *net.UDPConn
	if err := inNS(ns, func() error {
		a, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		s, err = net.ListenUDP("udp", a)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	go func() {
		buf := make([]byte, 2000)
		for {
			n, from, err := s.ReadFromUDP(buf)
			if err != nil {
				return
			}
			s.WriteToUDP(buf[:n], from)
		}
	}()
}

// BenchmarkLoopbackPost (review24): what the loopback exemption's
// postrouting drop costs a packet, by UDP ping-pong (one flow, round trips
// in a row) over lo (127.0.0.1, loopback exempt: each round trip walks the
// two MarkLoopbackExempt rules and LATCH-POST twice) and over the veth to B
// (a flow from before latch, ct mark 0: LATCH-POST once per round trip), in
// namespace A with the iptables-nft ruleset (fail-open, no reader) with and
// without review24's rules, alternated in rounds. Reports ns per round trip
// for both (-benchtime sets the round trips per round: 20000x).
func BenchmarkLoopbackPost(b *testing.B) {
	if _, err := exec.LookPath("iptables-nft-restore"); err != nil {
		b.Skip("needs iptables-nft")
	}
	tp := newTopo(b)
	spec := ruleSpec{queue: testQueue, failOpen: true, exemptLoopback: true}
	restore := func(text string) {
		cmd := exec.Command("ip", "netns", "exec", tp.a, "iptables-nft-restore", "-w", "--noflush")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("iptables-nft-restore: %v: %s\n%s", err, out, text)
		}
	}
	ipt := func(args ...string) {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", tp.a, "iptables-nft", "-w"}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("iptables-nft %v: %v: %s", args, err, out)
		}
	}
	postIn := func() bool {
		return exec.Command("ip", "netns", "exec", tp.a, "iptables-nft", "-w", "-t", "mangle", "-C", "POSTROUTING", "-j", chainPost).Run() == nil
	}
	with := func(jumped bool) {
		restore(spec.iptablesRules(false, nil, map[string]bool{chainOut: jumped, chainPost: postIn()}))
	}
	base := func() {
		restore(withoutPost(spec.iptablesRules(false, nil, map[string]bool{chainOut: true})))
		if !postIn() {
			return
		}
		ipt("-t", "mangle", "-D", "POSTROUTING", "-j", chainPost)
		ipt("-t", "mangle", "-F", chainPost)
		ipt("-t", "mangle", "-X", chainPost)
	}
	with(false)
	if !strings.Contains(ruleset(b, tp.a), "LATCH-POST") {
		b.Fatal("no LATCH-POST installed")
	}
	echoUDP(b, tp.a, "127.0.0.1:9599")
	echoUDP(b, tp.b, addrB+":9599")
	dial := func(to string) *net.UDPConn {
		var c *net.UDPConn
		if err := inNS(tp.a, func() error {
			a, err := net.ResolveUDPAddr("udp", to)
			if err != nil {
				return err
			}
			c, err = net.DialUDP("udp", nil, a)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	lo, veth := dial("127.0.0.1:9599"), dial(addrB+":9599")
	n := b.N
	if n < 1000 {
		n = 1000
	}
	const rounds = 6
	sums := map[string]time.Duration{}
	pingPong(b, lo, 1000, 5*time.Second) // warm up, the flows exist
	pingPong(b, veth, 1000, 5*time.Second)
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		for _, post := range []bool{r%2 == 0, r%2 != 0} {
			name := "base"
			if post {
				name = "post"
				with(true)
			} else {
				base()
			}
			sums["lo-"+name] += pingPong(b, lo, n, 20*time.Second)
			sums["veth-"+name] += pingPong(b, veth, n, 20*time.Second)
		}
	}
	b.StopTimer()
	for _, k := range []string{"lo-base", "lo-post", "veth-base", "veth-post"} {
		b.ReportMetric(float64(sums[k].Nanoseconds())/rounds, "ns/rt-"+k)
	}
	b.Logf("lo: post/base %.3f; veth: post/base %.3f",
		float64(sums["lo-post"])/float64(sums["lo-base"]), float64(sums["veth-post"])/float64(sums["veth-base"]))
}
