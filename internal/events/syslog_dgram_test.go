package events

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestSyslogDatagrams checks the datagram transports: one RFC 5424 message per
// datagram, no octet-count framing, over UDP and a unix datagram socket (/dev/log).
func TestSyslogDatagrams(t *testing.T) {
	v := validator(t)
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	sock := filepath.Join(t.TempDir(), "log")
	unixgram, err := net.ListenPacket("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unixgram.Close()
	for url, pc := range map[string]net.PacketConn{"udp://" + udp.LocalAddr().String(): udp, "unix://" + sock: unixgram} {
		s, err := NewSyslogSink(url, "h", t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		h := NewHub(Config{HostID: "id", HostName: "h"}, s)
		for i := range 3 {
			req := testRequest(i + 1)
			h.Decided(&req, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}, 0)
		}
		buf := make([]byte, 64<<10)
		for i := range 3 {
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("%s: message %d: %v", url, i, err)
			}
			m := string(buf[:n])
			if !strings.HasPrefix(m, "<30>1 ") || !strings.Contains(m, " h latch ") {
				t.Fatalf("%s: datagram %q: want an unframed RFC 5424 message", url, m)
			}
			if err := v.Validate([]byte(m[strings.Index(m, "{"):])); err != nil {
				t.Fatal(err)
			}
		}
		h.Close(5 * time.Second)
		if st := h.Stats()[0]; st.Sent != 3 || st.Dropped != 0 {
			t.Errorf("%s: %+v", url, st)
		}
	}
}

// TestSyslogHeaderNotSpoofable: text a program controls (its path) cannot change the
// severity, MSGID or timestamp the sink reads from the document.
func TestSyslogHeaderNotSpoofable(t *testing.T) {
	s, _ := NewSyslogSink("udp://127.0.0.1:514", "h", nil)
	req := testRequest(1)
	req.Exe = `/tmp/"event":"daemon.started","time":"1999-01-01T00:00:00Z","decision":{"action":"allow"}`
	ev := Event{Schema: Schema, Event: ConnectionDecided, Time: time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC), Seq: 1,
		Connection: connectionOf(&req), Process: processOf(&req), Decision: decisionOf(engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule}, 0)}
	// Put the process first so the spoof text comes before the real fields.
	line, _ := json.Marshal(struct {
		Process *Process `json:"process"`
		Event
	}{ev.Process, ev})
	m := string(s.Format(line))
	if !strings.HasPrefix(m, "<29>1 2026-05-06T07:08:09.000000Z h latch ") {
		t.Fatalf("header %q", m[:min(len(m), 80)])
	}
	if !strings.Contains(m, " connection.decided - {") {
		t.Fatalf("MSGID spoofed: %q", m[:min(len(m), 120)])
	}
}
