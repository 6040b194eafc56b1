package windows

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/proto"
)

// harnessEnd is the test's side of an emulated port: it writes frames as latch-sim does.
type harnessEnd struct {
	t *testing.T
	c net.Conn
}

func newEmuPair(t *testing.T) (Port, *harnessEnd) {
	a, b := net.Pipe()
	p := NewEmulatedPort(a)
	t.Cleanup(func() { p.Close(); b.Close() })
	return p, &harnessEnd{t: t, c: b}
}

func (h *harnessEnd) frame(kind byte, body []byte) {
	h.t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, uint32(1+len(body)))
	b = append(b, kind)
	b = append(b, body...)
	if _, err := h.c.Write(b); err != nil {
		h.t.Fatalf("harness write: %v", err)
	}
}

func (h *harnessEnd) message(id uint64, msg []byte) {
	body := make([]byte, 16, 16+len(msg))
	binary.LittleEndian.PutUint64(body[8:], id)
	h.frame(emuMessage, append(body, msg...))
}

func (h *harnessEnd) sendResult(status proto.NTStatus, out []byte) {
	body := binary.LittleEndian.AppendUint32(nil, uint32(status))
	body = binary.LittleEndian.AppendUint32(body, uint32(len(out)))
	h.frame(emuSendResult, append(body, out...))
}

// readSend reads one SEND frame: the output buffer size and the message.
func (h *harnessEnd) readSend() (uint32, []byte) {
	h.t.Helper()
	var hdr [5]byte
	if _, err := io.ReadFull(h.c, hdr[:]); err != nil {
		h.t.Fatalf("harness read: %v", err)
	}
	if hdr[4] != emuSend {
		h.t.Fatalf("frame kind %d, want SEND", hdr[4])
	}
	body := make([]byte, binary.LittleEndian.Uint32(hdr[:])-1)
	if _, err := io.ReadFull(h.c, body); err != nil {
		h.t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(body), body[4:]
}

func TestEmulatedPortMessages(t *testing.T) {
	p, h := newEmuPair(t)
	msg, _ := proto.Encode(&proto.Ack{Status: 5})
	go h.message(0xABCDEF, msg)
	buf := make([]byte, proto.MaxMessageSize)
	id, n, err := p.GetMessage(context.Background(), buf)
	if err != nil || id != 0xABCDEF || string(buf[:n]) != string(msg) {
		t.Fatalf("GetMessage = %x, %x, %v", id, buf[:n], err)
	}
	// A message larger than the buffer is cut, not overflowed.
	go h.message(2, msg)
	_, n, err = p.GetMessage(context.Background(), buf[:10])
	if err != nil || n != 10 {
		t.Fatalf("short buffer: n=%d err=%v", n, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := p.GetMessage(ctx, buf); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GetMessage with nothing to read = %v, want the context's error", err)
	}
}

func TestEmulatedPortSendsAnsweredInOrder(t *testing.T) {
	p, h := newEmuPair(t)
	done := make(chan error, 1)
	go func() {
		// Two sends in flight; answers come back in order, a MESSAGE interleaved.
		size1, in1 := h.readSend()
		size2, in2 := h.readSend()
		if size1 != 24 || size2 != 144 || in1[0] != 1 || in2[0] != 2 {
			done <- errors.New("SEND frames carry the wrong sizes or bytes")
			return
		}
		h.message(9, []byte("interleaved"))
		h.sendResult(0, []byte("first"))
		h.sendResult(proto.StatusInvalidParameter, nil)
		done <- nil
	}()
	type res struct {
		n   int
		out []byte
		err error
	}
	r1 := make(chan res, 1)
	go func() {
		out := make([]byte, 24)
		n, err := p.Send([]byte{1}, out)
		r1 <- res{n, out[:n], err}
	}()
	time.Sleep(20 * time.Millisecond) // the first SEND is written before the second
	out2 := make([]byte, 144)
	_, err2 := p.Send([]byte{2}, out2)
	first := <-r1
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if first.err != nil || string(first.out) != "first" {
		t.Fatalf("first Send = %q, %v", first.out, first.err)
	}
	var se *StatusError
	if !errors.As(err2, &se) || se.Status != proto.StatusInvalidParameter {
		t.Fatalf("second Send = %v, want STATUS_INVALID_PARAMETER", err2)
	}
	buf := make([]byte, 64)
	if _, n, err := p.GetMessage(context.Background(), buf); err != nil || string(buf[:n]) != "interleaved" {
		t.Fatalf("interleaved message: %q %v", buf[:n], err)
	}
}

func TestEmulatedPortSecondClientRefused(t *testing.T) {
	p, h := newEmuPair(t)
	go func() {
		h.sendResult(proto.StatusConnectionCountLimit, nil)
		h.c.Close()
	}()
	buf := make([]byte, 64)
	if _, _, err := p.GetMessage(context.Background(), buf); !errors.Is(err, ErrPortBusy) {
		t.Fatalf("GetMessage = %v, want ErrPortBusy", err)
	}
	if _, err := p.Send([]byte{1}, buf); !errors.Is(err, ErrPortBusy) {
		t.Fatalf("Send = %v, want ErrPortBusy", err)
	}
}

func TestEmulatedPortBrokenFrames(t *testing.T) {
	for _, c := range []struct {
		name  string
		write func(h *harnessEnd)
		want  string
	}{
		{"zero length", func(h *harnessEnd) { h.c.Write([]byte{0, 0, 0, 0, 1}) }, "frame of kind 1 says 0 bytes"},
		{"huge", func(h *harnessEnd) { h.c.Write([]byte{0xff, 0xff, 0xff, 0x7f, 1}) }, "says 2147483647 bytes"},
		{"unknown kind", func(h *harnessEnd) { h.frame(9, nil) }, "unknown frame kind 9"},
		{"message without header", func(h *harnessEnd) { h.frame(emuMessage, []byte{1, 2}) }, "no FILTER_MESSAGE_HEADER"},
		{"result length lies", func(h *harnessEnd) { h.frame(emuSendResult, []byte{0, 0, 0, 0, 5, 0, 0, 0}) }, "says 5 bytes returned, carries 0"},
		{"unsolicited result", func(h *harnessEnd) { h.sendResult(0, nil) }, "no SEND outstanding"},
		{"closed", func(h *harnessEnd) { h.c.Close() }, "driver port closed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, h := newEmuPair(t)
			go c.write(h)
			_, _, err := p.GetMessage(context.Background(), make([]byte, 64))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("GetMessage = %v, want an error saying %q", err, c.want)
			}
		})
	}
}

