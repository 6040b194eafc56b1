package fastpath

import (
	"errors"
	"fmt"
	"os"
	"testing"
)

// TestRingWaitReadGarbledPositions: a consumer position the kernel's protocol
// cannot produce (ahead of the producer's: the consumer page is writable by
// any process that maps the ring) is an error from read, not a panic of the
// daemon. read trusts prod-cons as what the ring holds; with the consumer
// ahead it is near 2^64, so a header's length passes the "left" check and
// the copy indexes past the double mapping.
func TestRingWaitReadGarbledPositions(t *testing.T) {
	const size = 64
	var cons, prod uintptr
	data := make([]byte, 2*size)
	w := &ringWait{consPos: &cons, prodPos: &prod, data: data, mask: size - 1}
	// A header of 120 bytes (not busy, not discarded) where the consumer is.
	data[16], data[16+size] = 120, 120
	prod, cons = 8, 16
	got, err := func() (b []byte, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return w.read(nil)
	}()
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("consumer ahead of producer: read %d bytes, %v; want an error", len(got), err)
	}
	if len(err.Error()) > 6 && err.Error()[:6] == "panic:" {
		t.Fatalf("consumer ahead of producer: %v; want an error", err)
	}
	if cons != 16 {
		t.Errorf("consumer moved to %d on a garbled ring", cons)
	}
}
