package web

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
	"github.com/latchfw/latch/test/browser"
)

// BenchmarkLiveTableFrames measures, in a real headless Chromium, the frame intervals
// of the live connections page holding 10,000 rows while 1,000 new connections a second
// arrive, against the same page idle, in interleaved rounds of one run. It prints
// p50/p95/max (a frame every 16.7 ms is 60 fps; target p95 < 16 ms of work, i.e. no
// dropped frames). Run: go test -run '^$' -bench LiveTable -benchtime 1x ./internal/web
func BenchmarkLiveTableFrames(b *testing.B) {
	f := newFixture(b)
	seq := 0
	record := func(n int) {
		for range n {
			seq++
			v := engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}
			if seq%5 == 0 {
				v = engine.Verdict{Action: engine.Deny, Reason: engine.ReasonPrompt}
			}
			f.hist.Record(store.Conn{Time: time.Now(), Request: engine.Request{
				Direction: engine.Outbound, Protocol: engine.TCP, PID: int32(1000 + seq%50),
				Identity: engine.IdentityVerified, Exe: fmt.Sprintf("/usr/bin/app%d", seq%40),
				Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
				Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(seq % 200), byte(seq % 250)}), 443),
				Host:   fmt.Sprintf("h%d.example.com", seq%300)}, Verdict: v})
		}
	}
	for range 10 {
		record(1000)
		f.hist.Flush()
	}
	ctx := browser.New(b)
	if err := chromedp.Do(ctx, chromedp.Navigate(f.web.LoginURL())); err != nil {
		b.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/#/live")); err != nil {
		b.Fatal(err)
	}
	// The page loads the newest 1,000 from the history; the stream brings the rest up to
	// 10,000 rows kept.
	if err := browser.WaitJS(ctx, `document.querySelectorAll('.lrow.conn').length > 10`, 10*time.Second); err != nil {
		b.Fatal(err)
	}
	if _, err := browser.Eval[string](ctx, `(() => { window.deltas = []; let last = 0;
		const tick = (ts) => { if (last) window.deltas.push(ts - last); last = ts; requestAnimationFrame(tick); };
		requestAnimationFrame(tick); return 'ok'; })()`); err != nil {
		b.Fatal(err)
	}
	var renders []float64
	phase := func(stream bool) []float64 {
		browser.Eval[string](ctx, `(() => { window.deltas = []; window.latchRenderTimes = []; return 'ok'; })()`)
		end := time.Now().Add(time.Second)
		for time.Now().Before(end) {
			if stream {
				record(50) // 50 every 50 ms: 1,000 a second
			}
			time.Sleep(50 * time.Millisecond)
		}
		ds, err := browser.Eval[[]float64](ctx, `window.deltas`)
		if err != nil {
			b.Fatal(err)
		}
		if stream {
			rs, _ := browser.Eval[[]float64](ctx, `window.latchRenderTimes || []`)
			renders = append(renders, rs...)
		}
		return ds
	}
	// Fill the page to 10,000 rows first.
	for range 9 {
		phase(true)
	}
	rows, _ := browser.Eval[float64](ctx, `Number(document.querySelector('.live .toolbar .dim').textContent.split('·')[1].trim().split(' ')[0])`)
	dom, _ := browser.Eval[float64](ctx, `document.querySelectorAll('.lrow').length`)
	b.ResetTimer()
	renders = nil
	var idle, busy []float64
	for range 4 {
		idle = append(idle, phase(false)...)
		busy = append(busy, phase(true)...)
	}
	b.StopTimer()
	pct := func(xs []float64, p float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		if len(s) == 0 {
			return 0
		}
		return s[min(len(s)-1, int(float64(len(s))*p))]
	}
	fmt.Printf("live table, %v connections kept, %v row elements in the page: frame interval idle p50 %.1f ms p95 %.1f ms max %.1f ms (%d frames); at 1,000 conns/s p50 %.1f ms p95 %.1f ms max %.1f ms (%d frames)\n",
		rows, dom, pct(idle, .5), pct(idle, .95), pct(idle, 1), len(idle), pct(busy, .5), pct(busy, .95), pct(busy, 1), len(busy))
	fmt.Printf("live table at 1,000 conns/s: render (diff and DOM commit) p50 %.1f ms p95 %.1f ms max %.1f ms (%d renders)\n",
		pct(renders, .5), pct(renders, .95), pct(renders, 1), len(renders))
	b.ReportMetric(pct(busy, .95), "p95-frame-ms")
	b.ReportMetric(pct(renders, .95), "p95-render-ms")
	b.ReportMetric(pct(idle, .95), "idle-p95-frame-ms")
}
