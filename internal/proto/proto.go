// Package proto is the wire format between latch's Windows driver and the Go service,
// version 2, as specified in driver/PROTOCOL.md and driver/include/latch_proto.h.
//
// Every message is little-endian and fixed layout: a 16-byte header (magic, version,
// type, length, reserved) followed by a body whose size the type dictates. Decode is
// strict: a message that is short, oversized, of another magic or version, whose length
// field disagrees with the bytes received, whose reserved fields are not zero or whose
// enums are out of range is rejected with a *DecodeError naming the field and its byte
// offset. Decode never panics, and anything it accepts re-encodes to the same bytes.
//
// Golden files in testdata/ are written by both the C and the Go side and decoded by
// the other in tests.
package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic is the first field of every message: "LTCH" in memory, little-endian.
const Magic uint32 = 0x4843544C

// Version is the wire format version this package speaks.
const Version uint16 = 2

// Message sizes in bytes, header included.
const (
	HeaderSize             = 16
	HelloSize              = 32
	HelloReplySize         = 32
	ConnectRequestBaseSize = 96 // plus 2 bytes per UTF-16 code unit of the path
	VerdictSize            = 48
	FlushSize              = 24
	StatsQuerySize         = 16
	StatsReplySize         = 144
	AckSize                = 24
	HitBatchBaseSize       = 24 // plus HitRecordSize per record
	HitRecordSize          = 64
	// MaxHitsPerBatch is the most records one HIT_BATCH carries.
	MaxHitsPerBatch = 64

	// MaxPathLen is the longest process path, in UTF-16 code units, a CONNECT_REQUEST carries.
	MaxPathLen = 4096
	// MaxMessageSize is the largest message of any type: a CONNECT_REQUEST with the
	// longest path. A buffer of this size plus the Filter Manager's message header
	// holds any message.
	MaxMessageSize = ConnectRequestBaseSize + 2*MaxPathLen
)

// Limits of the HELLO pending timeout and the VERDICT cache lifetime.
const (
	MinPendingTimeoutMS = 100
	MaxPendingTimeoutMS = 600000
	MaxCacheTTLMS       = 86400000
)

var le = binary.LittleEndian

// Type identifies a message. Types with the high bit set travel from the driver to the
// service in the output buffer of a FilterSendMessage call.
type Type uint16

// Message types.
const (
	TypeHello          Type = 0x01
	TypeConnectRequest Type = 0x02
	TypeVerdict        Type = 0x03
	TypeFlush          Type = 0x04
	TypeStatsQuery     Type = 0x05
	TypeHitBatch       Type = 0x06
	TypeAck            Type = 0x80
	TypeHelloReply     Type = 0x81
	TypeStatsReply     Type = 0x85
)

// String returns the name PROTOCOL.md uses, e.g. "CONNECT_REQUEST".
func (t Type) String() string {
	switch t {
	case TypeHello:
		return "HELLO"
	case TypeConnectRequest:
		return "CONNECT_REQUEST"
	case TypeVerdict:
		return "VERDICT"
	case TypeFlush:
		return "FLUSH"
	case TypeStatsQuery:
		return "STATS_QUERY"
	case TypeHitBatch:
		return "HIT_BATCH"
	case TypeAck:
		return "ACK"
	case TypeHelloReply:
		return "HELLO_REPLY"
	case TypeStatsReply:
		return "STATS_REPLY"
	}
	return fmt.Sprintf("type(0x%x)", uint16(t))
}

// fixedSize returns the size a message of type t must have, or 0 for a type whose size
// varies (CONNECT_REQUEST) or that is unknown.
func (t Type) fixedSize() int {
	switch t {
	case TypeHello:
		return HelloSize
	case TypeVerdict:
		return VerdictSize
	case TypeFlush:
		return FlushSize
	case TypeStatsQuery:
		return StatsQuerySize
	case TypeAck:
		return AckSize
	case TypeHelloReply:
		return HelloReplySize
	case TypeStatsReply:
		return StatsReplySize
	}
	return 0
}

