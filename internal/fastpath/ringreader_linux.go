package fastpath

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// ringReader is how Run's two readers (readDecisions, readEnds) read a ring
// buffer: from its mapped memory, waited for in the Go runtime's poller
// (ringWait), or, where that could not be set up, with a ringbuf.Reader
// (ringbufReader). Either way a reader reads records until read finds none,
// does what an empty ring asks for, and waits.
type ringReader interface {
	// read returns the next record, in buf's memory if it has room, without
	// waiting: os.ErrDeadlineExceeded if none is known to wait, an error
	// readerClosed accepts once closed, another error if the ring is
	// malformed.
	read(buf []byte) ([]byte, error)
	// wait returns nil once a record waits or the ring was flushed (since the
	// last wait that returned for it), os.ErrDeadlineExceeded after timeout,
	// and an error readerClosed accepts once closed.
	wait(timeout time.Duration) error
}

// reader is the ringReader of a ring: w if the ring could be mapped (newRingWait
// succeeded), r otherwise.
func (fp *FastPath) reader(r *ringbuf.Reader, w *ringWait) ringReader {
	if w != nil {
		return w
	}
	return &ringbufReader{r: r}
}

// readerClosed reports whether a ringReader's error err, or ctx, says that Run
// stops (Close, or ctx done).
func readerClosed(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed)
}

// ringbufReader reads a ring with a ringbuf.Reader, which waits in an
// epoll_wait of its own (a system call that holds a Go scheduler slot: see
// ringWait). Its ReadInto waits whenever the ring is empty, so read calls it
// only while the last record said more follow (Record.Remaining), and wait
// calls it with the deadline and keeps the record it returns for the next
// read. Flush (FastPath.flushDecisions) ends a wait.
type ringbufReader struct {
	r   *ringbuf.Reader
	rec ringbuf.Record
	// more: the last record read had more behind it. pending: wait read rec,
	// which read has not returned yet.
	more, pending bool
}

func (b *ringbufReader) read(buf []byte) ([]byte, error) {
	if b.pending {
		b.pending = false
		return b.rec.RawSample, nil
	}
	if !b.more {
		return buf, os.ErrDeadlineExceeded
	}
	b.rec.RawSample = buf
	err := b.r.ReadInto(&b.rec)
	if err != nil {
		b.more = false
		if errors.Is(err, ringbuf.ErrFlushed) {
			// A flush after a discarded last record: empty all the same.
			return buf, os.ErrDeadlineExceeded
		}
		return buf, err
	}
	b.more = b.rec.Remaining > 0
	return b.rec.RawSample, nil
}

func (b *ringbufReader) wait(timeout time.Duration) error {
	if b.pending {
		return nil
	}
	b.r.SetDeadline(time.Now().Add(timeout))
	err := b.r.ReadInto(&b.rec)
	switch {
	case err == nil:
		b.pending, b.more = true, b.rec.Remaining > 0
		return nil
	case errors.Is(err, ringbuf.ErrFlushed):
		return nil
	}
	return err
}
