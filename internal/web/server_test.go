package web

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/localhttp"
	"github.com/latchfw/latch/internal/store"
	assets "github.com/latchfw/latch/web"
)

// fixture is a real web server on a loopback TCP port over a real engine, a real API
// handler and a real SQLite history.
type fixture struct {
	t       testing.TB
	eng     *engine.Engine
	hist    *store.History
	api     *api.Server
	web     *Server
	addr    string
	base    string
	now     time.Time
	client  *http.Client // carries the session cookie once logged in
	key     string       // the session's key, from the page /login answers
	verdict chan engine.Verdict
}

func newFixture(t testing.TB) *fixture { t.Helper(); return newFixtureServer(t, nil) }

// newFixtureServer is newFixture with configure (if not nil) applied to the
// http.Server before it serves.
func newFixtureServer(t testing.TB, configure func(*http.Server)) *fixture {
	t.Helper()
	f := &fixture{t: t, now: time.Now()}
	var err error
	f.eng, err = engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Minute},
		[]engine.Rule{{ID: 1, App: "/usr/bin/ssh", Port: engine.PortRange{Lo: 22, Hi: 22}, Action: engine.Allow}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.eng.Close)
	f.hist, err = store.OpenHistory(filepath.Join(t.TempDir(), store.HistoryFileName), 1000)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.hist.Close() })
	f.api = api.NewServer(api.Config{Engine: f.eng, History: f.hist, Logf: t.Logf})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	f.base = "http://" + f.addr
	f.web, err = New(Config{Addr: f.addr, API: f.api.Handler(), Engine: f.eng, History: f.hist,
		Assets: assets.Assets(), Logf: t.Logf, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: f.web}
	if configure != nil {
		configure(hs)
	}
	go hs.Serve(l)
	t.Cleanup(func() { f.web.Close(); hs.Close() })
	jar, _ := cookiejar.New(nil)
	f.client = &http.Client{Jar: jar, Timeout: 10 * time.Second}
	return f
}

var keyMeta = regexp.MustCompile(`<meta name="latch-key" content="([A-Za-z0-9_-]{43})">`)

