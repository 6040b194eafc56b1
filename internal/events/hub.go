package events

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// DefaultQueueLen is the length of the hub's queue and of each sink's queue.
const DefaultQueueLen = 16384

// subscriberQueueLen is how far an API subscriber may fall behind before it loses events.
const subscriberQueueLen = 4096

// Counters are a sink's counters.
type Counters struct {
	Sent    atomic.Uint64 // events written or sent
	Dropped atomic.Uint64 // events lost: a queue was full, or the sink failed
}

// A Sink writes event lines (one JSON document each, without a newline) from its
// queue. Run returns when lines is closed, after writing or dropping what it holds.
type Sink interface {
	Name() string
	Run(lines <-chan []byte, c *Counters)
}

// SinkStats are one sink's counters.
type SinkStats struct {
	Sink    string `json:"sink"`
	Sent    uint64 `json:"sent"`
	Dropped uint64 `json:"dropped"`
}

// Config of a Hub.
type Config struct {
	HostID   string           // every event's host_id
	HostName string           // every event's host_name
	QueueLen int              // 0: DefaultQueueLen
	Now      func() time.Time // nil: time.Now
}

type item struct {
	ev   *Event // any event but connection.decided, built by the caller
	req  engine.Request
	v    engine.Verdict
	held time.Duration
	at   time.Time
}

type sinkState struct {
	sink Sink
	ch   chan []byte
	c    Counters
	done chan struct{}
}

// Hub takes events from the daemon and hands each, encoded once, to every sink.
type Hub struct {
	cfg    Config
	in     chan item
	sinks  []*sinkState
	closed atomic.Bool
	active atomic.Int32 // sinks + subscribers: with none, events are not even queued
	stop   chan struct{}
	done   chan struct{}
	seq    uint64 // owned by the hub goroutine
	inDrop atomic.Uint64

	subMu   sync.Mutex
	subs    map[chan []byte]struct{}
	subSent atomic.Uint64
	subDrop atomic.Uint64
}

// NewHub returns a hub writing to sinks, running until Close.
func NewHub(cfg Config, sinks ...Sink) *Hub {
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Hub{cfg: cfg, in: make(chan item, cfg.QueueLen), stop: make(chan struct{}), done: make(chan struct{}),
		subs: map[chan []byte]struct{}{}}
	for _, s := range sinks {
		st := &sinkState{sink: s, ch: make(chan []byte, cfg.QueueLen), done: make(chan struct{})}
		h.sinks = append(h.sinks, st)
		go func() {
			defer close(st.done)
			s.Run(st.ch, &st.c)
		}()
	}
	h.active.Store(int32(len(h.sinks)))
	go h.run()
	return h
}

// Decided reports a connection's verdict and how long the kernel held it. It never
// blocks and does not allocate: a full queue drops the event (counted).
func (h *Hub) Decided(req *engine.Request, v engine.Verdict, held time.Duration) {
	if h == nil || h.active.Load() == 0 || h.closed.Load() {
		return
	}
	h.send(item{req: *req, v: v, held: held, at: h.cfg.Now()})
}

// Emit reports any other event; the hub fills in schema, time (if zero), host and seq.
// It never blocks.
func (h *Hub) Emit(ev Event) {
	if h == nil || h.active.Load() == 0 || h.closed.Load() {
		return
	}
	if ev.Time.IsZero() {
		ev.Time = h.cfg.Now()
	}
	h.send(item{ev: &ev})
}

func (h *Hub) send(it item) {
	select {
	case h.in <- it:
	default:
		h.inDrop.Add(1)
		for _, s := range h.sinks {
			s.c.Dropped.Add(1)
		}
	}
}

// EngineEvent reports what an engine subscription delivers: question.opened and
// question.answered (rule changes come from RulesChanged).
func (h *Hub) EngineEvent(ev engine.Event) {
	if ev.Prompt == nil {
		return
	}
	out := Event{Question: questionOf(ev.Prompt), Connection: connectionOf(&ev.Prompt.Request), Process: processOf(&ev.Prompt.Request)}
	switch ev.Kind {
	case engine.EventPrompt:
		out.Event = QuestionOpened
	case engine.EventAnswered:
		out.Event = QuestionAnswered
		if ev.Verdict != nil {
			out.Decision = decisionOf(*ev.Verdict, 0)
			out.Decision.LatencySeconds = h.cfg.Now().Sub(ev.Prompt.Opened).Seconds()
		}
	default:
		return
	}
	h.Emit(out)
}

