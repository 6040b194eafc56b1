package linux

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sendOnAllowedFlow sends, from one socket in A made by open, first to on F
// (allowed: the flow gets the allow conntrack mark) and then, after route(fd),
// each of msgs to X: the same 5-tuple in the packets' headers, whose IP
// destination is F. A send the output chain refuses (EPERM) is what the tests
// want, not an error.
func (n *routedNet) sendOnAllowedFlow(t *testing.T, open func() (int, error), toF, toX unix.Sockaddr, plain string, route func(fd int) error, msgs ...string) {
	t.Helper()
	err := inNS(n.tp.a, func() error {
		fd, err := open()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Sendto(fd, []byte(plain), 0, toF); err != nil {
			return fmt.Errorf("send %q to F: %w", plain, err)
		}
		time.Sleep(500 * time.Millisecond)
		if err := route(fd); err != nil {
			return err
		}
		for _, m := range msgs {
			if err := unix.Sendto(fd, []byte(m), 0, toX); err != nil && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("send %q to X: %w", m, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSourceRouteEchoOnAllowedFlow (review7) is TestSourceRouteUDPOnAllowedFlow
// for ICMP echo: a ping socket (no privilege where ping_group_range admits the
// user, as systemd sets it) sends an echo request to F, which a rule allows
// (conntrack's echo flow is addresses and identifier: the ping socket's port),
// then sets a loose source route via F and sends echo requests to X. By their
// header they are more of the allowed echo flow to F. X must see none.
func TestSourceRouteEchoOnAllowedFlow(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			n := newRoutedNet(t, fw)
			allowPingSockets(t, n.tp.a)
			atF := openRaw(t, n.tp.b, false, unix.IPPROTO_ICMP, "").capture()
			atX := openRaw(t, n.x, false, unix.IPPROTO_ICMP, "").capture()
			toF := &unix.SockaddrInet4{}
			copy(toF.Addr[:], net.ParseIP(addrB).To4())
			toX := &unix.SockaddrInet4{}
			copy(toX.Addr[:], net.ParseIP(addrX).To4())
			echo := func(marker string) string { return string(icmpMsg(8, 0, 0, []byte(marker), true)) }
			open := func() (int, error) {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)
				if err != nil {
					return -1, fmt.Errorf("ping socket: %w", err)
				}
				// The echo identifier.
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 0x4c77}); err != nil {
					unix.Close(fd)
					return -1, fmt.Errorf("bind ping socket: %w", err)
				}
				return fd, nil
			}
			n.sendOnAllowedFlow(t, open, toF, toX, echo("latch-echo-plain-to-F"), setLSRR,
				echo("latch-echo-routed-0"), echo("latch-echo-routed-1"), echo("latch-echo-routed-2"))
			if !atF.waitSaw("latch-echo-plain-to-F", 2*time.Second) {
				t.Fatal("F did not receive the plain echo request: the allowed flow this test rides is not there")
			}
			if atX.waitSaw("latch-echo-routed", 2*time.Second) {
				t.Errorf("X (%s, which no rule allows) received an echo request source-routed via F on the allowed echo flow to F", addrX)
				for _, l := range n.d.linesFor(200 * time.Millisecond) {
					t.Logf("daemon: %s", l)
				}
			}
		})
	}
}

// TestRoutingHeaderUDPOnAllowedFlow (review7) is TestSourceRouteUDPOnAllowedFlow
// for IPv6: a UDP socket sends a datagram to [F]:9002 (allowed), then sets a
// segment routing header via F (IPV6_RTHDR type 4, no privilege needed) and
// sends to [X]:9002: IP destination F, the allowed flow's 5-tuple; F (SRv6
// on) sends it on to X. X must receive none.
func TestRoutingHeaderUDPOnAllowedFlow(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			n := newRoutedNet(t, fw)
			atF := openRaw(t, n.tp.b, true, unix.IPPROTO_UDP, "").capture()
			time.Sleep(300 * time.Millisecond) // IPv6 neighbours settle
			toF := &unix.SockaddrInet6{Port: 9002}
			copy(toF.Addr[:], net.ParseIP(addr6B).To16())
			toX := &unix.SockaddrInet6{Port: 9002}
			copy(toX.Addr[:], net.ParseIP(addr6X).To16())
			open := func() (int, error) {
				fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
				if err != nil {
					return -1, err
				}
				if err := unix.Bind(fd, &unix.SockaddrInet6{Port: 40124}); err != nil {
					unix.Close(fd)
					return -1, err
				}
				return fd, nil
			}
			srh := func(fd int) error {
				if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srhVia(addr6X, addr6B))); err != nil {
					return fmt.Errorf("IPV6_RTHDR: %w", err)
				}
				return nil
			}
			n.sendOnAllowedFlow(t, open, toF, toX, "latch-plain6-to-F", srh, "latch-routed6-0", "latch-routed6-1", "latch-routed6-2")
			if !atF.waitSaw("latch-plain6-to-F", 2*time.Second) {
				t.Fatal("F did not receive the plain datagram: the allowed flow this test rides is not there")
			}
			n.xGetsNothing(t)
		})
	}
}
