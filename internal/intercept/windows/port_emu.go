package windows

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/proto"
)

// Frame kinds of the emulated port (driver/PROTOCOL.md, "The emulated port").
const (
	emuMessage    = 1 // harness -> client: FILTER_MESSAGE_HEADER + message
	emuSend       = 2 // client -> harness: u32 output buffer size + message
	emuSendResult = 3 // harness -> client: u32 status + u32 bytes returned + output
	emuReply      = 4 // client -> harness: FILTER_REPLY_HEADER + reply (unused by latch)
)

// emuMaxFrame bounds what the client accepts from the harness, so a broken harness
// cannot make it allocate without limit.
const emuMaxFrame = 1 + 16 + proto.MaxMessageSize + 64

// EmulatedDialer connects to the port the driver's kernel emulation (latch-sim)
// serves on the unix socket at path. It speaks the framing of driver/PROTOCOL.md.
func EmulatedDialer(path string) Dialer {
	return func(ctx context.Context) (Port, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, fmt.Errorf("connect to emulated port %s: %w", path, err)
		}
		return NewEmulatedPort(c), nil
	}
}

// NewEmulatedPort speaks the emulated port framing over c, which it owns from now on.
func NewEmulatedPort(c net.Conn) Port {
	p := &emuPort{
		conn: c,
		msgs: make(chan emuMsg, 64),
		done: make(chan struct{}),
	}
	go p.readLoop()
	return p
}

type emuMsg struct {
	id   uint64
	body []byte
}

type sendResult struct {
	status proto.NTStatus
	out    []byte
}

type emuPort struct {
	conn net.Conn
	msgs chan emuMsg
	done chan struct{}

	wmu sync.Mutex // orders writes, and waiters with them: SEND frames are answered in order

	mu      sync.Mutex
	waiters []chan sendResult
	err     error // why the port closed; set once, before done is closed
}

func (p *emuPort) fail(err error) {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	p.err = err
	p.waiters = nil
	close(p.done)
	p.mu.Unlock()
	p.conn.Close()
}

func (p *emuPort) closedErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *emuPort) readLoop() {
	r := bufio.NewReaderSize(p.conn, 64<<10)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			p.fail(fmt.Errorf("%w: %v", ErrPortClosed, err))
			return
		}
		n := binary.LittleEndian.Uint32(hdr[:4])
		kind := hdr[4]
		if n < 1 || n > emuMaxFrame {
			p.fail(fmt.Errorf("emulated port: frame of kind %d says %d bytes, want 1..%d", kind, n, emuMaxFrame))
			return
		}
		body := make([]byte, n-1)
		if _, err := io.ReadFull(r, body); err != nil {
			p.fail(fmt.Errorf("%w: frame cut short: %v", ErrPortClosed, err))
			return
		}
		switch kind {
		case emuMessage:
			if len(body) < 16 {
				p.fail(fmt.Errorf("emulated port: MESSAGE frame of %d bytes has no FILTER_MESSAGE_HEADER", len(body)))
				return
			}
			m := emuMsg{id: binary.LittleEndian.Uint64(body[8:]), body: body[16:]}
			select {
			case p.msgs <- m:
			case <-p.done:
				return
			}
		case emuSendResult:
			if len(body) < 8 {
				p.fail(fmt.Errorf("emulated port: SEND_RESULT frame of %d bytes, want at least 8", len(body)))
				return
			}
			res := sendResult{status: proto.NTStatus(binary.LittleEndian.Uint32(body)), out: body[8:]}
			if got := binary.LittleEndian.Uint32(body[4:]); int(got) != len(res.out) {
				p.fail(fmt.Errorf("emulated port: SEND_RESULT says %d bytes returned, carries %d", got, len(res.out)))
				return
			}
			p.mu.Lock()
			var w chan sendResult
			if len(p.waiters) > 0 {
				w, p.waiters = p.waiters[0], p.waiters[1:]
			}
			p.mu.Unlock()
			if w == nil {
				// Unsolicited: the harness refusing a second client says so this way.
				if res.status == proto.StatusConnectionCountLimit {
					p.fail(ErrPortBusy)
				} else {
					p.fail(fmt.Errorf("emulated port: SEND_RESULT (%v) with no SEND outstanding", res.status))
				}
				return
			}
			w <- res
		default:
			p.fail(fmt.Errorf("emulated port: unknown frame kind %d", kind))
			return
		}
	}
}

func (p *emuPort) GetMessage(ctx context.Context, buf []byte) (uint64, int, error) {
	select {
	case m := <-p.msgs:
		return m.id, copy(buf, m.body), nil
	case <-p.done:
		return 0, 0, p.closedErr()
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

func (p *emuPort) Send(in, out []byte) (int, error) {
	frame := make([]byte, 9+len(in))
	binary.LittleEndian.PutUint32(frame, uint32(1+4+len(in)))
	frame[4] = emuSend
	binary.LittleEndian.PutUint32(frame[5:], uint32(len(out)))
	copy(frame[9:], in)

	w := make(chan sendResult, 1)
	p.wmu.Lock()
	p.mu.Lock()
	if p.err != nil {
		err := p.err
		p.mu.Unlock()
		p.wmu.Unlock()
		return 0, err
	}
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()
	_, werr := p.conn.Write(frame)
	p.wmu.Unlock()
	var wdeadline <-chan time.Time
	if werr != nil {
		// The harness may have said why before it closed (a refused second client):
		// give the reader a moment to read that rather than report a bare broken pipe.
		wdeadline = time.After(time.Second)
	}
	var res sendResult
	select {
	case res = <-w:
	case <-p.done:
		select {
		case res = <-w:
		default:
			return 0, p.closedErr()
		}
	case <-wdeadline:
		p.fail(fmt.Errorf("%w: %v", ErrPortClosed, werr))
		return 0, p.closedErr()
	}
	if res.status != proto.StatusSuccess {
		return 0, &StatusError{Op: "FilterSendMessage", Status: res.status}
	}
	if len(res.out) > len(out) {
		return 0, fmt.Errorf("emulated port: driver returned %d bytes into a %d-byte output buffer", len(res.out), len(out))
	}
	return copy(out, res.out), nil
}

func (p *emuPort) Close() error {
	p.fail(ErrPortClosed)
	return nil
}
