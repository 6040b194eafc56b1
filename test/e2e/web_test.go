package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/latchfw/latch/test/browser"
)

// TestWebUI drives the web UI in a real headless Chromium running in the client
// namespace against a real daemon holding real connections: a question appears as a
// card, is answered by keyboard, and the held connection goes through; the rules page
// adds, edits and deletes rules with the command line's errors; live connections,
// history, programs and escaping of an exe path with control characters.
func TestWebUI(t *testing.T) {
	if browser.Find() == "" {
		t.Skip("chromium not installed (apt-get install chromium): the web UI's browser test needs it")
	}
	n := NewNet(t)
	srv := n.Serve(t, 8090)
	n.Serve(t, 8091)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "20s", "--web", "127.0.0.1:7654")
	loginURL := strings.TrimSpace(d.MustCLI(t, "web", "url"))
	ctx := browser.NewIn(t, n.Client)
	do := func(actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(expr string, timeout time.Duration) {
		t.Helper()
		if err := browser.WaitJS(ctx, expr, timeout); err != nil {
			// What the page and the daemon showed, to tell a slow page from a wrong one.
			page, _ := browser.Eval[string](ctx, `JSON.stringify({title: document.title,
				state: (document.querySelector('nav.top .conn-state') || {}).className,
				cards: [...document.querySelectorAll('.card')].map((c) => c.innerText)})`)
			prompts, _ := d.CLI("prompts", "--json")
			t.Fatalf("%v\npage: %s\nlatch prompts --json: %s", err, page, prompts)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		s, err := browser.Eval[string](ctx, expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return s
	}
	do(chromedp.Navigate(loginURL))
	// The first page of a fresh browser: on a loaded machine (CI runs other
	// packages' browsers and daemons beside this one) it has taken over 10 s.
	wait(`document.querySelector('nav.top .conn-state.ok') !== null`, 30*time.Second)
	// Record when a card first shows.
	eval(`(() => { window.cardSeen = 0; new MutationObserver(() => { if (!window.cardSeen && document.querySelector('.card')) window.cardSeen = Date.now(); }).observe(document.body, {subtree: true, childList: true}); return 'ok'; })()`)

	// A held connection appears as a card within 1 s of its question.
	done := make(chan Result, 1)
	go func() { done <- n.Connect(t, 8090, 25*time.Second) }()
	wait(`window.cardSeen > 0`, 10*time.Second)
	opened := eval(`document.querySelector('.card').dataset.opened`)
	ot, err := time.Parse(time.RFC3339Nano, opened)
	if err != nil {
		t.Fatalf("card's opened time %q: %v", opened, err)
	}
	seenMS, _ := browser.Eval[float64](ctx, `window.cardSeen`)
	lag := time.UnixMilli(int64(seenMS)).Sub(ot)
	t.Logf("question to card: %v", lag)
	if lag > time.Second {
		t.Errorf("the card appeared %v after the question opened; want within 1s", lag)
	}
	if got := eval(`document.querySelector('.card').dataset.exe`); got != helperBin {
		t.Errorf("card for %q, want %q", got, helperBin)
	}
	card := eval(`document.querySelector('.card').innerText`)
	if !strings.Contains(card, fmt.Sprintf("%s:8090/tcp", n.ServerIP)) || !strings.Contains(card, "e2ehelper") {
		t.Errorf("card shows %q; want the program and %s:8090/tcp", card, n.ServerIP)
	}
	if title := eval(`document.title`); title != "(1) latch" {
		t.Errorf("tab title %q, want (1) latch", title)
	}
	browser.Screenshot(t, ctx, "1-question")

	// Answer by keyboard: scope app+host+port (4), lifetime forever (→ ×4), allow (a).
	do(chromedp.KeyEvent("4"), chromedp.KeyEvent(kb.ArrowRight), chromedp.KeyEvent(kb.ArrowRight),
		chromedp.KeyEvent(kb.ArrowRight), chromedp.KeyEvent(kb.ArrowRight))
	if on := eval(`[...document.querySelectorAll('.card .seg button.on')].map(b => b.textContent).join(',')`); on != "app+host+port,forever" {
		t.Errorf("after 4 and →×4 the card has %q chosen, want app+host+port,forever", on)
	}
	do(chromedp.KeyEvent("a"))
	select {
	case r := <-done:
		if r.Outcome != "connected" {
			t.Fatalf("connect answered allow in the browser: %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the held connect did not go through after answering in the browser")
	}
	srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
	wait(`document.querySelectorAll('.card').length === 0 && document.title === 'latch'`, 5*time.Second)
	rules := JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	if len(rules) != 1 || rules[0]["app"] != helperBin || rules[0]["action"] != "allow" || rules[0]["remote"] != n.ServerIP+"/32" ||
		rules[0]["port"] != "8090" || rules[0]["expires"] != nil {
		t.Fatalf("rules after answering allow, app+host+port, forever: %v", rules)
	}
	answerRule := int(num(rules[0]["id"]))

	// Rules: a bad CIDR gets the command line's error; add, edit, delete, undo.
	base := loginURL[:strings.Index(loginURL, "/login")]
	do(chromedp.Navigate(base + "/#/rules"))
	wait(`document.querySelectorAll('tr[data-rule]').length === 1`, 10*time.Second)
	setForm := func(fields map[string]string) {
		t.Helper()
		for k, v := range fields {
			eval(fmt.Sprintf(`(() => { const el = document.querySelector('.ruleform [name=%q]'); el.value = %q;
				el.dispatchEvent(new Event(el.tagName === 'SELECT' ? 'change' : 'input', {bubbles: true})); return 'ok'; })()`, k, v))
		}
	}
	submit := func() {
		eval(`(() => { document.querySelector('.ruleform button[type=submit]').click(); return 'ok'; })()`)
	}
	cliOut, cliErr := d.CLI("rules", "add", "--app", helperBin, "--remote", "198.18.0.0/99", "--port", "9999", "--action", "deny")
	if cliErr == nil {
		t.Fatalf("the CLI accepted a bad CIDR: %s", cliOut)
	}
	setForm(map[string]string{"app": helperBin, "remote": "198.18.0.0/99", "port": "9999", "action": "deny"})
	submit()
	wait(`document.querySelector('.ruleform .error') !== null`, 5*time.Second)
	shown := eval(`document.querySelector('.ruleform .error').textContent`)
	if !strings.HasPrefix(shown, "--remote: ") || !strings.Contains(cliOut, shown) {
		t.Errorf("bad CIDR: the page says %q, the CLI %q; want the same error", shown, cliOut)
	}
	browser.Screenshot(t, ctx, "2-rules-error")
	if got := JSONLines(t, d.MustCLI(t, "rules", "list", "--json")); len(got) != 1 {
		t.Fatalf("a refused rule changed the rules: %v", got)
	}
	setForm(map[string]string{"remote": n.ServerIP})
	submit()
	wait(`document.querySelectorAll('tr[data-rule]').length === 2 && (document.querySelector('.toast.info') || {}).textContent?.startsWith('added rule')`, 5*time.Second)
	rules = JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	if len(rules) != 2 || rules[1]["port"] != "9999" || rules[1]["action"] != "deny" || rules[1]["remote"] != n.ServerIP+"/32" {
		t.Fatalf("rules after adding in the browser: %v", rules)
	}
	added := int(num(rules[1]["id"]))
	eval(fmt.Sprintf(`(() => { document.querySelector('tr[data-rule="%d"] button').click(); return 'ok'; })()`, added))
	wait(`document.querySelector('.ruleform h3').textContent.startsWith('Edit rule')`, 5*time.Second)
	setForm(map[string]string{"port": "9998"})
	submit()
	wait(`[...document.querySelectorAll('tr[data-rule] td:nth-child(10)')].some(td => td.textContent === '9998') && (document.querySelector('.toast.info') || {}).textContent?.startsWith('saved rule')`, 5*time.Second)
	rules = JSONLines(t, d.MustCLI(t, "rules", "list", "--json"))
	if len(rules) != 2 || rules[1]["port"] != "9998" || int(num(rules[1]["id"])) == added {
		t.Fatalf("rules after editing in the browser: %v", rules)
	}
	edited := int(num(rules[1]["id"]))
	eval(fmt.Sprintf(`(() => { document.querySelector('tr[data-rule="%d"] button.danger').click(); return 'ok'; })()`, edited))
	wait(`document.querySelectorAll('tr[data-rule]').length === 1 && document.querySelector('.toast button') !== null`, 5*time.Second)
	if got := JSONLines(t, d.MustCLI(t, "rules", "list", "--json")); len(got) != 1 || int(num(got[0]["id"])) != answerRule {
		t.Fatalf("rules after deleting in the browser: %v", got)
	}
	browser.Screenshot(t, ctx, "3-rules-deleted")
	eval(`(() => { document.querySelector('.toast button').click(); return 'ok'; })()`)
	wait(`document.querySelectorAll('tr[data-rule]').length === 2`, 5*time.Second)
	if got := JSONLines(t, d.MustCLI(t, "rules", "list", "--json")); len(got) != 2 || got[1]["port"] != "9998" {
		t.Fatalf("rules after undoing the delete: %v", got)
	}
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8091", "--action", "deny")

	// Live connections: new connections appear with their verdicts and rules.
	do(chromedp.Navigate(base + "/#/live"))
	wait(`document.querySelectorAll('.lrow.conn').length >= 1`, 10*time.Second)
	before := eval(`String(Math.max(0, ...[...document.querySelectorAll('.lrow.conn')].map(r => Number(r.dataset.conn))))`)
	if r := n.Connect(t, 8090, 10*time.Second); r.Outcome != "connected" {
		t.Fatalf("connect under the answer's rule: %+v", r)
	}
	if r := n.Connect(t, 8091, 10*time.Second); r.Outcome != "refused" {
		t.Fatalf("connect under a deny rule: %+v", r)
	}
	wait(fmt.Sprintf(`[...document.querySelectorAll('.lrow.conn.v-allow')].some(r => Number(r.dataset.conn) > %s && r.innerText.includes(':8090/tcp') && r.innerText.includes('rule %d'))`, before, answerRule), 5*time.Second)
	wait(fmt.Sprintf(`[...document.querySelectorAll('.lrow.conn.v-deny')].some(r => Number(r.dataset.conn) > %s && r.innerText.includes(':8091/tcp'))`, before), 5*time.Second)
	browser.Screenshot(t, ctx, "4-live")

	// History: the chart draws (the allowed series' green is on the canvas).
	do(chromedp.Navigate(base + "/#/history"))
	wait(`document.querySelector('.chart canvas') !== null`, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	green, err := browser.Eval[float64](ctx, `(() => { const c = document.querySelector('.chart canvas');
		const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
		for (let i = 0; i < d.length; i += 4) if (d[i+3] > 200 && Math.abs(d[i]-26) < 30 && Math.abs(d[i+1]-127) < 30 && Math.abs(d[i+2]-55) < 30) n++;
		return n; })()`)
	if err != nil || green < 10 {
		t.Errorf("history chart: %v green pixels (%v); want the allowed series drawn", green, err)
	}
	if tp := eval(`document.querySelector('.top tbody').innerText`); !strings.Contains(tp, "e2ehelper") {
		t.Errorf("top programs %q lack the test client", tp)
	}
	browser.Screenshot(t, ctx, "5-history")

	// Programs lists the program, and its page its rules and connections.
	do(chromedp.Navigate(base + "/#/programs"))
	wait(fmt.Sprintf(`document.querySelector('tr[data-exe=%q]') !== null`, helperBin), 10*time.Second)
	browser.Screenshot(t, ctx, "6-programs")
	do(chromedp.Navigate(base + "/#/programs/" + strings.ReplaceAll(helperBin, "/", "%2F")))
	wait(`document.querySelectorAll('.program tbody tr').length >= 3`, 10*time.Second)
	browser.Screenshot(t, ctx, "7-program")
	do(chromedp.Navigate(base + "/#/status"))
	wait(`document.querySelector('.status .panel') !== null`, 10*time.Second)
	if st := eval(`document.querySelector('.status').innerText`); !strings.Contains(st, "nfqueue") || !strings.Contains(st, "fail-closed") {
		t.Errorf("status page %q: want the backend and mode", st)
	}
	browser.Screenshot(t, ctx, "8-status")

	// An exe path with ESC and RLO is shown escaped on its card.
	evilDir := t.TempDir()
	evil := filepath.Join(evilDir, "e2e\x1b[31m\u202Egnp.exe")
	copyProgram(t, evil)
	do(chromedp.Navigate(base + "/#/questions"))
	wait(`document.querySelector('.questions') !== null`, 10*time.Second)
	go n.Exec(n.Client, evil, "connect", n.ServerIP+":"+strconv.Itoa(8092), "15s")
	wait(`document.querySelectorAll('.card').length === 1`, 10*time.Second)
	text := eval(`document.querySelector('.card').innerText`)
	wantEsc := filepath.Join(evilDir, `e2e\x1b[31m\u{202E}gnp.exe`)
	if !strings.Contains(text, wantEsc) || strings.ContainsAny(text, "\x1b\u202E") {
		t.Errorf("card for an exe with ESC and RLO shows %q; want %q and no raw control characters", text, wantEsc)
	}
	browser.Screenshot(t, ctx, "9-escaped")
	do(chromedp.KeyEvent("d"))
	wait(`document.querySelectorAll('.card').length === 0`, 5*time.Second)
}
