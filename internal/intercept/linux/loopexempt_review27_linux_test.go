package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoopbackExemptMarkedByForgedSYN (review27, low-medium, fixed: local
// unprivileged DoS, a regression of 6a82196's "any loopback packet of an
// unmarked entry gets MarkLoopbackExempt"): B opens a TCP connection to a
// server on A (Config.Inbound off, the default: nothing decides it, its
// conntrack entry keeps mark 0). Any program on A then sends over lo one
// SYN with the connection's tuple: an IPV6_FREEBIND socket (no privilege)
// bound to B's address and port connects to the server. Conntrack finds
// the ESTABLISHED entry, ignores the SYN (TCP_CONNTRACK_IGNORE keeps the
// entry attached) and LATCH-OUT's loopback rule, no longer limited to
// ctstate NEW, saves MarkLoopbackExempt on the entry. The server's next
// answer out the veth is then held by 6a82196's queue rule and decided as
// the server program's outbound connection to B (denied here: every rule
// denies), or dropped by LATCH-POST: the established connection dies. With
// ctstate NEW in the rule (before 6a82196) the SYN did not mark it. The
// same works with a UDP datagram on any unmarked entry (flows from before
// latch, with or without Config.Inbound). It passes with ctstate NEW put
// back into the two marking rules (checked, iptables-nft), and with the
// marking rule taking only a packet from a local address to a local one,
// as it does now (a real loopback flow's; the forged SYN's source is B's).
func TestLoopbackExemptMarkedByForgedSYN(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port := uint16(9711 + i*2)
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp, _ := forgedTCPNet(t)
			d := startDaemonOn(t, tp, fw, "*=deny")
			defer d.stop()
			time.Sleep(200 * time.Millisecond)
			server := netip.AddrPortFrom(netip.MustParseAddr(addr6A), port)
			var ln net.Listener
			if err := inNS(tp.a, func() error {
				var err error
				ln, err = net.Listen("tcp6", server.String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var client net.Conn
			if err := inNS(tp.b, func() error {
				var err error
				client, err = net.DialTimeout("tcp6", server.String(), 3*time.Second)
				return err
			}); err != nil {
				t.Fatalf("B's connection to A's server: %v", err)
			}
			defer client.Close()
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(3 * time.Second))
			acc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer acc.Close()
			acc.Write([]byte("latch-r27-1"))
			if got, err := readWithin(client, 2*time.Second); got != "latch-r27-1" {
				t.Fatalf("B did not get the server's first answer: %q, %v", got, err)
			}
			clientAddr := netip.MustParseAddrPort(client.LocalAddr().String())
			// The forged SYN over lo, from an unprivileged-capable socket.
			if err := inNS(tp.a, func() error {
				fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
				if err != nil {
					return err
				}
				defer unix.Close(fd)
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
					return fmt.Errorf("IPV6_FREEBIND: %w", err)
				}
				if err := unix.Bind(fd, &unix.SockaddrInet6{Port: int(clientAddr.Port()), Addr: clientAddr.Addr().As16()}); err != nil {
					return fmt.Errorf("bind %s: %w", clientAddr, err)
				}
				if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(port), Addr: server.Addr().As16()}); err != nil && err != unix.EINPROGRESS {
					return fmt.Errorf("connect: %w", err)
				}
				time.Sleep(300 * time.Millisecond)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			out, _ := exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--dport", fmt.Sprint(port)).CombinedOutput()
			t.Logf("A's entry after the forged SYN: %s", out)
			acc.Write([]byte("latch-r27-2"))
			if got, err := readWithin(client, 3*time.Second); got != "latch-r27-2" {
				t.Errorf("after one forged SYN over lo with its tuple, B's established connection to A's server (never decided: Config.Inbound off) no longer gets the server's answers: %q, %v", got, err)
			}
		})
	}
}
