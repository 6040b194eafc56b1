package engine

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

// forged is curl's request as a program that only claims curl's path makes it.
func forged(identity Identity) *Request {
	r := reqTo("/usr/bin/curl", "198.18.0.7:443")
	r.Identity = identity
	if identity == IdentityContainer {
		r.Container = "docker:0123456789ab"
	}
	return r
}

func TestAppRulesMatchOnlyVerifiedIdentities(t *testing.T) {
	rules := []Rule{
		{ID: 1, App: "/usr/bin/curl", Action: Allow},
		{ID: 2, App: "/usr/bin/*", Port: PortRange{443, 443}, Action: Allow},
		{ID: 3, App: "/usr/**", Port: PortRange{443, 443}, Action: Allow},
	}
	for _, id := range []Identity{IdentityUnknown, IdentityUnverified, IdentityContainer} {
		req := forged(id)
		m := compile(rules)
		if c := m.match(req, t0); c != nil {
			t.Errorf("identity %q: rule %d matched a program whose path is not verified", id, c.ID)
		}
		if c := m.matchLinear(req, t0); c != nil {
			t.Errorf("identity %q: linear scan: rule %d matched", id, c.ID)
		}
		for _, r := range rules {
			if r.Matches(req, t0) {
				t.Errorf("identity %q: Rule.Matches says rule %d (%s) matches", id, r.ID, r.App)
			}
		}
	}
	// The same path, verified, is matched by the exact rule.
	req := forged(IdentityVerified)
	if c := compile(rules).match(req, t0); c == nil || c.ID != 1 {
		t.Errorf("verified curl: %v, want rule 1", c)
	}
	// Rules without an app still decide for any identity: the uid and addresses
	// are the kernel's, not the program's word.
	withUser := append(rules, Rule{ID: 4, User: "1000", Action: Deny}, Rule{ID: 5, Remote: pfx("198.18.0.7/32"), Action: Allow})
	if c := compile(withUser).match(forged(IdentityUnverified), t0); c == nil || c.ID != 5 {
		t.Errorf("unverified curl with app-less rules: %v, want rule 5 (remote beats user)", c)
	}
}

// TestContainerAppRuleMatchesThatContainersProgram: a rule naming a container and an
// app matches the container's program by its path in the container, and nothing
// else: not the program of another container, not an unverified or the host's
// (verified) program of that path. An app rule without a container still matches
// no container's program.
func TestContainerAppRuleMatchesThatContainersProgram(t *testing.T) {
	cid := strings.Repeat("0123456789abcdef", 4)
	rules := []Rule{
		{ID: 1, App: "/usr/bin/curl", Container: cid[:12], Port: PortRange{443, 443}, Action: Allow},
		{ID: 2, App: "/usr/bin/*", Container: "docker:" + cid, Port: PortRange{8443, 8443}, Action: Allow},
		{ID: 3, App: "/usr/bin/curl", Port: PortRange{443, 8443}, Action: Deny},
	}
	m := compile(rules)
	at := func(identity Identity, container string, port uint16) *Request {
		r := forged(identity)
		r.Container = container
		r.Remote = netip.AddrPortFrom(r.Remote.Addr(), port)
		return r
	}
	for _, c := range []struct {
		name string
		req  *Request
		want RuleID
	}{
		{"the container's curl", at(IdentityContainer, "docker:"+cid, 443), 1},
		{"the container's curl, glob", at(IdentityContainer, "docker:"+cid, 8443), 2},
		{"another container's curl", at(IdentityContainer, "podman:"+strings.Repeat("f", 64), 443), 0},
		{"the same id under another runtime", at(IdentityContainer, "podman:"+cid, 8443), 0},
		{"the host's curl", at(IdentityVerified, "", 443), 3},
		{"the host's curl, glob port", at(IdentityVerified, "", 8443), 3},
		{"an unverified curl", at(IdentityUnverified, "", 443), 0},
		{"an unverified curl claiming the container", at(IdentityUnverified, "docker:"+cid, 443), 0},
	} {
		var got RuleID
		if r := m.match(c.req, t0); r != nil {
			got = r.ID
		}
		var lin RuleID
		if r := m.matchLinear(c.req, t0); r != nil {
			lin = r.ID
		}
		if got != c.want || lin != c.want {
			t.Errorf("%s: rule %d (linear scan: %d), want %d", c.name, got, lin, c.want)
		}
		for _, r := range rules {
			// Each request matches the wanted rule only, not just as the winner.
			if got := r.Matches(c.req, t0); got != (r.ID == c.want) {
				t.Errorf("%s: Rule.Matches says %v for rule %d", c.name, got, r.ID)
			}
		}
	}
}

