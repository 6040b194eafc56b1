package engine

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func curlReq() *Request {
	return &Request{
		Direction: Outbound, Protocol: TCP, Exe: "/usr/bin/curl", Identity: IdentityVerified, UID: 1000, User: "alice",
		Services: []string{"Dnscache"}, Host: "WWW.Example.com.", // rules see www.example.com
		Local:  netip.MustParseAddrPort("198.18.0.2:40000"),
		Remote: netip.MustParseAddrPort("198.18.1.5:443"),
	}
}

// TestPrecedence checks, for each case, which of a few matching rules decides. Every
// case is evaluated with the rules in both orders and through both the index and the
// linear reference.
func TestPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []Rule
		want  RuleID // 0: none matches
	}{
		{"exact app beats glob", []Rule{
			{ID: 1, App: "/usr/bin/*", Action: Deny, Remote: pfx("198.18.1.5/32"), Port: PortRange{443, 443}},
			{ID: 2, App: "/usr/bin/curl", Action: Allow},
		}, 2},
		{"glob beats any app", []Rule{
			{ID: 1, Action: Deny, Remote: pfx("198.18.1.5/32"), Port: PortRange{443, 443}, User: "alice"},
			{ID: 2, App: "/usr/**", Action: Allow},
		}, 2},
		{"narrower remote beats wider", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Allow, Remote: pfx("198.18.0.0/15")},
			{ID: 2, App: "/usr/bin/curl", Action: Deny, Remote: pfx("198.18.1.0/24")},
		}, 2},
		{"any remote prefix beats no remote", []Rule{
			{ID: 1, Action: Deny, Port: PortRange{443, 443}},
			{ID: 2, Action: Allow, Remote: pfx("0.0.0.0/0")},
		}, 2},
		{"remote beats port", []Rule{
			{ID: 1, Action: Allow, Port: PortRange{443, 443}},
			{ID: 2, Action: Deny, Remote: pfx("198.18.0.0/15")},
		}, 2},
		{"narrower port beats wider", []Rule{
			{ID: 1, Action: Allow, Port: PortRange{1, 1024}},
			{ID: 2, Action: Deny, Port: PortRange{443, 443}},
		}, 2},
		{"port beats user", []Rule{
			{ID: 1, Action: Deny, User: "alice"},
			{ID: 2, Action: Allow, Port: PortRange{400, 500}},
		}, 2},
		{"user beats local port", []Rule{
			{ID: 1, Action: Deny, LocalPort: PortRange{40000, 40000}},
			{ID: 2, Action: Allow, User: "1000"},
		}, 2},
		{"local port beats protocol", []Rule{
			{ID: 1, Action: Deny, Protocol: TCP},
			{ID: 2, Action: Allow, LocalPort: PortRange{30000, 50000}},
		}, 2},
		{"protocol beats direction", []Rule{
			{ID: 1, Action: Deny, Direction: Outbound},
			{ID: 2, Action: Allow, Protocol: TCP},
		}, 2},
		{"service beats remote", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Deny, Remote: pfx("198.18.1.5/32")},
			{ID: 2, App: "/usr/bin/curl", Action: Allow, Service: "dnscache"},
		}, 2},
		{"app beats service", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Deny},
			{ID: 2, App: "/usr/bin/*", Action: Allow, Service: "Dnscache"},
		}, 1},
		{"service must be hosted", []Rule{
			{ID: 1, Action: Deny},
			{ID: 2, Action: Allow, Service: "wuauserv"},
		}, 1},
		{"host beats remote", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Deny, Remote: pfx("198.18.1.5/32"), Port: PortRange{443, 443}},
			{ID: 2, App: "/usr/bin/curl", Action: Allow, Host: "www.example.com"},
		}, 2},
		{"app beats host", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Deny},
			{ID: 2, App: "/usr/bin/*", Action: Allow, Host: "www.example.com"},
		}, 1},
		{"service beats host", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Deny, Host: "www.example.com"},
			{ID: 2, App: "/usr/bin/curl", Action: Allow, Service: "dnscache"},
		}, 2},
		{"exact host beats wildcard", []Rule{
			{ID: 1, Action: Deny, Host: "*.example.com", Remote: pfx("198.18.1.5/32")},
			{ID: 2, Action: Allow, Host: "www.example.com"},
		}, 2},
		{"wildcard with more labels beats fewer", []Rule{
			{ID: 1, Action: Deny, Host: "*.com", Port: PortRange{443, 443}},
			{ID: 2, Action: Allow, Host: "*.example.com"},
		}, 2},
		{"wildcard host beats remote", []Rule{
			{ID: 1, Action: Deny, Remote: pfx("198.18.1.5/32")},
			{ID: 2, Action: Allow, Host: "*.example.com"},
		}, 2},
		{"wildcard does not match its apex", []Rule{
			{ID: 1, Action: Deny},
			{ID: 2, Action: Allow, Host: "*.www.example.com"},
		}, 1},
		{"host must match", []Rule{
			{ID: 1, Action: Deny},
			{ID: 2, Action: Allow, Host: "ww.example.com"},
			{ID: 3, Action: Allow, Host: "*.ample.com"},
		}, 1},
		{"host case and trailing dot do not matter", []Rule{
			{ID: 1, Action: Deny},
			{ID: 2, Action: Allow, Host: "WWW.EXAMPLE.COM."},
		}, 2},
		{"direction beats nothing", []Rule{
			{ID: 1, Action: Deny},
			{ID: 2, Action: Allow, Direction: Outbound},
		}, 2},
		{"deny beats allow at equal specificity", []Rule{
			{ID: 1, App: "/usr/bin/curl", Action: Allow, Port: PortRange{443, 443}},
			{ID: 2, App: "/usr/bin/curl", Action: Deny, Port: PortRange{443, 443}},
		}, 2},
		{"reject beats allow", []Rule{
			{ID: 1, Action: Allow},
			{ID: 2, Action: Reject},
		}, 2},
		{"drop beats allow", []Rule{
			{ID: 1, Action: Allow},
			{ID: 2, Action: Drop},
		}, 2},
		{"lower ID among equal blocks", []Rule{
			{ID: 3, Action: Reject},
			{ID: 2, Action: Deny},
		}, 2},
		{"lower ID among equal allows", []Rule{
			{ID: 5, App: "/usr/bin/*", Action: Allow},
			{ID: 4, App: "/usr/**", Action: Allow},
		}, 4},
		{"expired rule never matches", []Rule{
			{ID: 1, Action: Allow},
			{ID: 2, App: "/usr/bin/curl", Action: Deny, Expires: t0},
		}, 1},
		{"unexpired rule matches", []Rule{
			{ID: 1, Action: Allow},
			{ID: 2, App: "/usr/bin/curl", Action: Deny, Expires: t0.Add(time.Nanosecond)},
		}, 2},
		{"non-matching specific rule is ignored", []Rule{
			{ID: 1, Action: Allow},
			{ID: 2, App: "/usr/bin/wget", Action: Deny},
			{ID: 3, Action: Deny, Remote: pfx("198.18.2.0/24")},
		}, 1},
		{"nothing matches", []Rule{
			{ID: 1, Action: Allow, Protocol: UDP},
		}, 0},
	} {
		for _, reverse := range []bool{false, true} {
			rules := append([]Rule(nil), tc.rules...)
			if reverse {
				for i, j := 0, len(rules)-1; i < j; i, j = i+1, j-1 {
					rules[i], rules[j] = rules[j], rules[i]
				}
			}
			m := compile(rules)
			for _, got := range []*compiledRule{m.match(curlReq(), t0), m.matchLinear(curlReq(), t0)} {
				var id RuleID
				if got != nil {
					id = got.ID
				}
				if id != tc.want {
					t.Errorf("%s (reversed %v): rule %d decides, want %d", tc.name, reverse, id, tc.want)
				}
			}
		}
		for _, r := range tc.rules {
			if r.ID == tc.want && !r.Matches(curlReq(), t0) {
				t.Errorf("%s: Rule.Matches says rule %d does not match", tc.name, r.ID)
			}
		}
	}
}

