//go:build windows

package windows

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/windows"

	"github.com/latchfw/latch/internal/intercept/windows/fltlib"
	"github.com/latchfw/latch/internal/proto"
)

// fltDialer connects to the Filter Manager port name with readers outstanding reads.
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
		cio := &winIO{h: h, iocp: iocp, ovs: make([]windows.Overlapped, readers),
			slots: make(map[*windows.Overlapped]int, readers)}
		for i := range cio.ovs {
			cio.slots[&cio.ovs[i]] = i
		}
		return newOverlappedPort(cio, readers, filterMessageHeaderSize+proto.MaxMessageSize)
	}
}

// winIO is completionIO over fltlib and an I/O completion port. The OVERLAPPED
// structures live in one heap slice that the port keeps until every read is back.
type winIO struct {
	h, iocp windows.Handle
	ovs     []windows.Overlapped
	slots   map[*windows.Overlapped]int // read-only after construction
}

func (w *winIO) startRead(slot int, buf []byte) error {
	w.ovs[slot] = windows.Overlapped{}
	return fltlib.GetMessage(w.h, buf, &w.ovs[slot])
}

func (w *winIO) wait() (int, uint32, error, bool) {
	for {
		var n uint32
		var key uintptr
		var ov *windows.Overlapped
		err := windows.GetQueuedCompletionStatus(w.iocp, &n, &key, &ov, windows.INFINITE)
		if ov == nil {
			if err != nil {
				return 0, 0, err, true // the completion port was closed
			}
			continue
		}
		slot, ok := w.slots[ov]
		if !ok {
			return -1, n, err, false
		}
		return slot, n, err, false
	}
}

func (w *winIO) send(in, out []byte) (int, error) { return fltlib.SendMessage(w.h, in, out) }

func (w *winIO) closePort() error {
	windows.CancelIoEx(w.h, nil)
	err := windows.CloseHandle(w.h)
	w.h = windows.InvalidHandle
	return err
}

func (w *winIO) closeCompletions() { windows.CloseHandle(w.iocp) }
