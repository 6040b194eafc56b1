package store

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func TestTimelineTopPrograms(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), HistoryFileName), 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	add := func(min int, exe, host, ip string, a engine.Action, reason engine.Reason) {
		t.Helper()
		c := Conn{Time: t0.Add(time.Duration(min)*time.Minute + time.Second), Request: engine.Request{
			Direction: engine.Outbound, Protocol: engine.TCP, Exe: exe, Host: host,
			Remote: netip.MustParseAddrPort(ip + ":443")},
			Verdict: engine.Verdict{Action: a, Reason: reason}}
		if err := h.Record(c); err != nil {
			t.Fatal(err)
		}
	}
	add(0, "/usr/bin/curl", "a.example.com", "198.18.0.2", engine.Allow, engine.ReasonRule)
	add(0, "/usr/bin/curl", "a.example.com", "198.18.0.2", engine.Deny, engine.ReasonPrompt)
	add(2, "/usr/bin/curl", "", "198.18.0.3", engine.Deny, engine.ReasonTimeout)
	add(2, "/usr/bin/wget", "", "198.18.0.3", engine.Allow, engine.ReasonTimeout) // default allow, unanswered
	add(9, "/usr/bin/wget", "", "198.18.0.3", engine.Allow, engine.ReasonRule)    // outside the range
	h.Flush()

	tl, err := h.Timeline(t0, t0.Add(3*time.Minute), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := []Bucket{{t0, 1, 1, 0}, {t0.Add(time.Minute), 0, 0, 0}, {t0.Add(2 * time.Minute), 0, 0, 2}}
	if len(tl) != len(want) {
		t.Fatalf("timeline %+v, want %+v", tl, want)
	}
	for i := range want {
		if !tl[i].Start.Equal(want[i].Start) || tl[i].Allowed != want[i].Allowed || tl[i].Denied != want[i].Denied || tl[i].Timeout != want[i].Timeout {
			t.Errorf("bucket %d: %+v, want %+v", i, tl[i], want[i])
		}
	}
	if _, err := h.Timeline(t0, t0.Add(time.Hour*24*365), time.Second); err == nil {
		t.Error("a timeline of a year by the second was accepted")
	}
	// A range longer than a Duration holds (about 292 years) is refused, not a panic.
	if _, err := h.Timeline(time.Unix(1, 0), time.Unix(9999999999, 0), time.Second); err == nil {
		t.Error("a timeline of 300 years by the second was accepted")
	}

	top, err := h.Top("host", t0, t0.Add(3*time.Minute), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) != 2 || top[0].Key != "198.18.0.3" || top[0].Total != 2 || top[0].Timeout != 2 ||
		top[1].Key != "a.example.com" || top[1].Allowed != 1 || top[1].Denied != 1 {
		t.Errorf("top hosts: %+v", top)
	}
	top, err = h.Top("exe", t0, t0.Add(3*time.Minute), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) != 1 || top[0].Key != "/usr/bin/curl" || top[0].Total != 3 {
		t.Errorf("top programs: %+v", top)
	}
	if _, err := h.Top("pid", t0, t0, 1); err == nil {
		t.Error("top by pid was accepted")
	}

	ps, err := h.Programs()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Exe != "/usr/bin/wget" || ps[0].Total != 2 || !ps[0].LastSeen.Equal(t0.Add(9*time.Minute+time.Second)) ||
		ps[1].Exe != "/usr/bin/curl" || !ps[1].FirstSeen.Equal(t0.Add(time.Second)) || ps[1].Denied != 1 || ps[1].Timeout != 1 {
		t.Errorf("programs: %+v", ps)
	}
	cs, err := h.ProgramConns("/usr/bin/curl", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].Verdict.Action != engine.Deny || cs[1].Verdict.Reason != engine.ReasonTimeout || cs[1].Request.Exe != "/usr/bin/curl" {
		t.Errorf("program conns: %+v", cs)
	}
}