func TestUnverifiedProgramIsAskedNotAllowed(t *testing.T) {
	e := newEngine(t, Config{}, Rule{App: "/usr/bin/curl", Action: Allow})
	real, fake := newVerdicts(t), newVerdicts(t)
	e.Decide(forged(IdentityVerified), real.fn)
	if got := real.wait(); got.Action != Allow || got.Reason != ReasonRule {
		t.Errorf("the real curl: %+v, want allowed by its rule", got)
	}
	e.Decide(forged(IdentityUnverified), fake.fn)
	fake.pending()
	p := onlyPrompt(t, e)
	if p.Request.Identity != IdentityUnverified {
		t.Errorf("question's identity %q, want unverified", p.Request.Identity)
	}
}

func TestForgedAndRealProgramsDoNotShareAQuestion(t *testing.T) {
	e := newEngine(t, Config{})
	real, fake, box := newVerdicts(t), newVerdicts(t), newVerdicts(t)
	e.Decide(forged(IdentityVerified), real.fn)
	e.Decide(forged(IdentityUnverified), fake.fn)
	e.Decide(forged(IdentityContainer), box.fn)
	ps := e.Prompts()
	if len(ps) != 3 {
		t.Fatalf("%d questions, want 3: one per identity", len(ps))
	}
	var realID PromptID
	for _, p := range ps {
		if p.Request.Identity == IdentityVerified {
			realID = p.ID
		}
	}
	// Allowing the real curl once lets nothing else through.
	if _, err := e.Answer(realID, Answer{Action: Allow}); err != nil {
		t.Fatal(err)
	}
	if got := real.wait(); got.Action != Allow {
		t.Errorf("real: %+v", got)
	}
	fake.pending()
	box.pending()
}

func TestAnswerForUnverifiedProgramIsOnceOnly(t *testing.T) {
	for _, id := range []Identity{IdentityUnverified, IdentityContainer} {
		for _, action := range []Action{Allow, Deny} {
			e := newEngine(t, Config{})
			v := newVerdicts(t)
			e.Decide(forged(id), v.fn)
			p := onlyPrompt(t, e)
			_, err := e.Answer(p.ID, Answer{Action: action, For: Forever, Scope: ScopeApp})
			if err == nil || !strings.Contains(err.Error(), "answer once") {
				t.Fatalf("%s: remembering %s for a program that is %s: %v, want an error", id, action, id, err)
			}
			v.pending()
			if len(e.Rules()) != 0 {
				t.Fatalf("%s: a rule was created: %+v", id, e.Rules())
			}
			if _, err := e.Answer(p.ID, Answer{Action: action}); err != nil {
				t.Fatalf("%s: answering once: %v", id, err)
			}
			if got := v.wait(); got.Action != action || got.Reason != ReasonPrompt {
				t.Errorf("%s: verdict %+v", id, got)
			}
			// The real curl is still asked about: nothing was remembered for its path.
			real := newVerdicts(t)
			e.Decide(forged(IdentityVerified), real.fn)
			real.pending()
		}
	}
}

func TestIdentityText(t *testing.T) {
	for _, id := range []Identity{IdentityUnknown, IdentityVerified, IdentityUnverified, IdentityContainer} {
		b, err := json.Marshal(Request{Identity: id})
		if err != nil {
			t.Fatal(err)
		}
		if want := `"identity":"` + id.String() + `"`; !strings.Contains(string(b), want) {
			t.Errorf("%v as JSON: %s, want %s", id, b, want)
		}
		var back Request
		if err := json.Unmarshal(b, &back); err != nil || back.Identity != id {
			t.Errorf("%s: read back %v, %v", b, back.Identity, err)
		}
	}
	var r Request
	if err := json.Unmarshal([]byte(`{"identity":"trusted"}`), &r); err == nil {
		t.Error(`identity "trusted" accepted`)
	}
}
