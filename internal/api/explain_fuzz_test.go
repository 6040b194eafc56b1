package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// FuzzExplainBody sends arbitrary bodies to POST /v1/explain: no panic, a JSON reply,
// 200 or a 4xx (503 for a history id: no history here), and never a change: rules,
// questions and rule-hit counters stay as they were, whatever the answer.
func FuzzExplainBody(f *testing.F) {
	for _, s := range []string{
		`{"app":"/usr/bin/ssh","remote":"198.18.0.2","port":22}`,
		`{"app":"/usr/bin/ssh","remote":"fd00::1","port":22,"proto":"udp","dir":"in","user":"0","host":"www.example.com","local_port":40000}`,
		`{"remote":"198.18.0.2","proto":"icmp"}`,
		`{"remote":"198.18.0.2","port":22,"proto":"any"}`,
		`{"remote":"198.18.0.2%eth0","port":22}`,
		`{"conn":5}`, `{"conn":-1}`, `{"conn":5,"port":1}`,
		`{"remote":"198.18.0.2","port":70000}`, `{"remote":"198.18.0.2","port":"22"}`,
		`{"remote":"198.18.0.2","port":1,"host":"*.example.com"}`,
		`{"remote":"198.18.0.2","port":1,"user":"\u0000"}`,
		`[]`, `null`, `{`, ``, `{"x":1}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Hour}, []engine.Rule{
			{ID: 1, App: "/usr/bin/ssh", Port: engine.PortRange{Lo: 22, Hi: 22}, Action: engine.Allow},
			{ID: 2, Remote: netip.MustParsePrefix("198.18.0.0/15"), Action: engine.Deny},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer eng.Close()
		h := NewServer(Config{Engine: eng, Logf: func(string, ...any) {}}).Handler()
		eng.Decide(&engine.Request{Direction: engine.Outbound, Protocol: engine.TCP,
			Remote: netip.MustParseAddrPort("198.19.0.9:443"), Exe: "/usr/bin/curl", UID: 0}, func(engine.Verdict) {})
		rules, hits, prompts := eng.Rules(), eng.RuleHits(), len(eng.Prompts())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/explain", bytes.NewReader([]byte(body))))
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" || !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%q: reply %q (%s)", body, rec.Body, ct)
		}
		if rec.Code != http.StatusOK && rec.Code/100 != 4 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%q: status %d: %s", body, rec.Code, rec.Body)
		}
		if rec.Code == http.StatusOK {
			var ex Explanation
			if err := json.Unmarshal(rec.Body.Bytes(), &ex); err != nil {
				t.Fatalf("%q: reply does not decode: %v: %s", body, err, rec.Body)
			}
			if (ex.Rule == nil) != (ex.RuleID == 0) {
				t.Fatalf("%q: rule %v but rule_id %d", body, ex.Rule, ex.RuleID)
			}
		}
		if !reflect.DeepEqual(rules, eng.Rules()) || !reflect.DeepEqual(hits, eng.RuleHits()) || prompts != len(eng.Prompts()) {
			t.Fatalf("%q: explain changed the engine", body)
		}
	})
}
