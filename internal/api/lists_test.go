//go:build linux

package api

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/blocklist"
)

// TestListsDaemonReadsNoClientPath (review 34): POST /v1/lists and /v1/lists/update
// had the daemon open a path the client named, with the daemon's rights (a member of
// the API group, or the web UI, which passes /api/v1/lists on, read root's files
// through parse errors). Now the client sends the contents: a request naming only a
// path is refused without the file being read, whatever the file; contents sent are
// put in force, and an update takes new contents.
func TestListsDaemonReadsNoClientPath(t *testing.T) {
	f := newFixture(t)
	state := t.TempDir()
	m, err := blocklist.Open(state, f.eng, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.cfg.Lists = m
	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, []byte("root:$y$review34secret:19000:::::\n"), 0o600)
	code, body := f.raw(t, "POST", "/v1/lists", `{"name": "x", "path": "`+secret+`", "action": "deny"}`)
	if code != http.StatusBadRequest || strings.Contains(body, "review34secret") || !strings.Contains(body, "content") {
		t.Errorf("POST /v1/lists with a path only: %d %s; want 400 saying the contents are missing", code, body)
	}
	// The old update body (none): nothing is read.
	code, body = f.raw(t, "POST", "/v1/lists/update", ``)
	if code != http.StatusBadRequest || !strings.Contains(body, "content") {
		t.Errorf("POST /v1/lists/update without contents: %d %s", code, body)
	}
	if ls := m.Lists(); len(ls) != 0 {
		t.Errorf("lists after refused requests: %+v", ls)
	}
	content := "ads.example\n"
	infos, err := f.client.AddList(ctx(t), ListRequest{Name: "ads", Path: "/srv/ads.txt", Action: "deny", Content: &content})
	if err != nil || len(infos) != 1 || infos[0].Stats.Domains != 1 || infos[0].Path != "/srv/ads.txt" {
		t.Fatalf("AddList: %+v %v", infos, err)
	}
	// A bad line the client sent is quoted back to it.
	bad := "ok.example\nnot a domain\n"
	if _, err := f.client.AddList(ctx(t), ListRequest{Name: "bad", Path: "/srv/bad.txt", Action: "deny", Content: &bad}); err == nil || !strings.Contains(err.Error(), `line 2: "not a domain"`) {
		t.Errorf("AddList with a bad line: %v", err)
	}
	code, body = f.raw(t, "POST", "/v1/lists/update", `{"lists": [{"name": "ads", "path": "/srv/ads.txt"}]}`)
	if code != http.StatusBadRequest || !strings.Contains(body, "content") {
		t.Errorf("POST /v1/lists/update, a list without contents: %d %s", code, body)
	}
	two := "a.example\nb.example\n"
	infos, err = f.client.UpdateLists(ctx(t), ListsUpdate{Lists: []ListContents{{Name: "ads", Path: "/srv/ads.txt", Content: &two}}})
	if err != nil || len(infos) != 1 || infos[0].Stats.Domains != 2 {
		t.Errorf("UpdateLists: %+v %v", infos, err)
	}
}
