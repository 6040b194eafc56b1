//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
	"github.com/latchfw/latch/internal/textesc"
)

// Hostile text from outside: a program's path (any local user picks it), a user name
// from the password database, a host name from DNS (a label may hold any byte). Each
// carries terminal escapes that would erase the line and write something else, a
// carriage return, line feeds that would start a fake record, a right-to-left
// override and a zero-width joiner.
const (
	evilExe = "/tmp/x\x1b[2K\rfirefox\x1b[8m\n2026-12-04 00:00:00.000  out  tcp  /usr/bin/ok\u202Etxt.exe\u200D\xff"
	// evilUser is what a password database entry could hold.
	evilUser = "mal\x1b[1mlory\u202E\r\nroot"
	evilHost = "www\x1b[2K\r.bank\u200D.test\n"
	// evilApp has no line feed or NUL, which a rule's app may not hold, and no glob
	// character: it can be a rule's app, typed or made by answering a question.
	evilApp  = "/tmp/x\x1bM\rfirefox\x1b(0\u202Etxt.exe\u200D"
	evilNote = "note\x1b]0;window title\x07\nsecond line\u2028"
)

// forbiddenInText reports whether r must never reach the terminal from outside data:
// controls other than the line feed that ends a record (and the tab a table may use),
// format, separator, private use and unassigned runes.
func forbiddenInText(r rune) bool {
	switch r {
	case '\n', ' ':
		return false
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Zs, unicode.Co) ||
		(r > 0x7f && !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S))
}

// checkText asserts that out (a verb's text output) is valid UTF-8 with no raw control
// or invisible character, has exactly lines lines, and shows each of shows escaped.
func checkText(t *testing.T, what, out string, lines int, shows ...string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("%s: output is not valid UTF-8: %q", what, out)
	}
	for i, r := range out {
		if forbiddenInText(r) {
			t.Errorf("%s: raw %U at byte %d of the output:\n%q", what, r, i, out)
			break
		}
	}
	if n := strings.Count(out, "\n"); n != lines {
		t.Errorf("%s: %d lines, want %d (one per record):\n%s", what, n, lines, out)
	}
	for _, s := range shows {
		if e := textesc.String(s); !strings.Contains(out, e) {
			t.Errorf("%s: output lacks %q escaped as %s:\n%s", what, s, e, out)
		}
	}
}

// evilRequest is a held connection whose program, user and host are hostile.
func evilRequest() *engine.Request {
	return &engine.Request{
		Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.5.5:443"),
		PID:    4242, Exe: evilExe, UID: 1000, User: evilUser, Host: evilHost,
		Identity: engine.IdentityVerified, // a real file can have such a path
	}
}

// TestEscapedPromptsAnswerRules: prompts, answer, rules add/list/rm show hostile text
// escaped, one record per line; --json keeps the exact text.
func TestEscapedPromptsAnswerRules(t *testing.T) {
	f := newFixture(t)
	f.anyUser = true // rules with hostile user names, as a hand-written rules file may hold
	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(evilRequest(), func(v engine.Verdict) { ch <- v })
	f.request("/usr/bin/curl", 443)

	checkText(t, "prompts", f.must(t, "prompts"), 3, evilExe, evilUser, evilHost)

	var ps []api.Prompt
	for _, l := range strings.Split(strings.TrimSpace(f.must(t, "prompts", "--json")), "\n") {
		var p api.Prompt
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("prompts --json: %q: %v", l, err)
		}
		ps = append(ps, p)
	}
	if len(ps) != 2 || ps[0].Exe != evilExe || ps[0].User != evilUser || ps[0].Host != evilHost {
		t.Fatalf("prompts --json does not keep the exact text: %+v", ps)
	}

	if out := f.must(t, "answer", fmt.Sprint(ps[0].ID), "deny"); out != fmt.Sprintf("question %d: deny once\n", ps[0].ID) {
		t.Errorf("answer deny once said %q", out)
	}
	if v := waitVerdict(t, ch); v.Action != engine.Deny {
		t.Fatalf("answered deny, got %+v", v)
	}
	// answer prints the rule it made, with the program's path in it.
	req := evilRequest()
	req.Exe = evilApp
	f.eng.Decide(req, func(v engine.Verdict) { ch <- v })
	id := jsonLines(t, f.must(t, "prompts", "--json"))[1]["id"]
	out := f.must(t, "answer", fmt.Sprint(id), "allow", "--for", "forever", "--scope", "app")
	checkText(t, "answer", out, 1, evilApp)
	if v := waitVerdict(t, ch); v.Action != engine.Allow {
		t.Fatalf("answered allow, got %+v", v)
	}

	// rules add with a hostile note and user (from the command line, or an imported
	// file): its confirmation, then the table, then rm.
	out = f.must(t, "rules", "add", "--app", evilApp, "--user", "mal\x1b[1mlory", "--note", evilNote, "--action", "deny")
	checkText(t, "rules add", out, 1, evilApp, "mal\x1b[1mlory", evilNote)
	checkText(t, "rules list", f.must(t, "rules", "list"), 3, evilApp, evilNote)

	rules, err := api.NewClient(f.sock).Rules(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	byJSON := jsonLines(t, f.must(t, "rules", "list", "--json"))
	if len(rules) != 2 || len(byJSON) != 2 || byJSON[0]["app"] != evilApp || byJSON[1]["app"] != evilApp || byJSON[1]["note"] != evilNote ||
		byJSON[1]["user"] != "mal\x1b[1mlory" {
		t.Fatalf("rules list --json does not keep the exact text: %v", byJSON)
	}
	checkText(t, "rules rm", f.must(t, "rules", "rm", "2"), 1, evilApp, evilNote)
}