// TestUnknownHost checks that a request whose hostname is unknown matches no Host
// rule, however general, and still matches the rest.
func TestUnknownHost(t *testing.T) {
	rules := []Rule{
		{ID: 1, Action: Deny},
		{ID: 2, Action: Allow, Host: "*.com"},
		{ID: 3, Action: Allow, App: "/usr/bin/curl", Host: "www.example.com"},
	}
	for i := 4; i < 40; i++ { // enough to index the buckets
		rules = append(rules, Rule{ID: RuleID(i), Action: Allow, Host: fmt.Sprintf("h%d.example.com", i), Port: PortRange{443, 443}})
	}
	m := compile(rules)
	req := curlReq()
	req.Host = ""
	for _, got := range []*compiledRule{m.match(req, t0), m.matchLinear(req, t0)} {
		if got == nil || got.ID != 1 {
			t.Errorf("unknown host: %v decides, want rule 1", got)
		}
	}
	req.Host = "h7.example.com"
	if got := m.match(req, t0); got == nil || got.ID != 7 {
		t.Errorf("h7.example.com: %v decides, want rule 7", got)
	}
	req.Host = "x.h7.example.com"
	if got := m.match(req, t0); got == nil || got.ID != 2 {
		t.Errorf("x.h7.example.com: %v decides, want rule 2 (*.com)", got)
	}
}

