package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestSuggestionsQuoteSpaces: `latch suggestions` shows the program's path and the host
// name as fields, like the other tables: a value with a space is in double quotes, so a
// host name cannot read as another port, count or suggestion, and a host named "any"
// is told apart from "any destination".
func TestSuggestionsQuoteSpaces(t *testing.T) {
	last := time.Date(2026, 12, 6, 12, 0, 0, 0, time.Local)
	ss := []engine.Suggestion{
		{ID: 1, Count: 3, Last: last, Rule: engine.Rule{App: "/opt/My App/app", Direction: engine.Outbound, Protocol: engine.TCP,
			Host: "evil.example port 22\t9 connections", Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Allow}},
		{ID: 2, Count: 1, Last: last, Rule: engine.Rule{App: "/opt/My App/app", Direction: engine.Outbound, Protocol: engine.UDP,
			Host: "any", Port: engine.PortRange{Lo: 53, Hi: 53}, Action: engine.Allow}},
		{ID: 3, Count: 1, Last: last, Rule: engine.Rule{App: "/usr/bin/curl", Direction: engine.Outbound, Protocol: engine.TCP,
			Remote: netip.MustParsePrefix("198.18.0.9/32"), Port: engine.PortRange{Lo: 80, Hi: 80}, Action: engine.Allow}},
		{ID: 4, Count: 1, Last: last, Rule: engine.Rule{App: "/usr/bin/curl", Direction: engine.Outbound, Protocol: engine.TCP,
			Port: engine.PortRange{Lo: 8080, Hi: 8080}, Action: engine.Allow}},
	}
	var b strings.Builder
	if err := printSuggestions(&b, ss, engine.SuggestionStats{}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"\"/opt/My App/app\"\n",
		`"evil.example port 22\x099 connections"`,
		`"any"`,
		"198.18.0.9/32",
		"/usr/bin/curl\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("suggestions output lacks %q:\n%s", want, out)
		}
	}
	if lines := strings.Split(out, "\n"); len(lines) != 7 || !strings.Contains(lines[5], " any ") {
		t.Errorf("want 2 programs and 4 suggestions, the last to any destination (unquoted):\n%s", out)
	}
}

// TestRuleSummaryShowsProgramConditions: the rule shown by explain and event lines
// names the conditions on the program beyond its path (command line, parent, unit,
// app id, pin), quoted as fields, so that a narrow rule does not read as one for
// every run of the program.
func TestRuleSummaryShowsProgramConditions(t *testing.T) {
	r := engine.Rule{ID: 5, App: "/usr/bin/python3", Cmdline: "python3 -m http.server *", Parent: "/usr/bin/bash",
		Unit: "web.service", AppID: "org.example.App", Action: engine.Allow}
	s := ruleSummary(r)
	for _, want := range []string{`app=/usr/bin/python3`, `cmdline="python3 -m http.server *"`, `parent=/usr/bin/bash`,
		`unit=web.service`, `app-id=org.example.App`} {
		if !strings.Contains(s, want) {
			t.Errorf("ruleSummary: %s\nlacks %s", s, want)
		}
	}
}
