package linux

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSourceRouteUDPOnAllowedFlow (review5): a datagram with an IPv4
// loose source route (IP_OPTIONS, no privilege needed) has the route's first
// hop F as its IP destination and the address given to sendto, X, in the
// option. Conntrack, the fast UDP match and the queue all see F: the queue
// decides F, a host a rule allows, and the datagram passes; F, a router that
// honours source routes (net.ipv4.conf.*.accept_source_route=1, forwarding),
// forwards it to X (which takes it if it accepts source routes too: not
// Linux's default, all.accept_source_route=0), which no rule allows and which the queue never saw. The
// ruleset's source-route resets (c3e1521) are for TCP, and for TCP only for a
// fast mark's packets or INVALID ones: a NEW packet (UDP here; a TCP SYN
// likewise) with a source route is decided on its first hop. Control: the
// same datagram without the option (A routes X via F) is held and denied.
// Topology: A (daemon, 198.18.0.1) - B (F, 198.18.0.2; 198.18.2.1) - C (X,
// 198.18.2.2). Failed before the queue refused a source-routed packet (X
// received the routed datagram).
func TestSourceRouteUDPOnAllowedFlow(t *testing.T) {
	for _, fw := range []string{FirewallNftables, FirewallIptablesNft} {
		t.Run(fw, func(t *testing.T) {
			needFirewall(t, fw)
			tp := newTopo(t)
			c := tp.a[:len(tp.a)-1] + "c"
			vb, vc := "s5b"+tp.vethB[3:], "s5c"+tp.vethB[3:]
			t.Cleanup(func() { exec.Command("ip", "netns", "del", c).Run() })
			const addrX, addrBX = "198.18.2.2", "198.18.2.1"
			for _, args := range [][]string{
				{"netns", "add", c},
				{"link", "add", vb, "netns", tp.b, "type", "veth", "peer", "name", vc, "netns", c},
				{"-n", tp.b, "addr", "add", addrBX + "/24", "dev", vb},
				{"-n", c, "addr", "add", addrX + "/24", "dev", vc},
				{"-n", tp.b, "link", "set", vb, "up"},
				{"-n", c, "link", "set", vc, "up"},
				{"-n", c, "link", "set", "lo", "up"},
				{"-n", c, "route", "add", "default", "via", addrBX},
				{"-n", tp.a, "route", "add", "198.18.2.0/24", "via", addrB},
			} {
				if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
				}
			}
			for _, s := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.accept_source_route=1", "net.ipv4.conf." + tp.vethB + ".accept_source_route=1",
				"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf." + tp.vethB + ".rp_filter=0"} {
				if out, err := exec.Command("ip", "netns", "exec", tp.b, "sysctl", "-w", s).CombinedOutput(); err != nil {
					t.Fatalf("sysctl %s in %s: %v: %s", s, tp.b, err, out)
				}
			}
			// X takes source-routed datagrams too (ip_rcv_options drops
			// them at the end host otherwise).
			for _, s := range []string{"net.ipv4.conf.all.accept_source_route=1", "net.ipv4.conf." + vc + ".accept_source_route=1"} {
				if out, err := exec.Command("ip", "netns", "exec", c, "sysctl", "-w", s).CombinedOutput(); err != nil {
					t.Fatalf("sysctl %s in %s: %v: %s", s, c, err, out)
				}
			}
			// X counts the datagrams it receives.
			var pc net.PacketConn
			if err := inNS(c, func() (err error) { pc, err = net.ListenPacket("udp4", addrX+":9002"); return err }); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			got := make(chan string, 100)
			go func() {
				buf := make([]byte, 100)
				for {
					n, _, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					got <- string(buf[:n])
				}
			}()
			var d *daemon
			if os.Getenv("R5_NODAEMON") == "" {
				d = startDaemon(t, tp, "*=deny", "LATCH_TEST_FIREWALL="+fw, "LATCH_TEST_ADDR_POLICY="+addrB+"=allow")
				defer d.stop()
			}
			// One socket: a plain datagram to F (allowed: the flow gets
			// connmark MarkAllow), then the same socket sets a loose source
			// route via F and sends to X: its IP header says F, the same
			// 5-tuple, so the allowed flow's RETURN passes it, never queued.
			err := inNS(tp.a, func() error {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
				if err != nil {
					return err
				}
				defer unix.Close(fd)
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 40123}); err != nil {
					return err
				}
				toF := &unix.SockaddrInet4{Port: 9002}
				copy(toF.Addr[:], net.ParseIP(addrB).To4())
				if err := unix.Sendto(fd, []byte("plain-to-F"), 0, toF); err != nil {
					return fmt.Errorf("send to F: %w", err)
				}
				time.Sleep(500 * time.Millisecond)
				if err := unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, string(lsrrVia(addrB))); err != nil {
					return fmt.Errorf("IP_OPTIONS: %w", err)
				}
				to := &unix.SockaddrInet4{Port: 9002}
				copy(to.Addr[:], net.ParseIP(addrX).To4())
				for i := 0; i < 3; i++ {
					if err := unix.Sendto(fd, []byte(fmt.Sprintf("routed-%d", i)), 0, to); err != nil {
						if errors.Is(err, unix.EPERM) {
							continue // refused by the output chain: the point
						}
						return fmt.Errorf("send to X via F: %w", err)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var recv []string
			for deadline := time.After(2 * time.Second); ; {
				select {
				case m := <-got:
					recv = append(recv, m)
					continue
				case <-deadline:
				}
				break
			}
			if len(recv) != 0 {
				t.Errorf("X (%s, which no rule allows) received %q from A; want none: a datagram source-routed via F (allowed) was decided on F and forwarded to X", addrX, recv)
			}
			if d != nil {
				for _, l := range d.linesFor(200 * time.Millisecond) {
					t.Logf("daemon: %s", l)
				}
			}
		})
	}
}
