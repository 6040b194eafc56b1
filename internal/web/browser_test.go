package web

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
	"github.com/latchfw/latch/internal/weblaunch"
	"github.com/latchfw/latch/test/browser"
)

// escCases are the escaping rule's cases (the same rule as internal/textesc).
var escCases = map[string]string{
	"/usr/bin/curl":         "/usr/bin/curl",
	"/usr/bin/a\x1b[31mred": `/usr/bin/a\x1b[31mred`,
	"line\nbreak\ttab\x00":  `line\x0abreak\x09tab\x00`,
	"del\x7f":               `del\x7f`,
	"/tmp/\u202Eexe.txt":    `/tmp/\u{202E}exe.txt`,
	"zero\u200Bwidth\uFEFF": `zero\u{200B}width\u{FEFF}`,
	"nb\u00A0sp and space":  `nb\u{00A0}sp and space`,
	"c1\u0085":              `c1\u{0085}`,
	"sep\u2028\u2029":       `sep\u{2028}\u{2029}`,
	"private\uE000":         `private\u{E000}`,
	"soft\u00ADhyphen":      `soft\u{00AD}hyphen`,
	`C:\Users\bob\app.exe`:  `C:\Users\bob\app.exe`,
	`C:\x\u\\`:              `C:\\x\\u\\\`, // the last backslash has no next character
	"back\\\u202E":          `back\\\u{202E}`,
	"back\\\x1b":            `back\\\x1b`,
	"é 中文 🙂":                "é 中文 🙂",
}

// openBrowser opens the UI's login URL in a new headless Chromium tab, and returns
// the tab and a wait that fails the test unless a JavaScript expression turns true
// within 5 s.
func (f *fixture) openBrowser() (context.Context, func(expr string)) {
	t := f.t
	t.Helper()
	ctx := browser.New(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(f.web.LoginURL())); err != nil {
		t.Fatal(err)
	}
	return ctx, func(expr string) {
		t.Helper()
		if err := browser.WaitJS(ctx, expr, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBrowserEscape runs web/esc.js in Chromium on the escaping rule's cases.
func TestBrowserEscape(t *testing.T) {
	f := newFixture(t)
	ctx, _ := f.openBrowser()
	in := make([]string, 0, len(escCases))
	for k := range escCases {
		in = append(in, k)
	}
	data, _ := json.Marshal(in)
	out, err := browser.Eval[[]string](ctx, `import('/esc.js').then(m => `+string(data)+`.map(m.esc))`)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range in {
		if out[i] != escCases[s] {
			t.Errorf("esc(%q) = %q, want %q", s, out[i], escCases[s])
		}
	}
	// Text that is not valid UTF-8 comes as exact bytes ("raw", base64) and is shown
	// byte by byte.
	raw := map[string]string{
		"/tmp/a\xffb":               `/tmp/a\xffb`,
		"a\\\xff":                   `a\\\xff`,
		"\xe2\x80\xae.txt":          `\u{202E}.txt`,
		"\xed\xa0\x80":              `\xed\xa0\x80`,
		"\xc0\xaf/\xf4\x90\x80\x80": `\xc0\xaf/\xf4\x90\x80\x80`,
		"caf\xc3\xa9 \xe2\x82":      `café \xe2\x82`,
	}
	keys := make([]string, 0, len(raw))
	rin := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
		rin = append(rin, base64.StdEncoding.EncodeToString([]byte(k)))
	}
	data, _ = json.Marshal(rin)
	out, err = browser.Eval[[]string](ctx, `import('/esc.js').then(m => `+string(data)+`.map(b => m.field({exe: "x", raw: {exe: b}}, "exe")))`)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if out[i] != raw[k] {
			t.Errorf("field(raw %q) = %q, want %q", k, out[i], raw[k])
		}
	}
}

// TestBrowserPages loads every view in Chromium over a real engine and history and
// checks what a person sees; screenshots go to the test's artefacts.
func TestBrowserPages(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	evil := "/opt/evil\x1b[31m\u202Etxt.exe"
	for i := range 40 {
		exe := []string{"/usr/bin/curl", "/usr/lib/firefox/firefox", evil}[i%3]
		v := engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}
		if i%4 == 1 {
			v = engine.Verdict{Action: engine.Deny, Reason: engine.ReasonPrompt}
		} else if i%7 == 3 {
			v = engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}
		}
		f.hist.Record(store.Conn{Time: now.Add(-time.Duration(40-i) * 40 * time.Second), Request: engine.Request{
			Direction: engine.Outbound, Protocol: engine.TCP, PID: int32(1000 + i), Identity: engine.IdentityVerified, Exe: exe, User: "alice",
			Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
			Remote: netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("198.18.1.%d", i%5+1)), 443),
			Host:   []string{"www.example.com", "", "cdn.example.net"}[i%3]}, Verdict: v})
	}
	f.hist.Flush()
	ctx, wait := f.openBrowser()
	wait(`document.querySelector('nav.top') !== null`)
	f.eng.Decide(&engine.Request{Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:40000"), Remote: netip.MustParseAddrPort("198.18.0.2:8443"),
		PID: 4242, Identity: engine.IdentityVerified, Exe: evil, User: "alice", UID: 1000, Host: "api.example.com",
		Cmdline: evil + " --fetch https://api.example.com/"}, func(engine.Verdict) {})
	wait(`document.querySelectorAll('.card').length === 1`)
	wait(`document.title === '(1) latch'`)
	text, _ := browser.Eval[string](ctx, `document.querySelector('.card').innerText`)
	if !strings.Contains(text, `/opt/evil\x1b[31m\u{202E}txt.exe`) || strings.ContainsAny(text, "\x1b\u202E") ||
		!strings.Contains(text, "api.example.com (198.18.0.2):8443/tcp") {
		t.Errorf("question card shows %q; want the exe escaped and the destination", text)
	}
	browser.Screenshot(t, ctx, "1-questions")

	for _, view := range []struct{ hash, ready string }{
		{"live", `document.querySelectorAll('.lrow.conn').length > 5`},
		{"rules", `document.querySelectorAll('tr[data-rule]').length === 1`},
		{"history", `document.querySelector('.chart canvas') !== null && document.querySelectorAll('.top tbody tr').length > 0`},
		{"programs", `document.querySelectorAll('tr[data-exe]').length === 3`},
		{"status", `document.querySelector('.status .panel') !== null`},
	} {
		if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/#/"+view.hash)); err != nil {
			t.Fatal(err)
		}
		wait(view.ready)
		time.Sleep(200 * time.Millisecond)
		browser.Screenshot(t, ctx, "2-"+view.hash)
	}
	body, _ := browser.Eval[string](ctx, `document.body.innerText`)
	if strings.ContainsAny(body, "\x1b\u202E") {
		t.Errorf("a page shows raw control characters")
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/#/programs/"+strings.ReplaceAll(evil, "\x1b", "%1B"))); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelectorAll('.program tbody tr').length > 5`)
	browser.Screenshot(t, ctx, "3-program")
}

