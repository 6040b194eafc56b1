package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/store"
)

// Event is one server-sent event of GET /api/events: the API's events (hello, prompt,
// answered, rules) and "conns", a batch of newly decided connections, and "gap" when
// this client was too slow and missed some (it should load them again).
type Event struct {
	api.Event
	Conns []api.Conn `json:"conns,omitempty"`
}

// Event kinds of the web stream besides the API's. EventGap is the API's (the engine
// lost questions or rules for this client) and also says that connections were lost.
const (
	EventConns api.EventKind = "conns"
	EventGap                 = api.EventGap
)

// Feed tuning: how often the history is read for new connections while someone
// watches, and how many connections one read takes at most.
const (
	feedInterval = 200 * time.Millisecond
	feedBatch    = 5000
	keepAlive    = 15 * time.Second
	// streamWriteTimeout bounds one write of the event stream.
	streamWriteTimeout = 30 * time.Second
)

// connFeed reads newly recorded connections from the history while at least one
// client watches, and hands each batch to every client.
type connFeed struct {
	ctx  context.Context
	hist *store.History
	logf func(string, ...any)

	mu      sync.Mutex
	subs    map[chan []api.Conn]bool // -> missed a batch
	running bool
}

func newConnFeed(ctx context.Context, h *store.History, logf func(string, ...any)) *connFeed {
	return &connFeed{ctx: ctx, hist: h, logf: logf, subs: map[chan []api.Conn]bool{}}
}

// subscribe returns a channel of batches; a batch the client has no room for is
// dropped and the channel's next receive is a nil batch (a gap). cancel ends it.
func (f *connFeed) subscribe() (<-chan []api.Conn, func()) {
	ch := make(chan []api.Conn, 64)
	if f.hist == nil {
		return ch, func() {}
	}
	f.mu.Lock()
	f.subs[ch] = false
	if !f.running {
		f.running = true
		// The newest row is read before subscribe returns, so every connection
		// recorded after it (and after the client's hello) reaches the client.
		var last int64
		if cs, err := f.hist.Recent(1, 0); err == nil && len(cs) == 1 {
			last = cs[0].ID
		}
		go f.run(last)
	}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}
}

func (f *connFeed) run(last int64) {
	t := time.NewTicker(feedInterval)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		if len(f.subs) == 0 {
			f.running = false
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		cs, err := f.hist.Recent(feedBatch, last)
		if err != nil {
			f.logf("web: reading new connections: %v", err)
			continue
		}
		if len(cs) == 0 {
			continue
		}
		last = cs[len(cs)-1].ID
		out := make([]api.Conn, len(cs))
		for i := range cs {
			out[i] = api.ConnView(&cs[i])
		}
		f.mu.Lock()
		for ch, missed := range f.subs {
			// A client that missed a batch first gets a gap (nil), then batches again.
			if missed {
				select {
				case ch <- nil:
					missed = false
				default:
				}
			}
			if !missed {
				select {
				case ch <- out:
				default:
					missed = true
				}
			}
			f.subs[ch] = missed
		}
		f.mu.Unlock()
	}
}

// events serves GET /api/events as server-sent events: one JSON Event per message.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	evs, cancelEvents := s.cfg.Engine.Subscribe()
	defer cancelEvents()
	conns, cancelConns := s.feed.subscribe()
	defer cancelConns()
	// The stream outlives the server's read and write timeouts (localhttp.Timeouts),
	// which would end it: they are lifted for this connection, and each write gets
	// its own deadline instead, so a client that stops reading is let go.
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	send := func(ev Event) error {
		data, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	}
	if send(Event{Event: api.Event{Kind: api.EventHello}}) != nil {
		return
	}
	ka := time.NewTicker(keepAlive)
	defer ka.Stop()
	for {
		var err error
		select {
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			return
		case <-ka.C:
			rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			_, err = io.WriteString(w, ": keep-alive\n\n")
			flusher.Flush()
		case ev, ok := <-evs:
			if !ok {
				return
			}
			err = send(Event{Event: api.EventView(ev)})
		case batch := <-conns:
			if batch == nil {
				err = send(Event{Event: api.Event{Kind: EventGap}})
			} else {
				err = send(Event{Event: api.Event{Kind: EventConns}, Conns: batch})
			}
		}
		if err != nil {
			return
		}
	}
}
