package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func encodeEvent(ev fastpathFpEvent) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.NativeEndian, ev)
	return b.Bytes()
}

// FuzzDecodeEvent: any record either decodes to a decision with a valid address and
// a known action, or is refused; nothing panics.
func FuzzDecodeEvent(f *testing.F) {
	v4 := fastpathFpEvent{RuleId: 7, Pid: 42, Action: actAllow, Key: fastpathFpKey{Family: 4, Proto: 6, Port: 443, Uid: 1000, Addr: [16]byte{198, 18, 0, 2}}}
	v6 := fastpathFpEvent{RuleId: 9, Pid: 43, Action: actReject, Key: fastpathFpKey{Family: 6, Proto: 6, Port: 80, Addr: [16]byte{0xfd, 0, 0, 0x18, 15: 2}}}
	u6 := fastpathFpEvent{RuleId: 9, Pid: 43, Action: actAllow, Key: fastpathFpKey{Family: 6, Proto: 17, Port: 53, Addr: [16]byte{0xfd, 0, 0, 0x18, 15: 2}}}
	t4 := v4
	t4.Local, t4.LocalPort = [16]byte{198, 18, 0, 1}, 40001
	t6 := v6
	t6.Local, t6.LocalPort = [16]byte{0xfd, 0, 0, 0x18, 15: 1}, 40002
	f.Add(encodeEvent(t4))
	f.Add(encodeEvent(t6))
	f.Add(encodeEvent(v4))
	f.Add(encodeEvent(v6))
	f.Add(encodeEvent(u6))
	f.Add(encodeEvent(v4)[:20])
	f.Add([]byte{})
	// Socket ends (fp_end): IPv4, IPv6, a bad family, a wrong kind.
	f.Add(encodeEnd(fastpathFpEnd{Kind: endKind, Family: 4, Local: [16]byte{198, 18, 0, 1}, Remote: [16]byte{198, 18, 0, 2}, LocalPort: 40001, RemotePort: 443, BootNs: 1e9}))
	f.Add(encodeEnd(fastpathFpEnd{Kind: endKind, Family: 6, Local: [16]byte{0xfd, 15: 1}, Remote: [16]byte{0xfd, 15: 2}, LocalPort: 40002, RemotePort: 80, BootNs: 2e9}))
	f.Add(encodeEnd(fastpathFpEnd{Kind: endKind, Family: 5, LocalPort: 1, RemotePort: 1}))
	f.Add(encodeEnd(fastpathFpEnd{Kind: 1, Family: 4, LocalPort: 1, RemotePort: 1}))
	// With the socket's counters; with counters too small for their packets.
	f.Add(encodeEnd(fastpathFpEnd{Kind: endKind, Family: 4, Local: [16]byte{198, 18, 0, 1}, Remote: [16]byte{198, 18, 0, 2}, LocalPort: 40003, RemotePort: 443, BootNs: 3e9,
		Flags: endBytes, BytesOut: 1200, BytesIn: 900, PacketsOut: 10, PacketsIn: 12}))
	f.Add(encodeEnd(fastpathFpEnd{Kind: endKind, Family: 4, LocalPort: 1, RemotePort: 1, Flags: endBytes, BytesOut: 19, PacketsOut: 1}))
	fp := &FastPath{exes: map[identity]string{}}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == endSize {
			// A socket end (the ends ring buffer's records) is never a decision.
			e, at, err := decodeEnd(b)
			if err != nil {
				return
			}
			var ref fastpathFpEnd
			if _, err := binary.Decode(b, binary.NativeEndian, &ref); err != nil || ref.Kind != endKind {
				t.Fatalf("decoded %+v from %x, the struct's layout says %+v (%v)", e, b, ref, err)
			}
			if !e.Local.IsValid() || !e.Remote.IsValid() || e.Local.Port() != ref.LocalPort || e.Remote.Port() != ref.RemotePort ||
				e.Local.Port() == 0 || e.Remote.Port() == 0 || e.Local.Addr().Is4() != (ref.Family == 4) || e.Remote.Addr().Is4() != (ref.Family == 4) {
				t.Fatalf("decoded %+v from %+v", e, ref)
			}
			if at != ref.BootNs {
				t.Fatalf("decoded the time %d from %+v", at, ref)
			}
			// Counters exactly when the flag says so, as sent, never fewer
			// bytes than a header per packet.
			if e.Counted != (ref.Flags == endBytes) || ref.Flags&^endBytes != 0 {
				t.Fatalf("decoded counted %v from flags %#x", e.Counted, ref.Flags)
			}
			if e.Counted && (e.Bytes != Counts{Out: ref.BytesOut, In: ref.BytesIn} || e.Packets != Counts{Out: ref.PacketsOut, In: ref.PacketsIn} ||
				e.Bytes.Out < 20*e.Packets.Out || e.Bytes.In < 20*e.Packets.In) {
				t.Fatalf("decoded %+v from %+v", e, ref)
			}
			if !e.Counted && (e.Bytes != Counts{} || e.Packets != Counts{}) {
				t.Fatalf("decoded counters %+v without the flag", e)
			}
			if _, err := decodeEvent(b); err == nil {
				t.Fatalf("%x decodes as a decision too", b)
			}
			return
		}
		if _, _, err := decodeEnd(b); err == nil {
			t.Fatalf("a record of %d bytes decoded as a socket end", len(b))
		}
		ev, err := decodeEvent(b)
		if err != nil {
			return
		}
		// The hand-written decoder reads what the struct's layout says.
		var ref fastpathFpEvent
		if _, err := binary.Decode(b, binary.NativeEndian, &ref); err != nil || ref != ev {
			t.Fatalf("decoded %+v, the struct's layout says %+v (%v)", ev, ref, err)
		}
		d := fp.decision(&ev, time.Unix(0, 0))
		if !d.Remote.Addr().IsValid() || (d.Action != engine.Allow && d.Action != engine.Reject) {
			t.Fatalf("decoded %+v from %x", d, b)
		}
		if d.Protocol != engine.TCP && d.Protocol != engine.UDP {
			t.Fatalf("protocol %d decoded from %x", d.Protocol, b)
		}
		if (ev.Key.Family == 4) != d.Remote.Addr().Is4() {
			t.Fatalf("family %d decoded as %v", ev.Key.Family, d.Remote)
		}
		// The local end: known exactly when it has a port, of the remote's family.
		if d.Local.IsValid() != (ev.LocalPort != 0) || d.Local.IsValid() && (d.Local.Addr().Is4() != d.Remote.Addr().Is4() || d.Local.Port() != ev.LocalPort) {
			t.Fatalf("local %v decoded from %+v (remote %v)", d.Local, ev, d.Remote)
		}
	})
}

