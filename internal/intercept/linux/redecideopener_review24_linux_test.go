package linux

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lastFINFrom returns the seq and ack of the last TCP segment with FIN from
// port sport to port dport the raw socket r captured (IPv4: with its IP
// header; IPv6: the segment only).
func lastFINFrom(r *rawSock, sport, dport uint16) (seq, ack uint32, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pkts {
		h := 0
		if !r.v6 {
			if len(p) < 20 || p[0]>>4 != 4 {
				continue
			}
			h = int(p[0]&0xf) * 4
		}
		if len(p) < h+20 {
			continue
		}
		s := p[h:]
		if binary.BigEndian.Uint16(s[0:]) == sport && binary.BigEndian.Uint16(s[2:]) == dport && s[13]&0x01 != 0 {
			seq, ack, ok = binary.BigEndian.Uint32(s[4:]), binary.BigEndian.Uint32(s[8:]), true
		}
	}
	return
}

// TestForwardRawSegmentIntoTimeWaitCredited (review24, low; fixed: a segment
// with data in a TIME_WAIT or CLOSE entry is not credited): 73875a1
// credits a held packet of no program to the opener of a flow a rule change
// took only if a conntrack GET by its tuple finds an entry marked
// MarkRedecide. That tells the tuple's entry exists, not that the packet was
// its flow's: after the container program's connection to B ends normally
// (FIN both ways) its entry stays in TIME_WAIT for 2 minutes with the mark
// the rule change gave it. The container's root (CAP_NET_RAW, Docker's
// default) has seen the flow's sequence numbers (its raw socket receives
// every TCP segment for its address) and writes an in-window segment with
// data on the tuple: conntrack takes it as the TIME_WAIT entry's, LATCH-FWD
// holds it (MarkRedecide, original direction), no socket sent it (the
// program's is in TIME_WAIT: no owner) and openerOf credits it to the
// program, whose rules pass it to B. Review22's case (the entry expired or
// deleted: a NEW entry) is what the GET closed; the same raw socket could
// write into the flow while it was live (attributed to its socket by the
// tuple), so this is the tuple attribution's limit more than a new hole.
// The policy denies what no program sent (uid -1) and allows the program
// (uid 0).
func TestForwardRawSegmentIntoTimeWaitCredited(t *testing.T) {
	for i, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) { testForwardRawSegmentIntoTimeWait(t, v6, uint16(9246+i), uint16(41246+i)) })
	}
}

func testForwardRawSegmentIntoTimeWait(t *testing.T, v6 bool, port, localPort uint16) {
	fw := FirewallIptablesNft
	needFirewall(t, fw)
	tp := newTopo(t)
	c := addContainer(t, tp)
	src, dst := netip.MustParseAddr(addrC), netip.MustParseAddr(addrB)
	network := "tcp4"
	if v6 {
		src, dst, network = netip.MustParseAddr(addr6C), netip.MustParseAddr(addr6B), "tcp6"
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
	raw := openRaw(t, c, v6, unix.IPPROTO_TCP, src.String()).capture()
	if v6 {
		if err := unix.SetsockoptInt(raw.fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 16); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // IPv6 routes and neighbours settle
	}
	d := startDaemonOn(t, tp, fw, "*=allow", "LATCH_TEST_FORWARD=1", "LATCH_TEST_ATTRIBUTE=procfs",
		"LATCH_TEST_DENY_UID=-1", "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(int(port)))
	defer d.stop()
	local := netip.AddrPortFrom(src, localPort)
	var conn net.Conn
	if err := inNS(c, func() error {
		dl := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(local)}
		var err error
		conn, err = dl.Dial(network, server.String())
		return err
	}); err != nil {
		t.Fatalf("the container program's connection to B: %v", err)
	}
	held := fmt.Sprintf("held out tcp %s %s ", local, server)
	l, ok := d.waitLine(held, 3*time.Second)
	if !ok || !strings.Contains(l, fmt.Sprintf(" uid=0 pid=%d ", os.Getpid())) {
		t.Fatalf("the forwarded SYN was not held as this test's: %q", l)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// A normal end, the program first: its socket goes to TIME_WAIT, the
	// conntrack entry too (120 s).
	conn.Write([]byte("hello"))
	conn.Close()
	s.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	for {
		if _, err := s.Read(buf); err != nil {
			break
		}
	}
	s.Close()
	var seq, ack uint32
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if seq, ack, ok = lastFINFrom(raw, port, localPort); ok {
			break
		}
	}
	if !ok {
		t.Fatal("the container's raw socket saw no FIN from B")
	}
	time.Sleep(200 * time.Millisecond)
	d.drain()
	if err := d.cmd.Process.Signal(unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if l, ok := d.waitLine("redecided ", 5*time.Second); !ok || !strings.HasSuffix(l, "<nil>") {
		t.Fatalf("Redecide: %q", l)
	}
	// In window: the program's next sequence number (B's FIN acknowledged
	// its FIN) and B's FIN acknowledged.
	seg := tcpSegment(src, dst, localPort, port, 0x10|0x08, "latch-raw-tw")
	binary.BigEndian.PutUint32(seg[4:], ack)
	binary.BigEndian.PutUint32(seg[8:], seq+1)
	seg[16], seg[17] = 0, 0
	if !v6 { // IPv6: the kernel fills it in (IPV6_CHECKSUM)
		pseudo := append(append(src.AsSlice(), dst.AsSlice()...), 0, unix.IPPROTO_TCP, byte(len(seg)>>8), byte(len(seg)))
		binary.BigEndian.PutUint16(seg[16:], checksum(append(pseudo, seg...)))
	}
	raw.send(t, dst.String(), seg, 0)
	l, ok = d.waitLine(held, 3*time.Second)
	if !ok {
		t.Fatal("the raw segment (in the TIME_WAIT entry marked MarkRedecide) was not held")
	}
	if !strings.HasSuffix(l, " uid=-1 pid=0 exe=") {
		t.Errorf("a raw socket's segment in a redecided flow's TIME_WAIT entry was held as %q; want it no program's (uid=-1 pid=0)", l)
	}
	if seen.waitSaw("latch-raw-tw", time.Second) {
		t.Error("the raw socket's segment reached B: decided by the rules of the program whose flow had ended")
	}
}
