package linux

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// pinLease pins, on a BPF file system of the test's own, a stand-in for the
// kernel fast path's lease program (internal/fastpath), which matches while the
// process that holds the lease lives: a socket filter that tail-calls through a
// one-slot program array into a program that returns 1, and returns 0 if the
// slot is empty. The test holds the array's only user reference; release
// closes it, as a death does, and the kernel empties the array.
func pinLease(t *testing.T) (path string, release func()) {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("no BPF file system: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	arr, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Skipf("cannot make a program array: %v", err)
	}
	held, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
	}})
	if err != nil {
		t.Skipf("cannot load a socket filter: %v", err)
	}
	defer held.Close()
	lease, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMapPtr(asm.R2, arr.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}})
	if err != nil {
		t.Fatalf("load the lease program: %v", err)
	}
	defer lease.Close()
	if err := arr.Put(uint32(0), held); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "lease")
	if err := lease.Pin(path); err != nil {
		t.Fatal(err)
	}
	release = func() {
		arr.Close()
		// The kernel empties the array from a work queue.
		time.Sleep(200 * time.Millisecond)
	}
	t.Cleanup(func() { arr.Close() })
	return path, release
}

// dialMarkedAt is dialMarked to addr (IPv4 or IPv6).
func dialMarkedAt(tp *topo, addr string, port int, mark uint32) error {
	return inNS(tp.a, func() error {
		d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
			})
			return errors.Join(err, serr)
		}}
		c, err := d.Dial("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// TestFastLease: with each firewall mechanism, with and without notrack, IPv4
// and IPv6, a SYN from a socket marked MarkFastAllow passes without being
// queued while the lease is held, and is held and decided (here: denied) like
// any once it is released, as when the daemon that holds it dies. With notrack
// the daemon runs the kernel fast path and the connects are its hits.
func TestFastLease(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		for _, mode := range []string{"conntrack", "notrack"} {
			t.Run(fw+"/"+mode, func(t *testing.T) {
				needFirewall(t, fw)
				tp := newTopo(t)
				addV6(t, tp)
				srv, srv6 := listenTCPAt(t, tp, addrB, 9001), listenTCPAt(t, tp, addrB6, 9001)
				path, release := pinLease(t)
				env := []string{"LATCH_TEST_FIREWALL=" + fw, "LATCH_TEST_FAST_TCP=1", "LATCH_TEST_FAST_LEASE=" + path}
				// A fast connect: without the fast path in the namespace
				// (conntrack), a socket marked MarkFastAllow by hand; with it
				// (notrack), a real one (its sock_ops program takes a mark
				// no connect hook of its gave off).
				dialFast := func(addr string) error { return dialMarkedAt(tp, addr, 9001, MarkFastAllow) }
				hits := 0 // the fast connects the kernel fast path decided
				if mode == "notrack" {
					h := newFastHits(t, addrB+":9001", "["+addrB6+"]:9001")
					env = append(append(env, "LATCH_TEST_NOTRACK=on"), h.env...)
					dialFast = func(addr string) error {
						c, err := h.dial(t, tp, addr, 9001, 0)
						if err == nil {
							c.Close()
						}
						return err
					}
				}
				d := startDaemon(t, tp, "*=deny", env...)
				defer d.stop()
				if l, ok := d.waitLine("fast-lease ", 10*time.Second); !ok || l != "fast-lease <nil>" {
					t.Fatalf("the ruleset does not check the lease: %q\n%s", l, d.errors())
				}
				for _, addr := range []string{addrB, addrB6, addrB} {
					if err := dialFast(addr); err != nil {
						t.Fatalf("connect to %s from a fast-allowed socket, the lease held: %v", addr, err)
					}
				}
				for _, l := range d.linesFor(300 * time.Millisecond) {
					if strings.HasPrefix(l, "held ") {
						t.Errorf("a connection the fast path decided was queued while the lease was held: %q", l)
					}
					if strings.HasPrefix(l, "fast-hit allow ") {
						hits++
					}
				}
				release()
				for _, addr := range []string{addrB, addrB6} {
					if err := dialFast(addr); !errors.Is(err, syscall.ECONNREFUSED) {
						t.Errorf("a fast-allowed socket to %s, the lease released: err = %v, want ECONNREFUSED (held, denied)", addr, err)
					}
					held := ""
					for deadline := time.Now().Add(3 * time.Second); held == "" && time.Now().Before(deadline); {
						for _, l := range d.linesFor(50 * time.Millisecond) {
							if strings.HasPrefix(l, "fast-hit allow ") {
								hits++
							}
							if held == "" && strings.HasPrefix(l, "held ") {
								held = l
							}
						}
					}
					if !strings.Contains(held, ":9001") {
						t.Errorf("the SYN to %s marked MarkFastAllow was not held once the lease was released (got %q)", addr, held)
					}
				}
				for _, l := range d.linesFor(300 * time.Millisecond) {
					if strings.HasPrefix(l, "fast-hit allow ") {
						hits++
					}
				}
				if want := map[string]int{"conntrack": 0, "notrack": 5}[mode]; hits != want {
					t.Errorf("the kernel fast path decided %d of the fast connects, want %d", hits, want)
				}
				if n, n6 := srv.accepted.Load(), srv6.accepted.Load(); n != 2 || n6 != 1 {
					t.Errorf("servers accepted %d (IPv4) and %d (IPv6) connections, want 2 and 1", n, n6)
				}
			})
		}
	}
}

