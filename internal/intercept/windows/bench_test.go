package windows

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/proto"
)

// BenchmarkRoundTrip measures one held connection decided by a rule, through the whole
// backend over an in-memory port: read, decode, describe, decide, queue, encode, send,
// ACK. The baseline in the same run, BenchmarkRoundTripCodecOnly, is the wire work
// alone (decode the request, encode the verdict, decode the ACK).
func BenchmarkRoundTrip(b *testing.B) {
	drv := newFakeDriver(b)
	drv.verdicts = make(chan proto.Verdict, 1)
	dec := intercept.DeciderFunc(func(req *engine.Request, verdict func(engine.Verdict)) {
		verdict(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1})
	})
	bk, err := New(Config{Dial: drv.dial, Logf: func(string, ...any) {}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go bk.Run(ctx, dec)
	select {
	case <-drv.connected:
	case <-time.After(5 * time.Second):
		b.Fatal("no connection")
	}
	b.ReportAllocs()
	for b.Loop() {
		drv.connect("198.19.0.2:443", `\Device\HarddiskVolume3\Windows\System32\curl.exe`)
		<-drv.verdicts
	}
}

func BenchmarkRoundTripCodecOnly(b *testing.B) {
	cr := &proto.ConnectRequest{
		RequestID: 1, Layer: proto.LayerConnectV4, Direction: proto.Outbound, IPVersion: 4, Protocol: 6,
		Local: netip.MustParseAddrPort("198.18.0.1:50000"), Remote: netip.MustParseAddrPort("198.19.0.2:443"),
		ProcessID: 4242, Path: proto.EncodePath(`\Device\HarddiskVolume3\Windows\System32\curl.exe`),
	}
	msg, _ := proto.Encode(cr)
	ack, _ := proto.Encode(&proto.Ack{})
	b.ReportAllocs()
	for b.Loop() {
		m, err := proto.Decode(msg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := proto.Encode(&proto.Verdict{RequestID: m.(*proto.ConnectRequest).RequestID, Action: proto.ActionPermit}); err != nil {
			b.Fatal(err)
		}
		if _, err := proto.Decode(ack); err != nil {
			b.Fatal(err)
		}
	}
}
