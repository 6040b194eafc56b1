//go:build linux

package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// fixture is a real API server on a real unix socket, backed by a real engine, a real
// SQLite history and a real rules file.
type fixture struct {
	eng       *engine.Engine
	hist      *store.History
	srv       *Server
	client    *Client
	sock      string
	rulesPath string
	saveErr   error // SaveRules fails with this when set
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	// Socket paths are limited to 108 bytes; t.TempDir names can be longer.
	dir, err := os.MkdirTemp("", "latch-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fixture{sock: filepath.Join(dir, "run", "latch.sock"), rulesPath: filepath.Join(dir, store.RulesFileName)}
	f.eng, err = engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.eng.Close)
	f.hist, err = store.OpenHistory(filepath.Join(dir, store.HistoryFileName), 1000)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.hist.Close() })
	f.srv = NewServer(Config{
		Engine:  f.eng,
		History: f.hist,
		Status: func() Status {
			return Status{Backend: "test", Mode: "fail-closed", Default: engine.Deny, Attribution: []string{"none"}}
		},
		SaveRules: func() error {
			if f.saveErr != nil {
				return f.saveErr
			}
			return store.SaveRules(f.rulesPath, f.eng.Rules())
		},
		Logf: t.Logf,
	})
	l, err := Listen(f.sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.srv.Serve(l) }()
	t.Cleanup(func() {
		f.srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	f.client = NewClient(f.sock)
	return f
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// request raises a question the way a backend would and returns a channel that gets
// its verdict.
func (f *fixture) request(exe string, port uint16) chan engine.Verdict {
	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(&engine.Request{
		Time:      time.Now(),
		Direction: engine.Outbound,
		Protocol:  engine.TCP,
		Local:     netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote:    netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
		PID:       4242,
		Exe:       exe, Identity: engine.IdentityVerified,
		UID:  0,
		User: "root",
	}, func(v engine.Verdict) { ch <- v })
	return ch
}

func TestStatus(t *testing.T) {
	f := newFixture(t)
	f.request("/usr/bin/curl", 443)
	st, err := f.client.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Backend != "test" || st.Mode != "fail-closed" || st.Default != engine.Deny {
		t.Errorf("status %+v lost the daemon's fields", st)
	}
	if st.PendingPrompts != 1 || st.HeldConnections != 1 {
		t.Errorf("status pending %d held %d, want 1 and 1", st.PendingPrompts, st.HeldConnections)
	}
	if st.History.MaxRows != 1000 {
		t.Errorf("status history %+v, want max_rows 1000", st.History)
	}
}

func TestRulesAddListRemoveSaved(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	r, err := f.client.AddRule(c, engine.Rule{
		App: "/usr/bin/curl", Protocol: engine.TCP, Direction: engine.Outbound,
		Remote: netip.MustParsePrefix("198.18.0.0/24"), Port: engine.PortRange{Lo: 443, Hi: 443},
		Action: engine.Allow,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID == 0 || r.Created.IsZero() {
		t.Fatalf("added rule %+v has no id or created time", r)
	}
	rules, err := f.client.Rules(c)
	if err != nil || len(rules) != 1 || rules[0].ID != r.ID {
		t.Fatalf("Rules = %v, %v; want the added rule", rules, err)
	}
	saved, err := store.LoadRules(f.rulesPath)
	if err != nil || !reflect.DeepEqual(saved, rules) {
		t.Fatalf("rules file holds %v (%v), want %v", saved, err, rules)
	}
	if _, err := f.client.RemoveRule(c, r.ID+100); apiStatus(err) != http.StatusNotFound {
		t.Errorf("removing a rule that does not exist: %v, want 404", err)
	}
	removed, err := f.client.RemoveRule(c, r.ID)
	if err != nil || removed.ID != r.ID {
		t.Fatalf("RemoveRule = %v, %v", removed, err)
	}
	if saved, _ := store.LoadRules(f.rulesPath); len(saved) != 0 {
		t.Errorf("rules file still holds %v after removal", saved)
	}
}

func TestExportImport(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	for _, port := range []uint16{22, 80, 443} {
		if _, err := f.client.AddRule(c, engine.Rule{App: "/usr/bin/ssh", Port: engine.PortRange{Lo: port, Hi: port}, Action: engine.Allow}); err != nil {
			t.Fatal(err)
		}
	}
	exported, err := f.client.ExportRules(c)
	if err != nil {
		t.Fatal(err)
	}
	want, err := engine.ParseRules(exported)
	if err != nil || len(want) != 3 {
		t.Fatalf("export is not a rules file of 3 rules: %v\n%s", err, exported)
	}
	// Replace the set with one rule, then import the export back.
	if _, err := f.client.ImportRules(c, []byte(`{"version":1,"rules":[{"action":"deny","port":"25"}]}`)); err != nil {
		t.Fatal(err)
	}
	if rules, _ := f.client.Rules(c); len(rules) != 1 || rules[0].Action != engine.Deny {
		t.Fatalf("after import: %v", rules)
	}
	got, err := f.client.ImportRules(c, exported)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("import of the export gave %v, want %v", got, want)
	}
	if saved, _ := store.LoadRules(f.rulesPath); !reflect.DeepEqual(saved, want) {
		t.Errorf("rules file after import holds %v", saved)
	}
}

func TestPromptsAndAnswer(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	verdict := f.request("/usr/bin/curl", 443)
	ps, err := f.client.Prompts(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("%d prompts, want 1", len(ps))
	}
	p := ps[0]
	if p.PID != 4242 || p.Exe != "/usr/bin/curl" || p.Proto != engine.TCP || p.RemoteIP != "198.18.0.2" ||
		p.RemotePort != 443 || p.Direction != engine.Outbound || p.Expires.IsZero() || p.Held != 1 {
		t.Errorf("prompt %+v does not describe the request", p)
	}
	rule, err := f.client.Answer(c, p.ID, AnswerRequest{Action: "allow", For: "forever", Scope: "app+host"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-verdict:
		if v.Action != engine.Allow || v.Reason != engine.ReasonPrompt || v.RuleID != rule.ID {
			t.Errorf("held connection got %+v, want allow by prompt with rule %d", v, rule.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("answered prompt, held connection got no verdict")
	}
	if rule == nil || rule.App != "/usr/bin/curl" || rule.Remote != netip.MustParsePrefix("198.18.0.2/32") || !rule.Port.IsZero() {
		t.Fatalf("answer created rule %+v, want app+host", rule)
	}
	if saved, _ := store.LoadRules(f.rulesPath); len(saved) != 1 || saved[0].ID != rule.ID {
		t.Errorf("rule from the answer not saved: %v", saved)
	}
	if _, err := f.client.Answer(c, p.ID, AnswerRequest{Action: "deny"}); apiStatus(err) != http.StatusNotFound {
		t.Errorf("answering a closed prompt: %v, want 404", err)
	}
	// "once" answers without a rule.
	verdict = f.request("/usr/bin/wget", 80)
	ps, _ = f.client.Prompts(c)
	rule, err = f.client.Answer(c, ps[0].ID, AnswerRequest{Action: "reject"})
	if err != nil || rule != nil {
		t.Fatalf("answer once = %v, %v; want no rule", rule, err)
	}
	if v := <-verdict; v.Action != engine.Reject {
		t.Errorf("answer reject gave %v", v)
	}
}

// TestHost checks that the hostname a backend learned reaches every view: prompts
// (and their JSON), rules from answers and added rules, and history.
func TestHost(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(&engine.Request{
		Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.5.5:443"),
		PID:    4242, Exe: "/usr/bin/firefox", Identity: engine.IdentityVerified, UID: 0, User: "root", Host: "www.example.com",
	}, func(v engine.Verdict) { ch <- v })
	ps, err := f.client.Prompts(c)
	if err != nil || len(ps) != 1 || ps[0].Host != "www.example.com" || ps[0].RemoteIP != "198.18.5.5" {
		t.Fatalf("prompts %+v, %v; want one for www.example.com (198.18.5.5)", ps, err)
	}
	if b, _ := json.Marshal(ps[0]); !strings.Contains(string(b), `"host":"www.example.com"`) {
		t.Errorf("prompt JSON %s lacks the host", b)
	}
	rule, err := f.client.Answer(c, ps[0].ID, AnswerRequest{Action: "allow", For: "forever", Scope: "app+host"})
	if err != nil {
		t.Fatal(err)
	}
	if rule.Host != "www.example.com" || rule.Remote.IsValid() {
		t.Errorf("app+host answer made %v, want a rule on the host, not the address", rule)
	}
	<-ch
	added, err := f.client.AddRule(c, engine.Rule{Host: "*.Tracker.Example.", Action: engine.Deny})
	if err != nil || added.Host != "*.tracker.example" {
		t.Errorf("AddRule with a host = %v, %v; want host *.tracker.example", added, err)
	}
	rules, _ := f.client.Rules(c)
	if len(rules) != 2 || rules[0].Host != "www.example.com" || rules[1].Host != "*.tracker.example" {
		t.Errorf("rules %v", rules)
	}
	f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
		Direction: engine.Outbound, Protocol: engine.TCP,
		Remote: netip.MustParseAddrPort("198.18.5.5:443"), Exe: "/usr/bin/firefox", Identity: engine.IdentityVerified, UID: 0, Host: "www.example.com",
	}, Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: rule.ID}})
	f.hist.Flush()
	cs, err := f.client.Conns(c, 0, 1)
	if err != nil || len(cs) != 1 || cs[0].Host != "www.example.com" {
		t.Errorf("conns %+v, %v; want the host", cs, err)
	}
}

func TestConns(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	for i := range 5 {
		f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
			Direction: engine.Outbound, Protocol: engine.UDP,
			Local:  netip.MustParseAddrPort("198.18.0.1:5000"),
			Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), uint16(53+i)),
			PID:    int32(100 + i), Exe: "/usr/bin/dig", Identity: engine.IdentityVerified, UID: 0, User: "root",
		}, Verdict: engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 7}})
	}
	f.hist.Flush()
	cs, err := f.client.Conns(c, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 3 || cs[2].RemotePort != 57 || cs[2].PID != 104 || cs[2].Exe != "/usr/bin/dig" ||
		cs[2].Verdict != engine.Deny || cs[2].Reason != engine.ReasonRule || cs[2].RuleID != 7 ||
		cs[2].Proto != engine.UDP || cs[2].LocalIP != "198.18.0.1" || cs[2].User != "root" {
		t.Fatalf("Conns(0, 3) = %+v", cs)
	}
	more, err := f.client.Conns(c, cs[0].ID, 100)
	if err != nil || len(more) != 2 || more[0].ID != cs[1].ID {
		t.Fatalf("Conns(after %d) = %+v, %v", cs[0].ID, more, err)
	}
}

