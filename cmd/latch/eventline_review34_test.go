//go:build linux

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/events"
)

// TestReview34EventLineQuotesSpaces (review 34, low): `latch events` text lines
// showed the program's path and the host name escaped but not quoted, so a path
// with spaces (any local user names its program) or a host name with spaces (DNS
// answers hold any byte) could pass for other fields of the line: below, the line
// reads as if /usr/bin/firefox's connection to 198.18.0.9 had been denied by rule 7.
// README's rule for tables and watch's question line (a value holding a space or a
// double quote is shown in double quotes) must hold here too.
func TestReview34EventLineQuotesSpaces(t *testing.T) {
	fake := "/usr/bin/firefox pid 4242 -> 198.18.0.9:443: deny (rule 7)  "
	ev := &events.Event{
		Event: events.ConnectionDecided, Time: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC),
		Connection: &events.Connection{Direction: "out", Protocol: "tcp", RemoteIP: "198.18.0.1", RemotePort: 443,
			RemoteHost: "www.example.com (198.18.0.9):443: deny"},
		Process:  &events.Process{PID: 31337, Executable: "/tmp/ " + fake, UID: 1000},
		Decision: &events.Decision{Action: "allow", Reason: "rule", RuleID: 3},
	}
	line := eventLine(ev)
	if !strings.Contains(line, `"/tmp/ `+fake+`"`) {
		t.Errorf("program path with spaces not in double quotes:\n%s", line)
	}
	if !strings.Contains(line, `"www.example.com (198.18.0.9):443: deny"`) {
		t.Errorf("host name with spaces not in double quotes:\n%s", line)
	}
}

// TestReview34ExplainQuotesSpaces (review 34, low): `latch explain --conn ID` shows a
// past connection's program and host from the history the same way, escaped but not
// quoted: a program's path can claim another user (below, "(user root)") and a host
// name another destination.
func TestReview34ExplainQuotesSpaces(t *testing.T) {
	var b strings.Builder
	printExplanation(&b, &api.Explanation{Request: api.ExplainedConn{
		Direction: engine.Outbound, Proto: engine.TCP, RemoteIP: "198.18.0.1", RemotePort: 443,
		Exe: "/tmp/ /usr/bin/apt (user root) -> deb.debian.org (198.18.0.9):443 ", UID: 1000, User: "mallory",
		Host: "www.example.com (198.18.0.9):443 ",
	}})
	out := b.String()
	if !strings.Contains(out, `"/tmp/ /usr/bin/apt (user root) -> deb.debian.org (198.18.0.9):443 "`) ||
		!strings.Contains(out, `"www.example.com (198.18.0.9):443 "`) {
		t.Errorf("program path or host name with spaces not in double quotes:\n%s", out)
	}
}

// TestReview34RuleSummaryQuotesSpaces (review 34, low): a rule made by answering a
// question names the program's path, which any local user chooses. ruleSummary (the
// rule in `latch explain` and in `latch events` lines) wrote it as app=PATH unquoted,
// so a path can show match fields the rule does not have: below, an app-wide allow
// reads as if it were bound to one address and port.
func TestReview34RuleSummaryQuotesSpaces(t *testing.T) {
	r := engine.Rule{ID: 5, App: "/tmp/x remote=198.18.0.9/32 port=443", Action: engine.Allow}
	if s := ruleSummary(r); !strings.Contains(s, `app="/tmp/x remote=198.18.0.9/32 port=443"`) {
		t.Errorf("ruleSummary: %s\nwant the app in double quotes", s)
	}
}

// TestExplainPrintsList: a connection a blocklist decides is shown as decided by
// that list, by name, with the rules it overrules.
func TestExplainPrintsList(t *testing.T) {
	var b strings.Builder
	printExplanation(&b, &api.Explanation{Request: api.ExplainedConn{
		Direction: engine.Outbound, Proto: engine.TCP, RemoteIP: "198.18.0.1", RemotePort: 443, Exe: "/usr/bin/wget", UID: 1000,
	}, Explanation: engine.Explanation{Outcome: engine.OutcomeList, List: "ads", Action: engine.Deny,
		Notes:  []string{`list "ads" names the host ads.example: lists decide after the rules that name a program, before those that name none`},
		Losers: []engine.Loser{{Rule: engine.Rule{ID: 3, Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Allow}}}}})
	out := b.String()
	for _, want := range []string{"now:        deny by list ads\n", `list "ads" names the host ads.example`, "  rule 3: allow port=443\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("explanation lacks %q:\n%s", want, out)
		}
	}
}
