package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/events"
	"github.com/latchfw/latch/internal/localhttp"
	"github.com/latchfw/latch/internal/metrics"
	"github.com/latchfw/latch/internal/store"
)

// observeHelp is the part of 'latch help daemon' about metrics and events.
const observeHelp = `
Metrics and events (all off by default):
  --metrics ADDR           serve Prometheus metrics at http://ADDR/metrics, e.g.
                           127.0.0.1:9184; loopback only unless --metrics-allow-remote
  --metrics-allow-remote   allow a non-loopback --metrics address
  --events-file PATH       write every event (latch.event/1, docs/events.md) as a JSON
                           line; fsynced within 1s; rotated by size
  --events-file-max-size N rotate the events file at N bytes (K, M, G suffixes; default 100M)
  --events-file-keep N     rotated files kept: PATH.1 (newest) to PATH.N (default 5)
  --events-syslog URL      send every event as RFC 5424 to a collector: tcp://HOST:PORT,
                           udp://HOST:PORT, tls://HOST:PORT or unix:///dev/log
  --host-id ID             host_id of every event (default: /etc/machine-id)
A slow or unreachable collector never delays a verdict: events wait in a bounded
queue, and what does not fit is dropped and counted ('latch status', metrics).
`

// observeOptions are the daemon's metrics and events flags.
type observeOptions struct {
	Metrics            string
	MetricsAllowRemote bool
	EventsFile         string
	EventsFileMaxSize  int64
	EventsFileKeep     int
	EventsSyslog       string
	HostID             string
}

func addObserveFlags(fs *flag.FlagSet, o *observeOptions) func() error {
	fs.StringVar(&o.Metrics, "metrics", "", "")
	fs.BoolVar(&o.MetricsAllowRemote, "metrics-allow-remote", false, "")
	fs.StringVar(&o.EventsFile, "events-file", "", "")
	maxSize := fs.String("events-file-max-size", "100M", "")
	fs.IntVar(&o.EventsFileKeep, "events-file-keep", events.DefaultFileKeep, "")
	fs.StringVar(&o.EventsSyslog, "events-syslog", "", "")
	fs.StringVar(&o.HostID, "host-id", "", "")
	return func() error {
		var err error
		if o.EventsFileMaxSize, err = parseSize(*maxSize); err != nil || o.EventsFileMaxSize < 4096 {
			return usagef("--events-file-max-size %q: want a size of at least 4096 bytes, e.g. 100M", *maxSize)
		}
		if o.EventsFileKeep < 1 || o.EventsFileKeep > 1000 {
			return usagef("--events-file-keep %d: want 1 to 1000", o.EventsFileKeep)
		}
		if o.Metrics != "" {
			if err := metrics.CheckAddress(o.Metrics, o.MetricsAllowRemote); err != nil {
				return usagef("--metrics: %v", err)
			}
		}
		if o.EventsSyslog != "" {
			if _, err := events.NewSyslogSink(o.EventsSyslog, "", nil); err != nil {
				return usagef("--events-syslog: %v", err)
			}
		}
		if strings.ContainsFunc(o.HostID, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return usagef("--host-id %q: control characters are not allowed", o.HostID)
		}
		return nil
	}
}

// parseSize parses 4096, 64K, 100M or 1G (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q", s)
	}
	return n * mult, nil
}

// observers are the daemon's metrics and event sinks.
type observers struct {
	metrics *metrics.Metrics   // nil without --metrics
	server  *localhttp.Service // nil without --metrics
	// httpServer serves the metrics on server's listener.
	httpServer *http.Server
	hub        *events.Hub // always there: API subscribers may come
	stop       chan struct{}
	done       chan struct{}
	unsub      func()
	daemon     events.Daemon
}

// startObservers opens the sinks and the metrics listener; an error (a bad path)
// stops the daemon before it holds anything. A metrics address in use does not: it is
// retried in the background, and reported by metricsStatus.
func startObservers(o *daemonOptions, eng *engine.Engine, hist *store.History, be *platformBackend, mode string, logf func(string, ...any)) (*observers, error) {
	hostName, _ := os.Hostname()
	hostID := o.HostID
	if hostID == "" {
		hostID = events.DefaultHostID()
	}
	var sinks []events.Sink
	if o.EventsFile != "" {
		fs, err := events.OpenFileSink(o.EventsFile, o.EventsFileMaxSize, o.EventsFileKeep, logf)
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, fs)
	}
	if o.EventsSyslog != "" {
		ss, err := events.NewSyslogSink(o.EventsSyslog, hostName, logf)
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, ss)
	}
	ob := &observers{
		hub:  events.NewHub(events.Config{HostID: hostID, HostName: hostName}, sinks...),
		stop: make(chan struct{}), done: make(chan struct{}),
		daemon: events.Daemon{Version: latchVersion(), PID: os.Getpid(), Backend: be.Name(), Mode: mode, Default: o.Default.String()},
	}
	if o.Metrics != "" {
		ob.metrics = metrics.New(metrics.Sources{
			Engine: eng.Stats, Kernel: be.Stats, History: hist.Stats, HistoryRows: hist.Count,
			Attribution: be.attrStats, Events: ob.sinkStats, Version: latchVersion(),
		})
		// A port another program holds (any local user may bind it first) does not
		// stop the daemon: it decides without metrics and retries the bind.
		hs := metrics.NewHTTPServer(ob.metrics, o.MetricsAllowRemote)
		ob.server = localhttp.NewService("metrics", o.Metrics,
			func() (net.Listener, error) { return metrics.Listen(o.Metrics, logf) }, hs.Serve, nil, logf)
		ob.httpServer = hs
		if ob.server.Start() {
			logf("metrics at http://%s/metrics", o.Metrics)
		}
	}
	evs, unsub := eng.Subscribe()
	ob.unsub = unsub
	eng.OnRulesChanged(ob.hub.RulesChanged)
	for _, w := range be.warnings {
		ob.hub.Emit(events.Event{Event: events.BackendDegraded, Backend: &events.Backend{Name: be.Name(), Condition: "attribution_unavailable", Count: 1, Message: w}})
	}
	go ob.watch(evs, be, hist)
	return ob, nil
}

