package engine

import (
	"strings"
	"testing"
)

// TestExplainLists: Explain puts the lists where Decide does. A list decides over an
// app-less rule and where no rule matches, naming itself; a rule naming the program
// decides over the list, with a note that the list also names the request. A shared
// name is matched by a list only with HostRulesMatchShared, as in Decide.
func TestExplainLists(t *testing.T) {
	for _, shared := range []bool{false, true} {
		e := newEngine(t, Config{Default: Deny, HostRulesMatchShared: shared},
			Rule{Port: PortRange{443, 443}, Action: Allow},
			Rule{App: "/usr/bin/curl", Action: Allow})
		e.SetLists([]BlockList{{Name: "ads", Action: Deny, List: testList{"ads.example": true, "198.18.7.7": true}}})
		for _, tc := range []struct {
			exe, remote, host string
			src               string
			outcome           Outcome
			list              string
		}{
			{"/usr/bin/wget", "198.18.6.6:443", "ads.example", HostOwn, OutcomeList, "ads"},
			{"/usr/bin/wget", "198.18.7.7:80", "", HostNone, OutcomeList, "ads"},
			{"/usr/bin/curl", "198.18.6.6:443", "ads.example", HostOwn, OutcomeRule, ""},
			{"/usr/bin/wget", "198.18.6.6:443", "ads.example", HostShared, map[bool]Outcome{false: OutcomeRule, true: OutcomeList}[shared], map[bool]string{true: "ads"}[shared]},
			{"/usr/bin/wget", "198.18.6.6:443", "other.example", HostOwn, OutcomeRule, ""},
		} {
			r := reqTo(tc.exe, tc.remote)
			r.Host, r.HostSource = tc.host, tc.src
			r2 := *r
			v := decideNow(t, e, r)
			ex := e.Explain(&r2)
			if ex.Outcome != tc.outcome || ex.List != tc.list || ex.Action != v.Action || (v.Reason == ReasonList) != (ex.Outcome == OutcomeList) {
				t.Errorf("shared=%v %+v: explained %q list %q %v; decided %+v", shared, tc, ex.Outcome, ex.List, ex.Action, v)
			}
			if ex.Outcome == OutcomeList {
				if ex.Rule != nil || len(ex.Notes) != 1 || !strings.Contains(ex.Notes[0], `list "ads" names the`) {
					t.Errorf("%+v: list outcome: rule %v, notes %q", tc, ex.Rule, ex.Notes)
				}
				if tc.remote == "198.18.6.6:443" && (len(ex.Losers) != 1 || ex.Losers[0].Rule.Port.Lo != 443) {
					t.Errorf("%+v: the app-less rule the list beats is not listed as losing: %+v", tc, ex.Losers)
				}
			}
			if tc.exe == "/usr/bin/curl" && (len(ex.Notes) != 1 || !strings.Contains(ex.Notes[0], "rule that names a program decides before lists")) {
				t.Errorf("app rule over a list: notes %q", ex.Notes)
			}
		}
	}
}
