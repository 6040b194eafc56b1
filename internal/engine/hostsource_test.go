package engine

import "testing"

// TestHostRulesMatchOwnNamesOnly: a name another program resolved (HostSource
// "shared") matches no host rule by default, with either precedence path (the indexed
// matcher and a glob app rule), and answering with a host scope then remembers the
// address; Config.HostRulesMatchShared lets it match.
func TestHostRulesMatchOwnNamesOnly(t *testing.T) {
	rules := []Rule{
		{ID: 1, Host: "bank.example.com", Action: Allow},
		{ID: 2, App: "/opt/**", Host: "*.example.org", Action: Allow},
	}
	for _, tc := range []struct {
		exe, host, source string
		matchShared       bool
		want              RuleID
	}{
		{"/usr/bin/curl", "bank.example.com", HostOwn, false, 1},
		{"/usr/bin/curl", "bank.example.com", "", false, 1}, // a backend that does not tell
		{"/usr/bin/curl", "bank.example.com", HostShared, false, 0},
		{"/usr/bin/curl", "bank.example.com", HostShared, true, 1},
		{"/opt/app/bin", "www.example.org", HostOwn, false, 2},
		{"/opt/app/bin", "www.example.org", HostShared, false, 0},
		{"/opt/app/bin", "www.example.org", HostShared, true, 2},
		{"/usr/bin/curl", "", HostNone, true, 0},
	} {
		e := newEngine(t, Config{Now: newClock().Now, HostRulesMatchShared: tc.matchShared}, rules...)
		req := reqTo(tc.exe, "198.18.0.7:443")
		req.Host, req.HostSource = tc.host, tc.source
		v := newVerdicts(t)
		e.Decide(req, v.fn)
		if tc.want == 0 {
			p := onlyPrompt(t, e)
			if p.Request.Host != tc.host || p.Request.HostSource != tc.source {
				t.Errorf("%+v: prompt shows host %q (%s)", tc, p.Request.Host, p.Request.HostSource)
			}
			rule, err := e.Answer(p.ID, Answer{Action: Allow, For: Forever, Scope: ScopeAppHost})
			if err != nil {
				t.Fatal(err)
			}
			if rule.Host != "" || rule.Remote != pfx("198.18.0.7/32") {
				t.Errorf("%+v: answer with scope app+host made rule %v; want the address, not a name it did not resolve", tc, rule)
			}
			v.wait()
			continue
		}
		if got := v.wait(); got.Reason != ReasonRule || got.RuleID != tc.want {
			t.Errorf("%+v: verdict %+v, want rule %d", tc, got, tc.want)
		}
	}
}
