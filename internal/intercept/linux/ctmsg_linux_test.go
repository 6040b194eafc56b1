package linux

import (
	"bytes"
	"net/netip"
	"os/exec"
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
	want := ctInfo{key: flowKey{proto: 6, src: tcpSrc, dst: tcpDst}, mark: MarkAllow, tcpState: ctTCPTimeWait, hasState: true,
		origBytes: 1_000_500, replBytes: 2000, counters: true}
	if ci != want {
		t.Errorf("parsed %+v, want %+v", ci, want)
	}
	v6s, v6d := netip.MustParseAddrPort("[fd00::1]:5000"), netip.MustParseAddrPort("[fd00::2]:53")
	ci, err = parseCtMsg(ctMsg(v6s, v6d, unix.IPPROTO_UDP, 0, 0, 0, 0))
	if err != nil || ci.key.src != v6s || ci.key.dst != v6d || ci.counters || ci.hasState {
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
		if !ci.key.src.Addr().IsValid() || ci.key.src.Addr().Is4() != ci.key.dst.Addr().Is4() {
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
		return parseCtMsg(ctMsg(k.src, k.dst, k.proto, MarkAllow, ctTCPTimeWait, 1_000_500, 2000))
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

// TestCtEventFilter: the conntrack event socket delivers a TCP flow's end (its
// update to TIME_WAIT or CLOSE, and its destroy) and none of the updates before
// (SYN_RECV, ESTABLISHED, ...), which the accountant never uses.
func TestCtEventFilter(t *testing.T) {
	tp := newTopo(t)
	var fd int
	if err := inNS(tp.a, func() (err error) { fd, err = openCtEvents(); return err }); err != nil {
		t.Skipf("no conntrack events: %v", err)
	}
	defer unix.Close(fd)
	// Conntrack tracks only while a rule asks for it.
	if out, err := exec.Command("ip", "netns", "exec", tp.a, "iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT").CombinedOutput(); err != nil {
		t.Skipf("iptables: %v: %s", err, out)
	}
	srv := listenTCP(t, tp, 9111)
	for i := 0; i < 3; i++ {
		if _, err := dial(tp, 9111, 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(3 * time.Second); srv.accepted.Load() < 3 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	// Remove the entries: their destroys.
	exec.Command("ip", "netns", "exec", tp.a, "conntrack", "-D", "-p", "tcp", "--dport", "9111").Run()
	time.Sleep(300 * time.Millisecond)
	r := &ctEventReader{fd: fd}
	states := map[uint8]int{}
	destroys := 0
	if _, _, err := r.drain(func(ev ctEvent) {
		if ev.key.dst.Port() != 9111 {
			return
		}
		if ev.destroy {
			destroys++
		} else {
			states[ev.tcpState]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("updates by TCP state %v, destroys %d", states, destroys)
	for st, n := range states {
		if st != ctTCPTimeWait && st != ctTCPClose {
			t.Errorf("%d updates to TCP state %d reached the daemon", n, st)
		}
	}
	if states[ctTCPTimeWait]+states[ctTCPClose] == 0 || destroys != 3 {
		t.Errorf("updates %v and %d destroys: want the flows' ends (TIME_WAIT or CLOSE) and 3 destroys", states, destroys)
	}
}
