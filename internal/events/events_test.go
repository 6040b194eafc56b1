package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/events/schemacheck"
)

func validator(t *testing.T) *schemacheck.Validator {
	t.Helper()
	v, err := schemacheck.New(schemacheck.SchemaPath())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func testRequest(i int) engine.Request {
	return engine.Request{
		ID: engine.RequestID(i), Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(40000+i%1000)),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.1.2"), 443),
		PID:    int32(1000 + i), Exe: "/usr/bin/curl\x1b\u202e\xff", UID: 1000, User: "alice", Host: "www.example.com",
		Cmdline: "curl https://www.example.com/",
	}
}

// everyOtherEvent emits one event of each type but connection.decided.
func everyOtherEvent(h *Hub) {
	req := testRequest(0)
	p := &engine.Prompt{ID: 7, Request: req, Held: 2, Opened: time.Now(), Expires: time.Now().Add(time.Minute)}
	h.EngineEvent(engine.Event{Kind: engine.EventPrompt, Prompt: p})
	h.EngineEvent(engine.Event{Kind: engine.EventAnswered, Prompt: p, Verdict: &engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt, RuleID: 3}})
	r1 := engine.Rule{ID: 1, App: "/usr/bin/curl", Port: engine.PortRange{Lo: 443, Hi: 443}, Remote: netip.MustParsePrefix("198.18.0.0/15"), Action: engine.Allow, Created: time.Now().UTC()}
	r2 := engine.Rule{ID: 2, Host: "*.example.com", Action: engine.Deny, Expires: time.Now().Add(-time.Second).UTC()}
	r3 := engine.Rule{ID: 3, User: "alice", Action: engine.Drop}
	r1b := r1
	r1b.Note = "changed"
	h.RulesChanged(nil, []engine.Rule{r1, r2, r3})
	h.RulesChanged([]engine.Rule{r1, r2, r3}, []engine.Rule{r1b})
	h.Emit(Event{Event: DaemonStarted, Daemon: &Daemon{Version: "dev", PID: os.Getpid(), Backend: "test", Mode: "fail-closed", Default: "deny"}})
	h.Emit(Event{Event: BackendDegraded, Backend: &Backend{Name: "test", Condition: "queue_overflow", Count: 3, Message: "kernel queue overflowed 3 times"}})
	h.Emit(Event{Event: DaemonStopped, Daemon: &Daemon{Version: "dev", PID: os.Getpid(), Backend: "test", Mode: "fail-closed", Default: "deny"}})
}

// TestFileSinkRotationUnderLoad floods the file sink from several goroutines with
// rotation at 64 KiB: every line of every file is whole and a valid latch.event/1
// document, every decision written appears exactly once, and what is missing is
// exactly what was counted as dropped.
func TestFileSinkRotationUnderLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.jsonl")
	const maxSize, keep = 64 << 10, 1000
	fs, err := OpenFileSink(path, maxSize, keep, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	h := NewHub(Config{HostID: "host-1", HostName: "test-host"}, fs)
	everyOtherEvent(h)
	const writers, per = 4, 5000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				req := testRequest(w*per + i + 1)
				h.Decided(&req, engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 2}, 150*time.Microsecond)
			}
		}()
	}
	wg.Wait()
	h.Close(10 * time.Second)
	st := h.Stats()[0]

	v := validator(t)
	files, _ := filepath.Glob(path + "*")
	if len(files) < 10 {
		t.Fatalf("%d files: want rotation at %d bytes to have made many", len(files), maxSize)
	}
	seen := map[uint64]int{}
	types := map[string]int{}
	seqs := map[uint64]bool{}
	lines := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > maxSize {
			t.Errorf("%s: %d bytes, over the %d limit", f, len(data), maxSize)
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			t.Errorf("%s does not end with a whole line", f)
		}
		for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
			lines++
			if err := v.Validate(line); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var ev Event
			if err := json.Unmarshal(line, &ev); err != nil {
				t.Fatal(err)
			}
			types[ev.Event]++
			if seqs[ev.Seq] {
				t.Fatalf("seq %d twice", ev.Seq)
			}
			seqs[ev.Seq] = true
			if ev.Event == ConnectionDecided {
				seen[ev.Connection.ID]++
				if ev.Process.Executable != "/usr/bin/curl\x1b\u202e\ufffd" || ev.HostID != "host-1" {
					t.Fatalf("event lost its fields: %s", line)
				}
			}
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("connection %d written %d times", id, n)
		}
	}
	if uint64(len(seen))+st.Dropped != writers*per || st.Sent != uint64(lines) {
		t.Fatalf("%d decisions written + %d dropped != %d; sent counter %d, lines %d", len(seen), st.Dropped, writers*per, st.Sent, lines)
	}
	for _, typ := range []string{QuestionOpened, QuestionAnswered, RuleAdded, RuleChanged, RuleRemoved, RuleExpired, DaemonStarted, DaemonStopped, BackendDegraded} {
		if types[typ] == 0 {
			t.Errorf("no %s event written (types %v)", typ, types)
		}
	}
	t.Logf("%d files, %d lines, %d decisions dropped", len(files), lines, st.Dropped)
}

