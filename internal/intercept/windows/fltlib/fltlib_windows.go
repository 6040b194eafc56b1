package fltlib

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/windows"
)

// The fltlib.dll functions return an HRESULT, which the generated wrappers hand back
// as a syscall.Errno holding that HRESULT (0 is success).

//sys	filterConnectCommunicationPort(portName *uint16, options uint32, context unsafe.Pointer, sizeOfContext uint16, securityAttributes *windows.SecurityAttributes, port *windows.Handle) (hr error) = fltlib.FilterConnectCommunicationPort
//sys	filterGetMessage(port windows.Handle, messageBuffer *byte, messageBufferSize uint32, overlapped *windows.Overlapped) (hr error) = fltlib.FilterGetMessage
//sys	filterSendMessage(port windows.Handle, inBuffer *byte, inBufferSize uint32, outBuffer *byte, outBufferSize uint32, bytesReturned *uint32) (hr error) = fltlib.FilterSendMessage
//sys	filterReplyMessage(port windows.Handle, replyBuffer *byte, replyBufferSize uint32) (hr error) = fltlib.FilterReplyMessage

// MessageHeaderSize is the size of FILTER_MESSAGE_HEADER (ULONG ReplyLength, then the
// ULONGLONG MessageId at offset 8), which FilterGetMessage writes before each message.
const MessageHeaderSize = 16

// ReplyHeaderSize is the size of FILTER_REPLY_HEADER (NTSTATUS Status, then the
// ULONGLONG MessageId at offset 8), which must start every FilterReplyMessage buffer.
const ReplyHeaderSize = 16

// HRESULT values the callers tell apart.
const (
	hresultIOPending          = 0x800703E5 // HRESULT_FROM_WIN32(ERROR_IO_PENDING)
	hresultFileNotFound       = 0x80070002 // HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND): no such port
	hresultAccessDenied       = 0x80070005 // HRESULT_FROM_WIN32(ERROR_ACCESS_DENIED)
	hresultConnectionCountLim = 0xD0000246 // HRESULT_FROM_NT(STATUS_CONNECTION_COUNT_LIMIT)
)

// ErrPortBusy is returned by Connect when another client already holds the port's
// only connection.
var ErrPortBusy = errors.New("the driver's port already has a client (another latch service is running?)")

// HRESULTError is a failed fltlib call.
type HRESULTError struct {
	Op      string
	HRESULT uint32
}

func (e *HRESULTError) Error() string {
	msg := syscall.Errno(e.HRESULT).Error()
	return fmt.Sprintf("%s: HRESULT 0x%08X: %s", e.Op, e.HRESULT, msg)
}

func hrError(op string, err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch uint32(errno) {
		case hresultConnectionCountLim:
			return fmt.Errorf("%s: %w", op, ErrPortBusy)
		case hresultFileNotFound:
			return fmt.Errorf("%s: no such port (is the latch driver loaded? sc start latchdrv): %w", op, &HRESULTError{op, uint32(errno)})
		case hresultAccessDenied:
			return fmt.Errorf("%s: access denied (the port admits SYSTEM and Administrators only): %w", op, &HRESULTError{op, uint32(errno)})
		}
		return &HRESULTError{op, uint32(errno)}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Connect opens the communication port name (e.g. `\LatchPort`). The handle is for
// overlapped I/O: Filter Manager ports are asynchronous unless FLT_PORT_FLAG_SYNC_HANDLE
// is asked for, which is what lets several FilterGetMessage calls be outstanding.
func Connect(name string) (windows.Handle, error) {
	p, err := windows.UTF16PtrFromString(name)
	if err != nil {
		return windows.InvalidHandle, fmt.Errorf("port name %q: %w", name, err)
	}
	var h windows.Handle
	if err := filterConnectCommunicationPort(p, 0, nil, 0, nil, &h); err != nil {
		return windows.InvalidHandle, hrError("FilterConnectCommunicationPort "+name, err)
	}
	return h, nil
}

// GetMessage starts an overlapped FilterGetMessage into buf, which must begin with room
// for the FILTER_MESSAGE_HEADER. The completion arrives on the I/O completion port the
// handle is associated with; buf and ov must stay alive and unmoved until then. It
// returns nil when the read is pending (or completed at once, which is also reported
// through the completion port).
func GetMessage(port windows.Handle, buf []byte, ov *windows.Overlapped) error {
	if len(buf) < MessageHeaderSize {
		return fmt.Errorf("FilterGetMessage: buffer of %d bytes is smaller than the message header", len(buf))
	}
	err := filterGetMessage(port, &buf[0], uint32(len(buf)), ov)
	var errno syscall.Errno
	if err != nil && errors.As(err, &errno) && uint32(errno) == hresultIOPending {
		return nil
	}
	return hrError("FilterGetMessage", err)
}

// SendMessage sends in to the driver's message-notify callback and returns how many
// bytes of its answer it wrote to out. It waits for the driver's callback to return.
func SendMessage(port windows.Handle, in, out []byte) (int, error) {
	if len(in) == 0 {
		return 0, errors.New("FilterSendMessage: empty message")
	}
	var outp *byte
	if len(out) > 0 {
		outp = &out[0]
	}
	var n uint32
	if err := filterSendMessage(port, &in[0], uint32(len(in)), outp, uint32(len(out)), &n); err != nil {
		return 0, hrError("FilterSendMessage", err)
	}
	return int(n), nil
}

// ReplyMessage answers the message msgID with reply; the buffer written starts with a
// FILTER_REPLY_HEADER whose Status is 0 and MessageId is msgID. latch's driver sends
// without a reply buffer, so the service does not use it; it is here for completeness
// of the port's user-mode side (seed 004).
func ReplyMessage(port windows.Handle, msgID uint64, reply []byte) error {
	buf := make([]byte, ReplyHeaderSize+len(reply))
	binary.LittleEndian.PutUint64(buf[8:], msgID)
	copy(buf[ReplyHeaderSize:], reply)
	return hrError("FilterReplyMessage", filterReplyMessage(port, &buf[0], uint32(len(buf))))
}
