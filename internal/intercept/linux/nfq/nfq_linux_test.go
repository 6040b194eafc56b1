package nfq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// message builds an NFQNL_MSG_PACKET body: nfgenmsg and the given attributes.
func message(attrs ...[]byte) []byte {
	b := []byte{2, 0, 0x10, 0x92}
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func attr(typ uint16, v []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestParsePacketMessage(t *testing.T) {
	hdr := binary.BigEndian.AppendUint32(nil, 77)
	hdr = binary.BigEndian.AppendUint16(hdr, 0x0800)
	hdr = append(hdr, 3)
	payload := []byte{0x45, 1, 2, 3, 4}
	p, err := parsePacket(message(
		attr(attrPacketHdr, hdr),
		attr(attrMark, be32(0x10000001)),
		attr(attrUID, be32(1000)),
		attr(attrGID, be32(100)),
		attr(attrPayload, payload),
		attr(11|0x8000, []byte{1, 2, 3, 4}), // nested NFQA_CT: ignored
	))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != 77 || p.HWProto != 0x0800 || p.Hook != 3 || p.Mark != 0x10000001 || !p.HasUID || p.UID != 1000 || p.GID != 100 || string(p.Payload) != string(payload) {
		t.Errorf("parsePacket = %+v", p)
	}
}

func TestParsePacketMalformed(t *testing.T) {
	hdr := attr(attrPacketHdr, []byte{0, 0, 0, 9, 8, 0, 3})
	for name, in := range map[string][]byte{
		"short nfgenmsg":   {2, 0},
		"no packet header": message(attr(attrMark, be32(1))),
		"short header":     message(attr(attrPacketHdr, []byte{1, 2, 3})),
		"attr beyond":      append(message(hdr), 200, 0, 10, 0),
		"attr length 2":    append(message(hdr), 2, 0, 10, 0),
		"truncated attr":   append(message(hdr), 8, 0),
		"mark of 3 bytes":  message(hdr, attr(attrMark, []byte{1, 2, 3})),
		"uid of 8 bytes":   message(hdr, attr(attrUID, make([]byte, 8))),
	} {
		_, err := parsePacket(in)
		var me *MalformedError
		if !errors.As(err, &me) {
			t.Errorf("%s: err = %v, want a *MalformedError", name, err)
		}
	}
}

// FuzzParsePacketMessage: no kernel message crashes the decoder, and whatever it
// accepts has a packet id and a payload inside the message.
func FuzzParsePacketMessage(f *testing.F) {
	hdr := attr(attrPacketHdr, []byte{0, 0, 0, 9, 8, 0, 3})
	f.Add(message(hdr, attr(attrPayload, []byte{0x45, 0, 0, 20})))
	f.Add(message(hdr, attr(attrMark, be32(1)), attr(attrUID, be32(0))))
	f.Add(message(attr(attrMark, be32(1))))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePacket(b)
		if err != nil {
			var me *MalformedError
			if !errors.As(err, &me) {
				t.Fatalf("error %v is not a *MalformedError", err)
			}
			return
		}
		if !p.hasID {
			t.Fatal("accepted a message without a packet header")
		}
		if len(p.Payload) > len(b) {
			t.Fatalf("payload of %d bytes from a %d-byte message", len(p.Payload), len(b))
		}
	})
}