func TestWindowsPaths(t *testing.T) {
	rules := []Rule{
		{ID: 1, App: `C:\Program Files\**\*.exe`, Action: Deny},
		{ID: 2, App: `C:\Program Files\Mozilla Firefox\firefox.exe`, Action: Allow},
		{ID: 3, App: `C:\Windows\**\svchost.exe`, Action: Allow, Port: PortRange{53, 53}},
	}
	m := compile(rules)
	for _, tc := range []struct {
		exe  string
		port uint16
		want RuleID
	}{
		{`c:\program files\mozilla firefox\FIREFOX.EXE`, 443, 2},
		{`C:\Program Files\Other\other.exe`, 443, 1},
		{`C:\WINDOWS\System32\svchost.exe`, 53, 3},
		{`C:\WINDOWS\System32\svchost.exe`, 80, 0},
		{`/usr/bin/firefox.exe`, 443, 0},
	} {
		req := &Request{Direction: Outbound, Protocol: UDP, Exe: tc.exe, Identity: IdentityVerified, UID: -1,
			Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), tc.port)}
		var got RuleID
		if c := m.match(req, t0); c != nil {
			got = c.ID
		}
		if got != tc.want {
			t.Errorf("%s:%d: rule %d, want %d", tc.exe, tc.port, got, tc.want)
		}
	}
}

// randomRules makes a realistic mix: most rules for exact apps (a few per app), some
// globs, some app-less rules by CIDR or port; a quarter with a remote, ports on half.
func randomRules(rng *rand.Rand, n int) []Rule {
	rules := make([]Rule, 0, n)
	apps := max(n/8, 1)
	for i := range n {
		r := Rule{ID: RuleID(i + 1), Action: []Action{Allow, Allow, Deny, Reject}[rng.IntN(4)]}
		switch k := rng.IntN(100); {
		case k < 80:
			r.App = fmt.Sprintf("/opt/app%d/bin/app%d", rng.IntN(apps), rng.IntN(4))
		case k < 88:
			r.App = fmt.Sprintf("/opt/app%d/**/tool%d", rng.IntN(apps), rng.IntN(4))
		case k < 90:
			r.App = fmt.Sprintf("/opt/app%d/bin/*", rng.IntN(apps))
		}
		switch rng.IntN(8) {
		case 0:
			r.Remote = netip.PrefixFrom(randAddr4(rng), 32)
		case 1:
			r.Remote = netip.PrefixFrom(randAddr4(rng), 24).Masked()
		case 2:
			r.Remote = netip.PrefixFrom(randAddr4(rng), 16).Masked()
		case 3:
			r.Remote = netip.PrefixFrom(randAddr6(rng), 64).Masked()
		}
		switch rng.IntN(4) {
		case 0:
			p := uint16(1 + rng.IntN(64))
			r.Port = PortRange{p, p}
		case 1:
			p := uint16(1 + rng.IntN(64))
			r.Port = PortRange{p, p + uint16(rng.IntN(20))}
		}
		if rng.IntN(10) == 0 {
			r.Protocol = []Protocol{TCP, UDP}[rng.IntN(2)]
		}
		if rng.IntN(10) == 0 {
			r.Direction = Outbound
		}
		if rng.IntN(20) == 0 {
			r.User = fmt.Sprint(1000 + rng.IntN(3))
		}
		if rng.IntN(20) == 0 {
			r.Expires = t0.Add(time.Duration(rng.IntN(3)-1) * time.Hour)
		}
		if rng.IntN(10) == 0 {
			r.Service = []string{"Dnscache", "wuauserv", "BITS"}[rng.IntN(3)]
		}
		if rng.IntN(5) == 0 {
			h, svc := rng.IntN(3), rng.IntN(2)
			r.Host = []string{
				fmt.Sprintf("h%d.svc%d.test", h, svc),
				fmt.Sprintf("*.svc%d.test", svc),
				fmt.Sprintf("*.h%d.svc%d.test", h, svc),
				"*.test",
				fmt.Sprintf("H%d.Svc%d.TEST.", h, svc), // matched in normal form
			}[rng.IntN(5)]
		}
		rules = append(rules, r)
	}
	return rules
}

