package engine

import (
	"net/netip"
	"slices"
	"testing"
)

func TestPrecedenceOrder(t *testing.T) {
	rules := []Rule{
		{ID: 1, Action: Allow},
		{ID: 2, App: "/usr/bin/*", Action: Allow},
		{ID: 3, App: "/usr/bin/curl", Action: Allow},
		{ID: 4, App: "/usr/bin/curl", Action: Deny},
		{ID: 5, App: "/usr/bin/curl", Remote: netip.MustParsePrefix("198.18.0.0/15"), Action: Allow},
		{ID: 6, App: "/usr/bin/curl", Host: "www.example.com", Action: Allow},
		{ID: 7, Action: Allow},
	}
	got := Precedence(rules)
	want := []RuleID{6, 5, 4, 3, 2, 1, 7}
	if !slices.Equal(got, want) {
		t.Errorf("Precedence = %v, want %v", got, want)
	}
	// The engine decides by the same order: the first in it that matches wins.
	e, err := New(Config{Default: Deny}, rules)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var v Verdict
	e.Decide(&Request{Direction: Outbound, Protocol: TCP, Exe: "/usr/bin/curl", Identity: IdentityVerified,
		Remote: netip.MustParseAddrPort("198.18.0.2:443"), Local: netip.MustParseAddrPort("198.18.0.1:40000")},
		func(x Verdict) { v = x })
	if v.RuleID != 5 {
		t.Errorf("the engine chose rule %d for curl to 198.18.0.2 (no host), want 5 (first matching in %v)", v.RuleID, got)
	}
}
