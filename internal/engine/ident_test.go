package engine

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func TestCmdlineMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"python3 /opt/a.py", "python3 /opt/a.py", true},
		{"python3 /opt/a.py", "python3 /opt/a.py --x", false},
		{"* /opt/a.py*", "/usr/bin/python3 /opt/a.py --verbose", true},
		{"* /opt/a.py*", "/usr/bin/python3 /opt/b.py", false},
		{"*", "", true},
		{"", "", true},
		{"", "x", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{`a\*c`, "a*c", true},
		{`a\*c`, "abc", false},
		{"*a*b*c*", "xxaxxbxxcxx", true},
		{"*a*b*c*", "xxaxxcxxbxx", false},
	} {
		if got := cmdlineMatch(c.pattern, c.s); got != c.want {
			t.Errorf("cmdlineMatch(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
	// Bounded: a pathological pattern on a long line does not explode.
	long := strings.Repeat("a", 4000)
	if cmdlineMatch(strings.Repeat("*a", 100)+"b", long) {
		t.Error("matched")
	}
}

func TestIdentityRulesValidate(t *testing.T) {
	for _, c := range []struct {
		r     Rule
		field string
	}{
		{Rule{Action: Allow, Cmdline: "python3 /opt/a.py"}, "cmdline"},               // cmdline alone never allows
		{Rule{Action: Allow, App: "/usr/bin/python3", Parent: "relative"}, "parent"}, // a path
		{Rule{Action: Allow, Unit: "nginx"}, "unit"},
		{Rule{Action: Allow, Unit: "../x.service"}, "unit"},
		{Rule{Action: Allow, Container: "a b"}, "container"},
		{Rule{Action: Allow, AppID: "org.mozilla.firefox"}, "app_id"}, // needs user
	} {
		err := c.r.Validate()
		var fe *FieldError
		if err == nil || !asFieldError(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: error %v, want one about %s", c.r, err, c.field)
		}
	}
	for _, r := range []Rule{
		{Action: Allow, App: "/usr/bin/python3", Cmdline: "* /opt/a.py"},
		{Action: Allow, Parent: "/usr/sbin/sshd"},
		{Action: Allow, Unit: "nginx.service"},
		{Action: Allow, Container: "docker:" + strings.Repeat("ab", 32)},
		{Action: Allow, AppID: "org.mozilla.firefox", User: "1000"},
	} {
		if err := r.Validate(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
}

func asFieldError(err error, fe **FieldError) bool {
	f, ok := err.(*FieldError)
	*fe = f
	return ok
}

// TestCmdlineNarrowsAppRule: "allow this one script, not every python3".
func TestCmdlineNarrowsAppRule(t *testing.T) {
	e := newEngine(t, Config{},
		Rule{App: "/usr/bin/python3", Action: Deny},
		Rule{App: "/usr/bin/python3", Cmdline: "* /opt/good.py*", Action: Allow},
	)
	e.SetMode(ModeState{Mode: ModeSilentDeny}) // no rule: denied at once, not asked
	good := reqTo("/usr/bin/python3", "198.18.0.1:443")
	good.Cmdline = "python3 /opt/good.py --serve"
	bad := reqTo("/usr/bin/python3", "198.18.0.1:443")
	bad.Cmdline = "python3 /opt/bad.py"
	if v := decideNow(t, e, good); v.Action != Allow || v.RuleID != 2 {
		t.Errorf("good script: %+v", v)
	}
	if v := decideNow(t, e, bad); v.Action != Deny || v.RuleID != 1 {
		t.Errorf("other script: %+v", v)
	}
	// A forged program carrying the command line gets nothing from the rule.
	forged := *good
	forged.Identity = IdentityUnverified
	if v := decideNow(t, e, &forged); v.Reason == ReasonRule {
		t.Errorf("unverified program with the good command line: %+v", v)
	}
	ex := e.Explain(good)
	if ex.Step != StepIdentity {
		t.Errorf("explain step %v, want identity", ex.Step)
	}
}

func TestParentUnitContainerAppID(t *testing.T) {
	cid := strings.Repeat("3f", 32)
	e := newEngine(t, Config{},
		Rule{Parent: "/usr/sbin/sshd", Action: Allow},
		Rule{Unit: "nginx.service", Action: Allow},
		Rule{Container: cid[:12], Action: Allow},
		Rule{Container: "machine:web", Action: Allow},
		Rule{AppID: "org.mozilla.firefox", User: "1000", Action: Allow},
	)
	e.SetMode(ModeState{Mode: ModeSilentDeny}) // no rule: denied at once, not asked
	check := func(name string, mod func(*Request), want RuleID) {
		t.Helper()
		r := reqTo("/usr/bin/curl", "198.18.0.1:443")
		mod(r)
		v := decideNow(t, e, r)
		if want == 0 && v.Reason == ReasonRule {
			t.Errorf("%s: decided by rule %d, want a question", name, v.RuleID)
		} else if want != 0 && v.RuleID != want {
			t.Errorf("%s: %+v, want rule %d", name, v, want)
		}
	}
	check("child of sshd", func(r *Request) { r.Parents = []string{"/usr/bin/bash", "/usr/sbin/sshd", "/usr/lib/systemd/systemd"} }, 1)
	check("ancestor sshd unverified", func(r *Request) { r.Parents = []string{"/usr/bin/bash", ""} }, 0)
	check("unit", func(r *Request) { r.Unit = "nginx.service" }, 2)
	check("other unit", func(r *Request) { r.Unit = "nginx2.service" }, 0)
	check("docker short id", func(r *Request) { r.Identity, r.Container = IdentityContainer, "docker:"+cid }, 3)
	check("machine name", func(r *Request) { r.Identity, r.Container = IdentityContainer, "machine:web" }, 4)
	check("name as bare", func(r *Request) { r.Identity, r.Container = IdentityContainer, "machine:webx" }, 0)
	check("app id", func(r *Request) { r.AppID = "org.mozilla.firefox" }, 5)
	check("app id, other user", func(r *Request) { r.AppID, r.UID = "org.mozilla.firefox", 1001 }, 0)
}

// TestIdentityIndexAgreesWithLinear: with identity fields on random rules, the
// indexed matcher still picks what the plain scan in precedence order picks.
func TestIdentityIndexAgreesWithLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{5, 50, 500, 3000} {
		for range 3 {
			rules := randomRules(rng, n)
			for i := range rules {
				r := &rules[i]
				switch rng.IntN(10) {
				case 0:
					if r.App != "" {
						r.Cmdline = fmt.Sprintf("* /opt/s%d.py*", rng.IntN(3))
					}
				case 1:
					r.Parent = fmt.Sprintf("/opt/app%d/bin/*", rng.IntN(max(n/8, 1)))
				case 2:
					r.Unit = fmt.Sprintf("u%d.service", rng.IntN(3))
				case 3:
					r.Unit = fmt.Sprintf("u%d.service", rng.IntN(3))
					if r.App != "" {
						r.Cmdline = "*"
					}
				case 4, 5:
					// With or without an app: a container rule's app matches the
					// container's program by its path in the container.
					r.Container = fmt.Sprintf("docker:%064d", rng.IntN(2))
				}
			}
			m := compile(rules)
			for range 2000 {
				req := randomRequest(rng, n)
				req.Cmdline = fmt.Sprintf("python3 /opt/s%d.py", rng.IntN(4))
				req.Unit = fmt.Sprintf("u%d.service", rng.IntN(4))
				req.Parents = []string{fmt.Sprintf("/opt/app%d/bin/app0", rng.IntN(max(n/8, 1))), ""}
				if req.Identity == IdentityContainer {
					req.Container = fmt.Sprintf("docker:%064d", rng.IntN(3))
				}
				got, want := m.match(req, t0), m.matchLinear(req, t0)
				if got != want {
					t.Fatalf("%d rules, request %+v: index says %v, linear scan says %v", n, req, got, want)
				}
			}
		}
	}
}

func TestIdentityScopes(t *testing.T) {
	e := newEngine(t, Config{})
	ask := func(mod func(*Request)) PromptID {
		t.Helper()
		r := reqTo("/usr/bin/curl", "198.18.0.1:443")
		mod(r)
		e.Decide(r, func(Verdict) {})
		ps := e.Prompts()
		return ps[len(ps)-1].ID
	}
	cid := "docker:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		scope string
		mod   func(*Request)
		want  Rule
	}{
		{"unit", func(r *Request) { r.Unit = "nginx.service" }, Rule{Unit: "nginx.service"}},
		{"app+unit", func(r *Request) { r.Unit = "web.service"; r.Remote = netip.MustParseAddrPort("198.18.0.2:1") }, Rule{App: "/usr/bin/curl", Unit: "web.service"}},
		{"container", func(r *Request) { r.Identity, r.Container = IdentityContainer, cid }, Rule{Container: cid}},
		{"app-id", func(r *Request) { r.AppID = "org.example.App"; r.Remote = netip.MustParseAddrPort("198.18.0.3:1") }, Rule{AppID: "org.example.App", User: "1000"}},
	} {
		sc, err := ParseScope(c.scope)
		if err != nil || sc.String() != c.scope {
			t.Fatalf("scope %q: %v %v", c.scope, sc, err)
		}
		id := ask(c.mod)
		r, err := e.Answer(id, Answer{Action: Allow, For: Forever, Scope: sc})
		if err != nil {
			t.Fatalf("%s: %v", c.scope, err)
		}
		if r.App != c.want.App || r.Unit != c.want.Unit || r.Container != c.want.Container || r.AppID != c.want.AppID || r.User != c.want.User {
			t.Errorf("%s: rule %s", c.scope, r)
		}
	}
	// A scope the request cannot fill is an error, and the question stays open.
	id := ask(func(r *Request) { r.Remote = netip.MustParseAddrPort("198.18.0.9:9") })
	if _, err := e.Answer(id, Answer{Action: Allow, For: Forever, Scope: ScopeUnit}); err == nil {
		t.Error("scope unit without a unit: no error")
	}
	if len(e.Prompts()) == 0 {
		t.Error("a refused answer closed the question")
	}
}

func TestPinnedRule(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	other := strings.Repeat("cd", 32)
	if err := (Rule{App: "/tmp/*", SHA256: sum, Action: Allow}).Validate(); err == nil {
		t.Error("a pin on a glob was accepted")
	}
	if err := (Rule{App: "/tmp/x", SHA256: "ABC", Action: Allow}).Validate(); err == nil {
		t.Error("a malformed pin was accepted")
	}
	e := newEngine(t, Config{}, Rule{App: "/home/a/bin/tool", SHA256: sum, Action: Allow})
	req := func(h string, port string) *Request {
		r := reqTo("/home/a/bin/tool", "198.18.0.1:"+port)
		r.ExeSHA256 = h
		if h == "-" {
			r.ExeSHA256, r.ExeHashNote = "", "2147483648 bytes, over the 1073741824 latch hashes"
		}
		return r
	}
	if v := decideNow(t, e, req(sum, "1")); v.Reason != ReasonRule {
		t.Errorf("the pinned file: %+v", v)
	}
	for _, c := range []struct{ hash, port, note string }{
		{other, "2", "the program at /home/a/bin/tool changed since you allowed it"},
		{"", "3", "latch is still hashing the program at /home/a/bin/tool (it has a pinned rule): asking meanwhile"},
		{"-", "4", "latch does not hash the program at /home/a/bin/tool (2147483648 bytes, over the 1073741824 latch hashes): its pinned rule cannot match it"},
	} {
		e.Decide(req(c.hash, c.port), func(Verdict) {})
		ps := e.Prompts()
		if p := ps[len(ps)-1]; p.Note != c.note {
			t.Errorf("question about hash %q: note %q, want %q", c.hash, p.Note, c.note)
		}
	}
	// Answering pins the program (outside the system's paths), by its content now.
	ps := e.Prompts()
	r, err := e.Answer(ps[0].ID, Answer{Action: Allow, For: Forever, Scope: ScopeApp})
	if err != nil || r.SHA256 != other {
		t.Errorf("answer's rule %v, %v: want pinned to %s", r, err, other)
	}
}

// TestContainerMatchesUserOwned: a container label from a user's own cgroup tree
// ("RUNTIME@UID:ID", which that user's programs may have chosen) is matched only by
// a rule that names it so, never by a rule for the system container of that id or
// name; system labels match as before.
func TestContainerMatchesUserOwned(t *testing.T) {
	const id = "4bd8f2a1c3e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7"
	for _, tc := range []struct {
		rule, req string
		want      bool
	}{
		{id, "docker:" + id, true},
		{id[:12], "docker:" + id, true},
		{"docker:" + id, "docker:" + id, true},
		{"box", "machine:box", true},
		{id, "docker@1000:" + id, false},
		{id[:12], "docker@1000:" + id, false},
		{"docker:" + id, "docker@1000:" + id, false},
		{"box", "machine@1000:box", false},
		{"machine:box", "machine@1000:box", false},
		{"docker@1000:" + id, "docker@1000:" + id, true},
		{"docker@1000:" + id[:12], "docker@1000:" + id, true},
		{"machine@1000:box", "machine@1000:box", true},
		{"docker@1001:" + id, "docker@1000:" + id, false},
		{"docker@1000:" + id, "docker:" + id, false},
	} {
		if got := containerMatches(tc.rule, tc.req, ""); got != tc.want {
			t.Errorf("containerMatches(%q, %q) = %v, want %v", tc.rule, tc.req, got, tc.want)
		}
	}
	// With the runtime's name of the container: a system container's name matches
	// alone or after its runtime; a user's own container's name (the user's claim)
	// only after "RUNTIME@UID:", never a rule naming a system container.
	for _, tc := range []struct {
		rule, req, name string
		want            bool
	}{
		{"web-1", "docker:" + id, "web-1", true},
		{"docker:web-1", "docker:" + id, "web-1", true},
		{"podman:web-1", "docker:" + id, "web-1", false},
		{"web-2", "docker:" + id, "web-1", false},
		{"web-1", "docker:" + id, "", false},
		{"docker:web-1", "docker:" + id, "", false},
		{id[:12], "docker:" + id, "web-1", true},
		{"web-1", "podman@1000:" + id, "web-1", false},
		{"podman:web-1", "podman@1000:" + id, "web-1", false},
		{"podman@1000:web-1", "podman@1000:" + id, "web-1", true},
		{"podman@1001:web-1", "podman@1000:" + id, "web-1", false},
		{"podman@1000:web-1", "podman:" + id, "web-1", false},
		{"", "docker:" + id, "", false},
	} {
		if got := containerMatches(tc.rule, tc.req, tc.name); got != tc.want {
			t.Errorf("containerMatches(%q, %q, name %q) = %v, want %v", tc.rule, tc.req, tc.name, got, tc.want)
		}
	}
	for _, c := range []string{"podman@1000:" + id, "machine@0:box"} {
		if err := (&Rule{Action: Allow, Container: c}).validateIdentity(); err != nil {
			t.Errorf("container %q refused: %v", c, err)
		}
	}
	for _, c := range []string{"podman@:" + id, "@1000:" + id, "podman@x:" + id, "podman@1000", "a@1@2:" + id, id + "@1"} {
		if err := (&Rule{Action: Allow, Container: c}).validateIdentity(); err == nil {
			t.Errorf("container %q accepted", c)
		}
	}
}

// TestContainerRuleByIDDoesNotFollowAName: a rule naming a container by id (12 to 64
// hex digits, alone or after "RUNTIME:", as `--scope container` writes it) matches
// that id only, never another container its runtime names like that id: docker and
// podman take such names ("docker run --name 4bd8f2a1c3e5"), and README promises that
// a rule by id never follows a name.
func TestContainerRuleByIDDoesNotFollowAName(t *testing.T) {
	const id = "4bd8f2a1c3e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7"
	other := "docker:" + strings.Repeat("0123456789abcdef", 4)
	for _, tc := range []struct {
		rule, name string
	}{
		{id[:12], id[:12]},
		{id, id},
		{"docker:" + id, id},
		{"docker:" + id[:12], id[:12]},
	} {
		if containerMatches(tc.rule, other, tc.name) {
			t.Errorf("rule %q matches container %s named %q: a rule by id followed a name", tc.rule, other, tc.name)
		}
	}
	// Names that are not ids still match, and ids do, "RUNTIME:" and the short id as
	// `latch conns` shows it included.
	if !containerMatches("web-1", other, "web-1") || !containerMatches("docker:cafe", other, "cafe") {
		t.Error("a rule by name no longer matches")
	}
	if !containerMatches("docker:"+other[7:19], other, "web-1") || !containerMatches(other[7:19], other, "") {
		t.Error("a rule by the short id no longer matches")
	}
}