// login opens a session with a fresh login URL and reads the session's key from the
// page /login answers, as login.js does.
func (f *fixture) login() {
	f.t.Helper()
	resp, err := f.client.Get(f.web.LoginURL())
	if err != nil {
		f.t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := keyMeta.FindSubmatch(page)
	if resp.StatusCode != 200 || m == nil {
		f.t.Fatalf("login: %d %s, want 200 and the session key", resp.StatusCode, page)
	}
	f.key = string(m[1])
	if code, body := f.do("GET", "/api/session", "", nil); code != 200 || strings.Contains(body, f.key) {
		f.t.Fatalf("GET /api/session: %d %s", code, body)
	}
}

// do sends a request with the session cookie (if any); hdr overrides headers. By
// default a request carries the session key, and a state-changing one the right Origin.
func (f *fixture) do(method, path, body string, hdr map[string]string) (int, string) {
	f.t.Helper()
	req, err := http.NewRequest(method, f.base+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	if f.key != "" {
		req.Header.Set(KeyHeader, f.key)
	}
	if method != "GET" {
		req.Header.Set("Origin", f.base)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// ask raises a question the way a backend would.
func (f *fixture) ask(exe string, port uint16) {
	f.verdict = make(chan engine.Verdict, 1)
	f.eng.Decide(&engine.Request{Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
		PID:    4242, Identity: engine.IdentityVerified, Exe: exe, User: "root"}, func(v engine.Verdict) { f.verdict <- v })
}

func (f *fixture) promptID() string {
	f.t.Helper()
	ps := f.eng.Prompts()
	if len(ps) != 1 {
		f.t.Fatalf("%d open questions, want 1", len(ps))
	}
	return itoa(uint64(ps[0].ID))
}

func itoa(n uint64) string { return strings.TrimSpace(strings.Repeat(" ", 0) + jsonNum(n)) }

func jsonNum(n uint64) string { b, _ := json.Marshal(n); return string(b) }

const goodRule = `{"action":"allow","app":"/usr/bin/curl","port":"443"}`

// TestLoginAndSessionCookie: the login URL opens a session once; the cookie is
// HttpOnly and SameSite=Strict; the key comes in the login page only (not cached); the
// API answers through cookie and key with the API's JSON.
func TestLoginAndSessionCookie(t *testing.T) {
	f := newFixture(t)
	u := f.web.LoginURL()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("login: %d %v, want 200, no-store and the CSP", resp.StatusCode, resp.Header)
	}
	var c *http.Cookie
	for _, x := range resp.Cookies() {
		if x.Name == SessionCookie {
			c = x
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Value == "" {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/", c)
	}
	// The token was used: a second login with it fails.
	resp, err = noRedirect.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("second use of a login token: %d, want 401", resp.StatusCode)
	}
	// An expired token fails.
	u = f.web.LoginURL()
	f.now = f.now.Add(TokenLifetime + time.Second)
	if resp, err = noRedirect.Get(u); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("expired login token: %d, want 401", resp.StatusCode)
	}
	f.login()
	code, body := f.do("GET", "/api/v1/rules", "", nil)
	if code != 200 || !strings.Contains(body, `"/usr/bin/ssh"`) {
		t.Errorf("GET /api/v1/rules: %d %s", code, body)
	}
	// Sessions end.
	f.now = f.now.Add(SessionLifetime)
	if code, _ := f.do("GET", "/api/v1/rules", "", nil); code != http.StatusUnauthorized {
		t.Errorf("expired session: %d, want 401", code)
	}
}

// TestNoSessionIs401AndChangesNothing: without a cookie, or with a wrong one, every
// request is refused with 401 and nothing changes.
func TestNoSessionIs401AndChangesNothing(t *testing.T) {
	f := newFixture(t)
	f.ask("/usr/bin/curl", 443)
	id := f.promptID()
	bad := map[string]string{"Cookie": SessionCookie + "=forged"}
	for _, h := range []map[string]string{nil, bad} {
		for _, rq := range []struct{ method, path, body string }{
			{"GET", "/", ""}, {"GET", "/app.js", ""}, {"GET", "/api/v1/rules", ""}, {"GET", "/api/v1/prompts", ""},
			{"GET", "/api/events", ""}, {"GET", "/api/session", ""},
			{"POST", "/api/v1/rules", goodRule}, {"DELETE", "/api/v1/rules/1", ""},
			{"POST", "/api/v1/prompts/" + id + "/answer", `{"action":"allow","for":"forever"}`},
			{"POST", "/api/rules/form", `{"action":"allow"}`},
			{"POST", "/api/v1/rules/import", `{"version":1,"rules":[]}`},
		} {
			if code, body := f.do(rq.method, rq.path, rq.body, h); code != http.StatusUnauthorized {
				t.Errorf("%s %s with cookie %v: %d %s, want 401", rq.method, rq.path, h, code, body)
			}
		}
	}
	if rs := f.eng.Rules(); len(rs) != 1 {
		t.Errorf("rules changed: %+v", rs)
	}
	f.promptID() // still open
}

// TestHostMustBeTheListenAddress: a page reached by another name (DNS rebinding:
// evil.example resolving to 127.0.0.1) is refused even with a valid session.
func TestHostMustBeTheListenAddress(t *testing.T) {
	f := newFixture(t)
	f.login()
	_, port, _ := net.SplitHostPort(f.addr)
	for _, host := range []string{"evil.example:" + port, "evil.example", "localhost:" + port, "127.0.0.2:" + port} {
		if code, body := f.do("GET", "/api/v1/rules", "", map[string]string{"Host": host}); code != http.StatusForbidden {
			t.Errorf("GET with Host %q: %d %s, want 403", host, code, body)
		}
		if code, body := f.do("POST", "/api/v1/rules", goodRule, map[string]string{"Host": host}); code != http.StatusForbidden {
			t.Errorf("POST with Host %q: %d %s, want 403", host, code, body)
		}
		if code, _ := f.do("GET", "/login?token=x", "", map[string]string{"Host": host}); code != http.StatusForbidden {
			t.Errorf("login with Host %q: %d, want 403", host, code)
		}
	}
	if rs := f.eng.Rules(); len(rs) != 1 {
		t.Errorf("rules changed: %+v", rs)
	}
	if code, _ := f.do("GET", "/api/v1/rules", "", nil); code != 200 {
		t.Errorf("GET with the right Host: %d", code)
	}
}

// TestCrossOriginRefused: a request from another origin (a page elsewhere posting to
// the UI) is refused with 403 and changes nothing, as is a change without Origin.
func TestCrossOriginRefused(t *testing.T) {
	f := newFixture(t)
	f.login()
	f.ask("/usr/bin/curl", 443)
	id := f.promptID()
	for _, origin := range []string{"http://evil.example", "null", "https://" + f.addr, "http://localhost"} {
		h := map[string]string{"Origin": origin}
		if code, body := f.do("POST", "/api/v1/rules", goodRule, h); code != http.StatusForbidden {
			t.Errorf("POST rule from %s: %d %s, want 403", origin, code, body)
		}
		if code, body := f.do("POST", "/api/v1/prompts/"+id+"/answer", `{"action":"allow","for":"forever"}`, h); code != http.StatusForbidden {
			t.Errorf("POST answer from %s: %d %s, want 403", origin, code, body)
		}
		if code, body := f.do("GET", "/api/v1/rules", "", h); code != http.StatusForbidden {
			t.Errorf("GET from %s: %d %s, want 403", origin, code, body)
		}
	}
	if code, body := f.do("DELETE", "/api/v1/rules/1", "", map[string]string{"Origin": ""}); code != http.StatusForbidden {
		t.Errorf("DELETE without Origin: %d %s, want 403", code, body)
	}
	if rs := f.eng.Rules(); len(rs) != 1 {
		t.Errorf("rules changed: %+v", rs)
	}
	f.promptID()
}

// TestCSRFTokenRequired: a change without the session's key is refused.
func TestCSRFTokenRequired(t *testing.T) {
	f := newFixture(t)
	f.login()
	f.ask("/usr/bin/curl", 443)
	id := f.promptID()
	for _, tok := range []string{"", "wrong", f.key + "x"} {
		h := map[string]string{KeyHeader: tok}
		for _, rq := range []struct{ method, path, body string }{
			{"POST", "/api/v1/rules", goodRule}, {"DELETE", "/api/v1/rules/1", ""},
			{"POST", "/api/v1/prompts/" + id + "/answer", `{"action":"allow","for":"forever"}`},
			{"POST", "/api/rules/form", `{"action":"allow"}`},
			{"POST", "/api/v1/rules/import", `{"version":1,"rules":[]}`},
			{"POST", "/api/logout", ""},
		} {
			if code, body := f.do(rq.method, rq.path, rq.body, h); code != http.StatusForbidden {
				t.Errorf("%s %s with CSRF %q: %d %s, want 403", rq.method, rq.path, tok, code, body)
			}
		}
	}
	if rs := f.eng.Rules(); len(rs) != 1 {
		t.Errorf("rules changed: %+v", rs)
	}
	f.promptID()
	// With the token, it works.
	if code, body := f.do("POST", "/api/v1/prompts/"+id+"/answer", `{"action":"allow","for":"forever","scope":"app"}`, nil); code != 200 {
		t.Fatalf("answer: %d %s", code, body)
	}
	select {
	case v := <-f.verdict:
		if v.Action != engine.Allow || v.Reason != engine.ReasonPrompt {
			t.Errorf("verdict %+v", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no verdict")
	}
}

// TestSameErrorsAsTheAPIAndCLI: the browser gets the API's own error texts, and the
// rule form the command line's.
func TestSameErrorsAsTheAPIAndCLI(t *testing.T) {
	f := newFixture(t)
	f.login()
	for _, body := range []string{`{"action":"allow","colour":"red"}`, `{"action":"allow","remote":"198.18.0.0/99"}`, `{`, ``} {
		code, got := f.do("POST", "/api/v1/rules", body, nil)
		rec := f.web.callAPI(t.Context(), "POST", "/v1/rules", []byte(body))
		if code != rec.code || got != rec.body.String() || code != 400 {
			t.Errorf("POST %q: web %d %s, API %d %s", body, code, got, rec.code, rec.body.String())
		}
	}
	form := api.RuleForm{Action: "allow", Remote: "198.18.0.0/99"}
	_, cliErr := form.Rule(time.Now())
	data, _ := json.Marshal(form)
	code, got := f.do("POST", "/api/rules/form", string(data), nil)
	var e struct{ Error string }
	json.Unmarshal([]byte(got), &e)
	if code != 400 || cliErr == nil || e.Error != cliErr.Error() || !strings.HasPrefix(e.Error, "--remote: ") {
		t.Errorf("bad CIDR: %d %s, want 400 %q", code, got, cliErr)
	}
	// Add, then edit (replace), through the form.
	code, got = f.do("POST", "/api/rules/form", `{"action":"deny","app":"/usr/bin/nc","port":"25","for":"1h"}`, nil)
	var added engine.Rule
	if code != 200 || json.Unmarshal([]byte(got), &added) != nil || added.ID == 0 || added.Port.Lo != 25 || added.Expires.IsZero() {
		t.Fatalf("add through the form: %d %s", code, got)
	}
	code, got = f.do("POST", "/api/rules/form", `{"action":"deny","app":"/usr/bin/nc","port":"26","replace":`+itoa(uint64(added.ID))+`}`, nil)
	var edited engine.Rule
	if code != 200 || json.Unmarshal([]byte(got), &edited) != nil || edited.Port.Lo != 26 {
		t.Fatalf("edit through the form: %d %s", code, got)
	}
	rs := f.eng.Rules()
	if len(rs) != 2 || rs[1].ID != edited.ID {
		t.Errorf("after edit: %+v", rs)
	}
	// A bad edit changes nothing.
	if code, got := f.do("POST", "/api/rules/form", `{"action":"deny","port":"0-5","replace":`+itoa(uint64(edited.ID))+`}`, nil); code != 400 {
		t.Errorf("bad edit: %d %s", code, got)
	}
	if code, got := f.do("POST", "/api/rules/form", `{"action":"deny","replace":999}`, nil); code != 404 {
		t.Errorf("edit of a missing rule: %d %s", code, got)
	}
	if len(f.eng.Rules()) != 2 {
		t.Errorf("a failed edit changed the rules: %+v", f.eng.Rules())
	}
}

// TestRootOnlyEndpointsHidden: a browser session cannot mint login URLs.
func TestRootOnlyEndpointsHidden(t *testing.T) {
	f := newFixture(t)
	f.login()
	for _, p := range []string{"/api/v1/web/login", "/api/v1/events"} {
		if code, _ := f.do("POST", p, "", nil); code != 404 {
			t.Errorf("POST %s: %d, want 404", p, code)
		}
		if code, _ := f.do("GET", p, "", nil); code != 404 {
			t.Errorf("GET %s: %d, want 404", p, code)
		}
	}
}

// TestEventStream: the SSE stream says hello, then questions and new connections.
func TestEventStream(t *testing.T) {
	f := newFixture(t)
	f.login()
	req, _ := http.NewRequest("GET", f.base+"/api/events?"+KeyParam+"="+f.key, nil) // as EventSource: no headers
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	next := func() Event {
		t.Helper()
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev Event
				if err := json.Unmarshal([]byte(d), &ev); err != nil {
					t.Fatal(err)
				}
				return ev
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return Event{}
	}
	if ev := next(); ev.Kind != api.EventHello {
		t.Fatalf("first event %+v", ev)
	}
	f.ask("/usr/bin/curl", 8443)
	if ev := next(); ev.Kind != api.EventPrompt || ev.Prompt.RemotePort != 8443 || ev.Prompt.Exe != "/usr/bin/curl" {
		t.Fatalf("event %+v, want the question", ev)
	}
	f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{Direction: engine.Outbound, Protocol: engine.UDP,
		Remote: netip.MustParseAddrPort("198.18.0.2:53"), Identity: engine.IdentityVerified, Exe: "/usr/bin/dig\x1b[31m"},
		Verdict: engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 1}})
	f.hist.Flush()
	ev := next()
	if ev.Kind != EventConns || len(ev.Conns) != 1 || ev.Conns[0].Exe != "/usr/bin/dig\x1b[31m" || ev.Conns[0].Verdict != engine.Deny {
		t.Fatalf("event %+v, want the connection (exact bytes)", ev)
	}
}

// TestEventStreamOutlivesServerTimeouts: the server's read and write timeouts
// (localhttp.Timeouts, which end a request that takes too long) do not end the live
// event stream: a question raised after them still reaches the browser.
func TestEventStreamOutlivesServerTimeouts(t *testing.T) {
	f := newFixtureServer(t, func(hs *http.Server) {
		localhttp.Timeouts(hs)
		hs.ReadTimeout, hs.WriteTimeout, hs.IdleTimeout = 300*time.Millisecond, 300*time.Millisecond, 300*time.Millisecond
	})
	f.login()
	req, _ := http.NewRequest("GET", f.base+"/api/events?"+KeyParam+"="+f.key, nil)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				lines <- d
			}
		}
	}()
	if d := <-lines; !strings.Contains(d, `"hello"`) {
		t.Fatalf("first event %s", d)
	}
	time.Sleep(time.Second) // past both timeouts
	f.ask("/usr/bin/curl", 8443)
	select {
	case d, ok := <-lines:
		if !ok || !strings.Contains(d, "/usr/bin/curl") {
			t.Fatalf("after the server's timeouts: %q (stream open: %v), want the question", d, ok)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no question on the stream 5s after it was raised")
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, remote := range map[string]bool{"127.0.0.1:7654": false, "[::1]:7654": false, "198.18.0.1:7654": true} {
		if err := CheckAddr(addr, remote); err != nil {
			t.Errorf("CheckAddr(%q, %v): %v", addr, remote, err)
		}
	}
	for addr, remote := range map[string]bool{"198.18.0.1:7654": false, "0.0.0.0:7654": true, "localhost:7654": false,
		"127.0.0.1": false, "127.0.0.1:0": false, "[::]:1": true} {
		if err := CheckAddr(addr, remote); err == nil {
			t.Errorf("CheckAddr(%q, %v) accepted it", addr, remote)
		}
	}
}

var _ = url.QueryEscape

// TestCookieAloneGetsNothing: cookies are not isolated by port (RFC 6265 §8.5), so a
// local user serving on another loopback port can make the browser send them the
// session cookie. The cookie alone must then be worth nothing: every /api/ request
// (GET, POST, the event stream) without the session key is refused, and no answer
// hands the key out.
func TestCookieAloneGetsNothing(t *testing.T) {
	f := newFixture(t)
	f.login()
	f.ask("/usr/bin/curl", 443)
	id := f.promptID()
	u, _ := url.Parse(f.base)
	var cookie string
	for _, c := range f.client.Jar.Cookies(u) {
		if c.Name == SessionCookie {
			cookie = c.Value
		}
	}
	if cookie == "" || f.key == "" {
		t.Fatal("no session cookie or key after login")
	}
	thief := &http.Client{Timeout: 5 * time.Second}
	for _, rq := range []struct{ method, path, body string }{
		{"GET", "/api/session", ""}, {"GET", "/api/v1/rules", ""}, {"GET", "/api/v1/prompts", ""},
		{"GET", "/api/v1/status", ""}, {"GET", "/api/v1/conns?n=10", ""}, {"GET", "/api/v1/rules/export", ""},
		{"GET", "/api/events", ""}, {"GET", "/api/events?key=wrong", ""},
		{"POST", "/api/v1/rules", goodRule}, {"DELETE", "/api/v1/rules/1", ""},
		{"POST", "/api/v1/prompts/" + id + "/answer", `{"action":"allow","for":"forever"}`},
		{"POST", "/api/rules/form", `{"action":"allow"}`},
		{"POST", "/api/v1/rules/import", `{"version":1,"rules":[]}`},
		{"POST", "/api/logout", ""},
	} {
		// The thief replays the cookie with every header a browser would add, but
		// cannot know the key.
		req, _ := http.NewRequest(rq.method, f.base+rq.path, strings.NewReader(rq.body))
		req.Header.Set("Cookie", SessionCookie+"="+cookie)
		if rq.method != "GET" {
			req.Header.Set("Origin", f.base)
		}
		resp, err := thief.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		n, _ := io.ReadAtLeast(resp.Body, buf, 1)
		resp.Body.Close()
		body := string(buf[:n])
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s %s with the cookie alone: %d %.200s, want 401 or 403", rq.method, rq.path, resp.StatusCode, body)
		}
		if strings.Contains(body, f.key) || strings.Contains(body, "/usr/bin/ssh") {
			t.Errorf("%s %s with the cookie alone leaks %.200s", rq.method, rq.path, body)
		}
	}
	if rs := f.eng.Rules(); len(rs) != 1 {
		t.Errorf("rules changed: %+v", rs)
	}
	f.promptID() // still open
	// With the key, the same session works.
	if code, body := f.do("GET", "/api/v1/rules", "", nil); code != 200 || !strings.Contains(body, "/usr/bin/ssh") {
		t.Errorf("GET /api/v1/rules with cookie and key: %d %s", code, body)
	}
}