// randAddr4 picks from 198.18.0.0/15 with few distinct /16s and /24s so prefixes collide.
func randAddr4(rng *rand.Rand) netip.Addr {
	return netip.AddrFrom4([4]byte{198, byte(18 + rng.IntN(2)), byte(rng.IntN(8)), byte(rng.IntN(16))})
}

func randAddr6(rng *rand.Rand) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(rng.IntN(4)), 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(rng.IntN(16))})
}

func randomRequest(rng *rand.Rand, n int) *Request {
	apps := max(n/8, 1)
	req := &Request{
		Direction: Outbound, Protocol: []Protocol{TCP, UDP}[rng.IntN(2)],
		UID: int32(1000 + rng.IntN(3)), Local: netip.MustParseAddrPort("198.18.0.2:40000"),
	}
	// Mostly verified; some not, which app rules must then never match.
	req.Identity = []Identity{IdentityVerified, IdentityVerified, IdentityVerified, IdentityUnverified, IdentityContainer}[rng.IntN(5)]
	switch rng.IntN(4) {
	case 0:
		req.Exe = fmt.Sprintf("/opt/app%d/bin/app%d", rng.IntN(apps), rng.IntN(4))
	case 1:
		req.Exe = fmt.Sprintf("/opt/app%d/lib/x/tool%d", rng.IntN(apps), rng.IntN(4))
	case 2:
		req.Exe = fmt.Sprintf("/opt/app%d/bin/other", rng.IntN(apps))
	}
	addr := randAddr4(rng)
	if rng.IntN(4) == 0 {
		addr = randAddr6(rng)
	}
	req.Remote = netip.AddrPortFrom(addr, uint16(1+rng.IntN(80)))
	if rng.IntN(3) == 0 {
		req.Services = []string{[]string{"dnscache", "WUAUSERV", "Other"}[rng.IntN(3)], "BITS"}[:1+rng.IntN(2)]
	}
	switch rng.IntN(4) {
	case 0:
		req.Host = fmt.Sprintf("h%d.svc%d.test", rng.IntN(3), rng.IntN(2))
	case 1:
		req.Host = fmt.Sprintf("a.H%d.svc%d.test.", rng.IntN(3), rng.IntN(2))
	case 2:
		req.Host = fmt.Sprintf("svc%d.test", rng.IntN(2))
	}
	return req
}

// TestIndexAgreesWithLinear checks the indexed matcher against the plain scan in
// precedence order on random rule sets and requests.
func TestIndexAgreesWithLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 5, 20, 200, 3000} {
		for range 5 {
			m := compile(randomRules(rng, n))
			for range 2000 {
				req := randomRequest(rng, n)
				got, want := m.match(req, t0), m.matchLinear(req, t0)
				if got != want {
					t.Fatalf("%d rules, request %+v: index says %v, linear scan says %v", n, req, got, want)
				}
			}
		}
	}
}

var commonPorts = []uint16{22, 25, 53, 80, 110, 123, 143, 443, 465, 587, 993, 995, 1194, 1883, 3000, 3306,
	3389, 5222, 5228, 5353, 5432, 5900, 6379, 6443, 8000, 8080, 8443, 8883, 9000, 9090, 9418, 27017}

