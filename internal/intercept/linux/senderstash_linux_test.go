package linux

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// startStashed starts the test daemon with the socket pin and the sender
// stash (startPinned) and returns it with the id of the stash's map of
// datagrams (and of its map of ports: stashPorts).
func startStashed(t *testing.T, tp *topo, env ...string) (*daemon, ebpf.MapID) {
	d, id, _ := startStashedPorts(t, tp, env...)
	return d, id
}

// startStashedPorts is startStashed, also returning the id of the stash's map
// of ports (stash_ports).
func startStashedPorts(t *testing.T, tp *topo, env ...string) (*daemon, ebpf.MapID, ebpf.MapID) {
	t.Helper()
	d := startDaemon(t, tp, "*=allow", append(env, "LATCH_TEST_SOCKET_PIN=on", "LATCH_TEST_ATTRIBUTE=1")...)
	if os.Getenv("LATCH_TEST_SENDER_STASH") == "off" {
		// The attribution by tuple alone (to see the tests fail without
		// the stash).
		startedPinned(t, d)
		return d, 0, 0
	}
	sl, ok := d.waitLine("sender-stash ", 5*time.Second)
	if !ok || !strings.HasPrefix(sl, "sender-stash <nil> ") {
		d.stop()
		t.Fatalf("the ruleset does not run the sender stash: %q; stderr:\n%s", sl, d.errors())
	}
	startedPinned(t, d)
	ids := strings.Fields(strings.TrimPrefix(sl, "sender-stash <nil> "))
	if len(ids) != 2 {
		d.stop()
		t.Fatalf("the daemon's sender stash line %q: want the ids of its two maps", sl)
	}
	id, _ := strconv.ParseUint(ids[0], 10, 32)
	ports, _ := strconv.ParseUint(ids[1], 10, 32)
	return d, ebpf.MapID(id), ebpf.MapID(ports)
}

// startedPinned waits for d's ruleset to run the socket pin.
func startedPinned(t *testing.T, d *daemon) {
	t.Helper()
	if l, ok := d.waitLine("socket-pin ", 5*time.Second); !ok || l != "socket-pin <nil>" {
		d.stop()
		t.Fatalf("the ruleset does not run the socket pin: %q; stderr:\n%s", l, d.errors())
	}
}

// bindShared binds a UDP socket with SO_REUSEADDR to port in tp's A, as
// this test's process (root).
func bindShared(t *testing.T, tp *topo, port int) int {
	t.Helper()
	var fd int
	if err := inNS(tp.a, func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet4{Port: port})
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// heldLine returns the daemon's last "held out" line for a datagram to to.
func heldLine(t *testing.T, d *daemon, to string) string {
	t.Helper()
	// The first such line may come late on a loaded machine (CI runs the
	// package in shards beside the others): wait up to 10 s for it, then
	// 300 ms for any later one.
	held := ""
	for deadline := time.Now().Add(10 * time.Second); held == "" && time.Now().Before(deadline); {
		if l, ok := d.waitLine("held out ", time.Until(deadline)); ok && strings.Contains(l, " "+to+" ") {
			held = l
		}
	}
	if held == "" {
		t.Fatalf("the datagram to %s was not held", to)
	}
	for _, l := range d.linesFor(300 * time.Millisecond) {
		if strings.HasPrefix(l, "held out ") && strings.Contains(l, " "+to+" ") {
			held = l
		}
	}
	return held
}

// sharedPortSender runs one case of TestUDPSharedPortAttribution: another
// program (a child, root's or nobody's) and this test's process share local
// port; sender "child" binds first and sends after the test bound; sender
// "test" binds first and sends while the child is bound after it. Each
// datagram must be held as its sender's: the lookup by tuple alone finds the
// last bound, the other one.
func sharedPortSender(t *testing.T, fw string, nobody bool, sender string, port int, to string) {
	needFirewall(t, fw)
	tp := newTopo(t)
	d, _ := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw)
	defer d.stop()
	env := []string{"LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_PORT=" + strconv.Itoa(port), "LATCH_TEST_UDP_TO=" + to}
	if !nobody {
		env = append(env, "LATCH_TEST_UDP_KEEP_UID=1")
	}
	var want string
	switch sender {
	case "child":
		c := spawnChild(t, tp, "unpriv-udp", "", append(env, "LATCH_TEST_UDP_DELAY=700ms", "LATCH_TEST_UDP_LINGER=20s", "LATCH_TEST_UDP_MSGS=latch-shared-attr")...)
		l, ok := c.waitLine("pid ", 10*time.Second)
		if !ok {
			t.Fatalf("the sender did not start; stderr:\n%s", c.errors())
		}
		want = strings.TrimPrefix(l, "pid ")
		if _, ok := c.waitLine("bound", 5*time.Second); !ok {
			t.Fatalf("the sender did not bind; stderr:\n%s", c.errors())
		}
		// This test's process, the other program, binds the same port after.
		bindShared(t, tp, port)
		d.drain()
		if _, ok := c.waitLine("done", 10*time.Second); !ok {
			t.Fatalf("the sender did not finish; stderr:\n%s", c.errors())
		}
	case "test":
		want = strconv.Itoa(os.Getpid())
		fd := bindShared(t, tp, port)
		// The other program binds the same port after, and stays bound.
		c := spawnChild(t, tp, "unpriv-udp", "", append(env, "LATCH_TEST_UDP_DELAY=3s")...)
		if _, ok := c.waitLine("bound", 10*time.Second); !ok {
			t.Fatalf("the other program did not bind; stderr:\n%s", c.errors())
		}
		d.drain()
		ap := netip.MustParseAddrPort(to)
		sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		if err := unix.Sendto(fd, []byte("latch-shared-attr"), 0, sa); err != nil {
			t.Fatal(err)
		}
		defer c.waitLine("done", 10*time.Second)
	}
	held := heldLine(t, d, to)
	if !strings.Contains(held, " pid="+want+" ") {
		t.Errorf("the sender's (pid %s) datagram was held as %q: not as its own (as the program that shares its port, or as none)", want, held)
	}
}