// decided records a verdict: the hot path, no lock, no allocation without sinks.
func (ob *observers) decided(req *engine.Request, v engine.Verdict) {
	held := time.Duration(-1)
	if !req.Time.IsZero() {
		held = time.Since(req.Time)
	}
	ob.metrics.Decided(v, held)
	ob.hub.Decided(req, v, max(held, 0))
}

func (ob *observers) sinkStats() []metrics.SinkStats {
	var out []metrics.SinkStats
	for _, s := range ob.hub.Stats() {
		out = append(out, metrics.SinkStats{Sink: s.Sink, Sent: s.Sent, Dropped: s.Dropped})
	}
	return out
}

// started and stopped report the daemon's life.
func (ob *observers) started() {
	d := ob.daemon
	ob.hub.Emit(events.Event{Event: events.DaemonStarted, Daemon: &d})
}

func (ob *observers) stopped(err error) {
	d := ob.daemon
	if err != nil {
		d.Error = err.Error()
	}
	ob.hub.Emit(events.Event{Event: events.DaemonStopped, Daemon: &d})
}

// watch turns engine events into question events and metrics, and reports
// degradations (queue overflows and drops, hold timeouts, history and event drops)
// as backend.degraded, at most every degradedInterval.
func (ob *observers) watch(evs <-chan engine.Event, be *platformBackend, hist *store.History) {
	defer close(ob.done)
	const degradedInterval = 2 * time.Second
	tick := time.NewTicker(degradedInterval)
	defer tick.Stop()
	last := map[string]uint64{}
	report := func(cond string, now uint64, msg string) {
		if d := now - last[cond]; now > last[cond] {
			ob.hub.Emit(events.Event{Event: events.BackendDegraded, Backend: &events.Backend{
				Name: be.Name(), Condition: cond, Count: d, Message: fmt.Sprintf(msg, d)}})
		}
		last[cond] = now
	}
	check := func() {
		k := be.Stats()
		report("queue_overflow", k.Overflows, "the kernel queue overflowed %d times (verdicts were lost and connections dropped)")
		report("queue_drop", k.Extra["queue_dropped"]+k.Extra["queue_user_dropped"], "the kernel dropped %d packets because the queue was full")
		report("hold_timeout", k.Extra["hold_timeouts"], "%d connections got the default because no verdict came in time")
		report("history_drop", hist.Stats().Dropped, "%d connections were not recorded in the history (write buffer full)")
		var dropped uint64
		for _, s := range ob.hub.Stats() {
			if s.Sink != "api" {
				dropped += s.Dropped
			}
		}
		report("events_drop", dropped, "%d events were dropped (a sink was slow or down)")
	}
	check()
	for {
		select {
		case ev, ok := <-evs:
			if !ok {
				evs = nil
				continue
			}
			if ev.Kind == engine.EventAnswered && ev.Verdict != nil {
				ob.metrics.QuestionClosed(*ev.Verdict)
			}
			ob.hub.EngineEvent(ev)
		case <-tick.C:
			check()
		case <-ob.stop:
			return
		}
	}
}

// eventStats is what `latch status` shows of the sinks.
func (ob *observers) eventStats() []api.EventSinkStats {
	var out []api.EventSinkStats
	for _, s := range ob.hub.Stats() {
		out = append(out, api.EventSinkStats{Sink: s.Sink, Sent: s.Sent, Dropped: s.Dropped})
	}
	return out
}

// metricsStatus is the metrics listener's state; nil without --metrics.
func (ob *observers) metricsStatus() *localhttp.Status {
	if ob.server == nil {
		return nil
	}
	st := ob.server.Status()
	return &st
}

// close stops the metrics server and flushes the sinks (waiting up to 5s).
func (ob *observers) close() {
	ob.unsub()
	close(ob.stop)
	<-ob.done
	if ob.server != nil {
		ob.server.Stop(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if ob.httpServer.Shutdown(ctx) != nil {
				ob.httpServer.Close()
			}
		})
	}
	ob.hub.Close(5 * time.Second)
}
