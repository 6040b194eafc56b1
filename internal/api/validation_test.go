//go:build linux

package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestLaxInputRefused: input the API used to take with a guess (an empty remote that
// matched everything, proto "0" as any, "accept" and "ALLOW" as actions, relative app
// paths, host bits quietly masked, "rules": null as no rules, keys in another case or
// given twice, ...) is refused with an error naming the field, and changes nothing.
func TestLaxInputRefused(t *testing.T) {
	f := newFixture(t)
	c := ctx(t)
	if _, err := f.client.AddRule(c, engine.Rule{App: "/usr/bin/ssh", Port: engine.PortRange{Lo: 22, Hi: 22}, Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	f.request("/usr/bin/curl", 443)
	ps, _ := f.client.Prompts(c)
	answer := fmt.Sprintf("/v1/prompts/%d/answer", ps[0].ID)
	rulesBefore, _ := f.client.Rules(c)
	fileBefore, _ := os.ReadFile(f.rulesPath)
	rule := func(fields string) string { return `{"action":"allow",` + fields + `}` }
	file := func(rules string) string { return `{"version":1,"rules":[` + rules + `]}` }

	cases := []struct {
		path, body string
		want       string // the error must contain this
	}{
		// rules
		{"/v1/rules", rule(`"remote":""`), `field "remote" (""): empty`},
		{"/v1/rules", rule(`"proto":"0"`), `field "proto" ("0"): protocol "0": 0 is not a protocol`},
		{"/v1/rules", rule(`"proto":"006"`), `field "proto" ("006")`},
		{"/v1/rules", rule(`"proto":"TCP"`), `field "proto" ("TCP")`},
		{"/v1/rules", rule(`"proto":"ipv6-icmp"`), `field "proto" ("ipv6-icmp")`},
		{"/v1/rules", rule(`"proto":""`), `field "proto" (""): empty`},
		{"/v1/rules", `{"action":"accept"}`, `field "action" ("accept"): action "accept": want allow, deny, reject or drop`},
		{"/v1/rules", `{"action":"ALLOW"}`, `field "action" ("ALLOW")`},
		{"/v1/rules", `{"action":"block"}`, `field "action" ("block")`},
		{"/v1/rules", `{"action":null}`, `field "action" (null)`},
		{"/v1/rules", rule(`"dir":"outbound"`), `field "dir" ("outbound")`},
		{"/v1/rules", rule(`"dir":"OUT"`), `field "dir" ("OUT")`},
		{"/v1/rules", rule(`"dir":""`), `field "dir" (""): empty`},
		{"/v1/rules", rule(`"app":"curl"`), `field "app" ("curl"): not an absolute path`},
		{"/v1/rules", rule(`"app":"bin/curl"`), `not an absolute path`},
		{"/v1/rules", rule(`"app":"**/curl"`), `not an absolute path`},
		{"/v1/rules", rule(`"app":"/usr/bin/../bin/curl"`), `not a clean absolute path`},
		{"/v1/rules", rule(`"app":"/usr//bin/curl"`), `not a clean absolute path`},
		{"/v1/rules", rule(`"app":"/usr/bin/"`), `not a clean absolute path`},
		{"/v1/rules", rule(`"app":""`), `field "app" (""): empty`},
		{"/v1/rules", rule(`"remote":"198.18.0.1/15"`), `field "remote" ("198.18.0.1/15"): remote "198.18.0.1/15": host bits set; did you mean 198.18.0.0/15?`},
		{"/v1/rules", rule(`"remote":"fd00::1/8"`), `did you mean fd00::/8?`},
		{"/v1/rules", rule(`"remote":null`), `field "remote" (null)`},
		{"/v1/rules", rule(`"port":""`), `field "port" (""): empty`},
		{"/v1/rules", rule(`"port":null`), `field "port" (null)`},
		{"/v1/rules", rule(`"local_port":null`), `field "local_port" (null)`},
		{"/v1/rules", rule(`"port":"ANY"`), `field "port" ("ANY")`},
		{"/v1/rules", rule(`"port":true`), `field "port" (true): want a number`},
		{"/v1/rules", rule(`"host":""`), `field "host" (""): empty`},
		{"/v1/rules", rule(`"user":""`), `field "user" (""): empty`},
		{"/v1/rules", rule(`"user":"latch-no-such-user"`), `field "user" ("latch-no-such-user"): no such user`},
		{"/v1/rules", rule(`"expires":""`), `field "expires" (""): empty`},
		{"/v1/rules", rule(`"note":null`), `field "note" (null)`},
		{"/v1/rules", `{"Action":"allow"}`, `unknown field "Action" (did you mean "action"?`},
		{"/v1/rules", rule(`"Remote":"198.18.0.0/15"`), `unknown field "Remote"`},
		{"/v1/rules", `{"action":"deny","action":"allow"}`, `field "action" given twice`},
		{"/v1/rules", rule(`"port":"443","port":"22"`), `field "port" given twice`},
		// rules files
		{"/v1/rules/import", `{"version":1,"rules":null}`, `field "rules": want a list of rules ([] for none), got null`},
		{"/v1/rules/import", `{"version":1}`, `field "rules" missing`},
		{"/v1/rules/import", `{"version":1,"rules":{}}`, `field "rules": want a list`},
		{"/v1/rules/import", `{"version":1,"version":1,"rules":[]}`, `field "version" given twice`},
		{"/v1/rules/import", `{"Version":1,"rules":[]}`, `unknown field "Version"`},
		{"/v1/rules/import", file(`{"id":9007199254740992,"action":"allow"}`), `field "id" ("9007199254740992"): want a whole number from 1 to 9007199254740991`},
		{"/v1/rules/import", file(`{"id":18446744073709551615,"action":"allow"}`), `field "id"`},
		{"/v1/rules/import", file(`{"id":1,"action":"allow","expires":"2001-01-01T00:00:00Z"}`), `rule 0 (id 1): field "expires" (2001-01-01T00:00:00Z): already passed`},
		{"/v1/rules/import", file(`{"action":"allow","user":"latch-no-such-user"}`), `rule 0: field "user" ("latch-no-such-user"): no such user`},
		{"/v1/rules/import", file(`{"action":"allow","remote":""}`), `rule 0: field "remote" (""): empty`},
		{"/v1/rules/import", file(`{"action":"accept","proto":"0"}`), `rule 0: field "action" ("accept")`},
		{"/v1/rules/import", file(`{"action":"allow","app":"curl"}`), `rule 0: field "app" ("curl"): not an absolute path`},
		{"/v1/rules/import", file(`{"action":"allow"},{"action":"allow","remote":"198.18.0.1/15"}`), `rule 1: field "remote" ("198.18.0.1/15"): remote "198.18.0.1/15": host bits set`},
		// answers
		{answer, `{"action":"accept"}`, `field "action": action "accept"`},
		{answer, `{"action":"ALLOW"}`, `field "action": action "ALLOW"`},
		{answer, `{"action":"allow","for":"always"}`, `field "for": for "always"`},
		{answer, `{"action":"allow","for":"FOREVER"}`, `field "for": for "FOREVER"`},
		{answer, `{"action":"allow","for":""}`, `field "for": empty`},
		{answer, `{"action":"allow","for":null}`, `field "for": null`},
		{answer, `{"action":"allow","for":"1h","scope":"APP"}`, `field "scope": scope "APP"`},
		{answer, `{"action":"allow","for":"1h","scope":""}`, `field "scope": empty`},
		{answer, `{"action":"allow","Scope":"app"}`, `unknown field "Scope" (did you mean "scope"?`},
		{answer, `{"action":"deny","action":"allow"}`, `field "action" given twice`},
	}
	for _, tc := range cases {
		code, body := f.raw(t, "POST", tc.path, tc.body)
		var eb errorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil || code != 400 || !strings.Contains(eb.Error, tc.want) {
			t.Errorf("POST %s %s: %d %s; want 400 and an error containing %q", tc.path, tc.body, code, strings.TrimSpace(body), tc.want)
		}
	}
	rulesAfter, _ := f.client.Rules(c)
	fileAfter, _ := os.ReadFile(f.rulesPath)
	if !reflect.DeepEqual(rulesBefore, rulesAfter) || !bytes.Equal(fileBefore, fileAfter) {
		t.Errorf("refused requests changed the rules: %v -> %v", rulesBefore, rulesAfter)
	}
	if ps, _ := f.client.Prompts(c); len(ps) != 1 {
		t.Errorf("refused answers closed the question: %v", ps)
	}
}

// TestDeliberateFormsAccepted: the forms the documentation names keep working: "any"
// for dir, proto, remote and ports; a port as a number; a protocol by number; a
// hostname in any case with a trailing dot; a numeric uid; a user that exists.
func TestDeliberateFormsAccepted(t *testing.T) {
	f := newFixture(t)
	for _, body := range []string{
		`{"action":"allow","dir":"any","proto":"any","remote":"any","port":"any","local_port":"any"}`,
		`{"action":"deny","port":443,"proto":"6","remote":"198.18.0.0/15"}`,
		`{"action":"deny","proto":"136","host":"WWW.Example.COM."}`,
		`{"action":"reject","user":"4242","app":"/usr/lib/firefox/**"}`,
		`{"action":"drop","user":"root","app":"C:\\Program Files\\x.exe"}`,
	} {
		code, resp := f.raw(t, "POST", "/v1/rules", body)
		if code != 200 {
			t.Errorf("POST /v1/rules %s: %d %s; want 200", body, code, resp)
		}
	}
	if code, resp := f.raw(t, "POST", "/v1/rules/import", `{"version":1,"rules":[]}`); code != 200 {
		t.Errorf("importing an empty list: %d %s", code, resp)
	}
}
