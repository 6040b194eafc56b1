package linux

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Addresses of the forwarding test: a container namespace C behind A, which forwards
// between C and B.
const (
	addrC   = "198.18.1.2"
	addrAC  = "198.18.1.1"
	addr6C  = "fd00:1::2"
	addr6AC = "fd00:1::1"
)

// addContainer adds namespace C, joined to A by a veth pair, and makes A a router
// between C and B, for IPv4 and IPv6. It returns C's name.
func addContainer(t *testing.T, tp *topo) string {
	t.Helper()
	holdContainerLock(t)
	n := nsCounter.Add(1)
	c := fmt.Sprintf("latch-lt%d-%d-c", os.Getpid(), n)
	vc, va := fmt.Sprintf("ltc%d-%d", os.Getpid()%100000, n), fmt.Sprintf("ltd%d-%d", os.Getpid()%100000, n)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", c).Run() })
	for _, args := range [][]string{
		{"netns", "add", c},
		{"link", "add", vc, "netns", c, "type", "veth", "peer", "name", va, "netns", tp.a},
		{"-n", c, "addr", "add", addrC + "/24", "dev", vc},
		{"-n", c, "addr", "add", addr6C + "/64", "dev", vc, "nodad"},
		{"-n", tp.a, "addr", "add", addrAC + "/24", "dev", va},
		{"-n", tp.a, "addr", "add", addr6AC + "/64", "dev", va, "nodad"},
		{"-n", tp.a, "addr", "add", addr6A + "/64", "dev", tp.vethA, "nodad"},
		{"-n", tp.b, "addr", "add", addr6B + "/64", "dev", tp.vethB, "nodad"},
		{"-n", c, "link", "set", vc, "up"},
		{"-n", c, "link", "set", "lo", "up"},
		{"-n", tp.a, "link", "set", va, "up"},
		{"-n", c, "route", "add", "default", "via", addrAC},
		{"-n", c, "-6", "route", "add", "default", "via", addr6AC},
		{"-n", tp.b, "route", "add", "198.18.1.0/24", "via", addrA},
		{"-n", tp.b, "-6", "route", "add", "fd00:1::/64", "via", addr6A},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
		if out, err := exec.Command("ip", "netns", "exec", tp.a, "sysctl", "-qw", k).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s in %s: %v: %s", k, tp.a, err, out)
		}
	}
	return c
}

// tcpSegment is a TCP header with flags and no options, then payload. For IPv4 it
// carries the checksum over src and dst; an IPv6 raw socket fills it in (IPV6_CHECKSUM).
func tcpSegment(src, dst netip.Addr, sport, dport uint16, flags uint8, payload string) []byte {
	b := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 0x4c415443)
	binary.BigEndian.PutUint32(b[8:], 0x48000001)
	b[12] = 5 << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	b = append(b, payload...)
	if src.Is4() {
		pseudo := append(append(src.AsSlice(), dst.AsSlice()...), 0, unix.IPPROTO_TCP, byte(len(b)>>8), byte(len(b)))
		binary.BigEndian.PutUint16(b[16:], checksum(append(pseudo, b...)))
	}
	return b
}

// TestForwardTCPWithoutHandshake: a container with CAP_NET_RAW (Docker's default)
// can write TCP segments no handshake opened. The forward chain used to pass them
// (it held only SYNs): a segment conntrack picks up mid-stream (NEW, an ACK with
// data) is now held like the first packet of any flow, and one conntrack cannot
// place (INVALID: a bare FIN) is dropped.
func TestForwardTCPWithoutHandshake(t *testing.T) {
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s v6=%v", fw, v6), func(t *testing.T) {
				tp := newTopo(t)
				c := addContainer(t, tp)
				src, dst := netip.MustParseAddr(addrC), netip.MustParseAddr(addrB)
				if v6 {
					src, dst = netip.MustParseAddr(addr6C), netip.MustParseAddr(addr6B)
				}
				out := openRaw(t, c, v6, unix.IPPROTO_TCP, src.String())
				if v6 {
					if err := unix.SetsockoptInt(out.fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 16); err != nil {
						t.Fatal(err)
					}
				}
				seen := openRaw(t, tp.b, v6, unix.IPPROTO_TCP, "").capture()
				time.Sleep(300 * time.Millisecond) // IPv6 routes and neighbours settle
				// Before the daemon: the path carries such segments.
				out.send(t, dst.String(), tcpSegment(src, dst, 41000, 7000, 0x01, "latch-fin-before"), 0)
				if !seen.waitSaw("latch-fin-before", 3*time.Second) {
					t.Fatal("without latch a forwarded segment did not reach B: the topology is broken")
				}
				d := startDaemonOn(t, tp, fw, "*=drop", "LATCH_TEST_FORWARD=1")
				defer d.stop()
				const ack, psh, fin = 0x10, 0x08, 0x01
				out.send(t, dst.String(), tcpSegment(src, dst, 41001, 7001, ack|psh, "latch-midstream"), 0)
				if _, ok := d.waitLine(fmt.Sprintf("held out tcp %v ", netip.AddrPortFrom(src, 41001)), 3*time.Second); !ok {
					t.Error("a forwarded TCP segment without a handshake (conntrack NEW) was not held")
				}
				out.send(t, dst.String(), tcpSegment(src, dst, 41002, 7002, fin, "latch-bare-fin"), 0)
				time.Sleep(time.Second)
				if seen.saw("latch-midstream") {
					t.Error("a forwarded segment without a handshake passed although its verdict was drop")
				}
				if seen.saw("latch-bare-fin") {
					t.Error("a forwarded TCP segment conntrack calls INVALID (a bare FIN) passed")
				}
			})
		}
	}
}

// containerLock serializes the tests that add a namespace C across test
// processes (test.sh runs this package in shards at once): the daemon finds a
// forwarded packet's namespace by its source address (addrC), and two tests'
// C at once made it ambiguous, so the flow was no program's and denied.
var containerLock struct {
	sync.Mutex
	f    *os.File
	held int
}

// holdContainerLock takes containerLock until t ends (again within the
// same process: counted).
func holdContainerLock(t *testing.T) {
	t.Helper()
	containerLock.Lock()
	defer containerLock.Unlock()
	if containerLock.held == 0 {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), "latch-test-container.lock"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			t.Fatal(err)
		}
		containerLock.f = f
	}
	containerLock.held++
	t.Cleanup(func() {
		containerLock.Lock()
		defer containerLock.Unlock()
		if containerLock.held--; containerLock.held == 0 {
			containerLock.f.Close() // releases the flock
			containerLock.f = nil
		}
	})
}
