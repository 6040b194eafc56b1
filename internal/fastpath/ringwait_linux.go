package fastpath

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

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
// Records are read from the ring's memory (read), without the epoll_wait
// ringbuf.Reader.ReadInto makes each time it finds the ring empty: a system
// call made after the daemon was idle wakes the monitor thread, which then
// polls every 20 µs for a millisecond again. Once the ring is empty (read
// returns os.ErrDeadlineExceeded, as ReadInto with a deadline), wait waits for
// the next wakeup (the programs' BPF_RB_FORCE_WAKEUP, see wakeup in
// fastpath.c), a flush, or the timeout, as ReadInto's own wait did.
type ringWait struct {
	f       *os.File
	rc      syscall.RawConn
	flushed atomic.Bool
	closed  atomic.Bool

	mu         sync.Mutex // held while reading the mappings; close unmaps them
	cons, prod []byte     // the consumer page (read-write), and the producer page and data (read-only)
	consPos    *uintptr   // in cons: the consumer position
	prodPos    *uintptr   // in prod: the producer position
	data       []byte     // the data pages, mapped twice in a row (a record that wraps reads on)
	mask       uintptr
}

// newRingWait maps the ring buffer m to be read with read and waited for with
// wait, in place of a ringbuf.Reader's ReadInto (the reader still serves for
// its other methods).
func newRingWait(m *ebpf.Map) (*ringWait, error) {
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
	size := int(m.MaxEntries())
	if size <= 0 || size&(size-1) != 0 {
		f.Close()
		return nil, fmt.Errorf("ring buffer %v: size %d is not a power of two", m, size)
	}
	page := os.Getpagesize()
	cons, err := unix.Mmap(m.FD(), 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ring buffer %v: map the consumer page: %w", m, err)
	}
	prod, err := unix.Mmap(m.FD(), int64(page), page+2*size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		unix.Munmap(cons)
		f.Close()
		return nil, fmt.Errorf("ring buffer %v: map the data pages: %w", m, err)
	}
	return &ringWait{f: f, rc: rc, cons: cons, prod: prod,
		consPos: (*uintptr)(unsafe.Pointer(&cons[0])), prodPos: (*uintptr)(unsafe.Pointer(&prod[0])),
		data: prod[page:], mask: uintptr(size - 1)}, nil
}

// available reports whether the ring holds a record (or closed).
func (w *ringWait) available() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.data == nil || atomic.LoadUintptr(w.prodPos) != atomic.LoadUintptr(w.consPos)
}

// The bits of a ring buffer record's length (struct bpf_ringbuf_hdr).
const (
	ringBusyBit    = 1 << 31
	ringDiscardBit = 1 << 30
	ringHdrSize    = 8
)

// read copies the next record into buf and returns it: os.ErrDeadlineExceeded
// if the ring is empty, another error if the ring is malformed or closed. As
// ringbuf.Reader does: a record reserved but not yet submitted (busy) is waited
// for (the program submits it before it returns), a discarded one skipped.
func (w *ringWait) read(buf []byte) ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.data == nil {
		return buf, ringbuf.ErrClosed
	}
	for {
		prod := atomic.LoadUintptr(w.prodPos)
		cons := atomic.LoadUintptr(w.consPos)
		if prod == cons {
			return buf, os.ErrDeadlineExceeded
		}
		// The kernel keeps the producer at most a ring ahead and every record
		// 8-byte aligned; the consumer page is writable by whoever maps it.
		if prod-cons > w.mask+1 || cons&7 != 0 {
			return buf, fmt.Errorf("ring buffer: consumer position %d, producer position %d: not a ring's worth apart at a record boundary", cons, prod)
		}
		if prod-cons < ringHdrSize {
			return buf, fmt.Errorf("ring buffer: %d bytes, short of a record header", prod-cons)
		}
		start := cons & w.mask
		// Read atomically: the kernel clears the busy bit (xchg) after it wrote
		// the record.
		hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&w.data[start])))
		if hdr&ringBusyBit != 0 {
			continue // being written
		}
		n := uintptr(hdr &^ (ringBusyBit | ringDiscardBit))
		cons += ringHdrSize
		aligned := (n + 7) &^ 7
		if prod-cons < aligned {
			return buf, fmt.Errorf("ring buffer: a record of %d bytes, %d left", n, prod-cons)
		}
		start = cons & w.mask
		cons += aligned
		if hdr&ringDiscardBit == 0 {
			buf = append(buf[:0], w.data[start:start+n]...)
		}
		atomic.StoreUintptr(w.consPos, cons)
		if hdr&ringDiscardBit == 0 {
			return buf, nil
		}
	}
}

// wait returns nil once the ring holds records or flush was called (since the
// last wait that returned for it), os.ErrDeadlineExceeded after timeout, and
// ringbuf.ErrClosed once close was called.
func (w *ringWait) wait(timeout time.Duration) error {
	if err := w.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return ringbuf.ErrClosed
	}
	// Read resets the poller's readiness, then asks the function: records
	// that came before are seen by it, a wakeup after wakes the wait.
	err := w.rc.Read(func(uintptr) bool {
		return w.flushed.Swap(false) || w.available()
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
		return ringbuf.ErrClosed
	}
}

// flush has the current or next wait return at once.
func (w *ringWait) flush() {
	w.flushed.Store(true)
	w.f.SetReadDeadline(time.Now())
}

// close ends the current wait and every later one, and read. Closing again
// does nothing.
func (w *ringWait) close() error {
	if w.closed.Swap(true) {
		return nil
	}
	// Not under mu: Close waits for a wait's function (available) to return.
	err := w.f.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	err = errors.Join(err, unix.Munmap(w.prod), unix.Munmap(w.cons))
	w.data, w.prod, w.cons = nil, nil, nil
	return err
}
