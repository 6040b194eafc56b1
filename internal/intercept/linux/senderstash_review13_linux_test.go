package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUDPSharedPortExtHeaderSendThenClose (review13): as
// TestUDPSharedPortSendThenClose, but the attacker's socket carries an IPv6
// routing header (IPV6_RTHDR with a segment routing header of no segments
// left: no privilege needed, and not source routing for the daemon). The
// sender stash keys only a UDP header right after the IPv6 header, so the
// attacker's datagrams get no record and do not mark the port shared in
// stash_ports; the daemon cannot key them either and fell back to the socket
// the tuple finds when only one is bound: the allowed program's, once the
// attacker closed its socket. Each datagram must be held as no program's (or
// the sender's), never as the program that did not send it.
func TestUDPSharedPortExtHeaderSendThenClose(t *testing.T) {
	for i, noOpt := range []bool{false, true} {
		t.Run(fmt.Sprintf("no-option-matches=%v", noOpt), func(t *testing.T) {
			fw := FirewallIptablesNft
			needFirewall(t, fw)
			env := []string{"LATCH_TEST_FIREWALL=" + fw, "LATCH_TEST_POLICY=*=allow@1s"}
			if noOpt {
				// A kernel without xt_ipv6header (and xt_u32), as in
				// TestFastTCPWithoutU32: the ruleset without the option
				// matches (spec.noOptMatch), which does not drop datagrams
				// with a routing header.
				real := "/usr/sbin/iptables-nft-restore"
				if _, err := os.Stat(real); err != nil {
					t.Skipf("needs %s: %v", real, err)
				}
				dir := t.TempDir()
				script := "#!/bin/sh\nin=$(cat)\n" +
					"case \"$in\" in *'-m u32'*|*'-m ipv6header'*) echo \"iptables-nft-restore: Couldn't load match \\`ipv6header':No such file or directory\" >&2; exit 2;; esac\n" +
					"printf '%s\\n' \"$in\" | " + real + " \"$@\"\n"
				if err := os.WriteFile(filepath.Join(dir, "iptables-nft-restore"), []byte(script), 0o755); err != nil {
					t.Fatal(err)
				}
				env = append(env, "PATH="+dir+":"+os.Getenv("PATH"))
			}
			tp := newTopo(t)
			addV6(t, tp)
			d, stash := startStashed(t, tp, env...)
			defer d.stop()
			if stash == 0 {
				t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
			}
			port := 40395 + i
			to := netip.MustParseAddrPort(net.JoinHostPort(addrB6, strconv.Itoa(9045+i)))
			// The allowed program: bound first, stays bound, and has sent
			// through the stash from the port (its one sender).
			c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_KEEP_UID=1", "LATCH_TEST_UDP_REUSE=1", "LATCH_TEST_UDP_DELAY=4s",
				"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+net.JoinHostPort(addrB6, "9050"))
			l, ok := c.waitLine("pid ", 10*time.Second)
			if !ok {
				t.Fatalf("the allowed program did not start; stderr:\n%s", c.errors())
			}
			allowed := strings.TrimPrefix(l, "pid ")
			if _, ok := c.waitLine("bound", 5*time.Second); !ok {
				t.Fatalf("the allowed program did not bind; stderr:\n%s", c.errors())
			}
			defer c.waitLine("done", 10*time.Second)
			d.drain()
			const n = 4
			if err := inNS(tp.a, func() error {
				fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return err
				}
				defer unix.Close(fd)
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
					return err
				}
				if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
					return err
				}
				// Segment routing header (type 4): next header (the
				// kernel's), length 2 (one segment), type 4, segments left
				// 0, last entry 0, flags, tag; the segment (the kernel
				// puts the destination there).
				dst := to.Addr().As16()
				srh := append([]byte{0, 2, 4, 0, 0, 0, 0, 0}, dst[:]...)
				if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srh)); err != nil {
					return fmt.Errorf("IPV6_RTHDR (segment routing header): %w", err)
				}
				sa := &unix.SockaddrInet6{Port: int(to.Port()), Addr: dst}
				for j := range n {
					if err := unix.Sendto(fd, []byte(fmt.Sprintf("latch-exthdr-%d", j)), 0, sa); err != nil {
						if err == unix.EPERM && !noOpt {
							return nil // dropped (iptablesRouteRules): none held, as it should
						}
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			var held []string
			for _, l := range d.linesFor(1500 * time.Millisecond) {
				if strings.HasPrefix(l, "held out udp ") && strings.Contains(l, " "+to.String()+" ") {
					held = append(held, l)
				}
			}
			if len(held) == 0 && noOpt {
				t.Fatalf("none of the %d datagrams held", n)
			}
			bad := 0
			for _, h := range held {
				if strings.Contains(h, " pid="+allowed+" ") {
					bad++
				}
			}
			if bad > 0 {
				t.Errorf("%d of the attacker's (pid %d) %d datagrams held were held as the allowed program's (pid %s): %q", bad, os.Getpid(), len(held), allowed, held)
			}
		})
	}
}

