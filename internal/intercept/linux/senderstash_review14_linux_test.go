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

// TestUDPSharedPortUnstashedElsewhere (review14): as
// TestUDPSharedPortUnstashedDatagram (a datagram that reaches the queue
// without passing the sender stash, made by an ip6tables ruleset without
// it), but the other program's socket, open on the port all along, is one
// the daemon's "alone on the port now" check did not count: connected to
// another peer (a connected UDP socket still sends anywhere with sendto), or
// bound to another local address (::1) and sending from the allowed
// program's address with IPV6_PKTINFO (any local address, unprivileged).
// procattr's senders kept only sockets whose bound address and peer match
// the datagram's, so the allowed program's socket was "alone" and credited
// with the other program's datagrams. They must be held as the sender's or
// no program's, never as the allowed program's.
func TestUDPSharedPortUnstashedElsewhere(t *testing.T) {
	fw := FirewallIptablesNft
	needFirewall(t, fw)
	real := "/usr/sbin/ip6tables-nft-restore"
	if _, err := os.Stat(real); err != nil {
		t.Skipf("needs %s: %v", real, err)
	}
	for i, tc := range []struct {
		name string
		env  []string
	}{
		{"connected-elsewhere", []string{"LATCH_TEST_UDP_CONNECT=" + net.JoinHostPort(addrB6, "9999")}},
		{"bound-to-loopback-pktinfo", []string{"LATCH_TEST_UDP_BIND=::1", "LATCH_TEST_UDP_SRC=" + addrA6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
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
			port := 40410 + i
			to := netip.MustParseAddrPort(net.JoinHostPort(addrB6, strconv.Itoa(9075+i)))
			// The allowed program (this test's process): a dual-stack
			// socket on [::]:port that sends IPv4 through the stash (the
			// port's one sender).
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
				return unix.Sendto(fd, []byte("latch-allowed-v4"), 0, &unix.SockaddrInet6{Port: 9086, Addr: mapped})
			}); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if l, ok := d.waitLine(fmt.Sprintf("held out udp %s:%d %s:9086 ", addrA, port, addrB), 3*time.Second); !ok || !strings.Contains(l, fmt.Sprintf(" pid=%d ", os.Getpid())) {
				t.Fatalf("the allowed program's IPv4 datagram held as %q, want its own (pid %d)", l, os.Getpid())
			}
			d.drain()
			env := append([]string{"LATCH_TEST_UDP_KEEP_UID=1", "LATCH_TEST_UDP_REUSE=1",
				"LATCH_TEST_UDP_PORT=" + strconv.Itoa(port), "LATCH_TEST_UDP_TO=" + to.String(),
				"LATCH_TEST_UDP_MSGS=latch-elsewhere-0 latch-elsewhere-1 latch-elsewhere-2"}, tc.env...)
			c := spawnChild(t, tp, "unpriv-udp", "", env...)
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
				t.Fatalf("none of the other program's datagrams held; its stderr:\n%s", c.errors())
			}
			bad := 0
			for _, h := range held {
				if !strings.Contains(h, fmt.Sprintf("udp [%s]:%d ", addrA6, port)) {
					t.Errorf("held %q, want it from [%s]:%d", h, addrA6, port)
				}
				if strings.Contains(h, fmt.Sprintf(" pid=%d ", os.Getpid())) {
					bad++
				}
			}
			if bad > 0 {
				t.Errorf("%d of the other program's (pid %s) %d datagrams, sent from a socket open on the port all along, held as the allowed program's (pid %d): %q", bad, other, len(held), os.Getpid(), held)
			}
		})
	}
}
