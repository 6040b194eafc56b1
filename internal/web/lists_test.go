package web

import (
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/blocklist"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
	assets "github.com/latchfw/latch/web"
)

// TestWebListsReadNoPath (review 34): the web UI passes /api/v1/lists on to the API,
// where adding a list had the daemon read a path the browser named, as root. A list
// is now added from the contents the request carries; a path alone is refused and the
// file is not read.
func TestWebListsReadNoPath(t *testing.T) {
	f := &fixture{t: t, now: time.Now()}
	var err error
	if f.eng, err = engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Minute}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.eng.Close)
	if f.hist, err = store.OpenHistory(filepath.Join(t.TempDir(), store.HistoryFileName), 1000); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.hist.Close() })
	lists, err := blocklist.Open(t.TempDir(), f.eng, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	f.api = api.NewServer(api.Config{Engine: f.eng, History: f.hist, Lists: lists, Logf: t.Logf})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	f.base = "http://" + f.addr
	f.web, err = New(Config{Addr: f.addr, API: f.api.Handler(), Engine: f.eng, History: f.hist,
		Assets: assets.Assets(), Logf: t.Logf, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: f.web}
	go hs.Serve(l)
	t.Cleanup(func() { f.web.Close(); hs.Close() })
	jar, _ := cookiejar.New(nil)
	f.client = &http.Client{Jar: jar, Timeout: 10 * time.Second}
	f.login()

	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, []byte("root:$y$review34webhash:19000:::::\n"), 0o600)
	code, body := f.do("POST", "/api/v1/lists", `{"name":"x","path":"`+secret+`","action":"deny"}`, nil)
	if code != http.StatusBadRequest || strings.Contains(body, "review34webhash") || !strings.Contains(body, "content") {
		t.Errorf("POST /api/v1/lists with a path only: %d %s; want 400, the file not read", code, body)
	}
	code, body = f.do("POST", "/api/v1/lists", `{"name":"x","path":"/srv/x.txt","action":"deny","content":"ads.example\n"}`, nil)
	if code != http.StatusOK || !strings.Contains(body, `"domains":1`) {
		t.Errorf("POST /api/v1/lists with contents: %d %s", code, body)
	}
}
