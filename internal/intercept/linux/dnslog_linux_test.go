package linux

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
)

// TestDNSLogRulesBindAnswersToQueries installs latch's own ruleset (iptables-nft, and
// native nftables with its queue statements made counters where the kernel cannot
// queue) with hostnames on and fail-open (no queue reader: nothing is held), and
// checks over IPv4, IPv6 and loopback (exempt) that the rules copy both the queries
// and their answers: a real answer teaches, a forged one on the same flow does not.
func TestDNSLogRulesBindAnswersToQueries(t *testing.T) {
	const group = 4299
	spec := ruleSpec{queue: testQueue, failOpen: true, exemptLoopback: true, dnsLogGroup: group}
	for _, kind := range []string{FirewallIptablesNft, FirewallNftables} {
		t.Run(kind, func(t *testing.T) {
			tp := newTopo(t)
			for _, args := range [][]string{
				{"-n", tp.a, "-6", "addr", "add", "fd00:74::1/64", "dev", tp.vethA, "nodad"},
				{"-n", tp.b, "-6", "addr", "add", "fd00:74::2/64", "dev", tp.vethB, "nodad"},
			} {
				if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v: %v: %s", args, err, out)
				}
			}
			var remove func() error
			var install func() error
			switch kind {
			case FirewallNftables:
				if _, err := exec.LookPath("nft"); err != nil {
					t.Skip("needs nft")
				}
				rules := spec.nftRules()
				if inNS(tp.a, func() error { return probeNftQueue(testQueue) }) != nil {
					rules = regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(rules, "counter")
				}
				install = func() error { _, err := run(rules, "nft", "-f", "-"); return err }
				remove = func() error { _, err := run("", "nft", "delete", "table", "inet", nftTable); return err }
			default:
				var fw *iptablesFirewall
				var ferr error
				inNS(tp.a, func() error { fw, ferr = newIptables(kind); return nil })
				if ferr != nil {
					t.Skipf("%s: %v", kind, ferr)
				}
				install = func() error { return fw.install(spec) }
				remove = fw.remove
			}
			if err := inNS(tp.a, install); err != nil {
				t.Fatalf("install %s ruleset: %v", kind, err)
			}
			t.Cleanup(func() { inNS(tp.a, remove) })

			learner := dnsname.NewLearner(dnsname.NewCache(0))
			ctx, cancel := context.WithCancel(context.Background())
			listenErr := make(chan error, 1)
			go func() { listenErr <- inNS(tp.a, func() error { return dnsname.ListenNFLOG(ctx, group, learner) }) }()
			t.Cleanup(func() {
				cancel()
				select {
				case err := <-listenErr:
					if err != nil {
						t.Errorf("ListenNFLOG: %v", err)
					}
				case <-time.After(5 * time.Second):
					t.Error("ListenNFLOG did not stop")
				}
			})
			time.Sleep(100 * time.Millisecond) // let the listener bind its group

			for i, c := range []struct{ server, client, serverNS, answer string }{
				{addrB + ":53", addrA + ":0", tp.b, "198.18.80.1"},
				{"[fd00:74::2]:53", "[fd00:74::1]:0", tp.b, "fd00:80::1"},
				{"127.0.0.1:53", "127.0.0.1:0", tp.a, "198.18.80.2"},
			} {
				var srv, cli net.PacketConn
				if err := inNS(c.serverNS, func() (err error) { srv, err = net.ListenPacket("udp", c.server); return err }); err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				if err := inNS(tp.a, func() (err error) { cli, err = net.ListenPacket("udp", c.client); return err }); err != nil {
					t.Fatal(err)
				}
				defer cli.Close()
				name := fmt.Sprintf("n%d.latch.test", i)
				qtype := uint16(1)
				if netip.MustParseAddr(c.answer).Is6() {
					qtype = 28
				}
				id := uint16(0x100 + i)
				before := learner.Stats()
				if _, err := cli.WriteTo(dnsMessage(id, false, name, qtype, c.answer), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(c.server))); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 512)
				srv.SetReadDeadline(time.Now().Add(3 * time.Second))
				_, from, err := srv.ReadFrom(buf)
				if err != nil {
					t.Fatalf("%s: the query did not arrive: %v", c.server, err)
				}
				// A forged answer (another id) first, then the real one.
				srv.WriteTo(dnsMessage(id^0xff, true, name, qtype, c.answer), from)
				srv.WriteTo(dnsMessage(id, true, name, qtype, c.answer), from)
				deadline := time.Now().Add(3 * time.Second)
				var s dnsname.Stats
				for {
					s = learner.Stats()
					if s.Answers > before.Answers && s.Ignored[dnsname.IgnoredUnmatched] > before.Ignored[dnsname.IgnoredUnmatched] || time.Now().After(deadline) {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				if s.Queries != before.Queries+1 || s.Answers != before.Answers+1 || s.Ignored[dnsname.IgnoredUnmatched] != before.Ignored[dnsname.IgnoredUnmatched]+1 {
					t.Errorf("%s: stats %+v after %+v: want one query, one answer, one unmatched", c.server, s, before)
				}
				if got, ok := learner.Cache().Lookup(netip.MustParseAddr(c.answer)); !ok || got != name {
					t.Errorf("%s: %s labelled %q %v, want %s", c.server, c.answer, got, ok, name)
				}
			}
		})
	}
}

// dnsMessage is a query, or a response with one address record, for name.
func dnsMessage(id uint16, response bool, name string, qtype uint16, answer string) []byte {
	m := binary.BigEndian.AppendUint16(nil, id)
	if response {
		m = append(m, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0)
	} else {
		m = append(m, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0)
	}
	start := len(m)
	for _, l := range regexp.MustCompile(`[^.]+`).FindAllString(name, -1) {
		m = append(m, byte(len(l)))
		m = append(m, l...)
	}
	m = append(m, 0)
	m = binary.BigEndian.AppendUint16(m, qtype)
	m = binary.BigEndian.AppendUint16(m, 1)
	if !response {
		return m
	}
	m = append(m, 0xc0, byte(start))
	m = binary.BigEndian.AppendUint16(m, qtype)
	m = binary.BigEndian.AppendUint16(m, 1)
	m = binary.BigEndian.AppendUint32(m, 60)
	a := netip.MustParseAddr(answer)
	m = binary.BigEndian.AppendUint16(m, uint16(a.BitLen()/8))
	return append(m, a.AsSlice()...)
}
