package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ctMsg builds a ctnetlink message payload as the kernel sends it.
func ctMsg(src, dst netip.AddrPort, proto uint8, mark uint32, state uint8, orig, repl uint64) []byte {
	var b bytes.Buffer
	b.Write((&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0}).Serialize())
	srcT, dstT := ctaIPv4Src, ctaIPv4Dst
	if src.Addr().Is6() {
		srcT, dstT = ctaIPv6Src, ctaIPv6Dst
	}
	tuple := nl.NewRtAttr(unix.NLA_F_NESTED|ctaTupleOrig, nil)
	ip := tuple.AddRtAttr(unix.NLA_F_NESTED|ctaTupleIP, nil)
	ip.AddRtAttr(srcT, src.Addr().AsSlice())
	ip.AddRtAttr(dstT, dst.Addr().AsSlice())
	p := tuple.AddRtAttr(unix.NLA_F_NESTED|ctaTupleProto, nil)
	p.AddRtAttr(ctaProtoNum, []byte{proto})
	p.AddRtAttr(ctaProtoSrcPort, nl.BEUint16Attr(src.Port()))
	p.AddRtAttr(ctaProtoDstPort, nl.BEUint16Attr(dst.Port()))
	b.Write(tuple.Serialize())
	if state != 0 {
		pi := nl.NewRtAttr(unix.NLA_F_NESTED|ctaProtoinfo, nil)
		pi.AddRtAttr(unix.NLA_F_NESTED|ctaProtoinfoTCP, nil).AddRtAttr(ctaProtoinfoState, []byte{state})
		b.Write(pi.Serialize())
	}
	b.Write(nl.NewRtAttr(ctaMark, nl.BEUint32Attr(mark)).Serialize())
	if orig != 0 || repl != 0 {
		for i, n := range []uint64{orig, repl} {
			c := nl.NewRtAttr(unix.NLA_F_NESTED|(ctaCountersOrig+i), nil)
			c.AddRtAttr(1, nl.BEUint64Attr(n/1000+1))
			c.AddRtAttr(ctaCountersBytes, nl.BEUint64Attr(n))
			b.Write(c.Serialize())
		}
	}
	return b.Bytes()
}

var (
	tcpSrc = netip.MustParseAddrPort("198.18.0.1:40000")
	tcpDst = netip.MustParseAddrPort("198.18.0.2:443")
)