// RulesChanged reports a rule-set change (an engine OnRulesChanged hook): rule.added,
// rule.removed, rule.changed, and rule.expired for rules that left because they expired.
func (h *Hub) RulesChanged(old, new []engine.Rule) {
	now := h.cfg.Now()
	before := make(map[engine.RuleID]engine.Rule, len(old))
	for _, r := range old {
		before[r.ID] = r
	}
	for _, r := range new {
		o, ok := before[r.ID]
		delete(before, r.ID)
		switch {
		case !ok:
			h.Emit(Event{Event: RuleAdded, Rule: &r, Time: now})
		case !sameRule(o, r):
			h.Emit(Event{Event: RuleChanged, Rule: &r, Time: now})
		}
	}
	for _, r := range old {
		if _, gone := before[r.ID]; !gone {
			continue
		}
		kind := RuleRemoved
		if r.Expired(now) {
			kind = RuleExpired
		}
		h.Emit(Event{Event: kind, Rule: &r, Time: now})
	}
}

func sameRule(a, b engine.Rule) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// Subscribe returns a channel of event lines (for the API) and a func that ends the
// subscription. A subscriber that falls behind loses events (counted as sink "api").
func (h *Hub) Subscribe() (<-chan []byte, func()) {
	ch := make(chan []byte, subscriberQueueLen)
	h.subMu.Lock()
	if h.subs == nil {
		close(ch)
	} else {
		h.subs[ch] = struct{}{}
		h.active.Add(1)
	}
	h.subMu.Unlock()
	return ch, func() {
		h.subMu.Lock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			h.active.Add(-1)
			close(ch)
		}
		h.subMu.Unlock()
	}
}

// Stats returns each sink's counters; "api" counts what subscribers got and lost.
func (h *Hub) Stats() []SinkStats {
	if h == nil {
		return nil
	}
	out := make([]SinkStats, 0, len(h.sinks)+1)
	for _, s := range h.sinks {
		out = append(out, SinkStats{Sink: s.sink.Name(), Sent: s.c.Sent.Load(), Dropped: s.c.Dropped.Load()})
	}
	out = append(out, SinkStats{Sink: "api", Sent: h.subSent.Load(), Dropped: h.subDrop.Load()})
	return out
}

// Close stops taking events, hands what is queued to the sinks, and waits up to
// timeout for them to write it.
func (h *Hub) Close(timeout time.Duration) {
	if h == nil || h.closed.Swap(true) {
		return
	}
	close(h.stop)
	<-h.done
	deadline := time.After(timeout)
	for _, s := range h.sinks {
		select {
		case <-s.done:
		case <-deadline:
		}
	}
}

// Coalesce is how long the hub and the sinks wait after handling a batch before they
// take the next: events reach the sinks in batches at most this much later, and a
// busy daemon wakes each of them tens of times a second instead of once per
// connection (a verdict is never waiting for this either way).
const Coalesce = 20 * time.Millisecond

func (h *Hub) run() {
	defer close(h.done)
	for {
		select {
		case it := <-h.in:
			h.handle(it)
			for n := len(h.in); n > 0; n-- {
				h.handle(<-h.in)
			}
			select {
			case <-time.After(Coalesce):
				continue
			case <-h.stop:
			}
		case <-h.stop:
		}
		for {
			select {
			case it := <-h.in:
				h.handle(it)
				continue
			default:
			}
			break
		}
		for _, s := range h.sinks {
			close(s.ch)
		}
		h.subMu.Lock()
		for ch := range h.subs {
			close(ch)
		}
		h.subs = nil
		h.subMu.Unlock()
		return
	}
}

func (h *Hub) handle(it item) {
	ev := it.ev
	if ev == nil {
		ev = &Event{Event: ConnectionDecided, Time: it.at, Connection: connectionOf(&it.req),
			Process: processOf(&it.req), Decision: decisionOf(it.v, it.held)}
	}
	h.seq++
	ev.Schema, ev.HostID, ev.HostName, ev.Seq = Schema, h.cfg.HostID, h.cfg.HostName, h.seq
	ev.Time = ev.Time.UTC()
	line, err := json.Marshal(ev)
	if err != nil { // cannot happen with these types; never lose it silently
		line, _ = json.Marshal(Event{Schema: Schema, Event: BackendDegraded, Time: ev.Time, HostID: h.cfg.HostID,
			HostName: h.cfg.HostName, Seq: h.seq, Backend: &Backend{Name: "events", Condition: "events_drop", Count: 1, Message: err.Error()}})
	}
	for _, s := range h.sinks {
		select {
		case s.ch <- line:
		default:
			s.c.Dropped.Add(1)
		}
	}
	h.subMu.Lock()
	for ch := range h.subs {
		select {
		case ch <- line:
			h.subSent.Add(1)
		default:
			h.subDrop.Add(1)
		}
	}
	h.subMu.Unlock()
}
