package windows

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/proto"
)

// fakeIO plays fltlib and the I/O completion port: reads stay pending until the test
// delivers a message into one; closing the port completes every pending read with an
// error, as CancelIoEx does.
type fakeIO struct {
	mu          sync.Mutex
	pending     map[int][]byte
	completions chan completion
	compClosed  chan struct{}
	closeOnce   sync.Once
	startErr    error
	portCloses  int
	compCloses  int
	sends       int
}

var errAborted = errors.New("ERROR_OPERATION_ABORTED")

func newFakeIO() *fakeIO {
	return &fakeIO{pending: map[int][]byte{}, completions: make(chan completion, 64), compClosed: make(chan struct{})}
}

func (f *fakeIO) startRead(slot int, buf []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.startErr != nil {
		return f.startErr
	}
	if _, dup := f.pending[slot]; dup {
		panic("a slot was armed twice")
	}
	f.pending[slot] = buf
	return nil
}

func (f *fakeIO) wait() (int, uint32, error, bool) {
	select {
	case c := <-f.completions:
		return c.slot, c.n, c.err, false
	case <-f.compClosed:
		return 0, 0, errors.New("ERROR_ABANDONED_WAIT_0"), true
	}
}

func (f *fakeIO) send(in, out []byte) (int, error) {
	f.mu.Lock()
	f.sends++
	f.mu.Unlock()
	return copy(out, in), nil
}

func (f *fakeIO) closePort() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.portCloses++
	for slot := range f.pending {
		f.completions <- completion{slot: slot, err: errAborted}
	}
	f.pending = map[int][]byte{}
	return nil
}

func (f *fakeIO) closeCompletions() {
	f.mu.Lock()
	f.compCloses++
	f.mu.Unlock()
	f.closeOnce.Do(func() { close(f.compClosed) })
}

func (f *fakeIO) armed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending)
}

// deliver completes the lowest pending read with msg as message id.
func (f *fakeIO) deliver(t *testing.T, id uint64, msg []byte) {
	t.Helper()
	f.mu.Lock()
	var slots []int
	for s := range f.pending {
		slots = append(slots, s)
	}
	if len(slots) == 0 {
		f.mu.Unlock()
		t.Fatal("no read is outstanding: the message would wait for a buffer")
	}
	sort.Ints(slots)
	buf := f.pending[slots[0]]
	delete(f.pending, slots[0])
	f.mu.Unlock()
	binary.LittleEndian.PutUint64(buf[8:], id)
	copy(buf[filterMessageHeaderSize:], msg)
	f.completions <- completion{slot: slots[0], n: uint32(filterMessageHeaderSize + len(msg))}
}

func (f *fakeIO) counts() (portCloses, compCloses, sends int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.portCloses, f.compCloses, f.sends
}

const testBufSize = filterMessageHeaderSize + proto.MaxMessageSize

func TestOverlappedPortKeepsEveryReadOutstanding(t *testing.T) {
	const readers = 4
	f := newFakeIO()
	p, err := newOverlappedPort(f, readers, testBufSize)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if n := f.armed(); n != readers {
		t.Fatalf("%d reads primed, want %d", n, readers)
	}
	// A burst larger than the number of readers, with nobody calling GetMessage yet:
	// every read completes; the next message would need a free buffer.
	msg, _ := proto.Encode(&proto.Ack{Status: 7})
	for i := range readers {
		f.deliver(t, uint64(100+i), msg)
	}
	eventually(t, "all reads completed", func() bool { return f.armed() == 0 })
	buf := make([]byte, proto.MaxMessageSize)
	seen := map[uint64]bool{}
	for range readers {
		id, n, err := p.GetMessage(context.Background(), buf)
		if err != nil || string(buf[:n]) != string(msg) {
			t.Fatalf("GetMessage = %d, %x, %v", id, buf[:n], err)
		}
		seen[id] = true
	}
	if len(seen) != readers {
		t.Fatalf("message ids %v, want %d distinct", seen, readers)
	}
	// Each completed read was re-armed before GetMessage returned it.
	if n := f.armed(); n != readers {
		t.Fatalf("%d reads outstanding after the burst, want %d", n, readers)
	}
	// Steady state: deliver, read, and the read is back at once.
	for i := range 20 {
		f.deliver(t, uint64(i), msg)
		if _, _, err := p.GetMessage(context.Background(), buf); err != nil {
			t.Fatal(err)
		}
		if n := f.armed(); n != readers {
			t.Fatalf("after message %d: %d reads outstanding, want %d", i, n, readers)
		}
	}
}

