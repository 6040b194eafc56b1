package localhttp

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Status says whether a Service is bound and serving, and if not why.
type Status struct {
	Addr string `json:"addr"`
	Up   bool   `json:"up"`
	// Error is why it is down: the last bind's error (e.g. another program holds
	// the address); it is retried in the background.
	Error string `json:"error,omitempty"`
	// Since is when it came up or went down.
	Since time.Time `json:"since"`
	// Retries counts the binds that failed since it was last up.
	Retries int `json:"retries,omitempty"`
}

// Bounds of the retry backoff of a Service's bind.
const (
	firstRetry = time.Second
	maxRetry   = 30 * time.Second
)

// Service keeps one server bound to its address. A bind that fails (another
// program, maybe another local user's, holds the address) does not stop the
// daemon: it is logged, retried with a backoff of 1s doubling up to 30s, and
// reported by Status.
type Service struct {
	name   string
	addr   string
	listen func() (net.Listener, error)
	serve  func(net.Listener) error
	logf   func(string, ...any)
	onUp   func(up bool)

	mu      sync.Mutex
	st      Status
	stopped bool
	stop    chan struct{}
	done    chan struct{}
}

// NewService returns a Service named name (for the log: "web UI", "metrics") that
// binds with listen and serves each bound listener with serve, until serve returns
// (its error other than http.ErrServerClosed is logged and the address bound
// again). onUp, if not nil, is told when it comes up and goes down. Start starts it.
func NewService(name, addr string, listen func() (net.Listener, error), serve func(net.Listener) error,
	onUp func(up bool), logf func(string, ...any)) *Service {
	return &Service{name: name, addr: addr, listen: listen, serve: serve, onUp: onUp, logf: logf,
		st: Status{Addr: addr, Since: time.Now(), Error: "not started yet"}, stop: make(chan struct{}), done: make(chan struct{})}
}

// Start makes the first bind now (so that a bind that works is in place when Start
// returns) and returns whether it worked; retries and serving go on in the
// background until Stop.
func (s *Service) Start() bool {
	l, err := s.listen()
	s.bound(l, err, true)
	go s.run(l)
	return err == nil
}

func (s *Service) bound(l net.Listener, err error, first bool) {
	s.mu.Lock()
	prev := s.st
	now := time.Now()
	if err != nil {
		if first || prev.Up {
			s.st = Status{Addr: s.addr, Since: now}
		} else {
			s.st.Retries++
		}
		s.st.Error = reason(err)
	} else {
		s.st = Status{Addr: s.addr, Up: true, Since: now}
	}
	st := s.st
	s.mu.Unlock()
	switch {
	case err == nil && !first:
		s.logf("%s: bound %s after %d failed attempts", s.name, s.addr, prev.Retries+1)
	case err != nil && (first || prev.Up || prev.Error != st.Error):
		s.logf("warning: %s off: %v; the daemon goes on deciding without it, retrying to bind %s (every %s at most)",
			s.name, err, s.addr, maxRetry)
	}
	if s.onUp != nil && (first || (err == nil) != prev.Up) {
		s.onUp(err == nil)
	}
}

// reason is err without the addresses Status shows anyway.
func reason(err error) string {
	msg := err.Error()
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		msg = op.Err.Error()
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		msg += " (another program holds the address)"
	}
	return msg
}

func (s *Service) run(l net.Listener) {
	defer close(s.done)
	wait := firstRetry
	for {
		if l != nil {
			began := time.Now()
			err := s.serve(l)
			l.Close()
			if s.isStopped() {
				return
			}
			if err == nil || errors.Is(err, http.ErrServerClosed) {
				err = errors.New("the server stopped")
			}
			s.bound(nil, err, false)
			if time.Since(began) > maxRetry { // else it failed at once: keep backing off
				wait = firstRetry
			}
		}
		select {
		case <-s.stop:
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, maxRetry)
		var err error
		l, err = s.listen()
		if s.isStopped() {
			if l != nil {
				l.Close()
			}
			return
		}
		s.bound(l, err, false)
		if err != nil {
			l = nil
		}
	}
}

func (s *Service) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// Status reports whether the service is up, and why not.
func (s *Service) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// Stop stops retrying; shutdown, called with the lock not held, must end the
// server's Serve (http.Server.Shutdown). Stop waits for the background loop.
func (s *Service) Stop(shutdown func()) {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	close(s.stop)
	shutdown()
	<-s.done
}