// TestLoginByForm: the page `latch web open` writes posts the token from a file://
// page (Origin: null); that logs in once. A post from another origin is refused.
func TestLoginByForm(t *testing.T) {
	f := newFixture(t)
	token := strings.TrimPrefix(f.web.LoginURL(), f.base+"/login?token=")
	post := func(origin, tok string) (int, string) {
		req, _ := http.NewRequest("POST", f.base+"/login", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", origin)
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post("http://evil.example", token); code != http.StatusForbidden {
		t.Errorf("login posted from another origin: %d %s, want 403", code, body)
	}
	code, body := post("null", token)
	m := keyMeta.FindStringSubmatch(body)
	if code != 200 || m == nil {
		t.Fatalf("login posted from a file:// page: %d %s", code, body)
	}
	f.key = m[1]
	if code, body := f.do("GET", "/api/v1/rules", "", nil); code != 200 || !strings.Contains(body, "/usr/bin/ssh") {
		t.Errorf("GET /api/v1/rules after a posted login: %d %s", code, body)
	}
	if code, _ := post("null", token); code != http.StatusUnauthorized {
		t.Errorf("second post of the token: %d, want 401", code)
	}
}

// TestEndSessions: after EndSessions (the daemon lost its listener, and whoever binds
// the address next is sent the open tabs' cookies and keys), a session and an unused
// login URL open nothing.
func TestEndSessions(t *testing.T) {
	f := newFixture(t)
	f.login()
	u := f.web.LoginURL()
	f.web.EndSessions()
	if code, _ := f.do("GET", "/api/v1/status", "", nil); code != http.StatusUnauthorized {
		t.Errorf("status with an ended session: %d, want 401", code)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("login URL made before EndSessions: %d, want 401", resp.StatusCode)
	}
}