func TestOverlappedPortLengthFromMessage(t *testing.T) {
	f := newFakeIO()
	p, err := newOverlappedPort(f, 1, testBufSize)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	buf := make([]byte, proto.MaxMessageSize)
	msg, _ := proto.Encode(&proto.ConnectRequest{RequestID: 5, Layer: proto.LayerConnectV4, Direction: proto.Outbound,
		IPVersion: 4, Protocol: 6, Local: netipAP("198.18.0.1:1"), Remote: netipAP("198.18.0.2:2"), Path: proto.EncodePath(`\a`)})
	// The transferred count does not matter when the length field is sane...
	f.mu.Lock()
	slot := 0
	b := f.pending[slot]
	delete(f.pending, slot)
	f.mu.Unlock()
	copy(b[filterMessageHeaderSize:], msg)
	f.completions <- completion{slot: slot, n: 0}
	_, n, err := p.GetMessage(context.Background(), buf)
	if err != nil || n != len(msg) {
		t.Fatalf("n = %d, %v; want %d", n, err, len(msg))
	}
	// ...and a nonsensical one is cut to what was transferred, for the decoder to reject.
	f.mu.Lock()
	b = f.pending[slot]
	delete(f.pending, slot)
	f.mu.Unlock()
	copy(b[filterMessageHeaderSize:], msg)
	binary.LittleEndian.PutUint32(b[filterMessageHeaderSize+8:], 1<<30)
	f.completions <- completion{slot: slot, n: uint32(filterMessageHeaderSize + 20)}
	_, n, err = p.GetMessage(context.Background(), buf)
	if err != nil || n != 20 {
		t.Fatalf("n = %d, %v; want 20", n, err)
	}
	if _, err := proto.Decode(buf[:n]); err == nil {
		t.Fatal("a cut message decoded")
	}
}

