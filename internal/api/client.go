package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/latchfw/latch/internal/engine"
)

// Error is an error the daemon answered with.
type Error struct {
	StatusCode int    // HTTP status, e.g. 400, 403, 404
	Message    string // the daemon's message, naming the field or object at fault
}

func (e *Error) Error() string { return e.Message }

// Client talks to a daemon's API.
type Client struct {
	addr string
	hc   *http.Client
}

// NewClient returns a client for the API at addr (a unix socket path, or a named pipe
// on Windows); "" means DefaultAddress().
func NewClient(addr string) *Client {
	if addr == "" {
		addr = DefaultAddress()
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx, addr)
		},
		DisableCompression: true,
		MaxIdleConns:       2,
	}
	return &Client{addr: addr, hc: &http.Client{Transport: tr}}
}

// Address is the socket or pipe the client talks to.
func (c *Client) Address() string { return c.addr }

// do sends a request and decodes a 2xx JSON reply into out (unless out is nil).
func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("latch API %s %s: reading reply: %w", method, path, err)
	}
	return nil
}

// send sends a request; a non-2xx reply becomes an *Error.
func (c *Client) send(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://latch"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var eb errorBody
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		if msg == "" {
			msg = resp.Status
		}
		return nil, &Error{StatusCode: resp.StatusCode, Message: msg}
	}
	return resp, nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.do(ctx, "GET", "/v1/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Rules returns the rules in force, sorted by ID.
func (c *Client) Rules(ctx context.Context) ([]engine.Rule, error) {
	var b rulesBody
	if err := c.do(ctx, "GET", "/v1/rules", nil, &b); err != nil {
		return nil, err
	}
	return b.Rules, nil
}

// AddRule adds r (whose ID must be 0) and returns it as added, with its ID.
func (c *Client) AddRule(ctx context.Context, r engine.Rule) (engine.Rule, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return engine.Rule{}, err
	}
	var added engine.Rule
	err = c.do(ctx, "POST", "/v1/rules", body, &added)
	return added, err
}

// RemoveRule removes rule id and returns it.
func (c *Client) RemoveRule(ctx context.Context, id engine.RuleID) (engine.Rule, error) {
	var removed engine.Rule
	err := c.do(ctx, "DELETE", "/v1/rules/"+strconv.FormatUint(uint64(id), 10), nil, &removed)
	return removed, err
}

// ExportRules returns the rules in force as a rules file.
func (c *Client) ExportRules(ctx context.Context) ([]byte, error) {
	resp, err := c.send(ctx, "GET", "/v1/rules/export", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// ImportRules replaces every rule with those of the rules file data, all or nothing,
// and returns the new set.
func (c *Client) ImportRules(ctx context.Context, data []byte) ([]engine.Rule, error) {
	var b rulesBody
	if err := c.do(ctx, "POST", "/v1/rules/import", data, &b); err != nil {
		return nil, err
	}
	return b.Rules, nil
}

// Prompts returns the open questions, oldest first.
func (c *Client) Prompts(ctx context.Context) ([]Prompt, error) {
	var b promptsBody
	if err := c.do(ctx, "GET", "/v1/prompts", nil, &b); err != nil {
		return nil, err
	}
	return b.Prompts, nil
}

// Answer decides prompt id; it returns the rule the answer created, nil for "once".
func (c *Client) Answer(ctx context.Context, id engine.PromptID, a AnswerRequest) (*engine.Rule, error) {
	body, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	var b answerBody
	if err := c.do(ctx, "POST", "/v1/prompts/"+strconv.FormatUint(uint64(id), 10)+"/answer", body, &b); err != nil {
		return nil, err
	}
	return b.Rule, nil
}

// Conns returns up to n connections from the history, oldest first: the newest n if
// after is 0, else the first n with an ID greater than after.
func (c *Client) Conns(ctx context.Context, after int64, n int) ([]Conn, error) {
	var b connsBody
	q := url.Values{}
	if after > 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	path := "/v1/conns"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if err := c.do(ctx, "GET", path, nil, &b); err != nil {
		return nil, err
	}
	return b.Conns, nil
}

// EventStream is an open GET /v1/events.
type EventStream struct {
	body io.ReadCloser
	sc   *bufio.Scanner
}

// Events opens the event stream. The first event is EventHello, once the daemon is
// subscribed; cancel ctx or Close to end it.
func (c *Client) Events(ctx context.Context) (*EventStream, error) {
	resp, err := c.send(ctx, "GET", "/v1/events", nil)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	return &EventStream{body: resp.Body, sc: sc}, nil
}

// Next returns the next event; io.EOF when the daemon ended the stream.
func (s *EventStream) Next() (Event, error) {
	var ev Event
	if !s.sc.Scan() {
		if err := s.sc.Err(); err != nil {
			return ev, err
		}
		return ev, io.EOF
	}
	if err := json.Unmarshal(s.sc.Bytes(), &ev); err != nil {
		return ev, fmt.Errorf("latch API event stream: %w", err)
	}
	return ev, nil
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }

// Reload makes the daemon read its managed rule files again; it returns what the
// daemon did. A bad file is an error naming it, and the daemon keeps the rules it had.
func (c *Client) Reload(ctx context.Context) (string, error) {
	var b reloadBody
	if err := c.do(ctx, "POST", "/v1/reload", []byte{}, &b); err != nil {
		return "", err
	}
	return b.Message, nil
}

// WebLoginURL asks the daemon for a one-time login URL of its web UI.
func (c *Client) WebLoginURL(ctx context.Context) (string, error) {
	var b struct {
		URL string `json:"url"`
	}
	if err := c.do(ctx, "POST", "/v1/web/login", nil, &b); err != nil {
		return "", err
	}
	return b.URL, nil
}

// Top returns the programs that moved bytes over the last rng (0: the daemon's
// default, an hour), busiest by total or, with byRate, by current rate; at most n
// (0: the daemon's default, 20).
func (c *Client) Top(ctx context.Context, rng string, byRate bool, n int) (*TopBody, error) {
	q := url.Values{}
	if rng != "" {
		q.Set("range", rng)
	}
	if byRate {
		q.Set("by", "rate")
	}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	path := "/v1/top"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var b TopBody
	if err := c.do(ctx, "GET", path, nil, &b); err != nil {
		return nil, err
	}
	return &b, nil
}