// TestUDPSharedPortAttribution (review10): a program that shares another
// program's UDP port (both set SO_REUSEADDR, which any two users' UDP sockets
// may; SO_REUSEPORT wants the same user) is attributed by the socket that
// sent its datagram (the sender stash), not by the Resolver's lookup of the
// tuple, which finds the socket the kernel would deliver the peer's answer
// to (the last bound). Cases: the first bound sends (the lookup finds the
// other: the hole, a program no rule allows decided as the allowed one's),
// and the last bound sends (the allowed program sending while another shares
// its port: still its own); same user (root) and across users (nobody and
// root: before the stash the packet's uid check made the datagram nobody's
// at best, attributed to no program). Fails with LATCH_TEST_SENDER_STASH=off
// (the attribution by tuple alone).
func TestUDPSharedPortAttribution(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		for i, c := range []struct {
			name   string
			nobody bool
			sender string
		}{
			{"same-user/first-bound-sends", false, "child"},
			{"same-user/last-bound-sends", false, "test"},
			{"cross-user/first-bound-sends", true, "child"},
			{"cross-user/last-bound-sends", true, "test"},
		} {
			t.Run(fw+"/"+c.name, func(t *testing.T) {
				sharedPortSender(t, fw, c.nobody, c.sender, 40360+i, net.JoinHostPort(addrB, strconv.Itoa(9006+i)))
			})
		}
	}
}

// TestUDPSharedPortAmbiguous: where the sender stash cannot tell which
// socket sent a datagram (its record is ambiguous: another socket sent a
// datagram with the same key while it was queued) and more than one socket
// is bound to its local port, the datagram is attributed to no program: not
// to the other program, whose socket the lookup by tuple finds (the last
// bound), nor to the sender. The test records the ambiguity itself in the
// stash's map for the datagram the sender will send: over IPv6, whose key
// has no IPv4 id, it knows every byte of the key (the stash keeps the 0 it
// finds for another cookie); and, as the other socket's datagram would have,
// marks the port as shared in the stash's map of ports (review12: with the
// port's one sender known, an ambiguous or missing record is that sender's).
// Control: the same exchange without the record is attributed to the sender.
func TestUDPSharedPortAmbiguous(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			for _, args := range [][]string{
				{"-n", tp.a, "addr", "add", "fd00::1/64", "dev", tp.vethA, "nodad"},
				{"-n", tp.b, "addr", "add", "fd00::2/64", "dev", tp.vethB, "nodad"},
			} {
				if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
				}
			}
			d, stash, portsID := startStashedPorts(t, tp, "LATCH_TEST_FIREWALL="+fw)
			defer d.stop()
			if stash == 0 {
				t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
			}
			m, err := ebpf.NewMapFromID(stash)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			ports, err := ebpf.NewMapFromID(portsID)
			if err != nil {
				t.Fatal(err)
			}
			defer ports.Close()
			for i, ambiguous := range []bool{false, true} {
				port := 40370 + i
				to := netip.MustParseAddrPort("[fd00::2]:" + strconv.Itoa(9016+i))
				msg := "latch-ambiguous-sender"
				c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_KEEP_UID=1", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=700ms", "LATCH_TEST_UDP_LINGER=20s",
					"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+to.String(), "LATCH_TEST_UDP_MSGS="+msg)
				l, ok := c.waitLine("pid ", 10*time.Second)
				if !ok {
					t.Fatalf("the sender did not start; stderr:\n%s", c.errors())
				}
				child := strings.TrimPrefix(l, "pid ")
				if _, ok := c.waitLine("bound", 5*time.Second); !ok {
					t.Fatalf("the sender did not bind; stderr:\n%s", c.errors())
				}
				// The other program (this test's process) binds the port after.
				if err := inNS(tp.a, func() error {
					fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						return err
					}
					t.Cleanup(func() { unix.Close(fd) })
					if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
						return err
					}
					return unix.Bind(fd, &unix.SockaddrInet6{Port: port})
				}); err != nil {
					t.Fatal(err)
				}
				if ambiguous {
					k, ok := stashKey(udp6Packet(netip.MustParseAddrPort("[fd00::1]:"+strconv.Itoa(port)), to, []byte(msg)))
					if !ok {
						t.Fatal("no stash key for the test's packet")
					}
					if err := m.Put(k, make([]byte, 8)); err != nil {
						t.Fatal(err)
					}
					if err := ports.Put(uint32(port), stashPortShared); err != nil {
						t.Fatal(err)
					}
				}
				d.drain()
				if _, ok := c.waitLine("done", 10*time.Second); !ok {
					t.Fatalf("the sender did not finish; stderr:\n%s", c.errors())
				}
				held := heldLine(t, d, to.String())
				want := child
				if ambiguous {
					want = "0"
				}
				if !strings.Contains(held, " pid="+want+" ") {
					t.Errorf("ambiguous record %t: the datagram was held as %q, want pid %s (this test is pid %d, the sender %s)", ambiguous, held, want, os.Getpid(), child)
				}
			}
		})
	}
}

