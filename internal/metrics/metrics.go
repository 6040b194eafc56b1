// Package metrics serves latch's Prometheus metrics (`latch daemon --metrics ADDR`).
//
// Two kinds of numbers are exported. Counters the daemon keeps anyway (the engine's,
// the kernel backend's, the history's, process attribution's, the event sinks') are
// read when Prometheus scrapes, so they cost nothing on the verdict path. The few that
// exist only here — decisions by action and reason, the verdict latency histogram and
// questions closed by outcome — are recorded by Decided and QuestionClosed: atomic
// adds on pre-resolved series, no allocation, no lock.
//
// Every name starts with latch_, counters end in _total, durations are in seconds.
// The full list is in docs/metrics.md.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/localhttp"
	"github.com/latchfw/latch/internal/store"
)

// SinkStats are one event sink's counters (see internal/events).
type SinkStats struct {
	Sink    string // "file", "syslog", "api"
	Sent    uint64 // events written or sent
	Dropped uint64 // events lost: queue full, or the sink failed
}

// Sources are where the scrape-time numbers come from; nil fields are left out.
type Sources struct {
	Engine      func() engine.Stats
	Kernel      func() intercept.Stats
	History     func() store.HistoryStats
	HistoryRows func() (int, error)      // rows the history holds now
	Attribution func() map[string]uint64 // counts by method ("ebpf", "procfs", ...) and failure ("no_socket", ...)
	Events      func() []SinkStats
	Version     string
}

// attributionFailures are the keys of Sources.Attribution that count failures.
var attributionFailures = map[string]bool{"no_socket": true, "no_process": true}

// Metrics records and serves latch's metrics. A nil *Metrics records nothing.
type Metrics struct {
	reg       *prometheus.Registry
	decisions *prometheus.CounterVec
	byAR      [len(actions)][len(knownReasons)]prometheus.Counter
	latency   prometheus.Histogram
	closed    *prometheus.CounterVec
}

var actions = [...]engine.Action{engine.Allow, engine.Deny, engine.Reject, engine.Drop}

var knownReasons = [...]engine.Reason{engine.ReasonRule, engine.ReasonPrompt, engine.ReasonDefault,
	engine.ReasonTimeout, engine.ReasonQuestionCap, engine.ReasonExempt, engine.ReasonError, engine.ReasonFastPath}

// LatencyBuckets are the verdict latency histogram's upper bounds, in seconds: from
// 25µs (a rule verdict) to 2 minutes (a question answered late).
var LatencyBuckets = []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
	50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10, 30, 60, 120}

// New returns metrics reading src at scrape time.
func New(src Sources) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_decisions_total",
		Help: "Verdicts given to held connections, by action (allow, deny, reject, drop) and reason (rule, prompt, default, timeout, limit, ...).",
	}, []string{"action", "reason"})
	for i, a := range actions {
		for j, r := range knownReasons {
			m.byAR[i][j] = m.decisions.WithLabelValues(a.String(), string(r))
		}
	}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "latch_verdict_latency_seconds",
		Help:    "How long the kernel held a connection before its verdict (from the packet's arrival to the verdict), in seconds.",
		Buckets: LatencyBuckets,
	})
	m.closed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_questions_closed_total",
		Help: "Questions closed, by outcome: answered (a person), timeout (the default applied), rule (a new rule decided it), default (the daemon stopped).",
	}, []string{"outcome"})
	for _, o := range []string{"answered", "timeout", "rule", "default"} {
		m.closed.WithLabelValues(o)
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "latch_build_info",
		Help:        "Always 1; the labels say which latch runs.",
		ConstLabels: prometheus.Labels{"version": src.Version, "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(m.decisions, m.latency, m.closed, build, &collector{src: src})
	return m
}

// Decided records a verdict and how long the kernel held its connection.
func (m *Metrics) Decided(v engine.Verdict, held time.Duration) {
	if m == nil {
		return
	}
	m.decisionCounter(v).Inc()
	if held >= 0 {
		m.latency.Observe(held.Seconds())
	}
}

func (m *Metrics) decisionCounter(v engine.Verdict) prometheus.Counter {
	for j, r := range knownReasons {
		if r == v.Reason {
			for i, a := range actions {
				if a == v.Action {
					return m.byAR[i][j]
				}
			}
		}
	}
	return m.decisions.WithLabelValues(v.Action.String(), string(v.Reason))
}

// QuestionClosed records how a question was closed, from the verdict it closed with.
func (m *Metrics) QuestionClosed(v engine.Verdict) {
	if m == nil {
		return
	}
	outcome := string(v.Reason)
	switch v.Reason {
	case engine.ReasonPrompt:
		outcome = "answered"
	}
	m.closed.WithLabelValues(outcome).Inc()
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// CheckAddress checks a --metrics address: host:port with a numeric port and a
// loopback host (127.0.0.0/8, ::1, localhost), unless allowRemote. An empty host
// (":9184") means every interface and needs allowRemote too.
func CheckAddress(addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: want HOST:PORT, e.g. 127.0.0.1:9184: %v", addr, err)
	}
	if _, err := netip.ParseAddrPort("127.0.0.1:" + port); err != nil {
		return fmt.Errorf("metrics address %q: port %q: want a number 0-65535", addr, port)
	}
	if allowRemote {
		return nil
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil && host != "" {
		return fmt.Errorf("metrics address %q: host %q: want a loopback IP address (or localhost)", addr, host)
	}
	if host == "" || !ip.IsLoopback() {
		return fmt.Errorf("metrics address %q: not a loopback address; serving metrics beyond this machine needs --metrics-allow-remote", addr)
	}
	return nil
}

// Server serves /metrics on one listener.
type Server struct {
	l    net.Listener
	http *http.Server
	done chan error
}

// ConnLimit bounds the metrics listener's connections (see Listen): a scraper
// needs one.
var ConnLimit = localhttp.Limit{Total: 16, PerPeer: 4}

// Listen binds addr for the metrics server, with ConnLimit; logf logs refused
// connections (nil: not logged).
func Listen(addr string, logf func(string, ...any)) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return localhttp.LimitListener(l, "metrics "+addr, ConnLimit, logf), nil
}

// NewHTTPServer returns the server of m's metrics at /metrics, with the timeouts of
// localhttp.Timeouts. Unless allowRemote, it answers only requests whose Host names
// a loopback address or localhost (a page of another site the browser opens may
// rebind its name to 127.0.0.1, but it cannot change Host).
func NewHTTPServer(m *Metrics, allowRemote bool) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "latch serves /metrics only", http.StatusNotFound)
	})
	h := http.Handler(mux)
	if !allowRemote {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !localhttp.LoopbackHost(r.Host) {
				http.Error(w, fmt.Sprintf("host %q: this server answers requests naming a loopback address or localhost only", r.Host),
					http.StatusForbidden)
				return
			}
			mux.ServeHTTP(w, r)
		})
	}
	hs := &http.Server{Handler: h}
	localhttp.Timeouts(hs)
	return hs
}

// Serve listens on addr (see CheckAddress) and serves m's metrics at /metrics until
// Close.
func Serve(m *Metrics, addr string, allowRemote bool) (*Server, error) {
	if err := CheckAddress(addr, allowRemote); err != nil {
		return nil, err
	}
	l, err := Listen(addr, nil)
	if err != nil {
		return nil, err
	}
	s := &Server{l: l, done: make(chan error, 1), http: NewHTTPServer(m, allowRemote)}
	go func() { s.done <- s.http.Serve(l) }()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.l.Addr() }

// Close stops the server.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.http.Shutdown(ctx)
	if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
