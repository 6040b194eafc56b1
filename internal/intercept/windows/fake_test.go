package windows

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/proto"
)

// fakeDriver plays the driver's side of the port in memory: it answers HELLO, records
// VERDICTs and FLUSHes, answers STATS_QUERY, and sends messages to the connected port.
type fakeDriver struct {
	t testing.TB

	mu          sync.Mutex
	port        *fakePort
	dials       int
	dialErr     error
	hello       func(*proto.Hello) []byte // nil: HELLO_REPLY of proto.Version
	hellos      []proto.Hello
	pending     map[proto.RequestID]bool // request ids sent and not yet answered
	flushes     []proto.Flush
	refuseFlush bool // FLUSH answered with STATUS_INVALID_PARAMETER
	stats       proto.StatsReply
	connected   chan *fakePort // every new connection
	verdicts    chan proto.Verdict
	nextID      proto.RequestID
}

func newFakeDriver(t testing.TB) *fakeDriver {
	return &fakeDriver{
		t:         t,
		pending:   make(map[proto.RequestID]bool),
		connected: make(chan *fakePort, 16),
		verdicts:  make(chan proto.Verdict, 1024),
		nextID:    100,
	}
}

func (d *fakeDriver) dial(ctx context.Context) (Port, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dials++
	if d.dialErr != nil {
		return nil, d.dialErr
	}
	p := &fakePort{d: d, msgs: make(chan fakeMsg, 256), closed: make(chan struct{})}
	d.port = p
	return p, nil
}

// answer is the driver's message-notify callback.
func (d *fakeDriver) answer(p *fakePort, in []byte) []byte {
	enc := func(m proto.Message) []byte {
		b, err := proto.Encode(m)
		if err != nil {
			d.t.Errorf("fake driver encode %v: %v", m.Type(), err)
		}
		return b
	}
	m, err := proto.Decode(in)
	if err != nil {
		return enc(&proto.Ack{Status: proto.StatusInvalidParameter})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch m := m.(type) {
	case *proto.Hello:
		d.hellos = append(d.hellos, *m)
		if d.hello != nil {
			return d.hello(m)
		}
		select {
		case d.connected <- p:
		default:
		}
		return enc(&proto.HelloReply{DriverVersion: uint32(proto.Version), MaxPending: 4096, MaxPendingPerProcess: 256})
	case *proto.Verdict:
		if !d.pending[m.RequestID] || p != d.port {
			return enc(&proto.Ack{Status: proto.StatusNotFound})
		}
		delete(d.pending, m.RequestID)
		d.verdicts <- *m
		return enc(&proto.Ack{})
	case *proto.Flush:
		d.flushes = append(d.flushes, *m)
		if d.refuseFlush {
			return enc(&proto.Ack{Status: proto.StatusInvalidParameter})
		}
		return enc(&proto.Ack{})
	case *proto.StatsQuery:
		s := d.stats
		return enc(&s)
	}
	return enc(&proto.Ack{Status: proto.StatusInvalidParameter})
}

// connect sends a CONNECT_REQUEST to the current port and returns its request id.
func (d *fakeDriver) connect(remote string, path string) proto.RequestID {
	d.mu.Lock()
	d.nextID++
	id := d.nextID
	d.pending[id] = true
	p := d.port
	d.mu.Unlock()
	cr := &proto.ConnectRequest{
		RequestID: id, Layer: proto.LayerConnectV4, Direction: proto.Outbound, IPVersion: 4, Protocol: 6,
		Local: netip.MustParseAddrPort("198.18.0.1:50000"), Remote: netip.MustParseAddrPort(remote),
		ProcessID: 4242, Timestamp: proto.TimeToFileTime(time.Now()), Path: proto.EncodePath(path),
	}
	b, err := proto.Encode(cr)
	if err != nil {
		d.t.Fatal(err)
	}
	p.deliver(b)
	return id
}

func (d *fakeDriver) current() *fakePort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.port
}

func (d *fakeDriver) waitConnected(t *testing.T) *fakePort {
	t.Helper()
	select {
	case p := <-d.connected:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("the backend did not connect and send HELLO")
	}
	return nil
}

func (d *fakeDriver) waitVerdict(t *testing.T) proto.Verdict {
	t.Helper()
	select {
	case v := <-d.verdicts:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("no VERDICT reached the driver")
	}
	return proto.Verdict{}
}

type fakeMsg struct {
	id  uint64
	msg []byte
}

// fakePort is the service's end of a fake driver connection.
type fakePort struct {
	d       *fakeDriver
	msgs    chan fakeMsg
	closed  chan struct{}
	once    sync.Once
	waiting atomic.Int32 // GetMessage calls outstanding
	msgID   atomic.Uint64
}

func (p *fakePort) deliver(b []byte) {
	select {
	case p.msgs <- fakeMsg{p.msgID.Add(1), b}:
	case <-p.closed:
	}
}

func (p *fakePort) GetMessage(ctx context.Context, buf []byte) (uint64, int, error) {
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	select {
	case m := <-p.msgs:
		return m.id, copy(buf, m.msg), nil
	case <-p.closed:
		return 0, 0, ErrPortClosed
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

func (p *fakePort) Send(in, out []byte) (int, error) {
	select {
	case <-p.closed:
		return 0, ErrPortClosed
	default:
	}
	ans := p.d.answer(p, in)
	if len(ans) > len(out) {
		return 0, errors.New("fake port: output buffer too small")
	}
	return copy(out, ans), nil
}

func (p *fakePort) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (p *fakePort) isClosed() bool {
	select {
	case <-p.closed:
		return true
	default:
		return false
	}
}

// eventually polls cond until it holds or 5 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
