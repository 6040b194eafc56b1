//go:build linux

package api

import (
	"encoding/base64"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// TestTextNotUTF8KeepsItsBytes: a path, user, command line or host name that is not
// valid UTF-8 reaches a client byte for byte, through prompts, the event stream and
// the history; in the JSON it is U+FFFD in the field (a JSON string holds text) and
// base64 under "raw". Before, "/tmp/a\xff" and "/tmp/a\xfe" both arrived as
// "/tmp/a\ufffd".
func TestTextNotUTF8KeepsItsBytes(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	req := engine.Request{
		Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.0.2:443"),
		PID:    4242, Exe: "/tmp/a\xff", UID: 1000, User: "us\xfeer", Cmdline: "a\xc3 b", Host: "h\xe2\x80.test",
	}
	s, err := f.client.Events(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ev, err := s.Next(); err != nil || ev.Kind != EventHello {
		t.Fatalf("first event %+v, %v", ev, err)
	}
	r := req
	f.eng.Decide(&r, func(engine.Verdict) {})
	same := func(what, exe, user, cmdline, host string) {
		t.Helper()
		if exe != req.Exe || user != req.User || cmdline != req.Cmdline || host != req.Host {
			t.Errorf("%s: exe %q user %q cmdline %q host %q; want %q %q %q %q", what, exe, user, cmdline, host,
				req.Exe, req.User, req.Cmdline, req.Host)
		}
	}
	ev, err := s.Next()
	if err != nil || ev.Prompt == nil {
		t.Fatalf("event %+v, %v", ev, err)
	}
	same("event", ev.Prompt.Exe, ev.Prompt.User, ev.Prompt.Cmdline, ev.Prompt.Host)
	ps, err := f.client.Prompts(c)
	if err != nil || len(ps) != 1 {
		t.Fatalf("Prompts: %+v, %v", ps, err)
	}
	same("prompts", ps[0].Exe, ps[0].User, ps[0].Cmdline, ps[0].Host)

	// On the wire: the field as text, the bytes under raw.
	code, body := f.raw(t, "GET", "/v1/prompts", "")
	if code != 200 || !strings.Contains(body, `"exe":"/tmp/a\ufffd"`) ||
		!strings.Contains(body, `"exe":"`+base64.StdEncoding.EncodeToString([]byte(req.Exe))+`"`) {
		t.Errorf("GET /v1/prompts: %d %s", code, body)
	}
	// Valid text carries no raw.
	f.request("/usr/bin/curl", 80)
	if _, body := f.raw(t, "GET", "/v1/prompts", ""); strings.Count(body, `"raw"`) != 1 {
		t.Errorf("raw appears for valid text too: %s", body)
	}

	f.hist.Record(store.Conn{Time: time.Now(), Request: req, Verdict: engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule}})
	f.hist.Flush()
	cs, err := f.client.Conns(c, 0, 10)
	if err != nil || len(cs) != 1 {
		t.Fatalf("Conns: %+v, %v", cs, err)
	}
	same("conns (history)", cs[0].Exe, cs[0].User, cs[0].Cmdline, cs[0].Host)
}

// TestRawCannotRewriteValidText: raw bytes that are valid UTF-8 are ignored, so a
// "raw" entry can only restore bytes JSON could not carry, never replace a field.
func TestRawCannotRewriteValidText(t *testing.T) {
	var p Prompt
	if err := p.UnmarshalJSON([]byte(`{"exe":"/usr/bin/curl","raw":{"exe":"L3RtcC9ldmls"}}`)); err != nil {
		t.Fatal(err)
	}
	if p.Exe != "/usr/bin/curl" {
		t.Errorf("raw rewrote a valid exe into %q", p.Exe)
	}
	// Bytes that are not UTF-8 but stand for other text are ignored too.
	if err := p.UnmarshalJSON([]byte(`{"exe":"/usr/bin/curl","raw":{"exe":"L3RtcC9h/w=="}}`)); err != nil {
		t.Fatal(err)
	}
	if p.Exe != "/usr/bin/curl" {
		t.Errorf("raw rewrote exe into %q", p.Exe)
	}
	var c Conn
	if err := c.UnmarshalJSON([]byte(`{"exe":"/tmp/a\ufffd","raw":{"exe":"L3RtcC9h/w=="}}`)); err != nil {
		t.Fatal(err)
	}
	if c.Exe != "/tmp/a\xff" {
		t.Errorf("raw did not restore the exact exe: %q", c.Exe)
	}
}
