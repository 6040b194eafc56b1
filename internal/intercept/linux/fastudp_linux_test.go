package linux

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// pinPortMatch pins, on a BPF file system of the test's own, a socket filter that
// matches an IPv4 datagram (20-byte header) to UDP port port: a stand-in for the
// kernel fast path's UDP match (internal/fastpath), which decides by map.
func pinPortMatch(t *testing.T, port int) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("no BPF file system: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SocketFilter,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadAbs(22, asm.Half), // the IPv4 datagram's destination port
			asm.JEq.Imm(asm.R0, int32(port), "match"),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("match"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Skipf("cannot load a socket filter: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	path := filepath.Join(dir, "match")
	if err := prog.Pin(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestFastUDPMatch: with each firewall mechanism, the first datagram of a UDP flow
// that the fast path's match accepts passes without being queued and its flow gets
// latch's allow mark in conntrack, as an allow from the queue gives it; a datagram
// the match refuses is held and decided as before.
func TestFastUDPMatch(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			srv1 := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9101"))
			srv2 := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9102"))
			path := pinPortMatch(t, 9101)
			d := startDaemon(t, tp, "9102=allow,*=deny", "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_FAST_UDP="+path)
			defer d.stop()
			if l, ok := d.waitLine("fast-udp ", 10*time.Second); !ok || l != "fast-udp <nil>" {
				t.Fatalf("the ruleset does not run the UDP match: %q\n%s", l, d.errors())
			}
			send := func(port string, msg string) {
				t.Helper()
				if err := inNS(tp.a, func() error {
					c, err := net.Dial("udp4", addrB+":"+port)
					if err != nil {
						return err
					}
					defer c.Close()
					_, err = c.Write([]byte(msg))
					return err
				}); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 3; i++ {
				send("9101", "fast")
				if !srv1.receives("fast", 3*time.Second) {
					t.Fatalf("datagram %d the match accepts did not arrive", i)
				}
			}
			if l, ok := d.waitLine("held ", 300*time.Millisecond); ok {
				t.Errorf("a datagram the UDP match accepted was queued: %q", l)
			}
			out, _ := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-p", "udp", "--dport", "9101").CombinedOutput()
			if !strings.Contains(string(out), "mark=268435456") {
				t.Errorf("the flows the match accepted lack the allow mark in conntrack:\n%s", out)
			}
			send("9102", "asked")
			if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, ":9102") {
				t.Errorf("a datagram the match refuses was not held (got %q)", l)
			}
			if !srv2.receives("asked", 3*time.Second) {
				t.Errorf("the held datagram the queue allowed did not arrive")
			}
		})
	}
}

// legacyUsable says whether iptables-legacy can be used here.
// needFirewall skips the test of firewall mechanism fw where this machine cannot
// run it: native nftables without a queue statement (this kernel), or no
// iptables-legacy.
func needFirewall(t *testing.T, fw string) {
	t.Helper()
	if fw == FirewallNftables {
		if err := probeNftQueue(DefaultQueue); err != nil {
			t.Skipf("no native nftables queue: %v", err)
		}
	}
	if fw == FirewallIptablesLegacy && !legacyUsable() {
		t.Skip("no iptables-legacy")
	}
}

func legacyUsable() bool {
	_, err := exec.LookPath("iptables-legacy")
	_, err6 := exec.LookPath("ip6tables-legacy")
	return err == nil && err6 == nil && os.Geteuid() == 0
}

// TestNftBPFMatchRule: the xt_bpf rule addNftBPFMatch writes over netlink is taken
// by the kernel into an inet table and runs: a datagram it matches goes to the
// target chain. (Native nftables queueing may be missing where this runs, so the
// rule is checked on its own, with counters.)
func TestNftBPFMatchRule(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("no nft")
	}
	tp := newTopo(t)
	srv := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9103"))
	path := pinPortMatch(t, 9103)
	script := "add table inet latchtest\n" +
		"add chain inet latchtest udpfast\n" +
		"add chain inet latchtest udpfast_allow\n" +
		"add rule inet latchtest udpfast_allow counter accept\n" +
		"add chain inet latchtest output { type filter hook output priority filter - 1; policy accept; }\n" +
		"add rule inet latchtest output meta l4proto udp jump udpfast\n"
	if out, err := exec.Command("ip", "netns", "exec", tp.a, "sh", "-c", "nft -f - <<'EOF'\n"+script+"EOF\n").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	if err := inNS(tp.a, func() error { return addNftBPFMatch("latchtest", "udpfast", "udpfast_allow", path) }); err != nil {
		t.Fatal(err)
	}
	if err := inNS(tp.a, func() error { return addNftBPFMatch("latchtest", "udpfast", "udpfast_allow", "/nonexistent/latch") }); err == nil {
		t.Errorf("a rule naming no pinned program was accepted")
	}
	for _, port := range []string{"9103", "9104"} {
		if err := inNS(tp.a, func() error {
			c, err := net.Dial("udp4", addrB+":"+port)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("x"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if !srv.receives("x", 3*time.Second) {
		t.Error("the datagram did not arrive")
	}
	out, err := exec.Command("ip", "netns", "exec", tp.a, "nft", "list", "chain", "inet", "latchtest", "udpfast_allow").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "counter packets 1 ") {
		t.Errorf("udpfast_allow should have counted the one datagram the match accepted (%v):\n%s", err, out)
	}
	out, _ = exec.Command("ip", "netns", "exec", tp.a, "nft", "list", "chain", "inet", "latchtest", "udpfast").CombinedOutput()
	if !strings.Contains(string(out), "xt match bpf") {
		t.Errorf("chain udpfast:\n%s", out)
	}
}

// TestSafePinPath: a pinned path goes into iptables-restore's input unquoted, so
// one that could read as more words (or another rule) is refused.
func TestSafePinPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/var/lib/latch/bpf/fast-udp":      true,
		"/tmp/Test_1/001/state+x/fast-udp": true,
		"":                                 false,
		"/var/lib/my latch/bpf/fast-udp":   false,
		"/x -j ACCEPT":                     false,
		"/x\n-A OUTPUT -j ACCEPT":          false,
		`/x"y`:                             false,
		"/" + strings.Repeat("a", 600):     false,
	} {
		if got := safePinPath(p); got != want {
			t.Errorf("safePinPath(%q) = %t, want %t", p, got, want)
		}
	}
}
