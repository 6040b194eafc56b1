package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
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