func TestOverlappedPortCloseWaitsForCancelledReads(t *testing.T) {
	f := newFakeIO()
	p, err := newOverlappedPort(f, 3, testBufSize)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, _, err := p.GetMessage(context.Background(), make([]byte, 64))
		got <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p.Close() // twice is harmless
	select {
	case err := <-got:
		if !errors.Is(err, ErrPortClosed) {
			t.Fatalf("GetMessage after Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("GetMessage did not return after Close")
	}
	// The three cancelled reads came back, then (and only then) the completion port
	// was closed, once.
	eventually(t, "completion port closed", func() bool { _, c, _ := f.counts(); return c == 1 })
	if pc, cc, _ := f.counts(); pc != 1 || cc != 1 {
		t.Fatalf("port closed %d times, completion port %d times; want 1, 1", pc, cc)
	}
	if _, err := p.Send([]byte{1}, make([]byte, 8)); !errors.Is(err, ErrPortClosed) {
		t.Fatalf("Send after Close = %v", err)
	}
	if _, _, s := f.counts(); s != 0 {
		t.Fatalf("the closed handle was used for %d sends", s)
	}
	if n := f.armed(); n != 0 {
		t.Fatalf("%d reads armed after Close", n)
	}
}

func TestOverlappedPortCloseWithNothingOutstanding(t *testing.T) {
	f := newFakeIO()
	p, err := newOverlappedPort(f, 2, testBufSize)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := proto.Encode(&proto.Ack{})
	f.deliver(t, 1, msg)
	f.deliver(t, 2, msg)
	eventually(t, "both reads completed", func() bool { return f.armed() == 0 && len(p.ready) == 2 })
	p.Close()
	if _, cc, _ := f.counts(); cc != 1 {
		t.Fatalf("completion port closed %d times, want 1", cc)
	}
}

func TestOverlappedPortReadErrorEndsPort(t *testing.T) {
	f := newFakeIO()
	p, err := newOverlappedPort(f, 2, testBufSize)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	delete(f.pending, 0)
	f.mu.Unlock()
	f.completions <- completion{slot: 0, err: errors.New("STATUS_PORT_DISCONNECTED")}
	_, _, err = p.GetMessage(context.Background(), make([]byte, 64))
	if !errors.Is(err, ErrPortClosed) || !strings.Contains(err.Error(), "STATUS_PORT_DISCONNECTED") {
		t.Fatalf("GetMessage = %v, want the read's error", err)
	}
	eventually(t, "completion port closed", func() bool { _, c, _ := f.counts(); return c == 1 })
	if _, _, err := p.GetMessage(context.Background(), make([]byte, 64)); !errors.Is(err, ErrPortClosed) {
		t.Fatalf("second GetMessage = %v", err)
	}
}

func TestOverlappedPortStartFailure(t *testing.T) {
	f := newFakeIO()
	f.startErr = errors.New("FilterGetMessage: HRESULT 0x80070006")
	if _, err := newOverlappedPort(f, 2, testBufSize); err == nil || !strings.Contains(err.Error(), "0x80070006") {
		t.Fatalf("newOverlappedPort = %v", err)
	}
	if pc, cc, _ := f.counts(); pc != 1 || cc != 1 {
		t.Fatalf("port closed %d, completion port %d times; want 1, 1", pc, cc)
	}
}

func TestOverlappedPortIgnoresForeignCompletions(t *testing.T) {
	f := newFakeIO()
	p, err := newOverlappedPort(f, 1, testBufSize)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f.completions <- completion{slot: -1} // e.g. FilterSendMessage's own packet
	msg, _ := proto.Encode(&proto.Ack{})
	f.deliver(t, 9, msg)
	id, _, err := p.GetMessage(context.Background(), make([]byte, 64))
	if err != nil || id != 9 {
		t.Fatalf("GetMessage = %d, %v", id, err)
	}
}

// TestBackendOverOverlappedPort runs the backend on the overlapped port machinery (as
// on Windows), with the fake driver answering sends.
func TestBackendOverOverlappedPort(t *testing.T) {
	drv := newFakeDriver(t)
	f := newFakeIO()
	var fp *fakePort
	dial := func(ctx context.Context) (Port, error) {
		p, err := drv.dial(ctx)
		if err != nil {
			return nil, err
		}
		fp = p.(*fakePort)
		f.mu.Lock()
		f.sends = 0
		f.mu.Unlock()
		op, err := newOverlappedPort(&sendVia{fakeIO: f, p: fp}, 3, testBufSize)
		if err != nil {
			return nil, err
		}
		return op, nil
	}
	startBackend(t, Config{Dial: dial, Readers: 3}, newRuleDecider())
	drv.waitConnected(t)
	for i := range 10 {
		cr := &proto.ConnectRequest{RequestID: proto.RequestID(1000 + i), Layer: proto.LayerConnectV4, Direction: proto.Outbound,
			IPVersion: 4, Protocol: 6, Local: netipAP("198.18.0.1:1"), Remote: netipAP("198.19.0.2:443")}
		drv.mu.Lock()
		drv.pending[cr.RequestID] = true
		drv.mu.Unlock()
		msg, _ := proto.Encode(cr)
		eventually(t, "a read outstanding", func() bool { return f.armed() > 0 })
		f.deliver(t, uint64(i), msg)
		if v := drv.waitVerdict(t); v.RequestID != cr.RequestID || v.Action != proto.ActionPermit {
			t.Fatalf("verdict %+v for %d", v, cr.RequestID)
		}
	}
	eventually(t, "all reads re-armed", func() bool { return f.armed() == 3 })
}

// sendVia routes sends to the fake driver's message-notify callback.
type sendVia struct {
	*fakeIO
	p *fakePort
}

func (s *sendVia) send(in, out []byte) (int, error) { return s.p.Send(in, out) }

func netipAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