func encodeEnd(e fastpathFpEnd) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.NativeEndian, e)
	return b.Bytes()
}

func TestDecodeEnd(t *testing.T) {
	if n := binary.Size(fastpathFpEnd{}); n != endSize {
		t.Fatalf("struct fp_end is %d bytes, the decoder reads %d", n, endSize)
	}
	e, at, err := decodeEnd(encodeEnd(fastpathFpEnd{Kind: endKind, Family: 6, Local: [16]byte{0xfd, 15: 1}, Remote: [16]byte{0xfd, 15: 2}, LocalPort: 40002, RemotePort: 80, BootNs: 5e9}))
	if want := (End{Local: netip.MustParseAddrPort("[fd00::1]:40002"), Remote: netip.MustParseAddrPort("[fd00::2]:80")}); err != nil || e != want || at != 5e9 {
		t.Errorf("decoded %+v at %d (%v), want %+v at 5e9", e, at, err, want)
	}
	// With the socket's counters.
	e, _, err = decodeEnd(encodeEnd(fastpathFpEnd{Kind: endKind, Family: 4, Local: [16]byte{198, 18, 0, 1}, Remote: [16]byte{198, 18, 0, 2}, LocalPort: 40003, RemotePort: 443,
		Flags: endBytes, BytesOut: 1200, BytesIn: 900, PacketsOut: 10, PacketsIn: 12}))
	if want := (End{Local: netip.MustParseAddrPort("198.18.0.1:40003"), Remote: netip.MustParseAddrPort("198.18.0.2:443"), Counted: true,
		Bytes: Counts{Out: 1200, In: 900}, Packets: Counts{Out: 10, In: 12}}); err != nil || e != want {
		t.Errorf("decoded %+v (%v), want %+v", e, err, want)
	}
	for name, ev := range map[string]fastpathFpEnd{
		"flags":     {Kind: endKind, Family: 4, LocalPort: 1, RemotePort: 1, Flags: 2},
		"bytes out": {Kind: endKind, Family: 4, LocalPort: 1, RemotePort: 1, Flags: endBytes, BytesOut: 39, PacketsOut: 2},
		"bytes in":  {Kind: endKind, Family: 4, LocalPort: 1, RemotePort: 1, Flags: endBytes, BytesOut: 40, PacketsOut: 2, PacketsIn: 1},
		// 20 × 2^62 wraps to 0.
		"packets wrapping": {Kind: endKind, Family: 4, LocalPort: 1, RemotePort: 1, Flags: endBytes, PacketsOut: 1 << 62},
		"family":           {Kind: endKind, Family: 5, LocalPort: 1, RemotePort: 1},
		"kind":             {Kind: 7, Family: 4, LocalPort: 1, RemotePort: 1},
		"local port":       {Kind: endKind, Family: 4, RemotePort: 1},
		"remote port":      {Kind: endKind, Family: 4, LocalPort: 1},
	} {
		if _, _, err := decodeEnd(encodeEnd(ev)); err == nil {
			t.Errorf("%s: decoded a bad end", name)
		}
	}
	if _, _, err := decodeEnd(make([]byte, endSize-1)); err == nil {
		t.Error("decoded a short record")
	}
}

