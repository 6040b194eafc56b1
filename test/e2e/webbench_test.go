package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/latchfw/latch/test/browser"
)

// TestWebUIConnectBenchmark is a benchmark, not a timed test (it asserts nothing about
// speed and runs only when LATCH_WEB_BENCH=1): the median connect() latency through
// latch while a browser streams live connections from the web UI, against the same
// daemon with no browser watching, in interleaved rounds of one run. It prints the
// numbers (target: within 5%).
func TestWebUIConnectBenchmark(t *testing.T) {
	if os.Getenv("LATCH_WEB_BENCH") != "1" {
		t.Skip("a benchmark: set LATCH_WEB_BENCH=1 to run it")
	}
	if browser.Find() == "" {
		t.Skip("chromium not installed")
	}
	const rounds, perRound = 10, 400
	n := NewNet(t)
	n.Serve(t, 8095)
	d := n.StartDaemon("--default", "deny", "--web", "127.0.0.1:7654")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8095", "--action", "allow")
	login := strings.TrimSpace(d.MustCLI(t, "web", "url"))
	base := login[:strings.Index(login, "/login")]
	ctx := browser.NewIn(t, n.Client)
	if err := chromedp.Do(ctx, chromedp.Navigate(login)); err != nil {
		t.Fatal(err)
	}
	measure := func() float64 {
		out, err := n.Exec(n.Client, helperBin, "latency", fmt.Sprintf("%s:%d", n.ServerIP, 8095), fmt.Sprint(perRound), "5s")
		if err != nil {
			t.Fatalf("latency: %v: %s", err, out)
		}
		var r struct {
			Connected int     `json:"connected"`
			P50       float64 `json:"p50_us"`
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil || r.Connected != perRound {
			t.Fatalf("latency: %q: %v", out, err)
		}
		return r.P50
	}
	var with, without []float64
	for i := range rounds {
		watching := i%2 == 0
		url := "about:blank"
		if watching {
			url = base + "/#/live"
		}
		if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
			t.Fatal(err)
		}
		if watching {
			if err := browser.WaitJS(ctx, `document.querySelector('nav.top .conn-state.ok') !== null`, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(200 * time.Millisecond)
		p50 := measure()
		if watching {
			// The browser really got them: rows are on the live page.
			if err := browser.WaitJS(ctx, `document.querySelectorAll('.lrow.conn').length > 0`, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			with = append(with, p50)
		} else {
			without = append(without, p50)
		}
	}
	med := func(xs []float64) float64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
	mw, mo := med(with), med(without)
	fmt.Printf("web UI benchmark: connect p50 with a browser streaming live connections %.0f µs, without %.0f µs: %.3fx (rounds with %v, without %v; target within 5%%)\n",
		mw, mo, mw/mo, with, without)
}