func TestEvents(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	s, err := f.client.Events(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ev, err := s.Next(); err != nil || ev.Kind != EventHello {
		t.Fatalf("first event %+v, %v; want hello", ev, err)
	}
	f.request("/usr/bin/curl", 8443)
	ev, err := s.Next()
	if err != nil || ev.Kind != EventPrompt || ev.Prompt == nil || ev.Prompt.RemotePort != 8443 {
		t.Fatalf("event %+v, %v; want the prompt", ev, err)
	}
	if _, err := f.client.Answer(c, ev.Prompt.ID, AnswerRequest{Action: "deny"}); err != nil {
		t.Fatal(err)
	}
	ev, err = s.Next()
	if err != nil || ev.Kind != EventAnswered || ev.Verdict == nil || ev.Verdict.Action != engine.Deny {
		t.Fatalf("event %+v, %v; want answered deny", ev, err)
	}
}

func apiStatus(err error) int {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}

// raw sends a request with an arbitrary body.
func (f *fixture) raw(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", f.sock)
	}}}
	req, _ := http.NewRequest(method, "http://latch"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func TestMalformedRequestsChangeNothing(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	if _, err := f.client.AddRule(c, engine.Rule{App: "/usr/bin/ssh", Port: engine.PortRange{Lo: 22, Hi: 22}, Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	f.request("/usr/bin/curl", 443)
	ps, _ := f.client.Prompts(c)
	pid := ps[0].ID
	answer := fmt.Sprintf("/v1/prompts/%d/answer", pid)
	rulesBefore, _ := f.client.Rules(c)
	fileBefore, _ := os.ReadFile(f.rulesPath)

	cases := []struct {
		method, path, body string
		code               int
		want               string // the error must contain this
	}{
		{"POST", "/v1/rules", `{"action":"allow","colour":"red"}`, 400, `"colour"`},
		{"POST", "/v1/rules", `{"action":"maybe"}`, 400, "action"},
		{"POST", "/v1/rules", `{"remote":"198.18.0.0/40","action":"allow"}`, 400, "remote"},
		{"POST", "/v1/rules", `{"port":"2000-1000","action":"allow"}`, 400, "port"},
		{"POST", "/v1/rules", `{"host":"www.*.example","action":"allow"}`, 400, `"host"`},
		{"POST", "/v1/rules", `{"proto":"sctp","action":"allow"}`, 400, "proto"},
		{"POST", "/v1/rules", `{"id":5,"action":"allow"}`, 400, `"id"`},
		{"POST", "/v1/rules", `{"app":7,"action":"allow"}`, 400, "app"},
		{"POST", "/v1/rules", `{}`, 400, "action"},
		{"POST", "/v1/rules", `not json`, 400, "malformed"},
		{"POST", "/v1/rules", ``, 400, "empty"},
		{"POST", "/v1/rules", `{"action":"allow"} {"action":"deny"}`, 400, "trailing"},
		{"POST", "/v1/rules", `{"action":"allow"`, 400, "malformed"},
		{"DELETE", "/v1/rules/abc", ``, 400, "rule id"},
		{"DELETE", "/v1/rules/999", ``, 404, "no such rule"},
		{"POST", "/v1/rules/import", `{"version":1,"rules":[{"action":"allow"},{"action":"allow","remote":"x"}]}`, 400, "rule 1"},
		{"POST", "/v1/rules/import", `{"version":3,"rules":[]}`, 400, "version"},
		{"POST", "/v1/rules/import", `{"rules":[]}`, 400, "version"},
		{"POST", answer, `{"action":"allow","for":"soon"}`, 400, `"for"`},
		{"POST", answer, `{"action":"allow","scope":"world"}`, 400, `"scope"`},
		{"POST", answer, `{"actoin":"allow"}`, 400, `"actoin"`},
		{"POST", answer, `{"action":"perhaps"}`, 400, `"action"`},
		{"POST", answer, `{}`, 400, `"action"`},
		{"POST", answer, `{"action":true}`, 400, `"action"`},
		{"POST", "/v1/prompts/0/answer", `{"action":"allow"}`, 400, "prompt id"},
		{"POST", "/v1/prompts/99999/answer", `{"action":"allow"}`, 404, "not open"},
		{"GET", "/v1/conns?n=abc", ``, 400, `"n"`},
		{"GET", "/v1/conns?after=-1", ``, 400, `"after"`},
		{"GET", "/v1/conns?limit=5", ``, 400, `"limit"`},
		{"GET", "/v1/nothing", ``, 404, "no endpoint"},
	}
	for _, tc := range cases {
		code, body := f.raw(t, tc.method, tc.path, tc.body)
		var eb errorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == "" {
			t.Errorf("%s %s %s: reply %q is not an error object", tc.method, tc.path, tc.body, body)
			continue
		}
		if code != tc.code || !strings.Contains(eb.Error, tc.want) {
			t.Errorf("%s %s %s: %d %q; want %d and an error naming %s", tc.method, tc.path, tc.body, code, eb.Error, tc.code, tc.want)
		}
	}
	rulesAfter, _ := f.client.Rules(c)
	fileAfter, _ := os.ReadFile(f.rulesPath)
	if !reflect.DeepEqual(rulesBefore, rulesAfter) || !bytes.Equal(fileBefore, fileAfter) {
		t.Errorf("malformed requests changed the rules: %v -> %v", rulesBefore, rulesAfter)
	}
	if ps, _ := f.client.Prompts(c); len(ps) != 1 || ps[0].ID != pid {
		t.Errorf("malformed answers closed the prompt: %v", ps)
	}
}

func TestFailedSaveUndoesChange(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	if _, err := f.client.AddRule(c, engine.Rule{Port: engine.PortRange{Lo: 22, Hi: 22}, Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	before, _ := f.client.Rules(c)
	f.saveErr = errors.New("disk full")
	_, err := f.client.AddRule(c, engine.Rule{Port: engine.PortRange{Lo: 23, Hi: 23}, Action: engine.Deny})
	if apiStatus(err) != 500 || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("add with a failing save: %v", err)
	}
	if _, err := f.client.RemoveRule(c, before[0].ID); apiStatus(err) != 500 {
		t.Fatalf("remove with a failing save: %v", err)
	}
	if after, _ := f.client.Rules(c); !reflect.DeepEqual(after, before) {
		t.Errorf("failed saves changed the rules: %v -> %v", before, after)
	}
}

// TestNonRootIsRefused connects as user nobody, through netcat run with nobody's
// credentials, so the server sees a real non-root peer.
func TestNonRootIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as nobody")
	}
	nc, err := exec.LookPath("nc")
	if err != nil {
		t.Skip("needs nc (netcat-openbsd)")
	}
	f := newFixture(t)
	asNobody := func() (string, error) {
		cmd := exec.Command(nc, "-U", "-N", f.sock)
		cmd.Stdin = strings.NewReader("GET /v1/status HTTP/1.0\r\n\r\n")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// The socket is mode 0600 in a 0755 directory: nobody cannot even connect.
	fi, err := os.Stat(f.sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if err := os.Chmod(filepath.Dir(filepath.Dir(f.sock)), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := asNobody(); err == nil && strings.Contains(out, "200 OK") {
		t.Fatalf("nobody connected through a 0600 socket: %s", out)
	}
	// Open the file permission; the peer-credential check must still refuse.
	if err := os.Chmod(f.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err := asNobody()
	if err != nil {
		t.Fatalf("nc as nobody: %v: %s", err, out)
	}
	if !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "latch API: permission denied: uid 65534 is not root") {
		t.Fatalf("non-root peer got:\n%s", out)
	}
	// And root still gets through.
	if _, err := f.client.Status(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestListenStaleAndLive(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-api-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "latch.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another latch daemon") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	// A stale socket (its listener gone without unlinking) is replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	l, err = Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()
	// A file that is not a socket is left alone.
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	// No daemon: the client says so.
	os.Remove(path)
	_, err = NewClient(path).Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no daemon is running") {
		t.Fatalf("client without a daemon: %v", err)
	}
}

// TestRuleChangeAnsweredAfterItsHooks: a call that changes the rules returns only
// once the engine's rule-change hooks ran for it (in the daemon: the flows the change
// affects are marked to be decided again), so that after `latch rules add` not even
// a datagram on a flow allowed before passes by the old rules.
func TestRuleChangeAnsweredAfterItsHooks(t *testing.T) {
	f := newFixture(t)
	var ran atomic.Bool
	release := make(chan struct{})
	f.eng.OnRulesChanged(func(old, new []engine.Rule) {
		<-release
		ran.Store(true)
	})
	time.AfterFunc(300*time.Millisecond, func() { close(release) })
	if _, err := f.client.AddRule(ctx(t), engine.Rule{App: "/usr/bin/curl", Action: engine.Deny}); err != nil {
		t.Fatal(err)
	}
	if !ran.Load() {
		t.Fatal("rules add returned before the rule-change hooks ran")
	}
}
