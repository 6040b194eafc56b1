// Package windows is latch's Windows backend: it talks to latch's WFP callout driver
// (driver/) through the driver's Filter Manager communication port.
//
// The driver pends each new connection at the ALE layers and sends a CONNECT_REQUEST
// (internal/proto) to the port. The backend keeps several reads outstanding on the
// port at all times, decodes and validates each request, describes it as an
// engine.Request (DOS path of the program, its user, the services an svchost.exe
// hosts), hands it to the Decider and sends the VERDICT back by request id whenever it
// is decided, from whichever goroutine decides it. A question that waits for a person
// holds no read buffer and delays nothing else.
//
// Everything but the thin layer of Windows system calls (port_windows.go,
// identity_windows.go, fltlib/) is platform-neutral and tested on every platform
// against the real driver code running under its kernel emulation (EmulatedDialer).
package windows

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/proto"
)

// DefaultPortName is the name of the driver's communication port.
const DefaultPortName = `\LatchPort`

// Defaults of Config.
const (
	DefaultReaders       = 8
	DefaultPromptTimeout = 30 * time.Second
	DefaultCacheTTL      = 60 * time.Second
	// PendingGrace is how much longer than the prompt timeout the driver holds a
	// connection, so that the engine's own timeout verdict normally reaches it first.
	PendingGrace = time.Second
)

const (
	reconnectMin = 100 * time.Millisecond
	reconnectMax = 5 * time.Second
	senders      = 2
)

// Config configures the Windows backend.
type Config struct {
	// PortName is the driver's port; "" means DefaultPortName.
	PortName string
	// Default is the verdict the driver applies by itself when nobody answers in time,
	// when no service is connected and at unload: Allow permits, anything else
	// blocks. NoAction means Deny.
	Default engine.Action
	// PromptTimeout is how long a question may stay open; the driver holds a
	// connection PromptTimeout+PendingGrace at most (clamped to 100 ms..600 s).
	// 0 means DefaultPromptTimeout.
	PromptTimeout time.Duration
	// Readers is how many FilterGetMessage reads are kept outstanding; 0 means
	// DefaultReaders.
	Readers int
	// Dial connects to the port; nil means the real Filter Manager port named
	// PortName (Windows only). Tests use EmulatedDialer.
	Dial Dialer
	// CacheTTL is how long the driver may decide a repeated connection (same process,
	// remote address, port and protocol) from a verdict a rule gave, without asking;
	// never longer than the rule lives (see FollowRules). 0 means DefaultCacheTTL;
	// negative turns the driver's cache off.
	CacheTTL time.Duration
	// Devices, Processes and Services describe programs; nil means Windows' own
	// (QueryDosDevice, the process token and LookupAccountSid, EnumServicesStatusEx)
	// on Windows and nothing elsewhere.
	Devices   DeviceQuerier
	Processes ProcessQuerier
	Services  ServiceQuerier
	// Logf reports what the backend survived (malformed messages, reconnects);
	// nil means log.Printf.
	Logf func(format string, args ...any)
}

// VersionError means the driver speaks another version of the protocol. The service
// refuses to work with it: install the driver that came with this latch.
type VersionError struct {
	DriverVersion uint32 // as the driver said, or the wire version of its answer
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("the latch driver speaks protocol version %d and this service version %d: "+
		"install the driver that came with this latch release", e.DriverVersion, proto.Version)
}

// fatalError marks a connection failure that retrying cannot cure.
type fatalError struct{ error }

func (e fatalError) Unwrap() error { return e.error }

// Backend is the Windows interception backend. It implements intercept.Backend.
type Backend struct {
	cfg     Config
	dial    Dialer
	desc    *describer
	pending uint32                    // HELLO pending_timeout_ms
	cacheMS uint32                    // VERDICT cache_ttl_ms for rule verdicts at most; 0: none
	rules   atomic.Pointer[ruleState] // the rules in force (RulesChanged); nil: cache nothing
	follow  cacheFollower

	hitRecorder atomic.Pointer[HitRecorder] // RecordHits; nil: hits are counted only
	hits        atomic.Uint64               // cache hit records received (HIT_BATCH)

	running atomic.Bool
	cur     atomic.Pointer[session]
	nextID  atomic.Uint64

	held, allowed, denied, rejected               atomic.Uint64
	malformed, late, dropped, sendFailures        atomic.Uint64
	reconnects, refusedVerdicts, unexpectedAnswer atomic.Uint64
}

