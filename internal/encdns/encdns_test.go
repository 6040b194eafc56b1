package encdns

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

func req(proto engine.Protocol, remote, host string) *engine.Request {
	return &engine.Request{Direction: engine.Outbound, Protocol: proto, UID: -1,
		Remote: netip.MustParseAddrPort(remote), Host: host}
}

func TestMatch(t *testing.T) {
	l, err := Parse(strings.NewReader("# test list\n198.18.53.0/24 Test DoH\n198.19.0.9   \ndoh.example.test Named DoH # comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		r    *engine.Request
		want string // "" not flagged
	}{
		{req(engine.TCP, "198.18.53.7:443", ""), "DNS over HTTPS, Test DoH"},
		{req(engine.UDP, "198.18.53.7:443", ""), "DNS over HTTPS, Test DoH"},
		{req(engine.TCP, "198.19.0.9:443", ""), "DNS over HTTPS, 198.19.0.9"},
		{req(engine.TCP, "198.18.0.1:443", "DOH.example.test."), "DNS over HTTPS, Named DoH"},
		{req(engine.TCP, "198.18.0.1:853", ""), "DNS over TLS/QUIC"},
		{req(engine.TCP, "[fd00::1]:853", ""), "DNS over TLS/QUIC"},
		{req(engine.TCP, "198.18.53.7:80", ""), ""},
		{req(engine.TCP, "198.18.54.7:443", ""), ""},
		{req(engine.ICMP, "198.18.53.7:0", ""), ""},
	} {
		note, ok := l.Match(tc.r)
		if ok != (tc.want != "") || !strings.Contains(note, tc.want) || (ok && !strings.HasPrefix(note, Note)) {
			t.Errorf("%v %v host %q: %q %v, want %q", tc.r.Protocol, tc.r.Remote, tc.r.Host, note, ok, tc.want)
		}
	}
}

func TestParseRejectsBadLines(t *testing.T) {
	for _, bad := range []string{"bad!name x\n", "1.2.3.4/99 x\n", "*.example.com wild\n"} {
		if l, err := Parse(strings.NewReader("8.8.8.8 ok\n" + bad)); err == nil || !strings.Contains(err.Error(), "line 2") || l != nil {
			t.Errorf("%q: %v, %v; want an error naming line 2 and no list", bad, l, err)
		}
	}
}

// TestShippedListAndPreset: the embedded list parses, and its preset rules are valid
// and deny what they name, while an app's allow rule stays more specific.
func TestShippedListAndPreset(t *testing.T) {
	l := Shipped()
	if len(l.Endpoints) < 10 {
		t.Fatalf("shipped list has %d endpoints", len(l.Endpoints))
	}
	rules := l.BlockRules()
	for i := range rules {
		rules[i].ID = engine.RuleID(i + 1)
	}
	allow := engine.Rule{ID: engine.RuleID(len(rules) + 1), App: "/usr/bin/allowed", Action: engine.Allow}
	e, err := engine.New(engine.Config{Default: engine.Deny}, append(rules, allow))
	if err != nil {
		t.Fatalf("preset rules: %v", err)
	}
	defer e.Close()
	decide := func(r *engine.Request) engine.Verdict {
		ch := make(chan engine.Verdict, 1)
		e.Decide(r, func(v engine.Verdict) { ch <- v })
		return <-ch
	}
	for _, r := range []*engine.Request{
		req(engine.TCP, "1.1.1.1:443", ""),
		req(engine.TCP, "[2001:4860:4860::8888]:443", ""),
		req(engine.TCP, "198.18.0.1:853", ""),
		req(engine.UDP, "198.18.0.1:853", ""),
		req(engine.TCP, "198.18.0.1:443", "dns.google"),
	} {
		r.Exe, r.Identity = "/usr/bin/other", engine.IdentityVerified
		if v := decide(r); v.Action != engine.Deny || v.Reason != engine.ReasonRule {
			t.Errorf("%v %v %q: %+v, want denied by the preset", r.Protocol, r.Remote, r.Host, v)
		}
	}
	r := req(engine.TCP, "1.1.1.1:443", "")
	r.Exe, r.Identity = "/usr/bin/allowed", engine.IdentityVerified
	if v := decide(r); v.Action != engine.Allow {
		t.Errorf("an app's allow rule: %+v, want allow", v)
	}
}