// realisticRules makes n rules as a long-lived installation might have them: about
// four per application, most for an exact executable, a few globs, a tenth without an
// app (by address or port); remotes across 198.18.0.0/15 and IPv6, common ports.
func realisticRules(rng *rand.Rand, n int) []Rule {
	apps := max(n/4, 1)
	rules := make([]Rule, 0, n)
	for i := range n {
		r := Rule{ID: RuleID(i + 1), Action: []Action{Allow, Allow, Allow, Deny, Reject}[rng.IntN(5)]}
		app := rng.IntN(apps)
		k := rng.IntN(100)
		switch {
		case k < 85:
			r.App = fmt.Sprintf("/opt/app%d/bin/app%d", app, app)
		case k < 88:
			r.App = fmt.Sprintf("/opt/app%d/**/plugin%d", app, rng.IntN(3))
		case k < 90:
			r.App = fmt.Sprintf("/opt/app%d/lib/*", app)
		}
		r.Remote = realisticRemote(rng, k >= 90)
		if p := rng.IntN(10); p < 4 || (k >= 90 && !r.Remote.IsValid()) {
			port := commonPorts[rng.IntN(len(commonPorts))]
			r.Port = PortRange{port, port}
		} else if p == 4 {
			lo := uint16(1024 + rng.IntN(30000))
			r.Port = PortRange{lo, lo + uint16(rng.IntN(1000))}
		}
		if rng.IntN(10) < 3 {
			r.Protocol = []Protocol{TCP, UDP}[rng.IntN(2)]
		}
		if rng.IntN(5) == 0 {
			r.Direction = Outbound
		}
		if rng.IntN(20) == 0 {
			r.User = fmt.Sprint(1000 + rng.IntN(3))
		}
		if rng.IntN(20) == 0 {
			r.Expires = t0.Add(time.Duration(rng.IntN(3)-1) * time.Hour)
		}
		if h := rng.IntN(10); h == 0 {
			r.Host = fmt.Sprintf("api%d.app%d.example", rng.IntN(4), app)
		} else if h == 1 {
			r.Host = fmt.Sprintf("*.app%d.example", app)
		}
		rules = append(rules, r)
	}
	return rules
}

func realisticRemote(rng *rand.Rand, required bool) netip.Prefix {
	host := netip.AddrFrom4([4]byte{198, byte(18 + rng.IntN(2)), byte(rng.IntN(256)), byte(rng.IntN(256))})
	k := rng.IntN(100)
	if required {
		k = rng.IntN(55) + 45
	}
	switch {
	case k < 45:
		return netip.Prefix{}
	case k < 70:
		return netip.PrefixFrom(host, 32)
	case k < 85:
		return netip.PrefixFrom(host, 24).Masked()
	case k < 90:
		return netip.PrefixFrom(host, 20).Masked()
	}
	return netip.PrefixFrom(randAddr6(rng), 64).Masked()
}

// realisticRequests makes requests for rules: half aimed at a rule (its app, an
// address in its prefix, a port in its range), half at random.
func realisticRequests(rng *rand.Rand, rules []Rule, count int) []*Request {
	apps := max(len(rules)/4, 1)
	reqs := make([]*Request, count)
	for i := range reqs {
		req := &Request{Direction: Outbound, Protocol: []Protocol{TCP, UDP}[rng.IntN(2)], Identity: IdentityVerified,
			UID: int32(1000 + rng.IntN(3)), Local: netip.MustParseAddrPort("198.18.0.2:40000")}
		app := rng.IntN(apps)
		switch rng.IntN(10) {
		case 0:
			req.Exe = fmt.Sprintf("/opt/app%d/lib/x/plugin%d", app, rng.IntN(3))
		case 1:
			req.Exe = fmt.Sprintf("/usr/bin/unknown%d", app)
		default:
			req.Exe = fmt.Sprintf("/opt/app%d/bin/app%d", app, app)
		}
		addr := realisticRemote(rng, true).Addr()
		port := commonPorts[rng.IntN(len(commonPorts))]
		if rng.IntN(2) == 0 {
			r := rules[rng.IntN(len(rules))]
			if r.App != "" && !strings.ContainsAny(r.App, "*") {
				req.Exe = r.App
			}
			if r.Remote.IsValid() {
				addr = r.Remote.Addr()
			}
			if !r.Port.IsZero() {
				port = r.Port.Lo
			}
			if r.Protocol != AnyProtocol {
				req.Protocol = r.Protocol
			}
			if h, wild := strings.CutPrefix(r.Host, "*"); wild {
				req.Host = "cdn" + h
			} else {
				req.Host = r.Host
			}
		} else if rng.IntN(2) == 0 {
			req.Host = fmt.Sprintf("www%d.app%d.example", rng.IntN(4), app)
		}
		req.Remote = netip.AddrPortFrom(addr, port)
		reqs[i] = req
	}
	return reqs
}

func TestRealisticIndexAgreesWithLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{10, 1000, 10000} {
		rules := realisticRules(rng, n)
		m := compile(rules)
		for _, req := range realisticRequests(rng, rules, 2000) {
			if got, want := m.match(req, t0), m.matchLinear(req, t0); got != want {
				t.Fatalf("%d rules, request %+v: index says %v, linear scan says %v", n, req, got, want)
			}
		}
	}
}