// TestNftFastLeaseRuleset checks the native nftables ruleset's lease on kernels
// that cannot queue from nftables (its queue statements become drops): a SYN
// marked MarkFastAllow passes while the lease is held (with and without
// notrack), and is dropped once it is released; so is a datagram the UDP
// match accepts.
func TestNftFastLeaseRuleset(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	t.Run("udp", func(t *testing.T) {
		tp := newTopo(t)
		srv := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9101"))
		match := pinPortMatch(t, 9101)
		path, release := pinLease(t)
		spec := ruleSpec{queue: testQueue, exemptLoopback: true, fastUDP: match, lease: path}
		rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop")
		install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
		install.Stdin = strings.NewReader(rules)
		if out, err := install.CombinedOutput(); err != nil {
			t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
		}
		if err := inNS(tp.a, func() error {
			return errors.Join(addNftBPFMatch(nftTable, nftUDPFast, nftUDPFastAllow, match), addNftBPFMatch(nftTable, nftUDPLease, nftUDPFast, path))
		}); err != nil {
			t.Fatal(err)
		}
		send := func(msg string) error {
			return inNS(tp.a, func() error {
				c, err := net.Dial("udp4", addrB+":9101")
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte(msg))
				return err
			})
		}
		if err := send("held lease"); err != nil || !srv.receives("held lease", 3*time.Second) {
			t.Fatalf("a datagram the UDP match accepts did not arrive while the lease was held: %v", err)
		}
		release()
		// Dropped in the output chain: the write fails with EPERM.
		if err := send("released"); !errors.Is(err, syscall.EPERM) {
			t.Errorf("once the lease was released, a datagram the UDP match accepts: err = %v, want EPERM (dropped)", err)
		}
		if srv.receives("released", time.Second) {
			t.Error("a datagram the UDP match accepts arrived once the lease was released")
		}
	})
	for _, notrack := range []bool{false, true} {
		t.Run(map[bool]string{false: "conntrack", true: "notrack"}[notrack], func(t *testing.T) {
			tp := newTopo(t)
			addV6(t, tp)
			srv, srv6 := listenTCPAt(t, tp, addrB, 9001), listenTCPAt(t, tp, addrB6, 9001)
			path, release := pinLease(t)
			spec := ruleSpec{queue: testQueue, exemptLoopback: true, fastTCP: true, notrack: notrack, lease: path}
			rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop")
			install := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
			install.Stdin = strings.NewReader(rules)
			if out, err := install.CombinedOutput(); err != nil {
				t.Fatalf("install the nftables ruleset: %v: %s\n%s", err, out, rules)
			}
			if err := inNS(tp.a, func() error { return addNftBPFMatch(nftTable, nftFastLease, nftFastPass, path) }); err != nil {
				t.Fatal(err)
			}
			for _, addr := range []string{addrB, addrB6} {
				if err := dialMarkedAt(tp, addr, 9001, MarkFastAllow); err != nil {
					t.Fatalf("a fast-allowed socket to %s, the lease held: %v", addr, err)
				}
			}
			release()
			for _, addr := range []string{addrB, addrB6} {
				if err := dialMarkedAt(tp, addr, 9001, MarkFastAllow); err == nil {
					t.Errorf("a fast-allowed socket connected to %s once the lease was released", addr)
				}
			}
			if n, n6 := srv.accepted.Load(), srv6.accepted.Load(); n != 1 || n6 != 1 {
				t.Errorf("servers accepted %d (IPv4) and %d (IPv6) connections, want 1 and 1", n, n6)
			}
		})
	}
}

// TestFastUDPLease: with each firewall mechanism, the fast path's UDP match
// decides the first datagram of a flow only while the lease is held: once it
// is released (the daemon died), a new flow's first datagram is held and
// decided (here: allowed after it was held) like any, never passed by a dead
// daemon's match (which would also leave it out of the history).
func TestFastUDPLease(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			srv := listenUDPIn(t, tp.b, netip.MustParseAddrPort(addrB+":9101"))
			match := pinPortMatch(t, 9101)
			lease, release := pinLease(t)
			d := startDaemon(t, tp, "*=allow", "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_FAST_UDP="+match, "LATCH_TEST_FAST_LEASE="+lease)
			defer d.stop()
			if l, ok := d.waitLine("fast-lease ", 10*time.Second); !ok || l != "fast-lease <nil>" {
				t.Fatalf("the ruleset does not check the lease: %q\n%s", l, d.errors())
			}
			send := func(msg string) {
				t.Helper()
				if err := inNS(tp.a, func() error {
					c, err := net.Dial("udp4", addrB+":9101")
					if err != nil {
						return err
					}
					defer c.Close()
					_, err = c.Write([]byte(msg))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				if !srv.receives(msg, 3*time.Second) {
					t.Fatalf("datagram %q did not arrive", msg)
				}
			}
			send("held lease")
			if l, ok := d.waitLine("held ", 300*time.Millisecond); ok {
				t.Errorf("a datagram the UDP match accepts was queued while the lease was held: %q", l)
			}
			release()
			send("released")
			if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, ":9101") {
				t.Errorf("once the lease was released, a new flow's datagram was not held (got %q)", l)
			}
		})
	}
}