func TestEmulatedPortOutputTooLarge(t *testing.T) {
	p, h := newEmuPair(t)
	go func() {
		h.readSend()
		h.sendResult(0, make([]byte, 30))
	}()
	if _, err := p.Send([]byte{1}, make([]byte, 24)); err == nil || !strings.Contains(err.Error(), "30 bytes into a 24-byte") {
		t.Fatalf("Send = %v", err)
	}
}

// FuzzEmulatedPortFrames feeds arbitrary bytes from the harness side: the port must
// never panic, and must end with an error once the bytes run out.
func FuzzEmulatedPortFrames(f *testing.F) {
	msg, _ := proto.Encode(&proto.Ack{})
	frame := func(kind byte, body []byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(1+len(body)))
		return append(append(b, kind), body...)
	}
	f.Add(frame(emuMessage, append(make([]byte, 16), msg...)))
	f.Add(frame(emuSendResult, []byte{0x46, 0x02, 0, 0xc0, 0, 0, 0, 0}))
	f.Add(frame(emuSendResult, []byte{0, 0, 0, 0, 1, 0, 0, 0, 9}))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		p := NewEmulatedPort(a)
		defer p.Close()
		go func() {
			b.Write(data)
			b.Close()
		}()
		buf := make([]byte, 256)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for {
			_, n, err := p.GetMessage(ctx, buf)
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					t.Fatal("the port did not report the end of its input")
				}
				return
			}
			if n > len(buf) {
				t.Fatalf("n %d > buffer %d", n, len(buf))
			}
		}
	})
}
