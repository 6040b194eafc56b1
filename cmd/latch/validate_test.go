//go:build linux

package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// apiError posts body to the fixture's API and returns its error text.
func (f *fixture) apiError(t *testing.T, path, body string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", f.sock)
	}}}
	resp, err := hc.Post("http://latch"+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var eb struct{ Error string }
	if json.Unmarshal(data, &eb) != nil || resp.StatusCode != 400 || eb.Error == "" {
		t.Fatalf("POST %s %s: %d %s; want a 400 error", path, body, resp.StatusCode, data)
	}
	return eb.Error
}

// TestCLIAndAPISayTheSame: `rules add` flags and the API's JSON go through one parser,
// so a mistake gets the same words from both (the API prefixes "rule: ", the command
// line the flag); and `rules import` says what the import endpoint says.
func TestCLIAndAPISayTheSame(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		flags []string
		body  string
	}{
		{[]string{"--remote", ""}, `{"action":"allow","remote":""}`},
		{[]string{"--proto", "0"}, `{"action":"allow","proto":"0"}`},
		{[]string{"--action", "accept"}, `{"action":"accept"}`},
		{[]string{"--action", "ALLOW"}, `{"action":"ALLOW"}`},
		{[]string{"--app", "curl"}, `{"action":"allow","app":"curl"}`},
		{[]string{"--remote", "198.18.0.1/15"}, `{"action":"allow","remote":"198.18.0.1/15"}`},
		{[]string{"--port", "0"}, `{"action":"allow","port":"0"}`},
		{[]string{"--local-port", "9-1"}, `{"action":"allow","local_port":"9-1"}`},
		{[]string{"--host", "*."}, `{"action":"allow","host":"*."}`},
		{[]string{"--host", ""}, `{"action":"allow","host":""}`},
		{[]string{"--dir", "outbound"}, `{"action":"allow","dir":"outbound"}`},
		{[]string{"--user", "latch-no-such-user"}, `{"action":"allow","user":"latch-no-such-user"}`},
	} {
		args := append([]string{"rules", "add"}, c.flags...)
		if !strings.Contains(strings.Join(c.flags, " "), "--action") {
			args = append(args, "--action", "allow")
		}
		apiText := strings.TrimPrefix(f.apiError(t, "/v1/rules", c.body), "rule: ")
		r := f.latch(t, args...)
		if r.code == 0 || !strings.Contains(r.stderr, apiText) {
			t.Errorf("latch %v: exit %d, stderr %q; want the API's words %q", args, r.code, r.stderr, apiText)
		}
	}
	dir := t.TempDir()
	for i, body := range []string{
		`{"version":1,"rules":null}`,
		`{"version":1,"rules":[{"action":"allow","remote":"198.18.0.1/15"}]}`,
		`{"version":1,"rules":[{"action":"allow"}],"Rules":[]}`,
		`{"version":1,"rules":[{"id":1,"action":"allow"},{"id":1,"action":"deny"}]}`,
	} {
		path := filepath.Join(dir, "rules"+string(rune('a'+i))+".json")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		apiText := strings.TrimPrefix(f.apiError(t, "/v1/rules/import", body), "import: ")
		r := f.latch(t, "rules", "import", path)
		if r.code == 0 || !strings.Contains(r.stderr, apiText) {
			t.Errorf("latch rules import %s: exit %d, stderr %q; want the API's words %q", body, r.code, r.stderr, apiText)
		}
	}
	if rules := f.must(t, "rules", "list"); !strings.Contains(rules, "no rules") {
		t.Errorf("refused input added rules:\n%s", rules)
	}
}
