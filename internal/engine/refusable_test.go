package engine

import "testing"

// TestHostRefusable: a name that a deny, reject or drop rule names (exactly, or by a
// wildcard covering it), for whatever program, is refusable; a name only allow rules
// name, or none, is not — and then RuleFor gives no refusing host rule for it, for any
// program.
func TestHostRefusable(t *testing.T) {
	e := newEngine(t, Config{},
		Rule{ID: 1, App: "/usr/bin/a", Host: "blocked.test", Action: Deny},
		Rule{ID: 2, Host: "ok.test", Action: Allow},
		Rule{ID: 3, Host: "*.ads.test", Action: Reject},
		Rule{ID: 4, App: "/usr/bin/b", Host: "*.shared.test", Action: Allow},
		Rule{ID: 5, Host: "x.shared.test", Action: Drop, Port: PortRange{Lo: 443, Hi: 443}},
	)
	for host, want := range map[string]bool{
		"blocked.test": true, "BLOCKED.test.": true, "ok.test": false, "one.ads.test": true,
		"a.b.ads.test": true, "ads.test": false, "x.shared.test": true, "y.shared.test": false,
		"other.test": false, "": false,
	} {
		if got := e.HostRefusable(host); got != want {
			t.Errorf("HostRefusable(%q) = %v, want %v", host, got, want)
		}
		if want {
			continue
		}
		for _, exe := range []string{"/usr/bin/a", "/usr/bin/b", "/usr/bin/c"} {
			req := &Request{Direction: Outbound, Exe: exe, Identity: IdentityVerified, UID: 1000, PID: 42, Host: host, HostSource: HostOwn}
			if r, ok := e.RuleFor(req); ok && r.Host != "" && r.Action != Allow {
				t.Errorf("%s %q: RuleFor gives refusing rule %d though HostRefusable is false", exe, host, r.ID)
			}
		}
	}
	empty := newEngine(t, Config{})
	if empty.HostRefusable("blocked.test") {
		t.Error("no rules: refusable")
	}
}
