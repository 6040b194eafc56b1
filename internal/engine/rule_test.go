package engine

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want PortRange
		err  string
	}{
		{"443", PortRange{443, 443}, ""},
		{"1000-2000", PortRange{1000, 2000}, ""},
		{"", PortRange{}, "empty"},
		{"any", PortRange{}, ""},
		{"ANY", PortRange{}, "not a port number"},
		{"65535", PortRange{65535, 65535}, ""},
		{"2000-1000", PortRange{}, "low end 2000 above high end 1000"},
		{"0", PortRange{}, "port 0"},
		{"65536", PortRange{}, "not a port number"},
		{"-5", PortRange{}, "not a port number"},
		{"+5", PortRange{}, "not a port number"},
		{"1-2-3", PortRange{}, "not a port number"},
		{"http", PortRange{}, "not a port number"},
	} {
		got, err := ParsePortRange(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePortRange(%q) error = %v, want containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseRemote(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"198.18.0.1", "198.18.0.1/32", ""},
		{"198.18.0.0/15", "198.18.0.0/15", ""},
		{"198.18.3.4/15", "", "host bits set; did you mean 198.18.0.0/15?"},
		{"2001:db8::1/32", "", "host bits set; did you mean 2001:db8::/32?"},
		{"any", "invalid Prefix", ""},
		{"2001:db8::1", "2001:db8::1/128", ""},
		{"2001:db8::/32", "2001:db8::/32", ""},
		{"", "", "empty"},
		{"198.18.0.0/33", "", "not an address or CIDR"},
		{"example.com", "", "not an address or CIDR"},
		{"::ffff:198.18.0.1", "", "IPv4-mapped"},
		{"fe80::1%eth0", "", "zones"},
	} {
		got, err := ParseRemote(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseRemote(%q) error = %v, want containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseRemote(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestValidateNamesField(t *testing.T) {
	ok := Rule{Action: Allow}
	for _, tc := range []struct {
		name  string
		edit  func(*Rule)
		field string
	}{
		{"no action", func(r *Rule) { r.Action = NoAction }, "action"},
		{"bad action", func(r *Rule) { r.Action = 99 }, "action"},
		{"bad dir", func(r *Rule) { r.Direction = 7 }, "dir"},
		{"bad glob", func(r *Rule) { r.App = "/usr/bin/[a" }, "app"},
		{"partial doublestar", func(r *Rule) { r.App = "/usr/**bin/x" }, "app"},
		{"lo>hi", func(r *Rule) { r.Port = PortRange{20, 10} }, "port"},
		{"port 0", func(r *Rule) { r.Port = PortRange{0, 10} }, "port"},
		{"local lo>hi", func(r *Rule) { r.LocalPort = PortRange{20, 10} }, "local_port"},
		{"host bits", func(r *Rule) { r.Remote = netip.MustParsePrefix("198.18.0.1/15") }, "remote"},
		{"mapped", func(r *Rule) { r.Remote = netip.MustParsePrefix("::ffff:198.18.0.0/120") }, "remote"},
		{"uid range", func(r *Rule) { r.User = "99999999999" }, "user"},
		{"host with a space", func(r *Rule) { r.Host = "www.example .com" }, "host"},
		{"host is an address", func(r *Rule) { r.Host = "198.18.0.1" }, "host"},
		{"host wildcard inside", func(r *Rule) { r.Host = "www.*.com" }, "host"},
		{"year", func(r *Rule) { r.Expires = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "expires"},
	} {
		r := ok
		tc.edit(&r)
		err := r.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: Validate() = %v, want a FieldError for %q", tc.name, err, tc.field)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("minimal rule: %v", err)
	}
}

func TestParseHost(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"", "", ""},
		{"www.example.com", "www.example.com", ""},
		{"WWW.Example.COM.", "www.example.com", ""},
		{"*.example.com", "*.example.com", ""},
		{"*.Example.com.", "*.example.com", ""},
		{"_dmarc.example-1.com", "_dmarc.example-1.com", ""},
		{"localhost", "localhost", ""},
		{"*", "", "want a hostname"},
		{"*.", "", "want a hostname"},
		{".", "", "want a hostname"},
		{"*example.com", "", "'*' only as a whole first label"},
		{"www.*.com", "", `character '*' in label "*"`},
		{"a..b", "", "empty label"},
		{".example.com", "", "empty label"},
		{"198.18.0.1", "", "an address"},
		{"2001:2::1", "", "an address"},
		{"exa mple.com", "", `character ' '`},
		{"héllo.com", "", "character"},
		{strings.Repeat("a", 64) + ".com", "", "label 1 longer than 63"},
		{strings.Repeat("a.", 127) + "com", "", "longer than 253"},
	} {
		got, err := ParseHost(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseHost(%q) = %q, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseHost(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		pattern, host string
		want          bool
	}{
		{"www.example.com", "www.example.com", true},
		{"www.example.com", "xwww.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false}, // the apex is not a subdomain
		{"*.example.com", "badexample.com", false},
		{"*.example.com", "", false},
		{"example.com", "", false},
	} {
		if got := hostMatches(tc.pattern, tc.host); got != tc.want {
			t.Errorf("hostMatches(%q, %q) = %v, want %v", tc.pattern, tc.host, got, tc.want)
		}
	}
}

func TestRuleJSONHost(t *testing.T) {
	var r Rule
	if err := r.UnmarshalJSON([]byte(`{"id":1,"app":"/usr/bin/curl","host":"*.Example.COM.","port":443,"action":"allow"}`)); err != nil {
		t.Fatal(err)
	}
	if r.Host != "*.example.com" {
		t.Errorf("host %q, want *.example.com (normal form)", r.Host)
	}
	b, _ := r.MarshalJSON()
	if !bytes.Contains(b, []byte(`"host":"*.example.com"`)) {
		t.Errorf("JSON %s lacks the host", b)
	}
	if !strings.Contains(r.String(), " host=*.example.com ") {
		t.Errorf("String() = %q lacks the host", r.String())
	}
	err := r.UnmarshalJSON([]byte(`{"id":1,"host":"www.*.com","action":"allow"}`))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "host" || !strings.Contains(err.Error(), `field "host" ("www.*.com")`) {
		t.Errorf("bad host: %v, want a FieldError naming host", err)
	}
	if r.Host != "*.example.com" {
		t.Errorf("a failed unmarshal changed the rule: host %q", r.Host)
	}
}

func TestRuleJSONRoundTrip(t *testing.T) {
	r := Rule{
		ID: 7, App: "/usr/bin/curl", User: "1000", Direction: Outbound, Protocol: TCP, Host: "api.example.com",
		Remote: netip.MustParsePrefix("198.18.0.0/15"), Port: PortRange{443, 443},
		LocalPort: PortRange{1000, 2000}, Action: Reject,
		Expires: time.Date(2026, 11, 21, 15, 0, 0, 5, time.UTC),
		Created: time.Date(2026, 11, 21, 14, 0, 0, 0, time.UTC), Note: "hi",
	}
	b, err := r.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"remote":"198.18.0.0/15"`, `"port":"443"`, `"local_port":"1000-2000"`, `"dir":"out"`, `"proto":"tcp"`, `"action":"reject"`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
	var back Rule
	if err := back.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, r)
	}
	// Bare address and numeric port are accepted on input.
	if err := back.UnmarshalJSON([]byte(`{"id":1,"remote":"198.18.0.9","port":53,"proto":"udp","action":"allow"}`)); err != nil {
		t.Fatal(err)
	}
	if back.Remote.String() != "198.18.0.9/32" || back.Port != (PortRange{53, 53}) {
		t.Errorf("got %v", back)
	}
}

func TestParseRulesErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // all must appear in the error
	}{
		{"unknown top field", `{"version":1,"rules":[],"extra":1}`, []string{"extra"}},
		{"no version", `{"rules":[]}`, []string{"version", "missing"}},
		{"wrong version", `{"version":2,"rules":[]}`, []string{"version 2"}},
		{"unknown rule field", `{"version":1,"rules":[{"id":4,"action":"allow","colour":"red"}]}`, []string{"rule 0", "id 4", "colour"}},
		{"bad dir", `{"version":1,"rules":[{"id":1,"action":"allow"},{"id":2,"dir":"sideways","action":"allow"}]}`, []string{"rule 1", "id 2", `"dir"`, "sideways"}},
		{"bad proto", `{"version":1,"rules":[{"id":3,"proto":"sctpx","action":"allow"}]}`, []string{"id 3", `"proto"`}},
		{"bad action", `{"version":1,"rules":[{"id":3,"action":"maybe"}]}`, []string{"id 3", `"action"`, "maybe"}},
		{"no action", `{"version":1,"rules":[{"id":3}]}`, []string{"id 3", `"action"`, "required"}},
		{"lo>hi", `{"version":1,"rules":[{"id":5,"port":"2000-1000","action":"deny"}]}`, []string{"id 5", `"port"`, "2000-1000"}},
		{"bad cidr", `{"version":1,"rules":[{"id":6,"remote":"198.18.0.0/40","action":"deny"}]}`, []string{"id 6", `"remote"`, "198.18.0.0/40"}},
		{"dup id", `{"version":1,"rules":[{"id":6,"action":"deny"},{"id":6,"action":"allow"}]}`, []string{"rule 1", "id 6", "already used by rule 0"}},
		{"bad expires", `{"version":1,"rules":[{"id":6,"action":"deny","expires":"tomorrow"}]}`, []string{"id 6", `"expires"`}},
		{"syntax", "{\"version\":1,\n\"rules\":[{\"id\":6,,}]}", []string{"line 2"}},
		{"trailing", `{"version":1,"rules":[]} {}`, []string{"trailing"}},
		{"wrong type", `{"version":1,"rules":[{"id":"x","action":"deny"}]}`, []string{"rule 0", "id"}},
	} {
		_, err := ParseRules([]byte(tc.in))
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
	}
}

func TestMarshalParseRules(t *testing.T) {
	rules := []Rule{
		{ID: 2, App: "/usr/bin/**", Action: Deny, Protocol: UDP},
		{ID: 1, App: `C:\Program Files\*\app.exe`, Action: Allow, Direction: Inbound, Protocol: 132},
	}
	data := MarshalRules(rules)
	got, err := ParseRules(data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if len(got) != 2 || got[0].ID != 1 || got[1].ID != 2 || !reflect.DeepEqual(got[0], rules[1]) || !reflect.DeepEqual(got[1], rules[0]) {
		t.Errorf("got %+v", got)
	}
	empty, err := ParseRules(MarshalRules(nil))
	if err != nil || len(empty) != 0 {
		t.Errorf("empty set: %v %v", empty, err)
	}
}

func TestAppGlob(t *testing.T) {
	for _, tc := range []struct {
		pat, exe string
		want     bool
	}{
		{"/usr/bin/curl", "/usr/bin/curl", true},
		{"/usr/bin/curl", "/usr/bin/curl2", false},
		{"/usr/bin/*", "/usr/bin/curl", true},
		{"/usr/bin/*", "/usr/bin/x/curl", false},
		{"/usr/**", "/usr/bin/x/curl", true},
		{"/usr/**/curl", "/usr/curl", true},
		{"/usr/**/curl", "/usr/a/b/c/curl", true},
		{"/usr/**/curl", "/usr/a/b/c/curl/x", false},
		{"**/curl", "/usr/local/bin/curl", true},
		{"/opt/**/bin/*", "/opt/a/b/bin/tool", true},
		{"/opt/**/bin/*", "/opt/a/b/lib/tool", false},
		{"/usr/bin/c?rl", "/usr/bin/curl", true},
		{"/usr/bin/[ab]*", "/usr/bin/bash", true},
		{"/usr/bin/*", "", false},
		{`C:\Windows\System32\svchost.exe`, `c:\windows\system32\SVCHOST.EXE`, true},
		{`C:\Program Files\**\*.exe`, `C:\PROGRAM FILES\Mozilla\Firefox\firefox.exe`, true},
		{`C:\Program Files\**\*.exe`, `D:\Program Files\x.exe`, false},
		{`C:\Program Files\**\*.exe`, `/usr/bin/x.exe`, false},
		{"/usr/bin/CURL", "/usr/bin/curl", false},
	} {
		if got := appMatches(tc.pat, tc.exe); got != tc.want {
			t.Errorf("app %q vs %q = %v, want %v", tc.pat, tc.exe, got, tc.want)
		}
	}
}

func TestRuleMatches(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	req := &Request{
		Direction: Outbound, Protocol: TCP, Exe: "/usr/bin/curl", Identity: IdentityVerified, UID: 1000, User: "alice",
		Local:  netip.MustParseAddrPort("198.18.0.2:40000"),
		Remote: netip.MustParseAddrPort("198.18.1.5:443"),
	}
	for _, tc := range []struct {
		r    Rule
		want bool
	}{
		{Rule{Action: Allow}, true},
		{Rule{Action: Allow, User: "1000"}, true},
		{Rule{Action: Allow, User: "alice"}, true},
		{Rule{Action: Allow, User: "bob"}, false},
		{Rule{Action: Allow, User: "0"}, false},
		{Rule{Action: Allow, Direction: Inbound}, false},
		{Rule{Action: Allow, Protocol: UDP}, false},
		{Rule{Action: Allow, Remote: netip.MustParsePrefix("198.18.0.0/15")}, true},
		{Rule{Action: Allow, Remote: netip.MustParsePrefix("198.18.0.0/24")}, false},
		{Rule{Action: Allow, Remote: netip.MustParsePrefix("2001:db8::/32")}, false},
		{Rule{Action: Allow, Port: PortRange{400, 500}}, true},
		{Rule{Action: Allow, Port: PortRange{80, 80}}, false},
		{Rule{Action: Allow, LocalPort: PortRange{40000, 40000}}, true},
		{Rule{Action: Allow, LocalPort: PortRange{1, 1024}}, false},
		{Rule{Action: Allow, Expires: now}, false},
		{Rule{Action: Allow, Expires: now.Add(time.Second)}, true},
	} {
		if got := tc.r.Matches(req, now); got != tc.want {
			t.Errorf("%v matches = %v, want %v", tc.r, got, tc.want)
		}
	}
	mapped := *req
	mapped.Remote = netip.MustParseAddrPort("[::ffff:198.18.1.5]:443")
	if !(Rule{Action: Allow, Remote: netip.MustParsePrefix("198.18.1.5/32")}).Matches(&mapped, now) {
		t.Error("IPv4-mapped remote does not match its IPv4 rule")
	}
}

func TestRuleString(t *testing.T) {
	r := Rule{ID: 3, Action: Allow, Direction: Outbound, Protocol: TCP, App: "/usr/bin/curl",
		Remote: netip.MustParsePrefix("198.18.0.0/15"), Port: PortRange{443, 443}}
	want := "#3 allow out tcp app=/usr/bin/curl remote=198.18.0.0/15 port=443"
	if got := r.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// FuzzParseRules checks that the parser either rejects its input or returns a rule
// set that survives MarshalRules and ParseRules unchanged.
func FuzzParseRules(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/rules/*.json")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Lax forms that must be refused (issue 14): the fuzzer mutates from them.
	for _, s := range []string{
		`{"version":1,"rules":null}`,
		`{"version":1,"rules":[{"action":"allow","remote":""}]}`,
		`{"version":1,"rules":[{"action":"accept","proto":"0"}]}`,
		`{"version":1,"rules":[{"action":"ALLOW","app":"curl","remote":"198.18.0.1/15"}]}`,
		`{"version":1,"rules":[{"id":18446744073709551615,"action":"allow"}]}`,
		`{"version":1,"rules":[{"action":"deny","action":"allow","Port":"22"}]}`,
		`{"version":1,"rules":[{"action":"allow","port":443,"local_port":"1-2","host":"*.Example.COM."}]} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := ParseRules(data)
		if err != nil {
			return
		}
		for i, r := range rules {
			if err := r.Validate(); err != nil {
				t.Fatalf("rule %d parsed but does not validate: %v", i, err)
			}
			if r.ID > MaxRuleID {
				t.Fatalf("rule %d parsed with ID %d above %d", i, r.ID, MaxRuleID)
			}
			if r.App != "" && r.App[0] != '/' && r.App[0] != '\\' && !isWindowsPath(r.App) {
				t.Fatalf("rule %d parsed with a relative app %q", i, r.App)
			}
			if r.Remote.IsValid() && r.Remote != r.Remote.Masked() {
				t.Fatalf("rule %d parsed with host bits in remote %s", i, r.Remote)
			}
		}
		if err := checkIDs(rules); err != nil {
			t.Fatalf("parsed with duplicate IDs: %v", err)
		}
		out := MarshalRules(rules)
		again, err := ParseRules(out)
		if err != nil {
			t.Fatalf("re-parse of marshalled rules: %v\n%s", err, out)
		}
		byID := func(rs []Rule) map[RuleID][]Rule {
			m := map[RuleID][]Rule{}
			for _, r := range rs {
				m[r.ID] = append(m[r.ID], r)
			}
			return m
		}
		if !reflect.DeepEqual(byID(rules), byID(again)) {
			t.Fatalf("round trip changed the set:\n%+v\n%+v", rules, again)
		}
		if out2 := MarshalRules(again); !bytes.Equal(out, out2) {
			t.Fatalf("marshal not stable:\n%s\n%s", out, out2)
		}
	})
}
