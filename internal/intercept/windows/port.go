package windows

import (
	"context"
	"errors"
	"fmt"

	"github.com/latchfw/latch/internal/proto"
)

// Port is the service's end of the driver's Filter Manager communication port: the
// handle FilterConnectCommunicationPort returns, or the emulated port of the driver's
// kernel emulation. All methods are safe for concurrent use.
type Port interface {
	// GetMessage waits for the next message the driver sent with FltSendMessage and
	// copies it, without the FILTER_MESSAGE_HEADER, into buf. It returns the Filter
	// Manager's message id and the message size. A message larger than buf is cut to
	// len(buf) bytes (the decoder then rejects it by its length field). An error means
	// the port is closed or broken; ctx ending returns ctx.Err().
	GetMessage(ctx context.Context, buf []byte) (msgID uint64, n int, err error)
	// Send is FilterSendMessage: it delivers in to the driver's message-notify callback
	// and copies the driver's answer into out, returning its size.
	Send(in, out []byte) (int, error)
	// Close disconnects (CloseHandle on the port) and makes pending and later calls
	// fail. It may be called more than once.
	Close() error
}

// Dialer connects to the driver's port.
type Dialer func(ctx context.Context) (Port, error)

// ErrPortClosed is returned by a Port's methods after Close or once the driver end
// has gone away.
var ErrPortClosed = errors.New("driver port closed")

// ErrPortBusy means the driver's port refused the connection because another client
// holds its only connection.
var ErrPortBusy = errors.New("the driver's port already has a client (is another latch service running?)")

// StatusError is a FilterSendMessage that failed with an NTSTATUS.
type StatusError struct {
	Op     string
	Status proto.NTStatus
}

func (e *StatusError) Error() string {
	if e.Status == proto.StatusConnectionCountLimit {
		return fmt.Sprintf("%s: %v (%v)", e.Op, ErrPortBusy, e.Status)
	}
	return fmt.Sprintf("%s: %v", e.Op, e.Status)
}

// Is makes errors.Is(err, ErrPortBusy) true for STATUS_CONNECTION_COUNT_LIMIT.
func (e *StatusError) Is(target error) bool {
	return target == ErrPortBusy && e.Status == proto.StatusConnectionCountLimit
}
