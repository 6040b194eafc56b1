//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/store"
)

// latchBin is the latch binary under test, built by TestMain in a directory every
// user may read, so tests can run it as nobody.
var latchBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "latch-cmd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	latchBin = filepath.Join(dir, "latch")
	out, err := exec.Command("go", "build", "-o", latchBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building latch: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fixture is a daemon-less API server backed by a real engine, a real SQLite history
// and a real rules file, on a real unix socket the latch binary talks to.
type fixture struct {
	eng         *engine.Engine
	hist        *store.History
	sock        string
	rulesPath   string
	stateDir    string                 // what status reports
	kernel      intercept.Stats        // what status reports
	driverCache *api.DriverCacheStatus // what status reports
	exeCheck    *api.ExeCheckStatus    // what status reports
	// anyUser makes every user name an account of this test system (the escaping
	// tests give rules hostile user names); false: the system's accounts.
	anyUser bool
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir, err := os.MkdirTemp("", "latch-cmd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	f := &fixture{sock: filepath.Join(dir, "latch.sock"), rulesPath: filepath.Join(dir, store.RulesFileName)}
	if f.eng, err = engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Minute}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.eng.Close)
	if f.hist, err = store.OpenHistory(filepath.Join(dir, store.HistoryFileName), 1000); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.hist.Close() })
	srv := api.NewServer(api.Config{
		Engine: f.eng, History: f.hist, Logf: t.Logf,
		CheckUser: func(name string) error {
			if f.anyUser {
				return nil
			}
			return api.SystemUser(name)
		},
		SaveRules: func() error { return store.SaveRules(f.rulesPath, f.eng.Rules()) },
		Status: func() api.Status {
			return api.Status{Backend: "nfqueue/test", Mode: "fail-closed", Default: engine.Deny, PromptTimeout: "1m0s",
				Attribution: []string{"sock_diag"}, Queue: 4242, StateDir: f.stateDir, Kernel: f.kernel,
				DriverCache: f.driverCache, AttributionExeCheck: f.exeCheck}
		},
	})
	l, err := api.Listen(f.sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

type result struct {
	stdout, stderr string
	code           int
}

// latch runs the binary against the fixture's socket.
func (f *fixture) latch(t *testing.T, args ...string) result {
	t.Helper()
	return runLatch(t, []string{"LATCH_API=" + f.sock}, nil, args...)
}

func runLatch(t *testing.T, env []string, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, latchBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("latch %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

func (r result) ok(t *testing.T, args ...string) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("latch %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

func (f *fixture) must(t *testing.T, args ...string) string {
	t.Helper()
	return f.latch(t, args...).ok(t, args...).stdout
}

// jsonLines decodes one JSON object per line.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		objs = append(objs, m)
	}
	return objs
}

func hasKeys(t *testing.T, what string, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("%s: key %q missing in %v", what, k, m)
		}
	}
}

// request raises a question as a backend would; the channel gets its verdict.
func (f *fixture) request(exe string, port uint16) chan engine.Verdict {
	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(&engine.Request{
		Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
		PID:    4242, Exe: exe, Identity: engine.IdentityVerified, UID: 0, User: "root",
	}, func(v engine.Verdict) { ch <- v })
	return ch
}

func waitVerdict(t *testing.T, ch chan engine.Verdict) engine.Verdict {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("the held connection got no verdict")
	}
	return engine.Verdict{}
}