// TestUDPSharedPortPagedPayload (review13): the sender stash reads a
// datagram with bpf_skb_load_bytes_relative, which reads only the packet's
// linear part: a datagram whose payload the kernel put in pages (UDP_SEGMENT
// set on the socket: any program may) is not keyed, gets no record and does
// not mark its port shared. The daemon, reading the queue's linear copy,
// keys it, finds no record and credits the port's one recorded sender: the
// allowed program, which sent from the port first, while the attacker (same
// user, SO_REUSEADDR on the allowed program's port, its socket still open)
// sent the datagram. Each datagram must be held as the attacker's or no
// program's, never as the allowed program's.
func TestUDPSharedPortPagedPayload(t *testing.T) {
	for i, dst := range []string{addrB, addrB6} {
		t.Run(dst, func(t *testing.T) {
			fw := FirewallIptablesNft
			needFirewall(t, fw)
			tp := newTopo(t)
			addV6(t, tp)
			d, stash := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_POLICY=*=allow@1s")
			defer d.stop()
			if stash == 0 {
				t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
			}
			port := 40398 + i
			to := netip.MustParseAddrPort(net.JoinHostPort(dst, strconv.Itoa(9055+i)))
			// The allowed program: sends first (through the stash: the
			// port's one sender), then lives on for about 3 s.
			var msgs []string
			for j := range 30 {
				msgs = append(msgs, fmt.Sprintf("latch-allowed-%d", j))
			}
			c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_KEEP_UID=1", "LATCH_TEST_UDP_REUSE=1",
				"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+net.JoinHostPort(dst, "9060"),
				"LATCH_TEST_UDP_MSGS="+strings.Join(msgs, " "))
			l, ok := c.waitLine("pid ", 10*time.Second)
			if !ok {
				t.Fatalf("the allowed program did not start; stderr:\n%s", c.errors())
			}
			allowed := strings.TrimPrefix(l, "pid ")
			if _, ok := c.waitLine("sent latch-allowed-1 ", 5*time.Second); !ok {
				t.Fatalf("the allowed program did not send; stderr:\n%s", c.errors())
			}
			defer c.waitLine("done", 10*time.Second)
			d.drain()
			const n = 4
			var fd int
			if err := inNS(tp.a, func() error {
				family := unix.AF_INET6
				var local, sa unix.Sockaddr = &unix.SockaddrInet6{Port: port}, &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
				if to.Addr().Is4() {
					family = unix.AF_INET
					local, sa = &unix.SockaddrInet4{Port: port}, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
				}
				var err error
				if fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
					return err
				}
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
					return err
				}
				if err := unix.Bind(fd, local); err != nil {
					return err
				}
				// UDP_SEGMENT: the payload goes to pages, not the linear part.
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT, 1200); err != nil {
					return fmt.Errorf("UDP_SEGMENT: %w", err)
				}
				for j := range n {
					if err := unix.Sendto(fd, []byte(fmt.Sprintf("latch-paged-%d-of-the-attacker-with-more-than-32-bytes", j)), 0, sa); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			var held []string
			for _, l := range d.linesFor(1500 * time.Millisecond) {
				if strings.HasPrefix(l, "held out udp ") && strings.Contains(l, " "+to.String()+" ") {
					held = append(held, l)
				}
			}
			if len(held) == 0 {
				t.Fatalf("none of the %d datagrams held", n)
			}
			bad := 0
			for _, h := range held {
				if strings.Contains(h, " pid="+allowed+" ") {
					bad++
				}
			}
			if bad > 0 {
				t.Errorf("%d of the attacker's (pid %d) %d datagrams held were held as the allowed program's (pid %s): %q", bad, os.Getpid(), len(held), allowed, held)
			}
			// Its own: the stash reads its payload from pages, and records it.
			for _, h := range held {
				if !strings.Contains(h, fmt.Sprintf(" pid=%d ", os.Getpid())) {
					t.Errorf("a datagram with its payload in pages held as %q, not as its sender's (pid %d)", h, os.Getpid())
				}
			}
		})
	}
}

