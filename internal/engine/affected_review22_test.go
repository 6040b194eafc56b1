package engine

import (
	"net/netip"
	"strings"
	"testing"
)

// affectedMisses reports the requests (as the flow table knows them, and as a
// flow the table forgot: tuple only) whose verdict went from allow under old to
// something else under new while pred says the change does not affect them.
func affectedMisses(pred func(*Request) bool, req *Request) []string {
	var out []string
	if !pred(req) {
		out = append(out, "the remembered request")
	}
	tupleOnly := &Request{Direction: req.Direction, Protocol: req.Protocol, Local: req.Local, Remote: req.Remote, UID: -1}
	if !pred(tupleOnly) {
		out = append(out, "the tuple-only request (a flow the table forgot)")
	}
	return out
}

// TestAffectedAllowedNewAllowHandsFlowToList (review22, 7d276ac): a list
// decides after the rules that name a program or an identity field and before
// the others (doc.go, "Lists"). A flow allowed by an app-less rule naming a
// unit (identity) over a list that names its remote is denied once an allow
// rule without app or identity, more specific by Remote (step 3, before
// Identity at 6), comes: the new winner names no program, so the list decides.
// AffectedAllowed treats every allow that comes as affecting nothing, so the
// Linux backend left the allowed flow allowed; Affected (before 7d276ac)
// caught it. Now such an allow rule affects the requests it may match while an
// app-less allow rule naming an identity field was in force (handsToList).
func TestAffectedAllowedNewAllowHandsFlowToList(t *testing.T) {
	for _, c := range []struct {
		name  string
		ident Rule // the app-less identity rule that allows
		set   func(*Request)
	}{
		{"unit", Rule{Unit: "backup.service", Action: Allow}, func(r *Request) { r.Unit = "backup.service" }},
		{"parent", Rule{Parent: "/usr/bin/cron", Action: Allow}, func(r *Request) { r.Parents = []string{"/usr/bin/cron"} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEngine(t, Config{}, c.ident)
			e.SetLists([]BlockList{{Name: "bad", Action: Deny, List: testList{"198.18.0.66": true}}})
			req := reqTo("/usr/bin/rsync", "198.18.0.66:443")
			c.set(req)
			if v := decideNow(t, e, req); v.Action != Allow || v.Reason != ReasonRule {
				t.Fatalf("before: %+v, want allowed by the %s rule over the list", v, c.name)
			}
			old := e.Rules()
			if _, err := e.AddRule(Rule{Remote: netip.MustParsePrefix("198.18.0.66/32"), Port: PortRange{443, 443}, Action: Allow}); err != nil {
				t.Fatal(err)
			}
			now := e.Rules()
			v := decideNow(t, e, req)
			if v.Action == Allow {
				t.Fatalf("after: %+v; the premise (the list now decides) does not hold", v)
			}
			if !Affected(old, now)(req) {
				t.Error("Affected says unaffected too")
			}
			if m := affectedMisses(AffectedAllowed(old, now), req); len(m) > 0 {
				t.Errorf("an allow rule came and the flow allowed before is now %s (%s), but AffectedAllowed is false for %s: the backend keeps it allowed",
					v.Action, v.Reason, strings.Join(m, " and "))
			}
		})
	}
}

// TestAffectedIdentityFieldChanged (review22, before 7d276ac too): sameRule
// compared neither the identity fields (Cmdline, Parent, Unit, Container,
// AppID) nor the SHA256 pin, so a rule whose ID stays and whose identity
// changes (an import of an edited export keeps IDs: ReplaceRules) counted as
// unchanged: Affected and AffectedAllowed said a flow the old version allowed
// and the new one no longer matches was unaffected, and it stayed allowed.
// sameRule now compares them.
func TestAffectedIdentityFieldChanged(t *testing.T) {
	const hashA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	const hashB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	for _, c := range []struct {
		name     string
		old, new Rule
		set      func(*Request)
	}{
		{"cmdline",
			Rule{ID: 1, App: "/usr/bin/python3", Cmdline: "*good.py", Action: Allow},
			Rule{ID: 1, App: "/usr/bin/python3", Cmdline: "*other.py", Action: Allow},
			func(r *Request) { r.Exe, r.Cmdline = "/usr/bin/python3", "python3 /opt/good.py" }},
		{"sha256 pin",
			Rule{ID: 1, App: "/usr/bin/python3", SHA256: hashA, Action: Allow},
			Rule{ID: 1, App: "/usr/bin/python3", SHA256: hashB, Action: Allow},
			func(r *Request) { r.Exe, r.ExeSHA256 = "/usr/bin/python3", hashA }},
		{"unit",
			Rule{ID: 1, Unit: "backup.service", Action: Allow},
			Rule{ID: 1, Unit: "other.service", Action: Allow},
			func(r *Request) { r.Unit = "backup.service" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEngine(t, Config{}, c.old)
			if err := e.SetMode(ModeState{Mode: ModeSilentDeny}); err != nil {
				t.Fatal(err)
			}
			req := reqTo("/usr/bin/x", "198.18.0.1:443")
			c.set(req)
			if v := decideNow(t, e, req); v.Action != Allow {
				t.Fatalf("before: %+v, want allowed by rule 1", v)
			}
			old := e.Rules()
			if err := e.ReplaceRules([]Rule{c.new}); err != nil {
				t.Fatal(err)
			}
			now := e.Rules()
			if v := decideNow(t, e, req); v.Action == Allow {
				t.Fatalf("after: %+v; the premise (the new version no longer allows) does not hold", v)
			}
			if !AffectedAllowed(old, now)(req) {
				t.Errorf("rule 1's %s changed (import, same ID): the flow it allowed is now denied, but AffectedAllowed says unaffected", c.name)
			}
			if !Affected(old, now)(req) {
				t.Errorf("rule 1's %s changed (import, same ID): Affected says unaffected too", c.name)
			}
		})
	}
}
