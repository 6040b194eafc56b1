package fastpath

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// ringWait waits for a ring buffer's records in the Go runtime's network poller,
// where ringbuf.Reader waits in a blocking epoll_wait of its own. A goroutine
// blocked in a system call keeps its P (a Go scheduler slot) in a system call,
// and the runtime's monitor thread (sysmon) takes such a P back after 20 µs to
// 10 ms and then polls again every 20 µs for a millisecond: with two readers each
// waiting tens of milliseconds between wakeups, the daemon's monitor thread woke
// over 2,000 times a second under the bench's load (perf: about a fifth of the
// daemon's CPU time, most of it the context switches of those sleeps). A
// goroutine parked in the poller holds no P.
//
// The reader's ReadInto is given a deadline in the past once: it never waits,
// and returns os.ErrDeadlineExceeded once the ring is empty; wait then waits
// here for the next wakeup (the programs' BPF_RB_FORCE_WAKEUP, see wakeup in
// fastpath.c), a flush, or the timeout, as ReadInto's own wait did.
type ringWait struct {
	f       *os.File
	rc      syscall.RawConn
	r       *ringbuf.Reader
	flushed atomic.Bool
}

// newRingWait sets r, the reader of the ring buffer m, up to be waited for
// with wait. On an error r is left as it was (it waits itself).
func newRingWait(m *ebpf.Map, r *ringbuf.Reader) (*ringWait, error) {
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the descriptor of ring buffer %v: %w", m, err)
	}
	// Non-blocking, or os.NewFile leaves it out of the poller. (The flag is the
	// open file's, shared with m's descriptor: the bpf() calls on it ignore it.)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ring buffer %v: set O_NONBLOCK: %w", m, err)
	}
	f := os.NewFile(uintptr(fd), "ring buffer")
	// Only a file in the poller takes a deadline.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("ring buffer %v is not pollable: %w", m, err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ring buffer %v: %w", m, err)
	}
	r.SetDeadline(time.Unix(0, 1))
	return &ringWait{f: f, rc: rc, r: r}, nil
}

// errRingWaitClosed is what wait returns once close was called.
var errRingWaitClosed = errors.New("ring buffer wait: closed")

// wait returns nil once the ring holds records or flush was called (since the
// last wait that returned for it), os.ErrDeadlineExceeded after timeout, and
// an error once close was called.
func (w *ringWait) wait(timeout time.Duration) error {
	if err := w.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return errRingWaitClosed
	}
	// Read resets the poller's readiness, then asks the function: records
	// that came before are seen by it, a wakeup after wakes the wait.
	err := w.rc.Read(func(uintptr) bool {
		return w.flushed.Swap(false) || w.r.AvailableBytes() != 0
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		if w.flushed.Swap(false) {
			return nil // flush set the deadline to wake the wait
		}
		return err
	default:
		return errRingWaitClosed
	}
}

// flush has the current or next wait return at once.
func (w *ringWait) flush() {
	w.flushed.Store(true)
	w.f.SetReadDeadline(time.Now())
}

// close ends the current wait and every later one.
func (w *ringWait) close() error { return w.f.Close() }
