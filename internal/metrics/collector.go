package metrics

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

// collector reads Sources at scrape time.
type collector struct{ src Sources }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	dQuestionsOpened = desc("latch_questions_opened_total", "Questions opened (connections no rule decided, asked of a person).")
	dQuestionsOpen   = desc("latch_questions_open", "Questions open now.")
	dQuestionsHeld   = desc("latch_questions_held_connections", "Connections waiting on open questions now.")
	dRules           = desc("latch_rules", "Rules in force.")
	dSubDrops        = desc("latch_engine_subscriber_drops_total", "Engine events slow subscribers (API streams, event sinks, metrics) lost.")
	dHeld            = desc("latch_kernel_held_total", "Connections the kernel backend held and handed to the engine.")
	dVerdicts        = desc("latch_kernel_verdicts_total", "Verdicts the kernel backend carried out, by action.", "action")
	dOverflows       = desc("latch_queue_overflows_total", "Kernel queue overflows (ENOBUFS) the backend survived.")
	dQueueDrops      = desc("latch_queue_drops_total", "Packets the kernel dropped instead of queueing, by cause (queue_full: the queue was full; socket_full: latch's socket buffer was full).", "cause")
	dKernelErrors    = desc("latch_kernel_errors_total", "Malformed kernel messages and failed verdicts.")
	dHoldTimeouts    = desc("latch_hold_timeouts_total", "Connections the backend released with the default because no verdict came in time.")
	dAttribution     = desc("latch_attributions_total", "Held connections attributed to a process, by method.", "method")
	dAttrFailures    = desc("latch_attribution_failures_total", "Held connections whose process could not be found, by cause.", "cause")
	dHistWritten     = desc("latch_history_rows_written_total", "Connections written to the history database.")
	dHistDropped     = desc("latch_history_drops_total", "Connections not recorded in the history: write buffer full.")
	dHistFailed      = desc("latch_history_failures_total", "Connections lost to a history database error.")
	dHistRows        = desc("latch_history_rows", "Connections the history holds now.")
	dDNSNames        = desc("latch_dns_names", "Addresses labelled with a hostname learned from DNS responses, now.")
	dDNSResponses    = desc("latch_dns_responses_total", "DNS responses read (copies; DNS is never held).")
	dEventsSent      = desc("latch_events_sent_total", "Events written or sent, by sink (file, syslog, api).", "sink")
	dEventsDropped   = desc("latch_events_dropped_total", "Events lost, by sink: its queue was full or it failed (a verdict never waits for a sink).", "sink")
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dQuestionsOpened, dQuestionsOpen, dQuestionsHeld, dRules, dSubDrops, dHeld,
		dVerdicts, dOverflows, dQueueDrops, dKernelErrors, dHoldTimeouts, dAttribution, dAttrFailures, dHistWritten,
		dHistDropped, dHistFailed, dHistRows, dDNSNames, dDNSResponses, dEventsSent, dEventsDropped} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	src := c.src
	if src.Engine != nil {
		st := src.Engine()
		counter(dQuestionsOpened, st.Prompts)
		gauge(dQuestionsOpen, float64(st.Open))
		gauge(dQuestionsHeld, float64(st.Held))
		gauge(dRules, float64(st.Rules))
		counter(dSubDrops, st.Dropped)
	}
	if src.Kernel != nil {
		k := src.Kernel()
		counter(dHeld, k.Held)
		counter(dVerdicts, k.Allowed, "allow")
		counter(dVerdicts, k.Denied, "deny")
		counter(dVerdicts, k.Rejected, "reject")
		counter(dVerdicts, k.Extra["dropped"], "drop")
		counter(dOverflows, k.Overflows)
		counter(dQueueDrops, k.Extra["queue_dropped"], "queue_full")
		counter(dQueueDrops, k.Extra["queue_user_dropped"], "socket_full")
		counter(dKernelErrors, k.Errors)
		counter(dHoldTimeouts, k.Extra["hold_timeouts"])
		counter(dAttrFailures, k.Extra["attribution_failed"], "backend")
		gauge(dDNSNames, float64(k.Extra["dns_names"]))
		counter(dDNSResponses, k.Extra["dns_responses"])
	}
	if src.Attribution != nil {
		a := src.Attribution()
		keys := make([]string, 0, len(a))
		for k := range a {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if attributionFailures[k] {
				counter(dAttrFailures, a[k], k)
			} else {
				counter(dAttribution, a[k], k)
			}
		}
	}
	if src.History != nil {
		h := src.History()
		counter(dHistWritten, h.Recorded)
		counter(dHistDropped, h.Dropped)
		counter(dHistFailed, h.Failed)
	}
	if src.HistoryRows != nil {
		if n, err := src.HistoryRows(); err == nil {
			gauge(dHistRows, float64(n))
		} else {
			ch <- prometheus.NewInvalidMetric(dHistRows, err)
		}
	}
	if src.Events != nil {
		for _, s := range src.Events() {
			counter(dEventsSent, s.Sent, s.Sink)
			counter(dEventsDropped, s.Dropped, s.Sink)
		}
	}
}