// nlmsg wraps body in a netlink header of type typ.
func nlmsg(typ uint16, seq uint32, body []byte) []byte {
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(body)+3)
	putNlmsghdr(b, typ, 0, seq, nlmsgHdrLen+len(body))
	b = append(b, body...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// TestParseDatagram: one datagram with a packet, a refused verdict and another
// packet gives both packets and the kernel's errno; a broken header is an error that
// names its offset.
func TestParseDatagram(t *testing.T) {
	c := &Conn{queue: 4242}
	pkt := func(id uint32) []byte {
		hdr := binary.BigEndian.AppendUint32(nil, id)
		hdr = binary.BigEndian.AppendUint16(hdr, 0x0800)
		hdr = append(hdr, 3)
		return nlmsg(nfnlSubsysQueue<<8|msgPacket, 0, message(attr(attrPacketHdr, hdr), attr(attrPayload, []byte{0x45, 0, 0})))
	}
	enoent := -int32(unix.ENOENT)
	errno := binary.NativeEndian.AppendUint32(nil, uint32(enoent))
	errno = append(errno, make([]byte, 16)...) // the refused request's header
	dgram := append(append(pkt(7), nlmsg(2 /* NLMSG_ERROR */, 9, errno)...), pkt(8)...)
	var acks []string
	pkts, err := c.parse(dgram, nil, func(seq uint32, e unix.Errno) { acks = append(acks, fmt.Sprint(seq, e)) })
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 2 || pkts[0].ID != 7 || pkts[1].ID != 8 || string(pkts[1].Payload) != "\x45\x00\x00" {
		t.Errorf("packets = %+v, want ids 7 and 8", pkts)
	}
	if len(acks) != 1 || acks[0] != fmt.Sprint(9, unix.ENOENT) {
		t.Errorf("acks = %q, want one ENOENT for seq 9", acks)
	}

	broken := append(pkt(7), 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	pkts, err = c.parse(broken, nil, func(uint32, unix.Errno) {})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", len(pkt(7)))) || len(pkts) != 1 {
		t.Errorf("broken datagram: %d packets, err %v; want the first packet and an error naming the offset", len(pkts), err)
	}
}

// TestQueueRoundTrip binds a queue in a fresh network namespace, has one packet held
// by an NFQUEUE rule, reads it and accepts it; then a verdict for an unknown id comes
// back as the kernel's ENOENT.
func TestQueueRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and netfilter rules")
	}
	ns := fmt.Sprintf("latch-nfq%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", "4343"},
	} {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // dies with the goroutine, namespace and all
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- roundTrip(t)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func roundTrip(t *testing.T) error {
	q, err := Open(4343, Options{})
	if err != nil {
		return err
	}
	defer q.Close()
	if _, err := Open(4343, Options{}); !errors.Is(err, ErrQueueBusy) {
		return fmt.Errorf("second Open of a bound queue: %v, want ErrQueueBusy", err)
	}
	sender, err := net.Dial("udp4", "127.0.0.1:9")
	if err != nil {
		return err
	}
	defer sender.Close()
	if _, err := sender.Write([]byte("held")); err != nil {
		return err
	}
	q.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := q.NewReader()
	pkts, err := r.Read()
	if err != nil {
		return fmt.Errorf("read: %v", err)
	}
	if len(pkts) != 1 || !pkts[0].HasUID || pkts[0].Hook != 3 || !bytes.HasSuffix(pkts[0].Payload, []byte("held")) {
		return fmt.Errorf("read %+v, want the held datagram", pkts)
	}
	if err := q.SetVerdict(pkts[0].ID, Accept, 0, false); err != nil {
		return err
	}
	if err := q.SetVerdict(pkts[0].ID+1000, Accept, 0, false); err != nil {
		return err
	}
	if _, err := r.Read(); !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("read after a verdict for an unknown id: %v, want ENOENT", err)
	}
	q.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(); !IsClosed(err) {
		return fmt.Errorf("read past the deadline: %v, want a deadline error", err)
	}
	q.Close()
	if _, err := r.Read(); !IsClosed(err) {
		return fmt.Errorf("read after Close: %v, want IsClosed", err)
	}
	if err := q.SetVerdict(1, Accept, 0, false); err == nil {
		return errors.New("SetVerdict after Close succeeded")
	}
	return nil
}

// FuzzParseDatagram: no datagram from the kernel crashes the netlink framing, and
// every packet it yields lies inside the datagram.
func FuzzParseDatagram(f *testing.F) {
	hdr := attr(attrPacketHdr, []byte{0, 0, 0, 9, 8, 0, 3})
	f.Add(nlmsg(nfnlSubsysQueue<<8|msgPacket, 0, message(hdr, attr(attrPayload, []byte{0x45, 0, 0, 20}))))
	f.Add(nlmsg(2, 7, make([]byte, 20)))
	f.Add(append(nlmsg(nfnlSubsysQueue<<8|msgPacket, 0, message(hdr)), 255, 255, 0, 0))
	c := &Conn{queue: 1}
	f.Fuzz(func(t *testing.T, b []byte) {
		pkts, _ := c.parse(b, nil, func(uint32, unix.Errno) {})
		for _, p := range pkts {
			if len(p.Payload) > len(b) || !p.hasID {
				t.Fatalf("packet %+v from a %d-byte datagram", p, len(b))
			}
		}
	})
}
