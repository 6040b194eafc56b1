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