// TestEscapedConns: conns and conns --follow show hostile text escaped, one record per
// line; --json keeps it.
func TestEscapedConns(t *testing.T) {
	f := newFixture(t)
	f.anyUser = true // rules with hostile user names, as a hand-written rules file may hold
	record := func(port uint16) {
		r := evilRequest()
		r.Remote = netip.AddrPortFrom(r.Remote.Addr(), port)
		f.hist.Record(store.Conn{Time: time.Now(), Request: *r,
			Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt}})
		f.hist.Flush()
	}
	record(443)
	record(444)
	checkText(t, "conns", f.must(t, "conns"), 3, evilExe, evilUser, evilHost)
	var cs []api.Conn
	for _, l := range strings.Split(strings.TrimSpace(f.must(t, "conns", "--json")), "\n") {
		var c api.Conn
		if err := json.Unmarshal([]byte(l), &c); err != nil {
			t.Fatalf("conns --json: %q: %v", l, err)
		}
		cs = append(cs, c)
	}
	if len(cs) != 2 || cs[0].Exe != evilExe || cs[0].User != evilUser || cs[1].Host != evilHost {
		t.Fatalf("conns --json does not keep the exact text: %+v", cs)
	}

	// --follow: the first page, then each new connection, one line each.
	cmd := exec.Command(latchBin, "conns", "--follow", "-n", "1")
	cmd.Env = append(os.Environ(), "LATCH_API="+f.sock)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("conns --follow printed nothing")
		}
		return ""
	}
	if h := next(); !strings.HasPrefix(h, "TIME") {
		t.Fatalf("conns --follow began with %q", h)
	}
	checkText(t, "conns --follow, first page", next()+"\n", 1, evilExe, evilHost)
	record(445)
	l := next()
	checkText(t, "conns --follow, new connection", l+"\n", 1, evilExe, evilHost)
	if !strings.Contains(l, ":445") {
		t.Errorf("conns --follow printed %q, want the connection to port 445", l)
	}
	select {
	case l := <-lines:
		t.Errorf("conns --follow printed one more line for one connection: %q", l)
	case <-time.After(time.Second):
	}
}

// TestEscapedStatusAndErrors: status shows the daemon's strings escaped; an error that
// quotes a hostile file name shows it escaped on one line.
func TestEscapedStatusAndErrors(t *testing.T) {
	f := newFixture(t)
	f.anyUser = true // rules with hostile user names, as a hand-written rules file may hold
	f.stateDir = "/var/lib/latch\n\x1b[2Kstate dir:  /elsewhere"
	out := f.must(t, "status")
	if strings.Contains(out, "\x1b") || !strings.Contains(out, textesc.String(f.stateDir)) {
		t.Errorf("status shows the state directory unescaped:\n%q", out)
	}
	if n := strings.Count(out, "\nstate dir:"); n != 1 {
		t.Errorf("status shows %d 'state dir:' lines, want 1:\n%s", n, out)
	}

	bad := filepath.Join(t.TempDir(), "rules\x1b[2K\r.json\nlatch rules import: done")
	r := f.latch(t, "rules", "import", bad)
	if r.code != 1 {
		t.Fatalf("rules import of a missing file: exit %d", r.code)
	}
	checkText(t, "rules import error", r.stderr, 1, bad)

	// A rules file whose rule is refused: the error quotes its app.
	file := filepath.Join(t.TempDir(), "r.json")
	os.WriteFile(file, []byte(`{"version":1,"rules":[{"action":"allow","app":"rel\u001b[2K\rative"}]}`), 0o600)
	r = f.latch(t, "rules", "import", file)
	if r.code != 1 {
		t.Fatalf("rules import of a refused rule: exit %d, %s", r.code, r.stderr)
	}
	checkText(t, "rules import refused", r.stderr, 1)
}