func TestUsage(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		args []string
		code int
		in   string // stderr (or stdout for code 0) must contain this
	}{
		{nil, 2, "Usage: latch VERB"},
		{[]string{"help"}, 0, "Usage: latch VERB"},
		{[]string{"help", "rules"}, 0, "--local-port"},
		{[]string{"rules", "add", "--help"}, 0, "--local-port"},
		{[]string{"frobnicate"}, 2, `unknown verb "frobnicate"`},
		{[]string{"rules"}, 2, "want a subcommand"},
		{[]string{"rules", "add", "--action", "maybe"}, 2, `--action: field "action" ("maybe"): action "maybe"`},
		{[]string{"rules", "add", "--port", "80"}, 2, "--action is required"},
		{[]string{"rules", "add", "--action", "allow", "--remote", "198.18.0.0/33"}, 2, "--remote"},
		{[]string{"rules", "add", "--action", "allow", "--port", "9-1"}, 2, "--port"},
		{[]string{"rules", "add", "--action", "allow", "--host", "www.*.example"}, 2, `--host: field "host" ("www.*.example"): character '*'`},
		{[]string{"rules", "add", "--action", "allow", "--host", "198.18.0.1"}, 2, "use remote"},
		{[]string{"rules", "add", "--action", "allow", "--colour", "red"}, 2, "-colour"},
		{[]string{"rules", "rm", "x"}, 2, `rule ID "x"`},
		{[]string{"answer", "1"}, 2, "want a question ID and allow"},
		{[]string{"answer", "1", "maybe"}, 2, `"action"`},
		{[]string{"answer", "1", "allow", "--scope", "world"}, 2, `"scope"`},
		{[]string{"conns", "-n", "0"}, 2, "-n 0"},
		{[]string{"daemon", "--default", "maybe"}, 2, "--default"},
		{[]string{"daemon", "--fail", "sometimes"}, 2, "--fail"},
		{[]string{"daemon", "--max-questions", "0"}, 2, "--max-questions 0: want a number from 1"},
		{[]string{"daemon", "--max-questions-per-app", "-3"}, 2, "--max-questions-per-app -3"},
		{[]string{"daemon", "--max-questions", "100", "--max-questions-per-user", "200"}, 2, "--max-questions-per-user 200 is above --max-questions 100"},
		{[]string{"daemon", "--max-questions-per-user", "10", "--max-questions-per-app", "20"}, 2, "--max-questions-per-app 20 is above --max-questions-per-user 10"},
		{[]string{"help", "daemon"}, 0, "--max-questions-per-app"},
		{[]string{"version"}, 0, "latch "},
	}
	for _, c := range cases {
		r := f.latch(t, c.args...)
		out := r.stderr
		if c.code == 0 {
			out = r.stdout
		}
		if r.code != c.code || !strings.Contains(out, c.in) {
			t.Errorf("latch %v: exit %d, want %d with %q\nstdout: %s\nstderr: %s", c.args, r.code, c.code, c.in, r.stdout, r.stderr)
		}
	}
	// Without a daemon: a clear error and exit 1.
	r := runLatch(t, []string{"LATCH_API=" + filepath.Join(t.TempDir(), "none.sock")}, nil, "status")
	if r.code != 1 || !strings.Contains(r.stderr, "no daemon is running") {
		t.Errorf("status without a daemon: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestRulesVerbs(t *testing.T) {
	f := newFixture(t)
	out := f.must(t, "rules", "add", "--app", "/usr/bin/curl", "--user", "root", "--dir", "out", "--proto", "tcp",
		"--remote", "198.18.0.0/24", "--port", "443", "--local-port", "1000-2000", "--action", "allow", "--note", "web")
	if !strings.Contains(out, "added rule 1") {
		t.Errorf("rules add said %q", out)
	}
	f.must(t, "rules", "add", "--app", "/usr/bin/*", "--action", "reject", "--for", "2h")
	list := f.must(t, "rules", "list")
	for _, want := range []string{"ID", "ACTION", "/usr/bin/curl", "198.18.0.0/24", "1000-2000", "reject", "/usr/bin/*"} {
		if !strings.Contains(list, want) {
			t.Errorf("rules list lacks %q:\n%s", want, list)
		}
	}
	rules := jsonLines(t, f.must(t, "rules", "list", "--json"))
	if len(rules) != 2 {
		t.Fatalf("rules list --json: %v", rules)
	}
	r0 := rules[0]
	if r0["app"] != "/usr/bin/curl" || r0["user"] != "root" || r0["dir"] != "out" || r0["proto"] != "tcp" ||
		r0["remote"] != "198.18.0.0/24" || r0["port"] != "443" || r0["local_port"] != "1000-2000" || r0["action"] != "allow" {
		t.Errorf("rule 1 as JSON: %v", r0)
	}
	if _, ok := rules[1]["expires"]; !ok {
		t.Errorf("rule added --for 2h has no expiry: %v", rules[1])
	}
	// The daemon side saved them.
	if saved, err := store.LoadRules(f.rulesPath); err != nil || len(saved) != 2 {
		t.Errorf("rules file: %v, %v", saved, err)
	}

	export := f.must(t, "rules", "export")
	exportFile := filepath.Join(t.TempDir(), "rules.json")
	os.WriteFile(exportFile, []byte(export), 0o600)

	if r := f.latch(t, "rules", "rm", "99"); r.code != 1 || !strings.Contains(r.stderr, "rule 99: no such rule") {
		t.Errorf("rules rm 99: exit %d, %q", r.code, r.stderr)
	}
	if out := f.must(t, "rules", "rm", "1"); !strings.Contains(out, "removed rule 1") {
		t.Errorf("rules rm 1 said %q", out)
	}
	if n := len(jsonLines(t, f.must(t, "rules", "list", "--json"))); n != 1 {
		t.Fatalf("%d rules after rm", n)
	}

	// A malformed file is refused, naming the field, and changes nothing.
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"version":1,"rules":[{"action":"allow"},{"action":"allow","remote":"not-an-ip"}]}`), 0o600)
	before := f.must(t, "rules", "list", "--json")
	if r := f.latch(t, "rules", "import", bad); r.code != 1 || !strings.Contains(r.stderr, "rule 1") || !strings.Contains(r.stderr, "remote") {
		t.Errorf("import of a malformed file: exit %d, %q", r.code, r.stderr)
	}
	if after := f.must(t, "rules", "list", "--json"); after != before {
		t.Errorf("a refused import changed the rules:\n%s\n%s", before, after)
	}

	if out := f.must(t, "rules", "import", exportFile); !strings.Contains(out, "imported 2 rules") {
		t.Errorf("rules import said %q", out)
	}
	if after := f.must(t, "rules", "export"); after != export {
		t.Errorf("export after importing the export differs:\n%s\n%s", export, after)
	}
	// Import from standard input.
	r := runLatch(t, []string{"LATCH_API=" + f.sock}, strings.NewReader(`{"version":1,"rules":[{"action":"deny","port":"25"}]}`), "rules", "import", "-")
	r.ok(t, "rules import -")
	if rules := jsonLines(t, f.must(t, "rules", "list", "--json")); len(rules) != 1 || rules[0]["port"] != "25" {
		t.Errorf("after import from stdin: %v", rules)
	}
}

func TestPromptsAndAnswer(t *testing.T) {
	f := newFixture(t)
	if out := f.must(t, "prompts"); !strings.Contains(out, "no questions") {
		t.Errorf("prompts with none open: %q", out)
	}
	verdict := f.request("/usr/bin/curl", 443)
	f.request("/usr/bin/wget", 80)
	ps := jsonLines(t, f.must(t, "prompts", "--json"))
	if len(ps) != 2 {
		t.Fatalf("prompts --json: %v", ps)
	}
	hasKeys(t, "prompt", ps[0], "id", "pid", "exe", "proto", "remote_ip", "remote_port", "expires", "direction", "user", "held")
	if ps[0]["exe"] != "/usr/bin/curl" || ps[0]["proto"] != "tcp" || ps[0]["remote_ip"] != "198.18.0.2" ||
		ps[0]["remote_port"] != float64(443) || ps[0]["pid"] != float64(4242) {
		t.Errorf("prompt as JSON: %v", ps[0])
	}
	table := f.must(t, "prompts")
	for _, want := range []string{"EXPIRES", "/usr/bin/curl", "198.18.0.2:443", "/usr/bin/wget"} {
		if !strings.Contains(table, want) {
			t.Errorf("prompts table lacks %q:\n%s", want, table)
		}
	}
	id := fmt.Sprint(ps[0]["id"])
	out := f.must(t, "answer", id, "allow", "--for", "forever", "--scope", "app+host")
	if !strings.Contains(out, "added rule") {
		t.Errorf("answer said %q", out)
	}
	if v := waitVerdict(t, verdict); v.Action != engine.Allow || v.Reason != engine.ReasonPrompt {
		t.Errorf("answered allow, connection got %+v", v)
	}
	rules := jsonLines(t, f.must(t, "rules", "list", "--json"))
	if len(rules) != 1 || rules[0]["app"] != "/usr/bin/curl" || rules[0]["remote"] != "198.18.0.2/32" || rules[0]["port"] != nil {
		t.Errorf("answer --scope app+host made %v", rules)
	}
	if r := f.latch(t, "answer", id, "deny"); r.code != 1 || !strings.Contains(r.stderr, "not open") {
		t.Errorf("answering a closed question: exit %d, %q", r.code, r.stderr)
	}
}

// TestHosts checks the hostname everywhere a remote is shown: rules add --host and
// rules list, prompts, answer --scope app+host (a rule on the name) and conns.
func TestHosts(t *testing.T) {
	f := newFixture(t)
	out := f.must(t, "rules", "add", "--app", "/usr/bin/curl", "--host", "*.Tracker.Example.", "--action", "deny")
	if !strings.Contains(out, "host=*.tracker.example") {
		t.Errorf("rules add --host said %q", out)
	}
	if list := f.must(t, "rules", "list"); !strings.Contains(list, "HOST") || !strings.Contains(list, "*.tracker.example") {
		t.Errorf("rules list lacks the host:\n%s", list)
	}
	if rules := jsonLines(t, f.must(t, "rules", "list", "--json")); len(rules) != 1 || rules[0]["host"] != "*.tracker.example" {
		t.Errorf("rules list --json: %v", rules)
	}

	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(&engine.Request{
		Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.5.5:443"),
		PID:    4242, Exe: "/usr/bin/firefox", Identity: engine.IdentityVerified, UID: 0, User: "root", Host: "www.example.com",
	}, func(v engine.Verdict) { ch <- v })
	ps := jsonLines(t, f.must(t, "prompts", "--json"))
	if len(ps) != 1 || ps[0]["host"] != "www.example.com" || ps[0]["remote_ip"] != "198.18.5.5" {
		t.Fatalf("prompts --json: %v", ps)
	}
	if table := f.must(t, "prompts"); !strings.Contains(table, "www.example.com (198.18.5.5):443") {
		t.Errorf("prompts table lacks the host:\n%s", table)
	}
	f.must(t, "answer", fmt.Sprint(ps[0]["id"]), "allow", "--for", "forever", "--scope", "app+host")
	if v := waitVerdict(t, ch); v.Action != engine.Allow {
		t.Errorf("answered allow, connection got %v", v)
	}
	rules := jsonLines(t, f.must(t, "rules", "list", "--json"))
	if len(rules) != 2 || rules[1]["host"] != "www.example.com" || rules[1]["remote"] != nil || rules[1]["app"] != "/usr/bin/firefox" {
		t.Errorf("answer --scope app+host made %v, want a rule on www.example.com", rules)
	}

	f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
		Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.5.5:443"),
		PID:    4242, Exe: "/usr/bin/firefox", Identity: engine.IdentityVerified, UID: 0, User: "root", Host: "www.example.com",
	}, Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 2}})
	f.hist.Flush()
	if cs := jsonLines(t, f.must(t, "conns", "--json")); len(cs) != 1 || cs[0]["host"] != "www.example.com" {
		t.Errorf("conns --json: %v", cs)
	}
	if table := f.must(t, "conns"); !strings.Contains(table, "www.example.com (198.18.5.5):443") {
		t.Errorf("conns table lacks the host:\n%s", table)
	}
}

func TestConnsAndStatus(t *testing.T) {
	f := newFixture(t)
	record := func(port uint16, v engine.Verdict) {
		f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
			Direction: engine.Outbound, Protocol: engine.UDP,
			Local:  netip.MustParseAddrPort("198.18.0.1:5353"),
			Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
			PID:    777, Exe: "/usr/bin/dig", Identity: engine.IdentityVerified, UID: 0, User: "root",
		}, Verdict: v})
	}
	record(53, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 3})
	record(54, engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout})
	cs := jsonLines(t, f.must(t, "conns", "--json"))
	if len(cs) != 2 {
		t.Fatalf("conns --json: %v", cs)
	}
	hasKeys(t, "conn", cs[0], "verdict", "reason", "pid", "exe", "proto", "direction", "remote_ip", "remote_port",
		"time", "local_ip", "local_port", "user", "rule_id")
	if cs[0]["verdict"] != "allow" || cs[0]["reason"] != "rule" || cs[0]["rule_id"] != float64(3) ||
		cs[1]["verdict"] != "deny" || cs[1]["reason"] != "timeout" || cs[1]["exe"] != "/usr/bin/dig" {
		t.Errorf("conns --json: %v", cs)
	}
	table := f.must(t, "conns")
	for _, want := range []string{"VERDICT", "WHY", "rule 3", "timeout", "/usr/bin/dig", "198.18.0.2:53", "198.18.0.1:5353"} {
		if !strings.Contains(table, want) {
			t.Errorf("conns table lacks %q:\n%s", want, table)
		}
	}
	if cs := jsonLines(t, f.must(t, "conns", "--json", "-n", "1")); len(cs) != 1 || cs[0]["remote_port"] != float64(54) {
		t.Errorf("conns -n 1: %v", cs)
	}

	// --follow prints connections decided after it started.
	cmd := exec.Command(latchBin, "conns", "--json", "--follow", "-n", "1")
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
	next := func() map[string]any {
		select {
		case l := <-lines:
			return jsonLines(t, l)[0]
		case <-time.After(10 * time.Second):
			t.Fatal("conns --follow printed nothing")
		}
		return nil
	}
	if c := next(); c["remote_port"] != float64(54) {
		t.Errorf("conns --follow started with %v", c)
	}
	record(55, engine.Verdict{Action: engine.Reject, Reason: engine.ReasonPrompt})
	if c := next(); c["remote_port"] != float64(55) || c["verdict"] != "reject" {
		t.Errorf("conns --follow then printed %v", c)
	}

	f.request("/usr/bin/curl", 443)
	st := f.must(t, "status")
	for _, want := range []string{"nfqueue/test", "fail-closed", "deny", "1 question", "sock_diag", "4242",
		"at most 1024 open, 256 per user, 64 per program", "question caps:  program 0, user 0, global 0"} {
		if !strings.Contains(st, want) {
			t.Errorf("status lacks %q:\n%s", want, st)
		}
	}
	var js api.Status
	if err := json.Unmarshal([]byte(f.must(t, "status", "--json")), &js); err != nil || js.PendingPrompts != 1 || js.Backend != "nfqueue/test" ||
		js.QuestionCaps.PerApp != 64 || js.QuestionCaps.PerUser != 256 || js.QuestionCaps.Max != 1024 {
		t.Errorf("status --json: %+v, %v", js, err)
	}
}

func TestNonRootRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run latch as nobody")
	}
	f := newFixture(t)
	asNobody := func() result {
		cmd := exec.Command(latchBin, "rules", "list")
		cmd.Env = append(os.Environ(), "LATCH_API="+f.sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return result{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
	}
	// The socket's mode (0600) keeps nobody out before the daemon even sees it.
	if r := asNobody(); r.code != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("nobody through a 0600 socket: exit %d, %q", r.code, r.stderr)
	}
	// With the file mode opened, the peer-credential check refuses.
	os.Chmod(f.sock, 0o666)
	if r := asNobody(); r.code != 1 || !strings.Contains(r.stderr, "latch API: permission denied: uid 65534 is not root") {
		t.Errorf("nobody with peer credentials checked: exit %d, %q", r.code, r.stderr)
	}
	f.must(t, "rules", "list")
}
