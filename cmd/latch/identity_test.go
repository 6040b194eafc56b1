//go:build linux

package main

import (
	"fmt"
	"net/netip"
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
		ch := make(chan engine.Verdict, 1)
		f.eng.Decide(&engine.Request{
			Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
			Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
			Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
			PID:    4242, Exe: "/usr/bin/curl", UID: 65534, User: "nobody",
			Identity: id, Container: container, IdentityNote: "the host's file at this path is another file",
		}, func(v engine.Verdict) { ch <- v })
		return ch
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
