package linux

import (
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAllowedFlowSourceRouteTCPLooseOff (review4): an established connection
// the queue allowed (no fast path, conntrack mode: no fast mark, so 7f06bbf's
// reset does not look at it) that sets an IPv4 loose source route via F and
// has its route looked up again (IP_TOS) sends its segments with F as their IP
// destination: a conntrack tuple nobody decided. With conntrack's default
// nf_conntrack_tcp_loose=1 the first such segment is NEW and LATCH-OUT holds
// it (the queue sees F); with nf_conntrack_tcp_loose=0 (a common hardening
// setting) conntrack calls a segment without SYN INVALID, and LATCH-OUT's
// "SYN NONE, INVALID, not MarkReject: RETURN" passes it: data reaches F,
// which no verdict allowed. The policy allows port 9101 (the queue would
// allow F:9101 too), so the test asks that every packet that reached F was
// held first. Fails on the current code (loose=0); the loose=1 case is the
// control.
func TestAllowedFlowSourceRouteTCPLooseOff(t *testing.T) {
	for _, loose := range []string{"1", "0"} {
		t.Run("loose="+loose, func(t *testing.T) {
			needFirewall(t, FirewallIptablesNft)
			tp := newTopo(t)
			if out, err := exec.Command("ip", "-n", tp.b, "addr", "add", addrF+"/24", "dev", tp.vethB).CombinedOutput(); err != nil {
				t.Fatalf("ip addr add %s: %v: %s", addrF, err, out)
			}
			srv := listenPush(t, tp, addrB, 9101)
			countF := probeF(t, tp)
			d := startDaemon(t, tp, "9101=allow,*=deny", "LATCH_TEST_FIREWALL="+FirewallIptablesNft)
			defer d.stop()
			if out, err := exec.Command("ip", "netns", "exec", tp.a, "sysctl", "-w", "net.netfilter.nf_conntrack_tcp_loose="+loose).CombinedOutput(); err != nil {
				t.Fatalf("sysctl nf_conntrack_tcp_loose=%s in %s: %v: %s", loose, tp.a, err, out)
			}
			c := dialFast(t, tp, addrB, 9101, 0)
			defer c.Close()
			sc := srv.conn(t, c)
			if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, addrB+":9101") {
				t.Fatalf("the queue did not hold the SYN to %s:9101 (got %q)", addrB, l)
			}
			if n := countF(); n != 0 {
				t.Fatalf("before any source route, %d packets reached %s", n, addrF)
			}
			rc, err := c.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var serr error
			rc.Control(func(fd uintptr) {
				serr = errors.Join(
					unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, string(lsrrVia(addrF))),
					unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0x10))
			})
			if serr != nil {
				t.Fatalf("IP_OPTIONS, IP_TOS: %v", serr)
			}
			for i := 0; i < 3; i++ {
				c.Write(make([]byte, 100))
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond)
			heldF := false
			for _, l := range d.linesFor(300 * time.Millisecond) {
				if strings.HasPrefix(l, "held ") && strings.Contains(l, addrF+":9101") {
					heldF = true
				}
			}
			n := countF()
			t.Logf("loose=%s: %d TCP packets reached %s; held for %s: %v; server got %d bytes", loose, n, addrF, addrF, heldF, sc.got.Load())
			if n != 0 && !heldF {
				t.Errorf("an allowed connection to %s:9101 that set a loose source route via %s sent %d TCP packets to %s, none of them held by the queue (nf_conntrack_tcp_loose=%s: INVALID, passed by LATCH-OUT)", addrB, addrF, n, addrF, loose)
			}
		})
	}
}
