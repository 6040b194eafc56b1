package metrics

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestReview34RebindingRefused (review 34, low): the metrics server answers any Host.
// A web page the user opens can rebind its own name to 127.0.0.1 and read /metrics
// from the browser, same-origin for it: the daemon's version and, scraped again and
// again, its decision and question counters (a side channel telling the page when
// the user is asked, or whether the connections it makes are denied). On loopback
// (without --metrics-allow-remote) the server must answer only requests that name a
// loopback address or localhost, as the web UI does for its own address.
func TestReview34RebindingRefused(t *testing.T) {
	m := New(Sources{Engine: func() engine.Stats { return engine.Stats{Prompts: 4} }})
	s, err := Serve(m, "127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.Addr().String()
	c := &http.Client{Timeout: 5 * time.Second}
	get := func(host string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(addr); code != 200 || !strings.Contains(body, "latch_") {
		t.Fatalf("scrape by its own address: %d", code)
	}
	if code, body := get("rebind.attacker.example:" + addr[strings.LastIndexByte(addr, ':')+1:]); code == 200 || strings.Contains(body, "latch_") {
		t.Errorf("a request naming another host (DNS rebinding) got %d with the metrics", code)
	}
}
