//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// TestTopEscapesProgramNames: a program named to redraw the line shows escaped in
// text and exact in JSON.
func TestTopEscapesProgramNames(t *testing.T) {
	evil := "/tmp/x\x1b[2K\rfirefox"
	top := &api.TopBody{Since: time.Now().Add(-time.Hour), Until: time.Now(), RateWindow: "20s",
		Programs: []store.ProgramTraffic{{Exe: evil, UID: 1000, User: "bob\u202e", BytesIn: 1536, BytesOut: 3 << 20, RateOut: 2048}}}
	var text bytes.Buffer
	if err := printTop(&text, top, false); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	for _, want := range []string{`/tmp/x\x1b[2K\x0dfirefox`, `bob\u{202E}`, "1.5K", "3.0M", "2.0K", "PROGRAM"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	if strings.ContainsAny(out, "\x1b\r") {
		t.Errorf("text output carries raw control characters: %q", out)
	}
	var js bytes.Buffer
	if err := printTop(&js, top, true); err != nil {
		t.Fatal(err)
	}
	var p store.ProgramTraffic
	if err := json.Unmarshal(js.Bytes(), &p); err != nil || p.Exe != evil || p.BytesOut != 3<<20 {
		t.Errorf("JSON %q: %+v, %v", js.String(), p, err)
	}
}

// TestConnsShowBytesAndNetns: the conns table shows a connection's bytes and, for a
// forwarded one, its namespace escaped; --json has bytes_in, bytes_out and netns.
func TestConnsShowBytesAndNetns(t *testing.T) {
	f := newFixture(t)
	req := engine.Request{ID: 9, Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.19.1.2:40000"),
		Remote: netip.MustParseAddrPort("198.18.5.5:443"),
		PID:    4242, Exe: "/usr/bin/curl", UID: 0, User: "root", Netns: "ct\x1b[2Khost"}
	f.hist.Record(store.Conn{Time: time.Now(), Request: req, Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}})
	f.hist.RecordTraffic(store.Traffic{Time: time.Now(), Request: req, BytesIn: 2048, BytesOut: 1_000_000, DeltaIn: 2048, DeltaOut: 1_000_000, Ended: true})
	f.hist.Flush()
	cs := jsonLines(t, f.must(t, "conns", "--json"))
	if len(cs) != 1 || cs[0]["bytes_in"] != float64(2048) || cs[0]["bytes_out"] != float64(1_000_000) || cs[0]["netns"] != "ct\x1b[2Khost" {
		t.Fatalf("conns --json: %v", cs)
	}
	table := f.must(t, "conns")
	for _, want := range []string{"NETNS", `ct\x1b[2Khost`, "2.0K", "976.6K"} {
		if !strings.Contains(table, want) {
			t.Errorf("conns table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "\x1b") {
		t.Errorf("conns table carries a raw escape:\n%q", table)
	}
}
