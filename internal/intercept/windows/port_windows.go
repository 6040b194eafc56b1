//go:build windows

package windows

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/windows"

	"github.com/latchfw/latch/internal/intercept/windows/fltlib"
	"github.com/latchfw/latch/internal/proto"
)

// fltSlot is one outstanding FilterGetMessage: its OVERLAPPED and its buffer
// (FILTER_MESSAGE_HEADER + the largest message). Slots live on the Go heap, which
// does not move objects, and stay referenced by the port until their read completes.
type fltSlot struct {
	ov  windows.Overlapped
	n   uint32 // bytes transferred
	err error
	buf [fltlib.MessageHeaderSize + proto.MaxMessageSize]byte
}

// fltPort is the real Filter Manager port: an overlapped handle associated with an I/O
// completion port, with one FilterGetMessage outstanding per slot at all times. A
// completed slot is copied out and re-armed before GetMessage returns (seed 004:
// "prime" the port with several reads and re-issue each one after its completion).
type fltPort struct {
	slots map[*windows.Overlapped]*fltSlot
	ready chan *fltSlot // completed reads; capacity len(slots), so the dispatcher never blocks
	done  chan struct{} // closed by Close

	hmu  sync.RWMutex // readers use h; Close takes it to close h
	h    windows.Handle
	iocp windows.Handle

	mu          sync.Mutex
	outstanding int
	closing     bool
	iocpClosed  bool
	err         error
}

// fltDialer connects to the port name with readers outstanding reads.
func fltDialer(name string, readers int) Dialer {
	return func(ctx context.Context) (Port, error) {
		h, err := fltlib.Connect(name)
		if err != nil {
			if errors.Is(err, fltlib.ErrPortBusy) {
				return nil, fmt.Errorf("%w (%v)", ErrPortBusy, err)
			}
			return nil, err
		}
		iocp, err := windows.CreateIoCompletionPort(h, 0, 0, 0)
		if err != nil {
			windows.CloseHandle(h)
			return nil, fmt.Errorf("CreateIoCompletionPort for port %s: %w", name, err)
		}
		p := &fltPort{
			slots: make(map[*windows.Overlapped]*fltSlot, readers),
			ready: make(chan *fltSlot, readers),
			done:  make(chan struct{}),
			h:     h,
			iocp:  iocp,
		}
		all := make([]*fltSlot, readers)
		for i := range all {
			all[i] = new(fltSlot)
			p.slots[&all[i].ov] = all[i]
		}
		go p.dispatch()
		for _, s := range all {
			if err := p.arm(s); err != nil {
				p.Close()
				return nil, err
			}
		}
		return p, nil
	}
}

func (p *fltPort) arm(s *fltSlot) error {
	p.hmu.RLock()
	defer p.hmu.RUnlock()
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return ErrPortClosed
	}
	p.outstanding++
	p.mu.Unlock()
	s.ov = windows.Overlapped{}
	s.n, s.err = 0, nil
	if err := fltlib.GetMessage(p.h, s.buf[:], &s.ov); err != nil {
		// Failed at once: no completion packet will come.
		p.mu.Lock()
		p.outstanding--
		p.mu.Unlock()
		return err
	}
	return nil
}

// dispatch routes completion packets to their slots until the port is closed and
// every read has come back.
func (p *fltPort) dispatch() {
	for {
		var n uint32
		var key uintptr
		var ov *windows.Overlapped
		err := windows.GetQueuedCompletionStatus(p.iocp, &n, &key, &ov, windows.INFINITE)
		if ov == nil {
			if err != nil {
				return // the completion port was closed
			}
			continue
		}
		s := p.slots[ov]
		if s == nil {
			continue // not one of our reads (a synchronous FilterSendMessage's packet)
		}
		s.n, s.err = n, err
		p.mu.Lock()
		p.outstanding--
		closing, left := p.closing, p.outstanding
		p.mu.Unlock()
		if closing {
			if left == 0 {
				p.closeIOCP()
				return
			}
			continue
		}
		p.ready <- s
	}
}

func (p *fltPort) closeIOCP() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.iocpClosed {
		p.iocpClosed = true
		windows.CloseHandle(p.iocp)
	}
}

func (p *fltPort) GetMessage(ctx context.Context, buf []byte) (uint64, int, error) {
	select {
	case s := <-p.ready:
		if s.err != nil {
			p.fail(fmt.Errorf("%w: FilterGetMessage: %v", ErrPortClosed, s.err))
			return 0, 0, p.closeErr()
		}
		id := binary.LittleEndian.Uint64(s.buf[8:16])
		msg := s.buf[fltlib.MessageHeaderSize:]
		// The message's own length field says how much of the buffer it fills: the
		// Filter Manager delivers a message whole or not at all. A nonsensical value is
		// passed on cut to what was transferred, for the decoder to reject.
		l := int(binary.LittleEndian.Uint32(msg[8:12]))
		if l < proto.HeaderSize || l > len(msg) {
			l = min(max(int(s.n)-fltlib.MessageHeaderSize, 0), len(msg))
		}
		n := copy(buf, msg[:l])
		if err := p.arm(s); err != nil {
			p.fail(fmt.Errorf("%w: re-arming FilterGetMessage: %v", ErrPortClosed, err))
		}
		return id, n, nil
	case <-p.done:
		return 0, 0, p.closeErr()
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

func (p *fltPort) Send(in, out []byte) (int, error) {
	p.hmu.RLock()
	defer p.hmu.RUnlock()
	p.mu.Lock()
	closing := p.closing
	p.mu.Unlock()
	if closing {
		return 0, p.closeErr()
	}
	return fltlib.SendMessage(p.h, in, out)
}

func (p *fltPort) closeErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	return ErrPortClosed
}

func (p *fltPort) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	p.Close()
}

// Close cancels the outstanding reads and closes the port handle (the driver's
// disconnect callback runs). The completion port is closed once every read has
// completed, so no buffer is freed while the kernel may still write to it.
func (p *fltPort) Close() error {
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
	windows.CancelIoEx(p.h, nil)
	err := windows.CloseHandle(p.h)
	p.h = windows.InvalidHandle
	p.hmu.Unlock()
	if left == 0 {
		p.closeIOCP()
	}
	return err
}
