package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

func (s *Server) eventLog(w http.ResponseWriter, r *http.Request) {
	if s.cfg.EventLog == nil {
		writeError(w, http.StatusServiceUnavailable, "the event stream is off")
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	lines, cancel := s.cfg.EventLog()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher.Flush() // the client knows it is subscribed
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			return
		case line, ok := <-lines:
			if !ok {
				return
			}
			if _, err := w.Write(append(line, '\n')); err != nil {
				return
			}
			// Write what is queued, then flush once.
			for more := len(lines); more > 0; more-- {
				l, ok := <-lines
				if !ok {
					return
				}
				if _, err := w.Write(append(l, '\n')); err != nil {
					return
				}
			}
			flusher.Flush()
		}
	}
}

// EventLogStream is an open GET /v1/events/stream.
type EventLogStream struct {
	body io.ReadCloser
	sc   *bufio.Scanner
}

// EventLog opens the latch.event/1 stream: once it returns, every later event is
// delivered (unless the client falls behind by thousands, then some are lost).
func (c *Client) EventLog(ctx context.Context) (*EventLogStream, error) {
	resp, err := c.send(ctx, "GET", "/v1/events/stream", nil)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	return &EventLogStream{body: resp.Body, sc: sc}, nil
}

// Next returns the next event document, exactly as the daemon encoded it; io.EOF when
// the daemon ended the stream.
func (s *EventLogStream) Next() (json.RawMessage, error) {
	if !s.sc.Scan() {
		if err := s.sc.Err(); err != nil {
			return nil, err
		}
		return nil, io.EOF
	}
	line := s.sc.Bytes()
	if !json.Valid(line) {
		return nil, fmt.Errorf("latch API event stream: not JSON: %q", line)
	}
	return append(json.RawMessage(nil), line...), nil
}

// Close ends the stream.
func (s *EventLogStream) Close() error { return s.body.Close() }
