//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestUnverifiedProgramShownAndAnsweredOnce: a question about a program whose path is
// not verified says so in text and JSON, and can be answered once but not
// remembered as a rule for the path.
func TestUnverifiedProgramShownAndAnsweredOnce(t *testing.T) {
	f := newFixture(t)
	raise := func(id engine.Identity, container string, port uint16) chan engine.Verdict {
		return f.requestAs("/usr/bin/curl", port, id, container)
	}
	fake := raise(engine.IdentityUnverified, "", 443)
	raise(engine.IdentityContainer, "docker:"+strings.Repeat("0123456789abcdef", 4), 80)
	table := f.must(t, "prompts")
	for _, want := range []string{"/usr/bin/curl [unverified]", "/usr/bin/curl [container docker:0123456789ab]"} {
		if !strings.Contains(table, want) {
			t.Errorf("prompts table lacks %q:\n%s", want, table)
		}
	}
	ps := jsonLines(t, f.must(t, "prompts", "--json"))
	if len(ps) != 2 || ps[0]["identity"] != "unverified" || ps[0]["identity_note"] == nil ||
		ps[1]["identity"] != "container" || ps[1]["container"] != "docker:"+strings.Repeat("0123456789abcdef", 4) {
		t.Fatalf("prompts --json: %v", ps)
	}
	id := fmt.Sprint(ps[0]["id"])
	if r := f.latch(t, "answer", id, "allow", "--for", "forever", "--scope", "app"); r.code != 1 || !strings.Contains(r.stderr, "answer once") {
		t.Errorf("remembering an answer for an unverified program: exit %d, stderr %q", r.code, r.stderr)
	}
	if rules := f.must(t, "rules", "list", "--json"); strings.TrimSpace(rules) != "" {
		t.Errorf("a rule was made: %s", rules)
	}
	f.must(t, "answer", id, "allow")
	if v := waitVerdict(t, fake); v.Action != engine.Allow || v.Reason != engine.ReasonPrompt {
		t.Errorf("answered allow once, connection got %+v", v)
	}
}

// requestAs raises a question as a backend would, about a program of the given
// identity; the channel gets its verdict.
func (f *fixture) requestAs(exe string, port uint16, id engine.Identity, container string) chan engine.Verdict {
	ch := make(chan engine.Verdict, 1)
	f.eng.Decide(&engine.Request{
		Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
		PID:    4242, Exe: exe, UID: 65534, User: "nobody",
		Identity: id, Container: container, IdentityNote: "the host's file at this path is another file",
	}, func(v engine.Verdict) { ch <- v })
	return ch
}

// TestWatchAnswersUnverifiedOnce: in a real terminal, `latch watch` marks a question
// about an unverified program, says why, and answers it once at the action key,
// without asking for how long (no rule could be remembered).
func TestWatchAnswersUnverifiedOnce(t *testing.T) {
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("needs tmux")
	}
	f := newFixture(t)
	server := fmt.Sprintf("latch-test-id-%d", os.Getpid())
	tm := func(args ...string) (string, error) {
		out, err := exec.Command(tmux, append([]string{"-L", server}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { tm("kill-server") })
	if out, err := tm("new-session", "-d", "-s", "watch", "-x", "200", "-y", "50",
		"env", "LATCH_API="+f.sock, latchBin, "watch"); err != nil {
		t.Fatalf("tmux: %v: %s", err, out)
	}
	screen := func() string {
		out, _ := tm("capture-pane", "-p", "-t", "watch")
		return out
	}
	waitScreen := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(screen(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("watch never showed %q; screen:\n%s", want, screen())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitScreen("waiting for questions")
	verdict := f.requestAs("/usr/bin/curl", 443, engine.IdentityUnverified, "")
	waitScreen("/usr/bin/curl [unverified] (pid 4242, user nobody)")
	waitScreen("NOT VERIFIED: the host's file at this path is another file")
	tm("send-keys", "-t", "watch", "a")
	if v := waitVerdict(t, verdict); v.Action != engine.Allow || v.Reason != engine.ReasonPrompt {
		t.Fatalf("key a gave %+v, want allow by prompt", v)
	}
	waitScreen("allow once")
	if rules := f.eng.Rules(); len(rules) != 0 {
		t.Errorf("answering an unverified program made rules %v", rules)
	}
}

func TestIdentityLabelsEscape(t *testing.T) {
	got := identityLabels("nginx.service", "", []string{"/tmp/evil\x1b[2J dir/sh", "/usr/sbin/sshd"})
	want := ` [unit nginx.service] [parent "/tmp/evil\x1b[2J dir/sh"]`
	if got != want {
		t.Errorf("identityLabels = %q, want %q", got, want)
	}
	if got := identityLabels("", "", []string{""}); got != " [parent (unverified)]" {
		t.Errorf("unverified parent: %q", got)
	}
}