func TestDecodeEvent(t *testing.T) {
	if n := binary.Size(fastpathFpEvent{}); n != eventSize {
		t.Fatalf("struct fp_event is %d bytes, the decoder reads %d", n, eventSize)
	}
	fp := &FastPath{exes: map[identity]string{{ino: 5, dev: 3}: "/usr/bin/curl"}}
	ev, err := decodeEvent(encodeEvent(fastpathFpEvent{BootNs: 1e9, RuleId: 7, Pid: 42, Action: actReject,
		Key: fastpathFpKey{Ino: 5, Dev: 3, Family: 4, Proto: 6, Port: 443, Uid: 1000, Addr: [16]byte{198, 18, 0, 2}}}))
	if err != nil {
		t.Fatal(err)
	}
	d := fp.decision(&ev, time.Unix(100, 0))
	want := Decision{Time: time.Unix(101, 0), PID: 42, UID: 1000, Exe: "/usr/bin/curl", Protocol: engine.TCP, Remote: netip.MustParseAddrPort("198.18.0.2:443"), Action: engine.Reject, RuleID: 7}
	if d != want {
		t.Errorf("decision %+v, want %+v", d, want)
	}
	// With the local end (the sock_ops program's, or a UDP datagram's source).
	for _, c := range []struct {
		ev   fastpathFpEvent
		want netip.AddrPort
	}{
		{fastpathFpEvent{Action: actAllow, Key: fastpathFpKey{Family: 4, Proto: 6, Port: 443, Addr: [16]byte{198, 18, 0, 2}}, Local: [16]byte{198, 18, 0, 1}, LocalPort: 40001},
			netip.MustParseAddrPort("198.18.0.1:40001")},
		{fastpathFpEvent{Action: actAllow, Key: fastpathFpKey{Family: 6, Proto: 17, Port: 53, Addr: [16]byte{0xfd, 15: 2}}, Local: [16]byte{0xfd, 15: 1}, LocalPort: 53000},
			netip.MustParseAddrPort("[fd00::1]:53000")},
		// No local port: not known (a kernel without the sock_ops program).
		{fastpathFpEvent{Action: actAllow, Key: fastpathFpKey{Family: 4, Proto: 6, Port: 443, Addr: [16]byte{198, 18, 0, 2}}}, netip.AddrPort{}},
	} {
		ev, err := decodeEvent(encodeEvent(c.ev))
		if err != nil {
			t.Fatal(err)
		}
		if d := fp.decision(&ev, time.Unix(100, 0)); d.Local != c.want {
			t.Errorf("event %+v: local %v, want %v", c.ev, d.Local, c.want)
		}
	}
	for name, ev := range map[string]fastpathFpEvent{
		"family":   {Action: actAllow, Key: fastpathFpKey{Family: 5, Proto: 6}},
		"action":   {Action: 9, Key: fastpathFpKey{Family: 4, Proto: 6}},
		"protocol": {Action: actAllow, Key: fastpathFpKey{Family: 4, Proto: 1}},
	} {
		if _, err := decodeEvent(encodeEvent(ev)); err == nil {
			t.Errorf("%s: decoded a bad event", name)
		}
	}
	if _, err := decodeEvent(make([]byte, 10)); err == nil {
		t.Error("decoded a short record")
	}
}

// TestWallAtBootSteady: Run's conversion of record times (boot clock) to wall
// clock times stays the same when taken again while the clocks did not move
// apart, so that records keep their order (a socket's end is not before its
// decision); one off by more than clockSlack (a wall clock set, a suspend) is
// replaced. Each measurement is close to the clocks' offset.
func TestWallAtBootSteady(t *testing.T) {
	at, window, err := measureWallAtBoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootNow()
	if err != nil {
		t.Fatal(err)
	}
	// The clocks read after the measurement: their offset is at most as late
	// as the time between (which includes window).
	if d := time.Now().Add(-time.Duration(b)).Sub(at); d < -window || d > time.Second {
		t.Errorf("measured the boot at %v (within %v); the clocks say %v later", at, window, d)
	}
	cur := at
	for i := 0; i < 200; i++ {
		if got := retakeWallAtBoot(cur); got != cur {
			t.Fatalf("retake %d: %v, want the conversion in use %v (the clocks did not move apart)", i, got, cur)
		}
	}
	for _, off := range []time.Duration{-5 * time.Millisecond, 5 * time.Millisecond, time.Hour} {
		moved := at.Add(off)
		if got := retakeWallAtBoot(moved); got == moved || got.Sub(at) > clockSlack || at.Sub(got) > clockSlack {
			t.Errorf("conversion off by %v: retake gave %v, want a new one near %v", off, got, at)
		}
	}
}