// TestBrowserInteractions: j/k move between cards without taking the focus; a live
// row makes a rule draft; import shows what changes before it replaces the rules.
func TestBrowserInteractions(t *testing.T) {
	f := newFixture(t)
	f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{Direction: engine.Outbound, Protocol: engine.UDP,
		Identity: engine.IdentityVerified, Exe: "/usr/bin/dig", Remote: netip.MustParseAddrPort("198.18.0.53:53"), Local: netip.MustParseAddrPort("198.18.0.1:5353")},
		Verdict: engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}})
	f.hist.Flush()
	ctx, wait := f.openBrowser()
	wait(`document.querySelector('nav.top .conn-state.ok') !== null`)
	for i, exe := range []string{"/usr/bin/curl", "/usr/bin/wget"} {
		f.eng.Decide(&engine.Request{Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.MustParseAddrPort("198.18.0.1:40000"), Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), uint16(443+i)),
			PID: int32(100 + i), Identity: engine.IdentityVerified, Exe: exe}, func(engine.Verdict) {})
	}
	wait(`document.querySelectorAll('.card').length === 2`)
	selected := func() string {
		s, _ := browser.Eval[string](ctx, `document.querySelector('.card.selected h2').textContent`)
		return s
	}
	if s := selected(); s != "curl" {
		t.Errorf("first selected card %q, want curl", s)
	}
	if err := chromedp.Do(ctx, chromedp.KeyEvent("j")); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelector('.card.selected h2').textContent === 'wget'`)
	if err := chromedp.Do(ctx, chromedp.KeyEvent("k")); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelector('.card.selected h2').textContent === 'curl'`)
	if focus, _ := browser.Eval[string](ctx, `document.activeElement.tagName`); focus != "BODY" {
		t.Errorf("the focus is on %s, want it left on the page body", focus)
	}
	// Deny from the keyboard answers the selected card only.
	if err := chromedp.Do(ctx, chromedp.KeyEvent("d")); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelectorAll('.card').length === 1 && document.title === '(1) latch'`)
	if ps := f.eng.Prompts(); len(ps) != 1 || ps[0].Request.Exe != "/usr/bin/wget" {
		t.Errorf("open questions after d on curl: %+v", ps)
	}

	// A live row makes a rule draft.
	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/#/live")); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelector('.lrow.conn.v-timeout button') !== null`)
	// Filters: by verdict, then by app.
	setSel := func(sel, v string) {
		t.Helper()
		if _, err := browser.Eval[string](ctx, fmt.Sprintf(`(() => { const el = document.querySelector(%q); el.value = %q;
			el.dispatchEvent(new Event(el.tagName === 'SELECT' ? 'change' : 'input', {bubbles: true})); return 'ok'; })()`, sel, v)); err != nil {
			t.Fatal(err)
		}
	}
	setSel(`.live select[aria-label=verdict]`, "allow")
	wait(`document.querySelectorAll('.lrow.conn').length === 0`)
	setSel(`.live select[aria-label=verdict]`, "timeout")
	wait(`document.querySelectorAll('.lrow.conn').length === 1`)
	setSel(`.live input[type=search]`, "curl")
	wait(`document.querySelectorAll('.lrow.conn').length === 0`)
	setSel(`.live input[type=search]`, "dig")
	wait(`document.querySelectorAll('.lrow.conn').length === 1`)
	if _, err := browser.Eval[string](ctx, `(() => { document.querySelector('.lrow.conn button').click(); return 'ok'; })()`); err != nil {
		t.Fatal(err)
	}
	wait(`location.hash === '#/rules' && document.querySelector('.ruleform [name=app]').value === '/usr/bin/dig'`)
	if form, _ := browser.Eval[string](ctx, `['action','proto','remote','port'].map(k => document.querySelector('.ruleform [name=' + k + ']').value).join(' ')`); form != "deny udp 198.18.0.53 53" {
		t.Errorf("rule draft from the row: %q", form)
	}

	// Import: a preview of what changes, then the replacement.
	file := filepath.Join(t.TempDir(), "rules.json")
	os.WriteFile(file, []byte(`{"version":1,"rules":[{"id":1,"app":"/usr/bin/ssh","port":"22","action":"allow"},{"id":2,"app":"/usr/bin/nc","action":"deny"}]}`), 0o644)
	if err := chromedp.Do(ctx, chromedp.SetUploadFiles(chromedp.CSS(".rules input[type=file]"), []string{file})); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelector('.importbox') !== null && document.querySelectorAll('.importbox .diff li').length === 1`)
	diff, _ := browser.Eval[string](ctx, `document.querySelector('.importbox').innerText`)
	if !strings.Contains(diff, "1 new · 0 removed · 1 unchanged") || !strings.Contains(diff, "+ deny · app /usr/bin/nc") {
		t.Errorf("import preview %q", diff)
	}
	if len(f.eng.Rules()) != 1 {
		t.Fatalf("the preview changed the rules: %+v", f.eng.Rules())
	}
	browser.Screenshot(t, ctx, "import-preview")
	browser.Eval[string](ctx, `(() => { document.querySelector('.importbox button.primary').click(); return 'ok'; })()`)
	wait(`document.querySelectorAll('tr[data-rule]').length === 2 && document.querySelector('.importbox') === null`)
	if rs := f.eng.Rules(); len(rs) != 2 || rs[1].App != "/usr/bin/nc" {
		t.Errorf("rules after import: %+v", rs)
	}
	// Export is the rules file, from the page's session (cookie and key).
	exp, err := browser.Eval[string](ctx, `import('/api.js').then(m => fetch('/api/v1/rules/export', {headers: m.headers()})).then(r => r.text())`)
	if err != nil || !strings.Contains(exp, `"version": 1`) && !strings.Contains(exp, `"version":1`) || !strings.Contains(exp, "/usr/bin/nc") {
		t.Errorf("export: %q, %v", exp, err)
	}
}

// TestBrowserLoginPage: the page `latch web open` hands the browser (a file:// page
// that posts the token) logs Chromium in; the key stays in the tab's sessionStorage,
// and the cookie alone opens no API.
func TestBrowserLoginPage(t *testing.T) {
	f := newFixture(t)
	file, dir, err := weblaunch.WritePage(f.web.LoginURL())
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := browser.New(t)
	if err := chromedp.Do(ctx, chromedp.Navigate("file://"+file)); err != nil {
		t.Fatal(err)
	}
	if err := browser.WaitJS(ctx, `document.querySelector('nav.top .conn-state.ok') !== null`, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if loc, _ := browser.Eval[string](ctx, `location.href`); loc != f.base+"/" {
		t.Errorf("after login the tab is at %q, want %s/", loc, f.base)
	}
	if key, _ := browser.Eval[string](ctx, `sessionStorage.getItem('latch-key') || ''`); len(key) != 43 {
		t.Errorf("session key in sessionStorage %q", key)
	}
	// Without the key, the page's own cookie gets nothing.
	if code, _ := browser.Eval[float64](ctx, `fetch('/api/v1/rules').then(r => r.status)`); code != 403 {
		t.Errorf("fetch without the key: %v, want 403", code)
	}
	if code, _ := browser.Eval[float64](ctx, `import('/api.js').then(m => fetch('/api/v1/rules', {headers: m.headers()})).then(r => r.status)`); code != 200 {
		t.Errorf("fetch with the key: %v, want 200", code)
	}
}

// TestBrowserContainerNames: the name docker or podman gives a container is shown,
// escaped, with its id on the question card, the live row and the program's
// connections; a user's own container's name is marked as that user's.
func TestBrowserContainerNames(t *testing.T) {
	f := newFixture(t)
	id := strings.Repeat("0123456789abcdef", 4)
	hostile := "web\x1b[2K\rfirefox\u202E"
	const shown = `web\x1b[2K\x0dfirefox\u{202E}`
	exe := "/usr/sbin/nginx"
	req := engine.Request{Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:40000"), Remote: netip.MustParseAddrPort("198.18.0.2:443"),
		PID: 4242, Exe: exe, User: "alice", UID: 1000,
		Identity: engine.IdentityContainer, Container: "docker:" + id, ContainerName: hostile}
	f.hist.Record(store.Conn{Time: time.Now(), Request: req, Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}})
	f.hist.Flush()
	ctx, wait := f.openBrowser()
	wait(`document.querySelector('nav.top') !== null`)
	q := req
	q.Container, q.ContainerName = "podman@1000:"+id, "db-1"
	f.eng.Decide(&q, func(engine.Verdict) {})
	wait(`document.querySelectorAll('.card').length === 1`)
	text, _ := browser.Eval[string](ctx, `document.querySelector('.card').innerText`)
	if !strings.Contains(text, "in container podman@1000:0123456789ab db-1 (its user's name)") {
		t.Errorf("question card shows %q; want the container, its name, marked as its user's", text)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/#/live")); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelectorAll('.lrow.conn').length === 1`)
	text, _ = browser.Eval[string](ctx, `document.querySelector('.lrow.conn .app').innerText`)
	if !strings.Contains(text, "[docker:0123456789ab "+shown+"]") {
		t.Errorf("live row shows %q; want the container and its escaped name", text)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/#/programs/"+exe)); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelectorAll('.program tbody tr').length === 1`)
	text, _ = browser.Eval[string](ctx, `document.querySelector('.program tbody td.ctr').innerText`)
	if text != "docker:0123456789ab "+shown {
		t.Errorf("program's connection shows container %q; want %q", text, "docker:0123456789ab "+shown)
	}
	body, _ := browser.Eval[string](ctx, `document.body.innerText`)
	if strings.ContainsAny(body, "\x1b\r\u202E") {
		t.Errorf("a page shows raw control characters: %q", body)
	}
	browser.Screenshot(t, ctx, "container-names")
}
