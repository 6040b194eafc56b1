package api

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// FuzzHistoryQueries sends arbitrary query strings to the history endpoints: no panic,
// a JSON reply, and 200 or a 400 that says what is wrong.
func FuzzHistoryQueries(f *testing.F) {
	for _, s := range []string{"", "from=0&to=100&step=60", "step=0", "from=x", "to=-1", "top=1000&step=1",
		"from=1&to=9999999999&step=1", "exe=%2Fusr%2Fbin%2Fcurl&n=5", "n=0", "colour=red", "from=10&from=20", "%zz"} {
		f.Add(s)
	}
	eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Hour}, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer eng.Close()
	hist, err := store.OpenHistory(filepath.Join(f.TempDir(), store.HistoryFileName), 100)
	if err != nil {
		f.Fatal(err)
	}
	defer hist.Close()
	h := NewServer(Config{Engine: eng, History: hist, Logf: func(string, ...any) {}}).Handler()
	f.Fuzz(func(t *testing.T, q string) {
		for _, path := range []string{"/v1/history", "/v1/programs", "/v1/programs/conns"} {
			u := &url.URL{Path: path, RawQuery: q}
			req := httptest.NewRequest("GET", path, nil)
			req.URL.RawQuery = q
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var body map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("GET %s: not JSON: %d %s", u, rec.Code, rec.Body)
			}
			if rec.Code != 200 && (rec.Code != 400 || body["error"] == nil) {
				t.Fatalf("GET %s: %d %s", u, rec.Code, rec.Body)
			}
		}
	})
}
