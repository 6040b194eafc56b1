package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
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
			// Wait for more to come before the next write (see events.Coalesce).
			select {
			case <-time.After(eventStreamCoalesce):
			case <-r.Context().Done():
				return
			}
		}
	}
}

// eventStreamCoalesce batches the stream's writes, as the event sinks do.
const eventStreamCoalesce = 20 * time.Millisecond

// EventLogStream is an open GET /v1/events/stream.
type EventLogStream struct {
	body io.ReadCloser
	r    *bufio.Reader
}

// maxEventLine bounds one event document.
const maxEventLine = 16 << 20

// EventLog opens the latch.event/1 stream: once it returns, every later event is
// delivered (unless the client falls behind by thousands, then some are lost).
func (c *Client) EventLog(ctx context.Context) (*EventLogStream, error) {
	resp, err := c.send(ctx, "GET", "/v1/events/stream", nil)
	if err != nil {
		return nil, err
	}
	return &EventLogStream{body: resp.Body, r: bufio.NewReaderSize(resp.Body, 256<<10)}, nil
}

// Next returns the next event document, exactly as the daemon encoded it; io.EOF when
// the daemon ended the stream.
func (s *EventLogStream) Next() (json.RawMessage, error) {
	var line []byte
	for {
		part, err := s.r.ReadSlice('\n')
		line = append(line, part...)
		if err == bufio.ErrBufferFull && len(line) < maxEventLine {
			continue
		}
		if err == io.EOF && len(line) == 0 {
			return nil, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("latch API event stream: %w", err)
		}
		break
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	if !json.Valid(line) {
		return nil, fmt.Errorf("latch API event stream: not JSON: %q", line)
	}
	return line, nil
}

// Buffered reports whether more of the stream is already read (Next will not wait).
func (s *EventLogStream) Buffered() bool { return s.r.Buffered() > 0 }

// Close ends the stream.
func (s *EventLogStream) Close() error { return s.body.Close() }
