package linux

import (
	"encoding/binary"

	"github.com/cilium/ebpf"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startStashed starts the test daemon with the socket pin and the sender
// stash (startPinned) and returns it with the id of the stash's map.
func startStashed(t *testing.T, tp *topo, env ...string) (*daemon, ebpf.MapID) {
	t.Helper()
	d := startDaemon(t, tp, "*=allow", append(env, "LATCH_TEST_SOCKET_PIN=on", "LATCH_TEST_ATTRIBUTE=1")...)
	sl, ok := d.waitLine("sender-stash ", 5*time.Second)
	if !ok || !strings.HasPrefix(sl, "sender-stash <nil> ") {
		d.stop()
		t.Fatalf("the ruleset does not run the sender stash: %q; stderr:\n%s", sl, d.errors())
	}
	if l, ok := d.waitLine("socket-pin ", 5*time.Second); !ok || l != "socket-pin <nil>" {
		d.stop()
		t.Fatalf("the ruleset does not run the socket pin: %q; stderr:\n%s", l, d.errors())
	}
	id, _ := strconv.ParseUint(strings.TrimPrefix(sl, "sender-stash <nil> "), 10, 32)
	return d, ebpf.MapID(id)
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
	var held string
	for _, l := range d.linesFor(300 * time.Millisecond) {
		if strings.HasPrefix(l, "held out ") && strings.Contains(l, " "+to+" ") {
			held = l
		}
	}
	if held == "" {
		t.Fatalf("the datagram to %s was not held", to)
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
		c := spawnChild(t, tp, "unpriv-udp", "", append(env, "LATCH_TEST_UDP_DELAY=700ms", "LATCH_TEST_UDP_MSGS=latch-shared-attr")...)
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
		t.Errorf("the sender's (pid %s) datagram was held as %q: decided as another program's, which shares its port", want, held)
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
// datagram with the same key first), and more than one socket is bound to
// its local port, the datagram is attributed to no program: not to the
// other program, whose socket the lookup by tuple finds. The test records
// the ambiguity itself in the stash's map, for the datagram the other
// program sends (unconnected, with DF: IPv4 id 0).
func TestUDPSharedPortAmbiguous(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			d, stash := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw)
			defer d.stop()
			const port = 40370
			to := net.JoinHostPort(addrB, "9016")
			c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_KEEP_UID=1", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=700ms",
				"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+to, "LATCH_TEST_UDP_MSGS=latch-ambiguous-sender")
			l, ok := c.waitLine("pid ", 10*time.Second)
			if !ok {
				t.Fatalf("the sender did not start; stderr:\n%s", c.errors())
			}
			child := strings.TrimPrefix(l, "pid ")
			if _, ok := c.waitLine("bound", 5*time.Second); !ok {
				t.Fatalf("the sender did not bind; stderr:\n%s", c.errors())
			}
			bindShared(t, tp, port)
			m, err := ebpf.NewMapFromID(stash)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			k, ok := stashKey(udp4Packet(netip.MustParseAddrPort(addrA+":"+strconv.Itoa(port)), netip.MustParseAddrPort(to), 0, []byte("latch-ambiguous-sender")))
			if !ok {
				t.Fatal("no stash key for the test's packet")
			}
			if err := m.Put(k, make([]byte, 8)); err != nil {
				t.Fatal(err)
			}
			d.drain()
			if _, ok := c.waitLine("done", 10*time.Second); !ok {
				t.Fatalf("the sender did not finish; stderr:\n%s", c.errors())
			}
			held := heldLine(t, d, to)
			if !strings.Contains(held, " pid=0 ") {
				t.Errorf("the datagram whose sender the stash cannot tell was held as %q, want no program (pid 0): this test is pid %d, the sender %s", held, os.Getpid(), child)
			}
		})
	}
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
