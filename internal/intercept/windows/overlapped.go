package windows

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/latchfw/latch/internal/proto"
)

// filterMessageHeaderSize is the size of FILTER_MESSAGE_HEADER (ULONG ReplyLength, pad,
// ULONGLONG MessageId), which FilterGetMessage writes before each message.
const filterMessageHeaderSize = 16

// completionIO is what an overlapped port asks of the system. On Windows it is
// fltlib's FilterGetMessage/FilterSendMessage on a port handle associated with an I/O
// completion port (port_windows.go); tests use a fake. Everything else about keeping
// reads outstanding, re-arming them and closing safely is in overlappedPort, which is
// platform-neutral and tested everywhere.
type completionIO interface {
	// startRead begins an overlapped FilterGetMessage into buf for slot. nil means the
	// read is under way; its completion arrives through wait, even if it finished at
	// once. An error means no completion will come.
	startRead(slot int, buf []byte) error
	// wait blocks for the next completion (GetQueuedCompletionStatus). closed is true
	// once the completion port is closed.
	wait() (slot int, n uint32, err error, closed bool)
	// send is FilterSendMessage.
	send(in, out []byte) (int, error)
	// closePort cancels the outstanding reads and closes the port handle; the
	// completions of the cancelled reads still arrive through wait.
	closePort() error
	// closeCompletions closes the completion port, which ends wait.
	closeCompletions()
}

// overlappedPort keeps one read outstanding per slot at all times: a completed slot is
// copied out and re-armed before GetMessage returns (seed 004: prime the port with
// several FilterGetMessage calls and re-issue each after its completion). Its buffers
// live on the Go heap, which does not move objects, and stay referenced until their
// read has completed: Close closes the completion port only after the last cancelled
// read has come back, so the kernel never writes to memory the port gave up.
type overlappedPort struct {
	io    completionIO
	bufs  [][]byte
	ready chan completion // capacity len(bufs): a slot is in it at most once
	done  chan struct{}   // closed by Close

	hmu sync.RWMutex // held shared while using the port handle, exclusively to close it

	mu          sync.Mutex
	outstanding int
	closing     bool
	compClosed  bool
	err         error
}

type completion struct {
	slot int
	n    uint32
	err  error
}

// newOverlappedPort starts readers reads of bufSize bytes each (FILTER_MESSAGE_HEADER
// included) and the goroutine that routes their completions.
func newOverlappedPort(cio completionIO, readers, bufSize int) (*overlappedPort, error) {
	p := &overlappedPort{
		io:    cio,
		bufs:  make([][]byte, readers),
		ready: make(chan completion, readers),
		done:  make(chan struct{}),
	}
	for i := range p.bufs {
		p.bufs[i] = make([]byte, bufSize)
	}
	go p.dispatch()
	for i := range p.bufs {
		if err := p.arm(i); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

func (p *overlappedPort) arm(slot int) error {
	p.hmu.RLock()
	defer p.hmu.RUnlock()
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return ErrPortClosed
	}
	p.outstanding++
	p.mu.Unlock()
	if err := p.io.startRead(slot, p.bufs[slot]); err != nil {
		p.mu.Lock()
		p.outstanding-- // failed at once: no completion will come
		p.mu.Unlock()
		return err
	}
	return nil
}

// dispatch routes completions to GetMessage until the port is closed and every read
// has come back, then closes the completion port.
func (p *overlappedPort) dispatch() {
	for {
		slot, n, err, closed := p.io.wait()
		if closed {
			return
		}
		if slot < 0 || slot >= len(p.bufs) {
			continue // not one of our reads (a synchronous FilterSendMessage's packet)
		}
		p.mu.Lock()
		p.outstanding--
		closing, left := p.closing, p.outstanding
		p.mu.Unlock()
		if closing {
			if left == 0 {
				p.closeCompletions()
				return
			}
			continue
		}
		p.ready <- completion{slot, n, err}
	}
}

func (p *overlappedPort) closeCompletions() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.compClosed {
		p.compClosed = true
		p.io.closeCompletions()
	}
}

// GetMessage returns the next message a read brought, after re-arming that read.
func (p *overlappedPort) GetMessage(ctx context.Context, buf []byte) (uint64, int, error) {
	select {
	case c := <-p.ready:
		if c.err != nil {
			p.fail(fmt.Errorf("%w: FilterGetMessage: %v", ErrPortClosed, c.err))
			return 0, 0, p.closeErr()
		}
		b := p.bufs[c.slot]
		id := binary.LittleEndian.Uint64(b[8:filterMessageHeaderSize])
		msg := b[filterMessageHeaderSize:]
		// The message's own length field says how much of the buffer it fills: the
		// Filter Manager delivers a message whole or not at all. A nonsensical value
		// is passed on cut to what was transferred, for the decoder to reject.
		l := int(binary.LittleEndian.Uint32(msg[8:12]))
		if l < proto.HeaderSize || l > len(msg) {
			l = min(max(int(c.n)-filterMessageHeaderSize, 0), len(msg))
		}
		n := copy(buf, msg[:l])
		if err := p.arm(c.slot); err != nil {
			p.fail(fmt.Errorf("%w: re-arming FilterGetMessage: %v", ErrPortClosed, err))
		}
		return id, n, nil
	case <-p.done:
		return 0, 0, p.closeErr()
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

// Send is FilterSendMessage on the port.
func (p *overlappedPort) Send(in, out []byte) (int, error) {
	p.hmu.RLock()
	defer p.hmu.RUnlock()
	p.mu.Lock()
	closing := p.closing
	p.mu.Unlock()
	if closing {
		return 0, p.closeErr()
	}
	return p.io.send(in, out)
}

func (p *overlappedPort) closeErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	return ErrPortClosed
}

func (p *overlappedPort) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	p.Close()
}

// Close cancels the outstanding reads and closes the port handle (the driver's
// disconnect callback runs); the completion port follows once every read is back.
func (p *overlappedPort) Close() error {
	p.hmu.Lock()
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		p.hmu.Unlock()
		return nil
	}
	p.closing = true
	left := p.outstanding
	close(p.done)
	p.mu.Unlock()
	err := p.io.closePort()
	p.hmu.Unlock()
	if left == 0 {
		p.closeCompletions()
	}
	return err
}
