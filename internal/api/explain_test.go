//go:build linux

package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

func TestExplainEndpoint(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	wide, err := f.client.AddRule(c, engine.Rule{App: "/usr/bin/curl", Remote: netip.MustParsePrefix("198.18.0.0/15"), Action: engine.Deny})
	if err != nil {
		t.Fatal(err)
	}
	narrow, err := f.client.AddRule(c, engine.Rule{App: "/usr/bin/curl", Remote: netip.MustParsePrefix("198.18.0.0/24"), Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Allow})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := f.client.Explain(c, ExplainRequest{App: "/usr/bin/curl", Remote: "198.18.0.2", Port: 443})
	if err != nil {
		t.Fatal(err)
	}
	if ex.RuleID != narrow.ID || ex.Outcome != engine.OutcomeRule || ex.Step != engine.StepRemote || ex.Action != engine.Allow {
		t.Fatalf("explanation %+v: want rule %d at step remote", ex, narrow.ID)
	}
	if len(ex.Losers) != 1 || ex.Losers[0].Rule.ID != wide.ID || ex.Losers[0].Step != engine.StepRemote {
		t.Fatalf("losers %+v: want rule %d at remote", ex.Losers, wide.ID)
	}
	if ex.Conn != nil || ex.Request.Proto != engine.TCP || ex.Request.Direction != engine.Outbound || ex.Request.RemoteIP != "198.18.0.2" || ex.Request.UID != -1 {
		t.Errorf("connection explained %+v: want tcp out to 198.18.0.2 by default", ex.Conn)
	}
	// Explaining decides nothing and counts no hit.
	hits, err := f.client.RuleHits(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hits {
		if h.Hits != 0 {
			t.Errorf("rule %d has %d hits after explain only", h.ID, h.Hits)
		}
	}
	// A connection the rules decide counts for its rule.
	if v := <-f.request("/usr/bin/curl", 443); v.RuleID != narrow.ID {
		t.Fatalf("decided by %+v, want rule %d", v, narrow.ID)
	}
	hits, _ = f.client.RuleHits(c)
	if len(hits) != 2 || hits[1].ID != narrow.ID || hits[1].Hits != 1 || time.Since(hits[1].LastHit) > time.Minute {
		t.Errorf("hits %+v: want rule %d once, just now", hits, narrow.ID)
	}

	// No rule: a question with the default.
	ex, err = f.client.Explain(c, ExplainRequest{App: "/usr/bin/wget", Remote: "198.18.0.2", Port: 80, Proto: "udp", User: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if ex.RuleID != 0 || ex.Outcome != engine.OutcomeQuestion || ex.Action != engine.Deny || ex.Request.UID != 0 || ex.Request.User != "root" {
		t.Fatalf("explanation %+v: want a question, default deny, uid 0", ex)
	}

	// A past connection from the history.
	f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
		Direction: engine.Outbound, Protocol: engine.TCP, Exe: "/usr/bin/curl", Identity: engine.IdentityVerified, UID: 0, User: "root",
		Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
		Remote: netip.MustParseAddrPort("198.18.0.9:8080"),
	}, Verdict: engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}})
	f.hist.Flush()
	cs, err := f.hist.Recent(1, 0)
	if err != nil || len(cs) != 1 {
		t.Fatal(cs, err)
	}
	ex, err = f.client.Explain(c, ExplainRequest{Conn: cs[0].ID})
	if err != nil {
		t.Fatal(err)
	}
	if ex.RuleID != wide.ID || ex.Step != engine.StepNone || ex.Conn == nil || ex.Conn.ID != cs[0].ID || ex.Conn.Reason != engine.ReasonTimeout {
		t.Fatalf("past connection: %+v: want rule %d now (timeout then)", ex, wide.ID)
	}

	// Bad input: a clear error naming the field.
	for body, want := range map[string]string{
		`{"remote":"198.18.0.2"}`:                           `"port": required for tcp`,
		`{"port":443}`:                                      `"remote": required`,
		`{"remote":"nope","port":1}`:                        `"remote" "nope"`,
		`{"remote":"198.18.0.2","port":1,"dir":"x"}`:        `"dir"`,
		`{"remote":"198.18.0.2","port":1,"dir":"any"}`:      `a connection goes in or out`,
		`{"remote":"198.18.0.2","port":1,"proto":"tcpp"}`:   `"proto"`,
		`{"conn":5,"app":"/x"}`:                             `not both`,
		`{"remote":"198.18.0.2","port":1,"host":"*.x.com"}`: `"host"`,
		`{"conn":99999}`:                                    `no such connection`,
		`{"bogus":1}`:                                       `bogus`,
	} {
		code, out := f.raw(t, "POST", "/v1/explain", body)
		var eb errorBody
		json.Unmarshal([]byte(out), &eb)
		if code/100 != 4 || !strings.Contains(eb.Error, want) {
			t.Errorf("POST /v1/explain %s: %d %s; want a 4xx naming %s", body, code, out, want)
		}
	}
	_, err = f.client.Explain(c, ExplainRequest{Conn: 424242})
	var ae *Error
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusNotFound {
		t.Errorf("unknown connection: %v, want a 404", err)
	}
}
