//go:build linux

package api

import (
	"encoding/json"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

func TestHistoryAndProgramsEndpoints(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	for i, a := range []engine.Action{engine.Allow, engine.Deny, engine.Allow} {
		f.hist.Record(store.Conn{Time: now.Add(-time.Duration(i) * time.Minute), Request: engine.Request{
			Direction: engine.Outbound, Protocol: engine.TCP,
			Remote: netip.MustParseAddrPort("198.18.0.2:443"), Exe: "/usr/bin/curl", Host: "a.example.com",
		}, Verdict: engine.Verdict{Action: a, Reason: engine.ReasonRule}})
	}
	code, body := f.raw(t, "GET", "/v1/history?from="+strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10), "")
	if code != 200 {
		t.Fatalf("GET /v1/history: %d %s", code, body)
	}
	var sum HistorySummary
	if err := json.Unmarshal([]byte(body), &sum); err != nil {
		t.Fatal(err)
	}
	allowed, denied := 0, 0
	for _, b := range sum.Buckets {
		allowed += b.Allowed
		denied += b.Denied
	}
	if sum.Step != 60 || len(sum.Buckets) < 10 || allowed != 2 || denied != 1 ||
		len(sum.TopPrograms) != 1 || sum.TopPrograms[0].Key != "/usr/bin/curl" ||
		len(sum.TopHosts) != 1 || sum.TopHosts[0].Key != "a.example.com" || sum.TopHosts[0].Total != 3 {
		t.Errorf("history summary %+v", sum)
	}
	for _, q := range []string{"?step=0", "?from=x", "?from=100&to=50", "?colour=red", "?from=0&to=100000000&step=1", "?top=0"} {
		if code, body := f.raw(t, "GET", "/v1/history"+q, ""); code != 400 || !strings.Contains(body, `"error"`) {
			t.Errorf("GET /v1/history%s: %d %s, want 400 with an error", q, code, body)
		}
	}

	code, body = f.raw(t, "GET", "/v1/programs", "")
	var ps ProgramsBody
	if code != 200 || json.Unmarshal([]byte(body), &ps) != nil || len(ps.Programs) != 1 || ps.Programs[0].Total != 3 || ps.Programs[0].Denied != 1 {
		t.Errorf("GET /v1/programs: %d %s", code, body)
	}
	code, body = f.raw(t, "GET", "/v1/programs/conns?n=2&exe="+url.QueryEscape("/usr/bin/curl"), "")
	var cs connsBody
	if code != 200 || json.Unmarshal([]byte(body), &cs) != nil || len(cs.Conns) != 2 || cs.Conns[0].Exe != "/usr/bin/curl" {
		t.Errorf("GET /v1/programs/conns: %d %s", code, body)
	}
	if code, body := f.raw(t, "GET", "/v1/programs/conns", ""); code != 400 || !strings.Contains(body, `is required`) {
		t.Errorf("GET /v1/programs/conns without exe: %d %s", code, body)
	}
}

func TestRuleFormErrorsNameTheFlag(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r, err := RuleForm{App: "/usr/bin/curl", Remote: "198.18.0.0/15", Port: "443", Action: "allow", For: "1h"}.Rule(now)
	if err != nil || r.App != "/usr/bin/curl" || r.Port.Lo != 443 || !r.Expires.Equal(now.Add(time.Hour)) || r.Remote.Bits() != 15 {
		t.Fatalf("rule %+v, %v", r, err)
	}
	for form, want := range map[RuleForm]string{
		{Action: "allow", Remote: "198.18.0.0/99"}: "--remote: ",
		{Action: "allow", Port: "2000-1000"}:       "--port: ",
		{Action: "allow", LocalPort: "x"}:          "--local-port: ",
		{Action: "maybe"}:                          "--action: ",
		{}:                                         "--action is required",
		{Action: "allow", For: "once"}:             "--for once makes no rule",
		{Action: "allow", Dir: "sideways"}:         "--dir: ",
		{Action: "allow", Host: "a..b"}:            "--host: ",
	} {
		if _, err := form.Rule(now); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%+v: error %v, want it to start with %q", form, err, want)
		}
	}
}

func TestRulePrecedenceEndpoint(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	for _, r := range []engine.Rule{{Action: engine.Allow}, {App: "/usr/bin/curl", Action: engine.Allow}} {
		if _, err := f.client.AddRule(c, r); err != nil {
			t.Fatal(err)
		}
	}
	code, body := f.raw(t, "GET", "/v1/rules/precedence", "")
	if code != 200 || strings.TrimSpace(body) != `{"order":[2,1]}` {
		t.Errorf("GET /v1/rules/precedence: %d %s", code, body)
	}
}
