package api

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// FuzzRequestBodies sends arbitrary bodies to every endpoint that takes one and checks
// the server's promises: no panic, every reply is JSON, a 4xx reply changes nothing,
// and only a 200 may change the rules.
func FuzzRequestBodies(f *testing.F) {
	for _, s := range []string{
		`{"action":"allow","app":"/usr/bin/curl","port":"443"}`,
		`{"action":"deny","remote":"198.18.0.0/15","proto":"udp","dir":"out"}`,
		`{"action":"allow","app":"/usr/bin/firefox","host":"*.Example.COM.","port":443}`,
		`{"action":"allow","host":"www.*.com"}`,
		`{"action":"allow","colour":"red"}`,
		`{"version":1,"rules":[{"id":3,"action":"reject","port":"1-1024"}]}`,
		`{"version":1,"rules":[{"id":1,"action":"allow"},{"id":1,"action":"deny"}]}`,
		`{"action":"allow","for":"forever","scope":"app+host"}`,
		`{"action":"deny","for":"7d","scope":"app"}`,
		`{"action":"allow"} trailing`,
		`[]`, `null`, `"x"`, `{`, ``,
		// Lax forms that must be refused (issue 14).
		`{"action":"allow","remote":""}`, `{"action":"allow","proto":"0"}`, `{"action":"accept"}`,
		`{"action":"ALLOW","app":"curl"}`, `{"action":"allow","remote":"198.18.0.1/15"}`,
		`{"version":1,"rules":null}`, `{"Action":"allow","action":"deny"}`,
		`{"action":"allow","for":"always","scope":"APP"}`, `{"action":"allow","port":null}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		// A fresh engine each round with one rule and one open question, so that rule
		// changes and answers both have something to act on.
		eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Hour}, []engine.Rule{
			{ID: 1, App: "/usr/bin/ssh", Port: engine.PortRange{Lo: 22, Hi: 22}, Action: engine.Allow},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer eng.Close()
		h := NewServer(Config{Engine: eng, Logf: func(string, ...any) {}}).Handler()
		eng.Decide(&engine.Request{Direction: engine.Outbound, Protocol: engine.TCP,
			Local: netip.MustParseAddrPort("198.18.0.1:40000"), Remote: netip.MustParseAddrPort("198.18.0.2:443"),
			PID: 1, Exe: "/usr/bin/curl", Identity: engine.IdentityVerified, UID: 0}, func(engine.Verdict) {})
		ps := eng.Prompts()
		if len(ps) == 0 {
			t.Fatal("no open question")
		}
		answerPath := "/v1/prompts/" + itoa(uint64(ps[len(ps)-1].ID)) + "/answer"
		for _, path := range []string{"/v1/rules", "/v1/rules/import", answerPath} {
			before := eng.Rules()
			promptsBefore := len(eng.Prompts())
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("POST", path, bytes.NewReader([]byte(body))))
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("POST %s %q: content type %q", path, body, ct)
			}
			if rec.Code == http.StatusOK {
				// What the API accepted is what it means: every rule in force reads
				// back the same from its JSON, with an absolute app and no host bits.
				for _, r := range eng.Rules() {
					b, _ := r.MarshalJSON()
					var again engine.Rule
					err := again.UnmarshalJSON(b)
					if b2, _ := again.MarshalJSON(); err != nil || !bytes.Equal(b, b2) || again.Remote != r.Remote || again.App != r.App {
						t.Fatalf("POST %s %q: rule %v does not read back (%v): %s", path, body, r, err, b)
					}
					if r.App != "" && r.App[0] != '/' && r.App[0] != '\\' && !strings.Contains(r.App, `:\`) {
						t.Fatalf("POST %s %q: accepted a relative app %q", path, body, r.App)
					}
					if r.Remote.IsValid() && r.Remote != r.Remote.Masked() {
						t.Fatalf("POST %s %q: accepted host bits in %s", path, body, r.Remote)
					}
				}
				continue
			}
			if rec.Code/100 != 4 {
				t.Fatalf("POST %s %q: status %d: %s", path, body, rec.Code, rec.Body)
			}
			if after := eng.Rules(); !reflect.DeepEqual(before, after) {
				t.Fatalf("POST %s %q failed (%d) but changed the rules", path, body, rec.Code)
			}
			if len(eng.Prompts()) != promptsBefore {
				t.Fatalf("POST %s %q failed (%d) but closed a question", path, body, rec.Code)
			}
		}
	})
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