// TestEscapedWatchLines: watch (standard input not a terminal) shows the question with
// hostile text escaped, and no line of it begins with what the escapes would fake.
func TestEscapedWatchLines(t *testing.T) {
	f := newFixture(t)
	f.anyUser = true // rules with hostile user names, as a hand-written rules file may hold
	cmd := exec.Command(latchBin, "watch")
	cmd.Env = append(os.Environ(), "LATCH_API="+f.sock)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var all strings.Builder
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitLine := func(want string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case l := <-lines:
				all.WriteString(l + "\n")
				if strings.Contains(l, want) {
					return
				}
			case <-timeout:
				t.Fatalf("watch never printed %q; it printed:\n%s", want, all.String())
			}
		}
	}
	waitLine("waiting for questions")
	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(evilRequest(), func(v engine.Verdict) { ch <- v })
	waitLine("answer ")
	seen := all.String()
	checkText(t, "watch", seen, strings.Count(seen, "\n"), evilExe, evilUser, evilHost)
	for _, l := range strings.Split(seen, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "firefox") || strings.HasPrefix(l, "2026-") {
			t.Errorf("watch printed a line that begins with the disguise: %q", l)
		}
	}
	stdin.Write([]byte("deny\n"))
	if v := waitVerdict(t, ch); v.Action != engine.Deny {
		t.Errorf("answered deny, got %+v", v)
	}
}

// TestWatchTerminalDisguise runs `latch watch` in a real terminal (tmux) and raises a
// question from a program named x ESC[2K CR firefox: on the old code the terminal
// erased "x" and the question read "firefox (pid ...)". The screen must show the
// escapes and never a line that begins with firefox as the program.
func TestWatchTerminalDisguise(t *testing.T) {
	f := newFixture(t)
	f.anyUser = true // rules with hostile user names, as a hand-written rules file may hold
	tm, screen, waitScreen := tmuxWatch(t, f, 120, 40)
	waitScreen("waiting for questions")
	exe := "x\x1b[2K\rfirefox"
	verdict := f.request(exe, 443)
	waitScreen("198.18.0.2:443")
	s := screen()
	if !strings.Contains(s, `question 1: x\x1b[2K\x0dfirefox (pid 4242, user root)`) {
		t.Errorf("the screen does not show the program's name escaped:\n%s", s)
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "firefox") {
			t.Errorf("the screen shows a line that begins with firefox: %q\n%s", l, s)
		}
	}
	tm("send-keys", "-t", "watch", "d")
	time.Sleep(100 * time.Millisecond)
	tm("send-keys", "-t", "watch", "o")
	if v := waitVerdict(t, verdict); v.Action != engine.Deny {
		t.Fatalf("keys d o gave %+v", v)
	}
}

// TestWatchTerminalLongName: a program whose path is 6,000 characters (most of them
// escapes, four cells each) and a long host name must not push the question off an
// 80x24 screen: its number, the end of the path, the user, the destination and the
// keys stay visible, and the screen says where the path was cut.
func TestWatchTerminalLongName(t *testing.T) {
	f := newFixture(t)
	f.anyUser = true // rules with hostile user names, as a hand-written rules file may hold
	_, screen, waitScreen := tmuxWatch(t, f, 80, 24)
	waitScreen("waiting for questions")
	exe := "/tmp/" + strings.Repeat("\x1b[2K", 1000) + "/" + strings.Repeat("a", 1000) + "/evil-tail"
	host := strings.Repeat("\x1b[1m.", 60) + "bank.test"
	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(&engine.Request{
		Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.5.5:443"),
		PID:    4242, Exe: exe, UID: 0, User: "root", Host: host,
	}, func(v engine.Verdict) { ch <- v })
	waitScreen("[a]llow")
	s := screen()
	t.Logf("screen:\n%s", s)
	for _, want := range []string{"question 1: /tmp/", "/evil-tail (pid 4242, user root)", "path cut at …, 5016 bytes in all",
		"bank.test (198.18.5.5):443", "[a]llow [d]eny"} {
		if !strings.Contains(s, want) {
			t.Errorf("the 80x24 screen lacks %q:\n%s", want, s)
		}
	}
}

// TestFieldsCannotPassForOthers: a value with spaces is quoted, so a path cannot
// pretend to end early and show a pid, a user or more columns of its own, and a value
// "-" cannot pass for an empty field.
func TestFieldsCannotPassForOthers(t *testing.T) {
	f := newFixture(t)
	f.anyUser = true // rules with hostile user names, as a hand-written rules file may hold
	const exe = "/tmp/x (pid 1, user root)"
	f.request(exe, 443)
	if out := f.must(t, "prompts"); !strings.Contains(out, `  "/tmp/x (pid 1, user root)"  4242  root  `) {
		t.Errorf("prompts does not quote a path with spaces:\n%s", out)
	}
	cmd := exec.Command(latchBin, "watch")
	cmd.Env = append(os.Environ(), "LATCH_API="+f.sock)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sc := bufio.NewScanner(out)
	found := make(chan string, 1)
	go func() {
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "question ") {
				found <- sc.Text()
				return
			}
		}
	}()
	select {
	case l := <-found:
		if want := `question 1: "/tmp/x (pid 1, user root)" (pid 4242, user root)`; l != want {
			t.Errorf("watch shows %q, want %q", l, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch showed no question")
	}
	stdin.Write([]byte("quit\n"))

	f.must(t, "rules", "add", "--user", "-", "--note", "-", "--action", "deny")
	list := f.must(t, "rules", "list")
	if strings.Count(list, `  "-"  `) != 2 { // the user and the note, quoted; empty fields show -
		t.Errorf("rules list shows a user and a note \"-\" as if empty:\n%s", list)
	}
}
