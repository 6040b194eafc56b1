package fastpath

import (
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"
)

// udp4Packet is an IPv4 UDP datagram from 198.18.0.1:sport to 198.18.0.2:9002
// behind an Ethernet header (BPF_PROG_TEST_RUN's skb starts at the link
// layer).
func udp4Packet(sport uint16) []byte {
	b := make([]byte, 14+20+8+4)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], 20+8+4)
	copy(ip[12:], []byte{198, 18, 0, 1})
	copy(ip[16:], []byte{198, 18, 0, 2})
	binary.BigEndian.PutUint16(ip[20:], sport)
	binary.BigEndian.PutUint16(ip[22:], 9002)
	binary.BigEndian.PutUint16(ip[24:], 8+4)
	return b
}

// TestSocketPinUnknownFlow: the pin matches no packet of a flow it has no
// record of (the ruleset then queues it), and OpenSocketPin pins the
// program where Path says. The match of a recorded socket needs the
// ruleset (the verdict's mark and a socket): see internal/intercept/linux.
func TestSocketPinUnknownFlow(t *testing.T) {
	sp, err := OpenSocketPin(filepath.Join(t.TempDir(), "bpf"))
	if err != nil {
		t.Skipf("cannot load the socket pin: %v", err)
	}
	defer sp.Close()
	if filepath.Base(sp.Path())[:len(pinPrefixSock)] != pinPrefixSock {
		t.Errorf("pinned at %s; want a name starting %s", sp.Path(), pinPrefixSock)
	}
	ret, _, err := sp.prog.Test(udp4Packet(40300))
	if err != nil {
		t.Skipf("BPF_PROG_TEST_RUN: %v", err)
	}
	if ret != 0 {
		t.Errorf("the pin matched a datagram of a flow it never recorded (returned %d)", ret)
	}
}

// BenchmarkSocketPin: what the pin costs a packet of an allowed flow it does
// not know (a hash lookup of the packet's tuple), by BPF_PROG_TEST_RUN.
func BenchmarkSocketPin(b *testing.B) {
	sp, err := OpenSocketPin(filepath.Join(b.TempDir(), "bpf"))
	if err != nil {
		b.Skipf("cannot load the socket pin: %v", err)
	}
	defer sp.Close()
	_, d, err := sp.prog.Benchmark(udp4Packet(40300), 1_000_000, nil)
	if err != nil {
		b.Skipf("BPF_PROG_TEST_RUN: %v", err)
	}
	b.ReportMetric(float64(d)/float64(time.Nanosecond), "ns/packet")
}

// TestSocketPinOtherSocketProtocols (review10): SCTP, DCCP and L2TP over IP
// are protocols any user's socket sends (no CAP_NET_RAW), so another
// program's socket on an allowed flow's conntrack entry (SCTP: the port a
// closed association freed, whose entry lives on; L2TP over IP: the address
// pair alone) must be the flow's own: the pin matches none of their packets
// it has no record of (the ruleset then queues them). It used to let every
// protocol but UDP, UDP-Lite and ICMP echo pass unrecorded. GRE, which only
// the kernel's tunnels send, still passes (control).
func TestSocketPinOtherSocketProtocols(t *testing.T) {
	sp, err := OpenSocketPin(filepath.Join(t.TempDir(), "bpf"))
	if err != nil {
		t.Skipf("cannot load the socket pin: %v", err)
	}
	defer sp.Close()
	for _, c := range []struct {
		name  string
		proto byte
		want  uint32
	}{{"SCTP", 132, 0}, {"DCCP", 33, 0}, {"L2TP over IP", 115, 0}, {"GRE", 47, 1}} {
		pkt := udp4Packet(40300)
		pkt[14+9] = c.proto
		ret, _, err := sp.prog.Test(pkt)
		if err != nil {
			t.Skipf("BPF_PROG_TEST_RUN: %v", err)
		}
		if ret != c.want {
			t.Errorf("%s (IP protocol %d) on a flow the pin never recorded: returned %d, want %d", c.name, c.proto, ret, c.want)
		}
	}
}