func TestParseCtMsg(t *testing.T) {
	ci, err := parseCtMsg(ctMsg(tcpSrc, tcpDst, unix.IPPROTO_TCP, MarkAllow, ctTCPTimeWait, 1_000_500, 2000))
	if err != nil {
		t.Fatal(err)
	}
	want := ctInfo{key: newFlowKey(6, tcpSrc, tcpDst), mark: MarkAllow, tcpState: ctTCPTimeWait, hasState: true,
		origBytes: 1_000_500, replBytes: 2000, counters: true}
	if ci != want {
		t.Errorf("parsed %+v, want %+v", ci, want)
	}
	v6s, v6d := netip.MustParseAddrPort("[fd00::1]:5000"), netip.MustParseAddrPort("[fd00::2]:53")
	ci, err = parseCtMsg(ctMsg(v6s, v6d, unix.IPPROTO_UDP, 0, 0, 0, 0))
	if err != nil || ci.key.src() != v6s || ci.key.dst() != v6d || ci.counters || ci.hasState {
		t.Errorf("IPv6 UDP without counters: %+v, %v", ci, err)
	}
	good := ctMsg(tcpSrc, tcpDst, unix.IPPROTO_TCP, MarkAllow, 3, 10, 10)
	for name, b := range map[string][]byte{
		"empty":       nil,
		"short":       good[:3],
		"no tuple":    good[:4],
		"cut in attr": good[:len(good)-3],
		"bad length":  append(append([]byte{}, good[:4]...), 0xff, 0x00, 0x01, 0x80),
	} {
		if _, err := parseCtMsg(b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzParseCtMsg: no input makes the decoder panic, and what it accepts has a
// complete tuple of one family.
func FuzzParseCtMsg(f *testing.F) {
	f.Add(ctMsg(tcpSrc, tcpDst, unix.IPPROTO_TCP, MarkAllow, ctTCPTimeWait, 1_000_500, 2000))
	f.Add(ctMsg(netip.MustParseAddrPort("[fd00::1]:5000"), netip.MustParseAddrPort("[fd00::2]:53"), unix.IPPROTO_UDP, 0, 0, 0, 0))
	f.Add([]byte{2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ci, err := parseCtMsg(b)
		if err != nil {
			return
		}
		if !ci.key.src().Addr().IsValid() || ci.key.src().Addr().Is4() != ci.key.dst().Addr().Is4() {
			t.Fatalf("accepted a broken tuple: %+v", ci)
		}
	})
}

// TestAccountantEvents: a TCP flow reaching TIME_WAIT is read once more and ends
// with its counters; a destroyed UDP flow ends with the counters its event carries;
// flows latch did not allow are not looked at.
func TestAccountantEvents(t *testing.T) {
	flows := newFlowTable(100, time.Hour)
	now := time.Unix(1000, 0)
	req := &engine.Request{ID: 1, Direction: engine.Outbound, Protocol: engine.TCP, Local: tcpSrc, Remote: tcpDst}
	flows.add(req, now)
	udpSrc, udpDst := netip.MustParseAddrPort("198.18.0.1:5353"), netip.MustParseAddrPort("198.18.0.2:53")
	flows.add(&engine.Request{ID: 2, Direction: engine.Outbound, Protocol: engine.UDP, Local: udpSrc, Remote: udpDst}, now)
	a := newAccountant(flows, 10*time.Second)
	gets := 0
	get := func(k flowKey) (ctInfo, error) {
		gets++
		return parseCtMsg(ctMsg(k.src(), k.dst(), k.proto, MarkAllow, ctTCPTimeWait, 1_000_500, 2000))
	}
	ev := func(b []byte, destroy bool) ctEvent {
		ci, err := parseCtMsg(b)
		if err != nil {
			t.Fatal(err)
		}
		return ctEvent{ctInfo: ci, destroy: destroy}
	}
	// Established: nothing to report, nothing asked.
	if _, ok, _ := a.event(ev(ctMsg(tcpSrc, tcpDst, 6, MarkAllow, 3, 0, 0), false), get, now); ok || gets != 0 {
		t.Errorf("an ESTABLISHED update reported (%v) or asked conntrack (%d)", ok, gets)
	}
	r, ok, err := a.event(ev(ctMsg(tcpSrc, tcpDst, 6, MarkAllow, ctTCPTimeWait, 0, 0), false), get, now)
	if err != nil || !ok || !r.Ended || r.BytesOut != 1_000_500 || r.BytesIn != 2000 || r.DeltaOut != 1_000_500 || gets != 1 {
		t.Errorf("TIME_WAIT: %+v ok=%v err=%v gets=%d", r, ok, err, gets)
	}
	// Its destroy, later: already reported.
	if _, ok, _ := a.event(ev(ctMsg(tcpSrc, tcpDst, 6, MarkAllow, ctTCPTimeWait, 1_000_600, 2000), true), get, now); ok {
		t.Error("the destroy of an ended flow reported again")
	}
	r, ok, _ = a.event(ev(ctMsg(udpSrc, udpDst, 17, MarkAllow, 0, 300, 900), true), get, now)
	if !ok || !r.Ended || r.BytesOut != 300 || r.BytesIn != 900 {
		t.Errorf("UDP destroy: %+v ok=%v", r, ok)
	}
	other := netip.MustParseAddrPort("198.18.0.1:41000")
	if _, ok, _ := a.event(ev(ctMsg(other, tcpDst, 6, 0, ctTCPTimeWait, 0, 0), false), get, now); ok || gets != 1 {
		t.Errorf("a flow latch did not allow: reported %v, asked conntrack %d times", ok, gets)
	}
}

// nlMsg puts a netlink header of type typ before body.
func nlMsg(typ uint16, body []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(b, uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	return append(b, body...)
}

// TestCtEventFilterInKernel runs the conntrack event filter in the kernel (attached
// to one end of a datagram socket pair) on messages as ctnetlink sends them: only
// the events the accountant acts on pass.
func TestCtEventFilterInKernel(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if err := attachCtEventFilter(fds[1]); err != nil {
		t.Fatal(err)
	}
	update, destroy := uint16(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtNew), uint16(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtDelete)
	v6Src, v6Dst := netip.MustParseAddrPort("[fd00::1]:40000"), netip.MustParseAddrPort("[fd00::2]:443")
	udpSrc, udpDst := netip.MustParseAddrPort("198.18.0.1:5353"), netip.MustParseAddrPort("198.18.0.2:53")
	const established = 3
	errMsg := make([]byte, 20) // NLMSG_ERROR: errno and the request's header
	binary.NativeEndian.PutUint32(errMsg, uint32(0xffffffff-uint32(unix.ENOBUFS)+1))
	for _, c := range []struct {
		name string
		msg  []byte
		pass bool
	}{
		{"update to TIME_WAIT, allowed", nlMsg(update, ctMsg(tcpSrc, tcpDst, 6, MarkAllow, ctTCPTimeWait, 0, 0)), true},
		{"update to CLOSE, being decided again", nlMsg(update, ctMsg(tcpSrc, tcpDst, 6, MarkRedecide, ctTCPClose, 0, 0)), true},
		{"update to TIME_WAIT, allowed, other mark bits set", nlMsg(update, ctMsg(tcpSrc, tcpDst, 6, MarkAllow|0x0000beef, ctTCPTimeWait, 0, 0)), true},
		{"update to TIME_WAIT, IPv6", nlMsg(update, ctMsg(v6Src, v6Dst, 6, MarkAllow, ctTCPTimeWait, 0, 0)), true},
		{"update to ESTABLISHED", nlMsg(update, ctMsg(tcpSrc, tcpDst, 6, MarkAllow, established, 0, 0)), false},
		{"update to TIME_WAIT, not latch's", nlMsg(update, ctMsg(tcpSrc, tcpDst, 6, 0x0000beef, ctTCPTimeWait, 0, 0)), false},
		{"update to TIME_WAIT, rejected", nlMsg(update, ctMsg(tcpSrc, tcpDst, 6, MarkReject, ctTCPTimeWait, 0, 0)), false},
		{"update without TCP state (UDP)", nlMsg(update, ctMsg(udpSrc, udpDst, 17, MarkAllow, 0, 0, 0)), false},
		{"destroy, allowed, with counters", nlMsg(destroy, ctMsg(udpSrc, udpDst, 17, MarkAllow, 0, 300, 900)), true},
		{"destroy, IPv6 TCP", nlMsg(destroy, ctMsg(v6Src, v6Dst, 6, MarkRedecide, ctTCPTimeWait, 10, 20)), true},
		{"destroy, not latch's", nlMsg(destroy, ctMsg(udpSrc, udpDst, 17, 0, 0, 300, 900)), false},
		{"destroy, rejected", nlMsg(destroy, ctMsg(tcpSrc, tcpDst, 6, MarkReject, ctTCPClose, 1, 1)), false},
		{"error (overrun)", nlMsg(unix.NLMSG_ERROR, errMsg), true},
	} {
		if _, err := unix.Write(fds[0], c.msg); err != nil {
			t.Fatalf("%s: send: %v", c.name, err)
		}
		buf := make([]byte, 4096)
		n, _, err := unix.Recvfrom(fds[1], buf, unix.MSG_DONTWAIT)
		got := err == nil
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("%s: receive: %v", c.name, err)
		}
		if got != c.pass {
			t.Errorf("%s: passed the filter %v, want %v", c.name, got, c.pass)
		}
		if got && !bytes.Equal(buf[:n], c.msg) {
			t.Errorf("%s: received %d bytes, sent %d", c.name, n, len(c.msg))
		}
	}
	// Truncated messages neither crash nor get through as anything else: whatever
	// passes is parsed (and rejected) by the reader.
	good := nlMsg(update, ctMsg(tcpSrc, tcpDst, 6, MarkAllow, ctTCPTimeWait, 0, 0))
	for cut := 1; cut < len(good); cut++ {
		unix.Write(fds[0], good[:cut])
		unix.Recvfrom(fds[1], make([]byte, 4096), unix.MSG_DONTWAIT)
	}
}

// TestAppendGetRequest: the request written in place is, byte for byte, the one
// the netlink library builds, for IPv4 and IPv6, TCP and UDP, appended after what
// the buffer held.
func TestAppendGetRequest(t *testing.T) {
	for _, k := range []flowKey{
		newFlowKey(unix.IPPROTO_TCP, netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:443")),
		newFlowKey(unix.IPPROTO_UDP, netip.MustParseAddrPort("[fd00::1]:5353"), netip.MustParseAddrPort("[fd00::2]:53")),
	} {
		want := getRequest(k, 77)
		got := appendGetRequest([]byte("prefix"), k, 77)
		if string(got[:6]) != "prefix" || !bytes.Equal(got[6:], want) {
			t.Errorf("%v: request\n%x\nwant\n%x", k, got[6:], want)
		}
	}
}

// getRequest is a ctnetlink request, sequence number seq, for the entry whose
// original tuple is k, built with the netlink library (appendGetRequest's
// reference).
func getRequest(k flowKey, seq uint32) []byte {
	fam, srcType, dstType := uint8(unix.AF_INET), uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if k.src().Addr().Is6() {
		fam, srcType, dstType = unix.AF_INET6, ctaIPv6Src, ctaIPv6Dst
	}
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtGet, 0)
	req.Seq = seq
	req.AddData(&nl.Nfgenmsg{NfgenFamily: fam, Version: nl.NFNETLINK_V0})
	orig := nl.NewRtAttr(unix.NLA_F_NESTED|ctaTupleOrig, nil)
	ip := orig.AddRtAttr(unix.NLA_F_NESTED|ctaTupleIP, nil)
	ip.AddRtAttr(int(srcType), k.src().Addr().AsSlice())
	ip.AddRtAttr(int(dstType), k.dst().Addr().AsSlice())
	proto := orig.AddRtAttr(unix.NLA_F_NESTED|ctaTupleProto, nil)
	proto.AddRtAttr(ctaProtoNum, []byte{k.proto})
	proto.AddRtAttr(ctaProtoSrcPort, nl.BEUint16Attr(k.src().Port()))
	proto.AddRtAttr(ctaProtoDstPort, nl.BEUint16Attr(k.dst().Port()))
	req.AddData(orig)
	return req.Serialize()
}