// udp6Packet returns an IPv6 UDP datagram from src to dst (checksum 0).
func udp6Packet(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 48+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6] = 17
	p[7] = 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	binary.BigEndian.PutUint16(p[40:], src.Port())
	binary.BigEndian.PutUint16(p[42:], dst.Port())
	binary.BigEndian.PutUint16(p[44:], uint16(8+len(payload)))
	copy(p[48:], payload)
	return p
}

// udp4Packet returns an IPv4 UDP datagram from src to dst with IPv4 id id
// (DF set; checksums left 0).
func udp4Packet(src, dst netip.AddrPort, id uint16, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], id)
	p[6] = 0x40
	p[8] = 64
	p[9] = 17
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

// FuzzStashKey: the daemon's side of the sender stash's key reads packet
// bytes the queue hands it (cut short at the copy range). It never panics;
// a key is 76 bytes with UDP's protocol and the packet's family; and it is
// the same for a packet cut right after the bytes it reads, so a long
// datagram's key does not depend on how much of it the queue copied.
func FuzzStashKey(f *testing.F) {
	src, dst := netip.MustParseAddrPort("198.18.0.1:40360"), netip.MustParseAddrPort("198.18.0.2:9006")
	f.Add(udp4Packet(src, dst, 0x526e, []byte("latch-shared-attr")))
	f.Add(udp4Packet(src, dst, 1, bytes.Repeat([]byte("x"), 100)))
	f.Add(udp4Packet(src, dst, 1, nil))
	frag := udp4Packet(src, dst, 7, []byte("fragment"))
	frag[6] |= 0x20 // MF
	f.Add(frag)
	opts := udp4Packet(src, dst, 9, []byte("with options"))
	opts = append(append(append([]byte{}, opts[:20]...), 1, 1, 1, 0), opts[20:]...)
	opts[0] = 0x46
	binary.BigEndian.PutUint16(opts[2:], uint16(len(opts)))
	f.Add(opts)
	v6 := make([]byte, 48+40)
	v6[0] = 0x60
	binary.BigEndian.PutUint16(v6[4:], 48)
	v6[6] = 17
	v6[23], v6[39] = 1, 2
	binary.BigEndian.PutUint16(v6[40:], 5353)
	binary.BigEndian.PutUint16(v6[42:], 5353)
	f.Add(v6)
	v6ext := bytes.Clone(v6)
	v6ext[6] = 60
	f.Add(v6ext)
	f.Add([]byte{0x45})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		k, ok := stashKey(pkt)
		if !ok {
			if k != nil {
				t.Fatal("a key with false")
			}
			return
		}
		if len(k) != stashKeySize || k[1] != 17 || (k[0] != 4 && k[0] != 6) || k[0] != pkt[0]>>4 {
			t.Fatalf("key % x for packet % x", k, pkt)
		}
		n := int(binary.NativeEndian.Uint32(k[40:]))
		if n > stashData {
			t.Fatalf("key counts %d payload bytes, at most %d", n, stashData)
		}
		if k[0] == 6 && (k[6] != 0 || k[7] != 0) {
			t.Fatalf("IPv6 key with an IPv4 id: % x", k)
		}
		for _, b := range k[44+n:] {
			if b != 0 {
				t.Fatalf("key's bytes after its %d payload bytes are not zero: % x", n, k)
			}
		}
		// Cut right after the payload bytes the key holds: the same key.
		l4 := 40
		if k[0] == 4 {
			l4 = int(pkt[0]&0xf) * 4
		}
		k2, ok2 := stashKey(pkt[:l4+8+n])
		if !ok2 || !bytes.Equal(k, k2) {
			t.Fatalf("the packet cut after %d bytes has key %x (%t), the whole %x", l4+8+n, k2, ok2, k)
		}
	})
}
