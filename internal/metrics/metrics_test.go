package metrics

import (
	"io"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/store"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// TestExposition records decisions and reads them back in the text format, with the
// scrape-time sources; promtool (when installed) finds nothing to say.
func TestExposition(t *testing.T) {
	m := New(Sources{
		Engine: func() engine.Stats { return engine.Stats{Prompts: 4, Open: 1, Held: 2, Rules: 7, Dropped: 3} },
		Kernel: func() intercept.Stats {
			return intercept.Stats{Held: 9, Allowed: 5, Overflows: 2, Extra: map[string]uint64{"queue_dropped": 6, "dns_names": 11}}
		},
		History:     func() store.HistoryStats { return store.HistoryStats{Recorded: 8, Dropped: 1} },
		HistoryRows: func() (int, error) { return 8, nil },
		Attribution: func() map[string]uint64 { return map[string]uint64{"ebpf": 7, "procfs": 1, "no_socket": 1} },
		Events:      func() []SinkStats { return []SinkStats{{Sink: "file", Sent: 10, Dropped: 2}} },
		Version:     "v9.9.9",
	})
	m.Decided(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule}, 200*time.Microsecond)
	m.Decided(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule}, 300*time.Microsecond)
	m.Decided(engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}, 30*time.Second)
	m.Decided(engine.Verdict{Action: engine.Deny, Reason: engine.Reason("fairness")}, -1) // a reason added later; latency unknown
	m.QuestionClosed(engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout})
	m.QuestionClosed(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt})
	var nilM *Metrics
	nilM.Decided(engine.Verdict{}, 0) // off: no panic, nothing
	text := scrape(t, m)
	for _, want := range []string{
		`latch_decisions_total{action="allow",reason="rule"} 2`,
		`latch_decisions_total{action="deny",reason="timeout"} 1`,
		`latch_decisions_total{action="deny",reason="fairness"} 1`,
		`latch_verdict_latency_seconds_count 3`,
		`latch_verdict_latency_seconds_bucket{le="0.00025"} 1`,
		`latch_verdict_latency_seconds_bucket{le="30"} 3`,
		`latch_questions_closed_total{outcome="timeout"} 1`,
		`latch_questions_closed_total{outcome="answered"} 1`,
		`latch_questions_opened_total 4`,
		`latch_questions_open 1`,
		`latch_rules 7`,
		`latch_queue_overflows_total 2`,
		`latch_queue_drops_total{cause="queue_full"} 6`,
		`latch_attributions_total{method="ebpf"} 7`,
		`latch_attribution_failures_total{cause="no_socket"} 1`,
		`latch_history_rows 8`,
		`latch_history_drops_total 1`,
		`latch_dns_names 11`,
		`latch_events_dropped_total{sink="file"} 2`,
		`latch_build_info{goversion="`,
		`version="v9.9.9"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
	if _, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	}
}

func BenchmarkDecided(b *testing.B) {
	m := New(Sources{})
	v := engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}
	b.ReportAllocs()
	for b.Loop() {
		m.Decided(v, 100*time.Microsecond)
	}
}
