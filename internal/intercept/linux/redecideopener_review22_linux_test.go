package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// srcPortFilter matches the conntrack entries whose original source port is port.
type srcPortFilter uint16

func (f srcPortFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return flow.Forward.SrcPort == uint16(f)
}

// TestForwardRawSegmentNotCreditedToOpener (review22, 71eb12b; fixed: openerOf
// credits only a packet of the conntrack entry the rule change marked): a container
// program's forwarded TCP flow to B is allowed, then ends (its socket gone), and
// a rule change takes it from the flow table (Backend.redecided keeps its
// request for 3 min). A raw socket in the container (CAP_NET_RAW, Docker's
// default for a container's root) then writes a segment without a handshake on
// the same tuple: conntrack picks it up mid-stream (NEW; the old entry expired,
// here deleted) and LATCH-FWD holds it. No socket sent it, so it is no
// program's; openerOf credits it to the program that opened the earlier flow,
// with that program's uid, and that program's rules let it through: a raw
// socket gets another program's allow by writing a non-SYN segment on a tuple
// that program used within 3 minutes. The policy here denies what no program
// sent (uid -1) and allows the program (uid 0).
func TestForwardRawSegmentNotCreditedToOpener(t *testing.T) {
	for i, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) { testForwardRawSegment(t, v6, uint16(9236+i), uint16(41236+i)) })
	}
}

func testForwardRawSegment(t *testing.T, v6 bool, port, localPort uint16) {
	fw := FirewallIptablesNft
	needFirewall(t, fw)
	tp := newTopo(t)
	c := addContainer(t, tp)
	src, dst := netip.MustParseAddr(addrC), netip.MustParseAddr(addrB)
	network, fam := "tcp4", unix.AF_INET
	if v6 {
		src, dst = netip.MustParseAddr(addr6C), netip.MustParseAddr(addr6B)
		network, fam = "tcp6", unix.AF_INET6
	}
	server := netip.AddrPortFrom(dst, port)
	var ln net.Listener
	if err := inNS(tp.b, func() error {
		var err error
		ln, err = net.Listen(network, server.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := openRaw(t, tp.b, v6, unix.IPPROTO_TCP, "").capture()
	raw := openRaw(t, c, v6, unix.IPPROTO_TCP, src.String())
	if v6 {
		if err := unix.SetsockoptInt(raw.fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 16); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // IPv6 routes and neighbours settle
	d := startDaemonOn(t, tp, fw, "*=allow", "LATCH_TEST_FORWARD=1", "LATCH_TEST_ATTRIBUTE=procfs",
		"LATCH_TEST_DENY_UID=-1", "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(int(port)))
	defer d.stop()
	local := netip.AddrPortFrom(src, localPort)
	var conn *net.TCPConn
	if err := inNS(c, func() error {
		dl := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(local)}
		cn, err := dl.Dial(network, server.String())
		if err == nil {
			conn = cn.(*net.TCPConn)
		}
		return err
	}); err != nil {
		t.Fatalf("the container program's connection to B: %v", err)
	}
	held := fmt.Sprintf("held out tcp %s %s ", local, server)
	l, ok := d.waitLine(held, 3*time.Second)
	if !ok {
		t.Fatal("the forwarded SYN was not held")
	}
	opener := fmt.Sprintf(" uid=0 pid=%d ", os.Getpid())
	if !strings.Contains(l, opener) {
		t.Fatalf("the forwarded SYN was held as %q; want it attributed to this test (%q)", l, opener)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The program's socket goes at once (a reset, no TIME_WAIT).
	conn.SetLinger(0)
	conn.Close()
	s.Close()
	time.Sleep(200 * time.Millisecond)
	d.drain()
	if err := d.cmd.Process.Signal(unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if l, ok := d.waitLine("redecided ", 5*time.Second); !ok || !strings.HasSuffix(l, "<nil>") {
		t.Fatalf("Redecide: %q", l)
	}
	// The closed flow's conntrack entry expires (10 s in CLOSE): deleted here.
	if err := inNS(tp.a, func() error {
		_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(fam), srcPortFilter(localPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const ack, psh = 0x10, 0x08
	raw.send(t, dst.String(), tcpSegment(src, dst, localPort, port, ack|psh, "latch-raw-spoof"), 0)
	l, ok = d.waitLine(held, 3*time.Second)
	if !ok {
		t.Fatal("the raw segment (mid-stream, NEW) was not held")
	}
	if !strings.HasSuffix(l, " uid=-1 pid=0 exe=") {
		t.Errorf("a raw socket's segment on the tuple of a flow a rule change took was held as %q; want it no program's (uid=-1 pid=0)", l)
	}
	if seen.waitSaw("latch-raw-spoof", time.Second) {
		t.Error("the raw socket's segment reached B: decided by the rules of the program that had used the tuple")
	}
}