// TestUDPSharedPortUnstashedDatagram (review13): a datagram that reaches the
// queue without passing the sender stash has no record, and did not mark
// its port shared: the daemon credited the port's one recorded sender, even
// while the datagram's own sender is bound to the port too. Known ways there
// (a payload in pages, an extension header) are closed; others remain
// possible (the stash and the queue rule are two rules: a flow's connmark
// another CPU's verdict changes between them, Redecide to Allow, sends a
// datagram to the queue rule past a stash rule that did not match). Made
// here by an ip6tables ruleset without the stash (an ip6tables-nft-restore
// wrapper drops its rules): the allowed program (this test's process), a
// dual-stack IPv6 socket, sends to an IPv4 address (through iptables, so
// through the stash: the port's one sender); a same-user program binds the
// port too (SO_REUSEADDR) and sends IPv6 (not through the stash), socket
// open. Its datagrams must be held as its own or no program's, never as the
// allowed program's: the port's one sender is credited only if it is also
// the one socket that could have sent the datagram.
func TestUDPSharedPortUnstashedDatagram(t *testing.T) {
	fw := FirewallIptablesNft
	needFirewall(t, fw)
	real := "/usr/sbin/ip6tables-nft-restore"
	if _, err := os.Stat(real); err != nil {
		t.Skipf("needs %s: %v", real, err)
	}
	dir := t.TempDir()
	script := "#!/bin/sh\ngrep -v -- 'fast-stash-' | " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "ip6tables-nft-restore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	tp := newTopo(t)
	addV6(t, tp)
	d, stash := startStashed(t, tp, "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_POLICY=*=allow@1s", "PATH="+dir+":"+os.Getenv("PATH"))
	defer d.stop()
	if stash == 0 {
		t.Skip("no sender stash (LATCH_TEST_SENDER_STASH=off)")
	}
	const port = 40400
	to := netip.MustParseAddrPort(net.JoinHostPort(addrB6, "9065"))
	fd := allowedDualStackSender(t, tp, d, port, 9066)
	defer unix.Close(fd)
	c := spawnChild(t, tp, "unpriv-udp", "", "LATCH_TEST_UDP_KEEP_UID=1", "LATCH_TEST_UDP_REUSE=1",
		"LATCH_TEST_UDP_PORT="+strconv.Itoa(port), "LATCH_TEST_UDP_TO="+to.String(),
		"LATCH_TEST_UDP_MSGS=latch-unstashed-0 latch-unstashed-1 latch-unstashed-2")
	l, ok := c.waitLine("pid ", 10*time.Second)
	if !ok {
		t.Fatalf("the other program did not start; stderr:\n%s", c.errors())
	}
	other := strings.TrimPrefix(l, "pid ")
	if _, ok := c.waitLine("done", 10*time.Second); !ok {
		t.Fatalf("the other program did not send; stderr:\n%s", c.errors())
	}
	var held []string
	for _, l := range d.linesFor(time.Second) {
		if strings.HasPrefix(l, "held out udp ") && strings.Contains(l, " "+to.String()+" ") {
			held = append(held, l)
		}
	}
	if len(held) == 0 {
		t.Fatal("none of the other program's datagrams held")
	}
	for _, h := range held {
		if strings.Contains(h, fmt.Sprintf(" pid=%d ", os.Getpid())) {
			t.Errorf("a datagram of the other program (pid %s) that did not pass the stash held as the allowed program's (pid %d): %q", other, os.Getpid(), h)
		}
	}
}

// allowedDualStackSender makes the allowed program of the shared-port tests
// (this test's process): a dual-stack socket on [::]:port with SO_REUSEADDR
// in A, which sends one IPv4 datagram to B's peerPort through the stash (so
// it is the port's one sender), and checks that the datagram was held as
// this process's. It returns the socket; d is drained.
func allowedDualStackSender(t *testing.T, tp *topo, d *daemon, port, peerPort int) int {
	t.Helper()
	var fd int
	if err := inNS(tp.a, func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
			return err
		}
		mapped := netip.AddrFrom16(netip.MustParseAddr(addrB).As16()).As16()
		mapped[10], mapped[11] = 0xff, 0xff
		return unix.Sendto(fd, []byte("latch-allowed-v4"), 0, &unix.SockaddrInet6{Port: peerPort, Addr: mapped})
	}); err != nil {
		t.Fatal(err)
	}
	if l, ok := d.waitLine(fmt.Sprintf("held out udp %s:%d %s:%d ", addrA, port, addrB, peerPort), 3*time.Second); !ok || !strings.Contains(l, fmt.Sprintf(" pid=%d ", os.Getpid())) {
		unix.Close(fd)
		t.Fatalf("the allowed program's IPv4 datagram held as %q, want its own (pid %d)", l, os.Getpid())
	}
	d.drain()
	return fd
}
