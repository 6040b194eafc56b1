//go:build linux

package main

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// TestExplainVerb runs `latch explain` against a real API server: the deciding rule,
// the step, the rules that lost, a question, a past connection, and bad input.
func TestExplainVerb(t *testing.T) {
	f := newFixture(t)
	f.must(t, "rules", "add", "--app", "/usr/bin/curl", "--remote", "198.18.0.0/15", "--action", "deny")
	f.must(t, "rules", "add", "--app", "/usr/bin/curl", "--host", "*.example.com", "--action", "allow")
	f.must(t, "rules", "add", "--remote", "198.18.5.5", "--port", "443", "--action", "reject")

	out := f.must(t, "explain", "--app", "/usr/bin/curl", "--remote", "198.18.5.5", "--port", "443", "--host", "www.example.com")
	for _, want := range []string{
		"connection: out tcp /usr/bin/curl -> www.example.com (198.18.5.5):443",
		"now:        allow by rule 2: app=/usr/bin/curl host=*.example.com",
		"why:        it wins at step 2, host:",
		"rule 1: deny app=/usr/bin/curl remote=198.18.0.0/15; lost at step 2 (host)",
		"rule 3: reject remote=198.18.5.5/32 port=443 proto=", // not reached: see below
	} {
		if strings.HasPrefix(want, "rule 3") {
			want = "rule 3: reject remote=198.18.5.5/32 port=443; lost at step 1 (app)"
		}
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	var ex map[string]any
	if err := json.Unmarshal([]byte(f.must(t, "explain", "--app", "/usr/bin/curl", "--remote", "198.18.5.5", "--port", "443", "--json")), &ex); err != nil {
		t.Fatal(err)
	}
	if ex["rule_id"] != 1.0 || ex["step"] != "app" || ex["outcome"] != "rule" || len(ex["losers"].([]any)) != 1 {
		t.Errorf("explain --json without the host: %v; want rule 1 beating rule 3 at app", ex)
	}

	out = f.must(t, "explain", "--app", "/usr/bin/wget", "--remote", "198.18.200.1", "--port", "80", "--proto", "udp")
	if !strings.Contains(out, "no rule matches: it becomes a question (deny if nobody answers in time)") {
		t.Errorf("explain of an unmatched connection:\n%s", out)
	}

	// A past connection: the verdict then, the rule now; escaped path in text.
	f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
		Direction: engine.Outbound, Protocol: engine.TCP, Exe: "/usr/bin/curl", Identity: engine.IdentityVerified, UID: 0, User: "root",
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.7.7:22"),
	}, Verdict: engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}})
	f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
		Direction: engine.Outbound, Protocol: engine.TCP, Exe: "/tmp/evil\x1b[2J\u202e", UID: -1,
		Remote: netip.MustParseAddrPort("198.18.7.7:22"),
	}, Verdict: engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}})
	f.hist.Flush()
	cs, _ := f.hist.Recent(2, 0)
	out = f.must(t, "explain", "--conn", strconv.FormatInt(cs[0].ID, 10))
	for _, want := range []string{"connection: out tcp /usr/bin/curl (user root) -> 198.18.7.7:22", "then:       deny (timeout) at", "now:        deny by rule 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain --conn lacks %q:\n%s", want, out)
		}
	}
	out = f.must(t, "explain", "--conn", strconv.FormatInt(cs[1].ID, 10))
	if !strings.Contains(out, `/tmp/evil\x1b[2J\u{202E}`) || strings.Contains(out, "\x1b") {
		t.Errorf("explain --conn does not escape the path:\n%q", out)
	}
	if err := json.Unmarshal([]byte(f.must(t, "explain", "--conn", strconv.FormatInt(cs[1].ID, 10), "--json")), &ex); err != nil ||
		ex["request"].(map[string]any)["exe"] != "/tmp/evil\x1b[2J\u202e" {
		t.Errorf("explain --json must keep the exact bytes: %v %v", ex, err)
	}

	for _, c := range []struct {
		args []string
		code int
		in   string
	}{
		{[]string{"explain"}, 2, "want --remote IP"},
		{[]string{"explain", "--conn", "1", "--app", "/x"}, 2, "not both"},
		{[]string{"explain", "--remote", "198.18.0.1"}, 1, `"port": required for tcp`},
		{[]string{"explain", "--remote", "198.18.0.1", "--port", "70000"}, 2, "--port 70000"},
		{[]string{"explain", "--conn", "999999"}, 1, "no such connection"},
	} {
		r := f.latch(t, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.in) {
			t.Errorf("latch %v: exit %d, want %d with %q; stderr %s", c.args, r.code, c.code, c.in, r.stderr)
		}
	}
}

// TestRulesListHits checks the hit counters `rules list` shows, text and JSON.
func TestRulesListHits(t *testing.T) {
	f := newFixture(t)
	f.must(t, "rules", "add", "--app", "/usr/bin/curl", "--action", "allow")
	f.must(t, "rules", "add", "--app", "/usr/bin/wget", "--action", "deny")
	for range 3 {
		f.eng.Decide(&engine.Request{Direction: engine.Outbound, Protocol: engine.TCP, Exe: "/usr/bin/curl", Identity: engine.IdentityVerified, UID: 0,
			Remote: netip.MustParseAddrPort("198.18.0.9:443")}, func(engine.Verdict) {})
	}
	rules := jsonLines(t, f.must(t, "rules", "list", "--json"))
	if len(rules) != 2 || rules[0]["hits"] != 3.0 || rules[1]["hits"] != 0.0 || rules[1]["last_hit"] != nil {
		t.Fatalf("rules list --json: %v; want 3 hits on rule 1, none on rule 2", rules)
	}
	if last, err := time.Parse(time.RFC3339Nano, rules[0]["last_hit"].(string)); err != nil || time.Since(last) > time.Minute {
		t.Errorf("rule 1 last_hit %v: %v", rules[0]["last_hit"], err)
	}
	list := f.must(t, "rules", "list")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if !strings.Contains(lines[0], "HITS") || !strings.Contains(lines[0], "LAST-HIT") ||
		!strings.Contains(lines[1], " 3 ") || !strings.Contains(lines[2], " 0 ") || !strings.Contains(lines[2], "never") {
		t.Errorf("rules list:\n%s", list)
	}
}