// TestSchemaRejects makes sure the schema is not vacuous: documents that break it
// in the ways an emitter could are refused.
func TestSchemaRejects(t *testing.T) {
	v := validator(t)
	good := `{"schema":"latch.event/1","event":"daemon.started","time":"2026-01-02T03:04:05Z","host_id":"h","host_name":"n","seq":1,"daemon":{"version":"v","pid":1,"backend":"b","mode":"fail-closed","default":"deny"}}`
	if err := v.Validate([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		strings.Replace(good, `latch.event/1`, `latch.event/2`, 1),
		strings.Replace(good, `daemon.started`, `daemon.exploded`, 1),
		strings.Replace(good, `"2026-01-02T03:04:05Z"`, `"yesterday"`, 1),
		strings.Replace(good, `"seq":1,`, ``, 1),
		strings.Replace(good, `"seq":1,`, `"seq":1,"extra":true,`, 1),
		strings.Replace(good, `daemon.started`, `connection.decided`, 1),
		strings.Replace(good, `"deny"`, `"maybe"`, 1),
	} {
		if v.Validate([]byte(bad)) == nil {
			t.Errorf("schema accepts %s", bad)
		}
	}
}

// TestSyslogFraming runs the syslog sink against a TCP listener: RFC 5424 messages
// with octet-counting framing, MSGID the event type, severity by verdict; and a
// collector that goes away and comes back is reconnected, with drops counted.
func TestSyslogFraming(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	got := make(chan string, 1000)
	var connsMu sync.Mutex
	var conns []net.Conn
	serve := func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					n, err := r.ReadString(' ')
					if err != nil {
						return
					}
					size, err := strconv.Atoi(strings.TrimSpace(n))
					if err != nil {
						got <- "BAD FRAME " + n
						return
					}
					buf := make([]byte, size)
					if _, err := io.ReadFull(r, buf); err != nil {
						return
					}
					got <- string(buf)
				}
			}()
		}
	}
	go serve(l)
	s, err := NewSyslogSink("tcp://"+addr, "test host", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	h := NewHub(Config{HostID: "id", HostName: "test host"}, s)
	defer h.Close(5 * time.Second)
	v := validator(t)
	req := testRequest(1)
	h.Decided(&req, engine.Verdict{Action: engine.Reject, Reason: engine.ReasonRule, RuleID: 4}, time.Millisecond)
	h.Decided(&req, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt}, time.Second)
	want := []string{"<29>1 ", "<30>1 "} // daemon.notice, daemon.info
	for i := range 2 {
		select {
		case m := <-got:
			if !strings.HasPrefix(m, want[i]) || !strings.Contains(m, fmt.Sprintf(" testhost latch %d connection.decided - {", os.Getpid())) {
				t.Errorf("message %d: %q", i, m)
			}
			if err := v.Validate([]byte(m[strings.Index(m, "{"):])); err != nil {
				t.Error(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no message")
		}
	}
	// The collector goes away: events are dropped and counted.
	l.Close()
	connsMu.Lock()
	for _, c := range conns {
		c.Close()
	}
	connsMu.Unlock()
	time.Sleep(200 * time.Millisecond)
	for i := range 50 {
		r := testRequest(100 + i)
		h.Decided(&r, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}, 0)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.Stats()[0].Dropped < 49 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if d := h.Stats()[0].Dropped; d < 49 {
		t.Fatalf("collector gone: %d of 50 events counted as dropped", d)
	}
	// It comes back on the same address: the sink reconnects by itself.
	l2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	go serve(l2)
	deadline = time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		r := testRequest(1000 + i)
		h.Decided(&r, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}, 0)
		select {
		case m := <-got:
			if !strings.Contains(m, `"id":`+strconv.Itoa(1000+i)) && !strings.Contains(m, `"connection":{"id":`) {
				t.Fatalf("after reconnecting: %q", m)
			}
			t.Logf("reconnected after %d attempts", i+1)
			return
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the sink did not reconnect within 20s")
		}
	}
}

func TestSyslogURLs(t *testing.T) {
	for _, ok := range []string{"tcp://127.0.0.1:514", "udp://[::1]:514", "tls://logs.example.com:6514", "unix:///dev/log"} {
		if _, err := NewSyslogSink(ok, "h", nil); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:514", "http://x:1", "tcp://x", "tcp://x:0", "tcp://x:99999", "tcp://x:1/path", "unix://host/dev/log", "unix://"} {
		if _, err := NewSyslogSink(bad, "h", nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
