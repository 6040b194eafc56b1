package web

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// FuzzWebBodies sends arbitrary bodies to the web UI's endpoints that take one (its
// own rule form and the API's, through the session) and checks: no panic, every reply
// is JSON, and a reply other than 200 changes neither the rules nor the questions.
func FuzzWebBodies(f *testing.F) {
	for _, s := range []string{
		`{"action":"allow","app":"/usr/bin/curl","port":"443"}`,
		`{"action":"deny","remote":"198.18.0.0/15","proto":"udp","dir":"out","for":"7d"}`,
		`{"action":"allow","remote":"198.18.0.0/99"}`,
		`{"action":"allow","host":"*.example.com","replace":1}`,
		`{"action":"allow","replace":99}`,
		`{"action":"allow","for":"once"}`,
		`{"action":"allow","colour":"red"}`,
		`{"action":"allow","for":"forever","scope":"app+host"}`,
		`{"version":1,"rules":[{"id":3,"action":"reject","port":"1-1024"}]}`,
		`{"action":"allow"} trailing`, `[]`, `null`, `"x"`, `{`, ``,
	} {
		f.Add(s)
	}
	fx := newFixture(f)
	initial := fx.eng.Rules()
	f.Fuzz(func(t *testing.T, body string) {
		fx.t = t
		if fx.key == "" {
			fx.login()
		}
		// Every round starts from the same rules and one open question.
		if err := fx.eng.ReplaceRules(initial); err != nil {
			t.Fatal(err)
		}
		if len(fx.eng.Prompts()) == 0 {
			fx.ask("/usr/bin/curl", 443)
		}
		ps := fx.eng.Prompts()
		if len(ps) == 0 {
			t.Fatal("no open question")
		}
		id := itoa(uint64(ps[0].ID))
		for _, path := range []string{"/api/rules/form", "/api/v1/rules", "/api/v1/prompts/" + id + "/answer", "/api/v1/rules/import"} {
			before := fx.eng.Rules()
			prompts := len(fx.eng.Prompts())
			code, reply := fx.do("POST", path, body, nil)
			if !json.Valid([]byte(reply)) {
				t.Fatalf("POST %s %q: reply is not JSON: %d %s", path, body, code, reply)
			}
			if code != http.StatusOK {
				if code < 400 || code > 499 {
					t.Fatalf("POST %s %q: status %d %s", path, body, code, reply)
				}
				if !reflect.DeepEqual(before, fx.eng.Rules()) || prompts != len(fx.eng.Prompts()) {
					t.Fatalf("POST %s %q: %d %s, but something changed", path, body, code, reply)
				}
				if !strings.Contains(reply, `"error"`) {
					t.Fatalf("POST %s %q: %d without an error text: %s", path, body, code, reply)
				}
			}
		}
	})
}