func (t Type) known() bool { return t == TypeConnectRequest || t == TypeHitBatch || t.fixedSize() != 0 }

// Message is one decoded wire message: one of *Hello, *HelloReply, *ConnectRequest,
// *Verdict, *Flush, *StatsQuery, *StatsReply, *HitBatch or *Ack.
type Message interface {
	// Type returns the message's wire type.
	Type() Type
	// AppendBinary appends the encoded message to b. It returns an error, and b
	// unchanged, if the message is not valid (the same checks Decode makes).
	AppendBinary(b []byte) ([]byte, error)
}

// Encode returns the wire encoding of m, or an error naming the field if m is invalid.
func Encode(m Message) ([]byte, error) {
	return m.AppendBinary(nil)
}

// DecodeError says why bytes are not a valid message.
type DecodeError struct {
	Type   Type   // the message type if the header got that far, else 0
	Field  string // the field at fault, as PROTOCOL.md names it
	Offset int    // byte offset of the field within the message
	Reason string

	gotVersion uint16 // for VersionMismatch
}

func (e *DecodeError) Error() string {
	if e.Type != 0 {
		return fmt.Sprintf("proto: %v: field %s at offset %d: %s", e.Type, e.Field, e.Offset, e.Reason)
	}
	return fmt.Sprintf("proto: field %s at offset %d: %s", e.Field, e.Offset, e.Reason)
}

// VersionMismatch reports whether err is a *DecodeError for a message of another
// wire format version, and which version that was.
func VersionMismatch(err error) (got uint16, ok bool) {
	var de *DecodeError
	if !errors.As(err, &de) || de.Field != "version" {
		return 0, false
	}
	return de.gotVersion, true
}

// Header is the 16-byte header common to every message.
type Header struct {
	Type   Type
	Length uint32
}

// DecodeHeader checks the common header of b (magic, version, known type, length equal
// to len(b) and the size the type demands, reserved zero) and returns it.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, &DecodeError{Field: "length", Offset: 0,
			Reason: fmt.Sprintf("message is %d bytes, shorter than the %d-byte header", len(b), HeaderSize)}
	}
	if m := le.Uint32(b[0:]); m != Magic {
		return Header{}, &DecodeError{Field: "magic", Offset: 0,
			Reason: fmt.Sprintf("0x%08x, want 0x%08x", m, Magic)}
	}
	if v := le.Uint16(b[4:]); v != Version {
		return Header{}, &DecodeError{Field: "version", Offset: 4, gotVersion: v,
			Reason: fmt.Sprintf("wire format version %d, this side speaks %d", v, Version)}
	}
	t := Type(le.Uint16(b[6:]))
	if !t.known() {
		return Header{}, &DecodeError{Field: "type", Offset: 6,
			Reason: fmt.Sprintf("unknown message type 0x%x", uint16(t))}
	}
	h := Header{Type: t, Length: le.Uint32(b[8:])}
	if int64(h.Length) != int64(len(b)) {
		return h, &DecodeError{Type: t, Field: "length", Offset: 8,
			Reason: fmt.Sprintf("says %d bytes, %d received", h.Length, len(b))}
	}
	if r := le.Uint32(b[12:]); r != 0 {
		return h, &DecodeError{Type: t, Field: "reserved", Offset: 12, Reason: fmt.Sprintf("0x%x, want 0", r)}
	}
	if want := t.fixedSize(); want != 0 && len(b) != want {
		return h, &DecodeError{Type: t, Field: "length", Offset: 8,
			Reason: fmt.Sprintf("%d bytes, a %v is %d", len(b), t, want)}
	}
	if t == TypeConnectRequest {
		if len(b) < ConnectRequestBaseSize {
			return h, &DecodeError{Type: t, Field: "length", Offset: 8,
				Reason: fmt.Sprintf("%d bytes, a %v is at least %d", len(b), t, ConnectRequestBaseSize)}
		}
		n := int(le.Uint16(b[88:]))
		if n > MaxPathLen {
			return h, &DecodeError{Type: t, Field: "path_len", Offset: 88,
				Reason: fmt.Sprintf("%d code units, at most %d", n, MaxPathLen)}
		}
		if want := ConnectRequestBaseSize + 2*n; len(b) != want {
			return h, &DecodeError{Type: t, Field: "path_len", Offset: 88,
				Reason: fmt.Sprintf("%d code units need a %d-byte message, length is %d", n, want, len(b))}
		}
	}
	if t == TypeHitBatch {
		n := len(b) - HitBatchBaseSize
		if n < HitRecordSize || n > HitRecordSize*MaxHitsPerBatch || n%HitRecordSize != 0 {
			return h, &DecodeError{Type: t, Field: "length", Offset: 8,
				Reason: fmt.Sprintf("%d bytes, a %v is %d + %d per record (1..%d records)", len(b), t,
					HitBatchBaseSize, HitRecordSize, MaxHitsPerBatch)}
		}
	}
	return h, nil
}