var _ intercept.Backend = (*Backend)(nil)

// New checks cfg and returns a Backend. It does not connect; Run does.
func New(cfg Config) (*Backend, error) {
	if cfg.PortName == "" {
		cfg.PortName = DefaultPortName
	}
	switch cfg.Default {
	case engine.NoAction:
		cfg.Default = engine.Deny
	case engine.Allow, engine.Deny, engine.Reject, engine.Drop:
	default:
		return nil, fmt.Errorf("windows backend: Default %v: want allow, deny, reject or drop", cfg.Default)
	}
	if cfg.PromptTimeout == 0 {
		cfg.PromptTimeout = DefaultPromptTimeout
	}
	if cfg.PromptTimeout < 0 {
		return nil, fmt.Errorf("windows backend: PromptTimeout %v is negative", cfg.PromptTimeout)
	}
	if cfg.Readers == 0 {
		cfg.Readers = DefaultReaders
	}
	if cfg.Readers < 1 || cfg.Readers > 256 {
		return nil, fmt.Errorf("windows backend: Readers %d: want 1..256", cfg.Readers)
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	b := &Backend{cfg: cfg, dial: cfg.Dial}
	if b.dial == nil {
		b.dial = fltDialer(cfg.PortName, cfg.Readers)
	}
	pendingMS := (cfg.PromptTimeout + PendingGrace).Milliseconds()
	b.pending = uint32(min(max(pendingMS, proto.MinPendingTimeoutMS), proto.MaxPendingTimeoutMS))
	if cfg.CacheTTL > 0 {
		b.cacheMS = uint32(min(max(cfg.CacheTTL.Milliseconds(), 1), proto.MaxCacheTTLMS))
	}
	dq, pq, sq := cfg.Devices, cfg.Processes, cfg.Services
	if dq == nil && pq == nil && sq == nil {
		dq, pq, sq = systemQueriers()
	}
	b.desc = newDescriber(dq, pq, sq)
	return b, nil
}

// Name says which mechanism is in use.
func (b *Backend) Name() string {
	if b.cfg.Dial != nil {
		return "wfp/emulated-port"
	}
	return "wfp/fltmgr-port " + b.cfg.PortName
}

func (b *Backend) logf(format string, args ...any) { b.cfg.Logf("windows: "+format, args...) }

// Run connects to the driver, introduces the service (HELLO: version, default
// verdict, pending timeout) and serves held connections until ctx is done. When the
// port closes (driver unloaded or restarted) it reconnects with backoff. It returns an
// error if the first connection fails or if the driver is of another version.
func (b *Backend) Run(ctx context.Context, d intercept.Decider) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("windows backend: Run called twice")
	}
	defer b.running.Store(false)
	backoff := reconnectMin
	for attempt := 0; ; attempt++ {
		port, hello, err := b.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var fatal fatalError
			if attempt == 0 || errors.As(err, &fatal) {
				return err
			}
			b.logf("reconnecting to the driver: %v (next try in %v)", err, backoff)
			if !sleepCtx(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, reconnectMax)
			continue
		}
		if attempt > 0 {
			b.reconnects.Add(1)
			b.logf("reconnected to the driver")
		}
		started := time.Now()
		err = b.serve(ctx, port, hello, d)
		if ctx.Err() != nil {
			return nil
		}
		b.logf("lost the driver's port: %v; reconnecting", err)
		if time.Since(started) > time.Minute {
			backoff = reconnectMin
		} else if time.Since(started) < time.Second {
			if !sleepCtx(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, reconnectMax)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (b *Backend) defaultWireAction() proto.Action {
	if b.cfg.Default == engine.Allow {
		return proto.ActionPermit
	}
	return proto.ActionBlock
}

// connect dials and shakes hands.
func (b *Backend) connect(ctx context.Context) (Port, proto.HelloReply, error) {
	port, err := b.dial(ctx)
	if err != nil {
		return nil, proto.HelloReply{}, fmt.Errorf("connect to the driver's port %s: %w", b.cfg.PortName, err)
	}
	hello, err := b.handshake(port)
	if err != nil {
		port.Close()
		return nil, proto.HelloReply{}, err
	}
	return port, hello, nil
}

func (b *Backend) handshake(port Port) (proto.HelloReply, error) {
	in, err := proto.Encode(&proto.Hello{
		ServiceVersion:   uint32(proto.Version),
		DefaultAction:    b.defaultWireAction(),
		PendingTimeoutMS: b.pending,
	})
	if err != nil {
		return proto.HelloReply{}, fmt.Errorf("encode HELLO: %w", err)
	}
	out := make([]byte, proto.HelloReplySize)
	n, err := port.Send(in, out)
	if err != nil {
		return proto.HelloReply{}, fmt.Errorf("send HELLO to the driver: %w", err)
	}
	m, err := proto.Decode(out[:n])
	if err != nil {
		if v, ok := proto.VersionMismatch(err); ok {
			return proto.HelloReply{}, fatalError{&VersionError{DriverVersion: uint32(v)}}
		}
		return proto.HelloReply{}, fmt.Errorf("the driver's answer to HELLO: %w", err)
	}
	switch r := m.(type) {
	case *proto.HelloReply:
		if r.DriverVersion != uint32(proto.Version) {
			return proto.HelloReply{}, fatalError{&VersionError{DriverVersion: r.DriverVersion}}
		}
		if r.Status != proto.StatusSuccess {
			return proto.HelloReply{}, fatalError{fmt.Errorf("the driver refused this service's HELLO: %v", r.Status)}
		}
		return *r, nil
	case *proto.Ack:
		return proto.HelloReply{}, fatalError{fmt.Errorf("the driver answered HELLO with an ACK (%v), not a HELLO_REPLY: "+
			"is it a driver of another version?", r.Status)}
	}
	return proto.HelloReply{}, fmt.Errorf("the driver answered HELLO with %v", m.Type())
}

// session is one connection to the driver's port.
type session struct {
	port  Port
	hello proto.HelloReply
	q     *verdictQueue
}

func (b *Backend) serve(ctx context.Context, port Port, hello proto.HelloReply, d intercept.Decider) error {
	sctx, cancel := context.WithCancel(ctx)
	s := &session{port: port, hello: hello, q: newVerdictQueue()}
	b.cur.Store(s)
	var wg sync.WaitGroup
	errc := make(chan error, b.cfg.Readers)
	for range b.cfg.Readers {
		wg.Go(func() { errc <- b.readLoop(sctx, s, d) })
	}
	for range senders {
		wg.Go(func() { b.sendLoop(sctx, s) })
	}
	err := <-errc
	cancel()
	b.cur.CompareAndSwap(s, nil)
	port.Close()
	// The driver completes what this session still held with the default verdict.
	b.dropped.Add(uint64(s.q.close()))
	wg.Wait()
	return err
}

// readLoop is one of the session's readers: it reads a message, copies what it needs
// out of its buffer and reads again at once. Describing and deciding happen elsewhere.
func (b *Backend) readLoop(ctx context.Context, s *session, d intercept.Decider) error {
	buf := make([]byte, proto.MaxMessageSize)
	for {
		_, n, err := s.port.GetMessage(ctx, buf)
		if err != nil {
			return err
		}
		m, err := proto.Decode(buf[:n])
		if err != nil {
			b.malformed.Add(1)
			b.logf("dropped a malformed message from the driver (%d bytes): %v", n, err)
			continue
		}
		if hb, ok := m.(*proto.HitBatch); ok {
			b.handleHits(hb)
			continue
		}
		cr, ok := m.(*proto.ConnectRequest)
		if !ok {
			b.malformed.Add(1)
			b.logf("dropped an unexpected %v from the driver", m.Type())
			continue
		}
		b.held.Add(1)
		go b.handle(s, cr, d)
	}
}

func (b *Backend) handle(s *session, cr *proto.ConnectRequest, d intercept.Decider) {
	req := b.desc.describe(cr, engine.RequestID(b.nextID.Add(1)))
	var answered atomic.Bool
	d.Decide(req, func(v engine.Verdict) {
		if !answered.CompareAndSwap(false, true) {
			return
		}
		if !s.q.push(queuedVerdict{wire: b.wireVerdict(cr.RequestID, v), action: v.Action}) {
			b.dropped.Add(1) // the session ended; the driver applied the default
		}
	})
}

// wireVerdict turns an engine verdict into the VERDICT for driver request id. Only a
// verdict a rule made may be cached by the driver, for no longer than the rule lives
// (see cache.go): an answer, a default or a timeout must be asked again next time.
func (b *Backend) wireVerdict(id proto.RequestID, v engine.Verdict) proto.Verdict {
	w := proto.Verdict{RequestID: id, Action: b.defaultWireAction()}
	switch v.Action {
	case engine.Allow:
		w.Action = proto.ActionPermit
	case engine.Deny, engine.Drop:
		// At the ALE layers a block fails the local connect at once either way.
		w.Action = proto.ActionBlock
	case engine.Reject:
		w.Action = proto.ActionReject
	}
	if ttl := b.rules.Load().cacheTTL(v, b.cacheMS, time.Now()); ttl > 0 {
		w.CacheScope = proto.CacheProcessRemotePort
		w.CacheTTLMS = ttl
		w.RuleTag = uint64(v.RuleID) // comes back in the HIT_BATCH record of every hit
	}
	return w
}

type queuedVerdict struct {
	wire   proto.Verdict
	action engine.Action
}

func (b *Backend) sendLoop(ctx context.Context, s *session) {
	for {
		qv, ok := s.q.pop(ctx)
		if !ok {
			return
		}
		b.sendVerdict(s, qv)
	}
}

func (b *Backend) sendVerdict(s *session, qv queuedVerdict) {
	ack, err := b.request(s, &qv.wire, proto.AckSize)
	if err != nil {
		if errors.Is(err, ErrPortClosed) {
			b.dropped.Add(1)
			return
		}
		b.sendFailures.Add(1)
		b.logf("VERDICT for request %d: %v", qv.wire.RequestID, err)
		return
	}
	a, ok := ack.(*proto.Ack)
	if !ok {
		b.unexpectedAnswer.Add(1)
		b.logf("VERDICT for request %d: the driver answered with %v, not an ACK", qv.wire.RequestID, ack.Type())
		return
	}
	switch a.Status {
	case proto.StatusSuccess:
		switch qv.wire.Action {
		case proto.ActionPermit:
			b.allowed.Add(1)
		case proto.ActionReject:
			b.rejected.Add(1)
		default:
			b.denied.Add(1)
		}
	case proto.StatusNotFound:
		b.late.Add(1) // the driver's deadline passed first and applied the default
	default:
		b.refusedVerdicts.Add(1)
		b.logf("VERDICT for request %d: the driver refused it: %v", qv.wire.RequestID, a.Status)
	}
}

// request sends m and decodes the driver's answer, for which it allows outSize bytes.
func (b *Backend) request(s *session, m proto.Message, outSize int) (proto.Message, error) {
	in, err := proto.Encode(m)
	if err != nil {
		return nil, err
	}
	out := make([]byte, outSize)
	n, err := s.port.Send(in, out)
	if err != nil {
		return nil, err
	}
	ans, err := proto.Decode(out[:n])
	if err != nil {
		b.malformed.Add(1)
		return nil, fmt.Errorf("the driver's answer to %v: %w", m.Type(), err)
	}
	return ans, nil
}

// ErrNotConnected is returned by Redecide and DriverStats while no driver is connected.
var ErrNotConnected = errors.New("windows backend: not connected to the latch driver")

// Redecide tells the driver to forget every cached verdict and re-authorize existing
// flows (FLUSH), so that new connections are decided under the new rules at once.
// A reauthorization cannot be pended (WFP refuses), so the driver decides it in the
// kernel: an established flow keeps the permit its flow context records unless a
// verdict cached since says otherwise (see driver/PROTOCOL.md, FLUSH). The driver
// cannot select flows, so affected is not consulted. The count returned is the
// number of flows the driver was tracking (flow_contexts_live).
func (b *Backend) Redecide(affected func(*engine.Request) bool) (int, error) {
	s := b.cur.Load()
	if s == nil {
		return 0, ErrNotConnected
	}
	if err := b.flush(s, proto.FlushCache|proto.FlushReauthorize); err != nil {
		return 0, err
	}
	st, err := b.DriverStats()
	if err != nil {
		return 0, nil // flushed; only the count is unknown
	}
	return int(min(st.FlowContextsLive, 1<<31-1)), nil
}

// DriverStats asks the driver for its counters (STATS_QUERY).
func (b *Backend) DriverStats() (proto.StatsReply, error) {
	s := b.cur.Load()
	if s == nil {
		return proto.StatsReply{}, ErrNotConnected
	}
	ans, err := b.request(s, &proto.StatsQuery{}, proto.StatsReplySize)
	if err != nil {
		return proto.StatsReply{}, fmt.Errorf("STATS_QUERY: %w", err)
	}
	switch r := ans.(type) {
	case *proto.StatsReply:
		return *r, nil
	case *proto.Ack:
		return proto.StatsReply{}, fmt.Errorf("STATS_QUERY: the driver refused it: %v", r.Status)
	}
	return proto.StatsReply{}, fmt.Errorf("STATS_QUERY: the driver answered with %v", ans.Type())
}

// Stats returns the service's counters and, while connected, the driver's (in Extra,
// prefixed "driver_").
func (b *Backend) Stats() intercept.Stats {
	st := intercept.Stats{
		Backend:  b.Name(),
		Held:     b.held.Load(),
		Allowed:  b.allowed.Load(),
		Denied:   b.denied.Load(),
		Rejected: b.rejected.Load(),
		Errors:   b.malformed.Load() + b.sendFailures.Load() + b.unexpectedAnswer.Load() + b.refusedVerdicts.Load(),
		Extra: map[string]uint64{
			"malformed_messages":  b.malformed.Load(),
			"verdicts_late":       b.late.Load(),
			"verdicts_dropped":    b.dropped.Load(),
			"send_failures":       b.sendFailures.Load(),
			"verdicts_refused":    b.refusedVerdicts.Load(),
			"reconnects":          b.reconnects.Load(),
			"cache_hits_recorded": b.hits.Load(),
			"connected":           0,
		},
	}
	s := b.cur.Load()
	if s == nil {
		return st
	}
	st.Extra["connected"] = 1
	st.Extra["driver_max_pending"] = uint64(s.hello.MaxPending)
	st.Extra["driver_max_pending_per_process"] = uint64(s.hello.MaxPendingPerProcess)
	if dr, err := b.DriverStats(); err == nil {
		for k, v := range dr.Map() {
			st.Extra["driver_"+k] = v
		}
		st.Overflows = dr.CapExceeded
	}
	return st
}

// verdictQueue is an unbounded FIFO of verdicts waiting to be sent. It is bounded in
// practice by the driver's max_pending: every verdict answers a held connection.
type verdictQueue struct {
	mu     sync.Mutex
	items  []queuedVerdict
	closed bool
	signal chan struct{} // capacity 1: "items may be non-empty"
}

func newVerdictQueue() *verdictQueue { return &verdictQueue{signal: make(chan struct{}, 1)} }

func (q *verdictQueue) push(v queuedVerdict) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
	return true
}

func (q *verdictQueue) pop(ctx context.Context) (queuedVerdict, bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return queuedVerdict{}, false
		}
		if len(q.items) > 0 {
			v := q.items[0]
			q.items[0] = queuedVerdict{}
			q.items = q.items[1:]
			more := len(q.items) > 0
			q.mu.Unlock()
			if more {
				select {
				case q.signal <- struct{}{}:
				default:
				}
			}
			return v, true
		}
		q.mu.Unlock()
		select {
		case <-q.signal:
		case <-ctx.Done():
			return queuedVerdict{}, false
		}
	}
}

// close stops the queue and returns how many verdicts were left unsent.
func (q *verdictQueue) close() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	n := len(q.items)
	q.items = nil
	return n
}