// Decode checks b and returns the message it holds. The error is a *DecodeError.
func Decode(b []byte) (Message, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return nil, err
	}
	var m interface {
		Message
		decodeBody(b []byte) error
	}
	switch h.Type {
	case TypeHello:
		m = new(Hello)
	case TypeHelloReply:
		m = new(HelloReply)
	case TypeConnectRequest:
		m = new(ConnectRequest)
	case TypeVerdict:
		m = new(Verdict)
	case TypeFlush:
		m = new(Flush)
	case TypeStatsQuery:
		m = new(StatsQuery)
	case TypeStatsReply:
		m = new(StatsReply)
	case TypeAck:
		m = new(Ack)
	case TypeHitBatch:
		m = new(HitBatch)
	default:
		// DecodeHeader admits only the types above.
		return nil, &DecodeError{Field: "type", Offset: 6, Reason: fmt.Sprintf("unknown message type 0x%x", uint16(h.Type))}
	}
	if err := m.decodeBody(b); err != nil {
		return nil, err
	}
	return m, nil
}

// appendHeader appends a header for a message of type t and total size n.
func appendHeader(b []byte, t Type, n int) []byte {
	b = le.AppendUint32(b, Magic)
	b = le.AppendUint16(b, Version)
	b = le.AppendUint16(b, uint16(t))
	b = le.AppendUint32(b, uint32(n))
	return le.AppendUint32(b, 0)
}

// appendChecked appends the raw encoding made by enc to b, then decodes the appended
// bytes with the same checks a receiver makes, so that nothing invalid is ever sent.
func appendChecked(b []byte, enc func([]byte) []byte, check func([]byte) error) ([]byte, error) {
	start := len(b)
	out := enc(b)
	if err := check(out[start:]); err != nil {
		return b, err
	}
	return out, nil
}

// reservedZero returns an error naming field if any byte of b[off:off+n] is nonzero.
func reservedZero(t Type, b []byte, off, n int, field string) error {
	for i := off; i < off+n; i++ {
		if b[i] != 0 {
			return &DecodeError{Type: t, Field: field, Offset: i, Reason: fmt.Sprintf("byte 0x%02x, want 0", b[i])}
		}
	}
	return nil
}

// decodeAs checks b as a message of type t and decodes its body into m.
func decodeAs(t Type, b []byte, body func([]byte) error) error {
	h, err := DecodeHeader(b)
	if err != nil {
		return err
	}
	if h.Type != t {
		return &DecodeError{Type: h.Type, Field: "type", Offset: 6, Reason: fmt.Sprintf("got %v, want %v", h.Type, t)}
	}
	return body(b)
}
