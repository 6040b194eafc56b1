package fastpath

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/latchfw/latch/internal/engine"
)

// TestRingReadersWaitInPoller: while the ring buffers are empty, Run's readers
// wait in the Go runtime's poller, not in a system call (which holds a scheduler
// slot that the runtime's monitor thread keeps taking back, waking every 20 µs to
// do so), and they still hand over every decision: the ones the programs wake
// them for (past WAKEUP_BYTES), and the few below that at the next readEvery.
func TestRingReadersWaitInPoller(t *testing.T) {
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if fp.ringWait == nil {
		t.Fatal("the ring of decisions is not waited for in the poller")
	}
	if fp.endsRing != nil && fp.endsWait == nil {
		t.Fatal("the ring of socket ends is not waited for in the poller")
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, dst), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember: %v %v", ok, err)
	}
	var got atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- fp.Run(ctx, func(Decision) { got.Add(1) }, func(End) {}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitReading(t, fp)

	// Idle: no reader in a system call, in any of a few looks.
	buf := make([]byte, 1<<20)
	for look := range 5 {
		time.Sleep(20 * time.Millisecond)
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "[syscall") && (strings.Contains(g, "ringbuf") || strings.Contains(g, "readDecisions") || strings.Contains(g, "readEnds")) {
				t.Fatalf("look %d: a ring buffer reader waits in a system call:\n%s", look, g)
			}
		}
	}

	// Past WAKEUP_BYTES (a wakeup) and a few more (read at readEvery).
	const n = 400
	for i := range n {
		if r := c.connect(t, dst); r != "ok 0x60000000" {
			t.Fatalf("connect %d: %q, want a hit", i, r)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); got.Load() < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d decisions handed over after 10 s", got.Load(), n)
		}
	}
	if err := fp.SyncDecisions(); err != nil {
		t.Fatal(err)
	}
	if g := got.Load(); g != n {
		t.Errorf("%d decisions handed over, want %d", g, n)
	}
}

// TestRingWaitRead: read takes the records as the kernel lays them out (struct
// bpf_ringbuf_hdr, then the data padded to 8 bytes), skips a discarded one,
// reads one that wraps past the end of the ring (mapped twice in a row), and
// stops at one being written (busy) or at the producer's position, moving the
// consumer's position past each record read.
func TestRingWaitRead(t *testing.T) {
	const size = 64
	var cons, prod uintptr
	data := make([]byte, 2*size)
	w := &ringWait{consPos: &cons, prodPos: &prod, data: data, mask: size - 1}
	// put writes a record of n bytes of value v with header bits at position
	// pos (both mappings), and returns the next record's position.
	put := func(pos uintptr, n int, v byte, bits uint32) uintptr {
		write := func(at uintptr, b byte) {
			data[at&(size-1)] = b
			data[at&(size-1)+size] = b
		}
		hdr := uint32(n) | bits
		for i := range 4 {
			write(pos+uintptr(i), byte(hdr>>(8*i)))
		}
		for i := range n {
			write(pos+8+uintptr(i), v)
		}
		return pos + 8 + uintptr((n+7)&^7)
	}
	var buf []byte
	if _, err := w.read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("empty ring: %v, want os.ErrDeadlineExceeded", err)
	}
	// Start near the end: the third record wraps.
	cons = 24
	p := put(24, 5, 0xdd, ringDiscardBit)
	p = put(p, 3, 0xaa, 0)
	third := p
	p = put(p, 12, 0xbb, 0) // from 48: header 48-55, data 56-67 (wraps)
	prod = p
	got, err := w.read(buf)
	if err != nil || string(got) != "\xaa\xaa\xaa" {
		t.Fatalf("first read: %x %v, want the record of aa (the discarded one skipped)", got, err)
	}
	if cons != third {
		t.Errorf("consumer at %d after a record, want %d", cons, third)
	}
	got, err = w.read(got)
	if err != nil || string(got) != strings.Repeat("\xbb", 12) {
		t.Fatalf("wrapping record: %x %v, want 12 bytes of bb", got, err)
	}
	if _, err := w.read(got); !errors.Is(err, os.ErrDeadlineExceeded) || cons != prod {
		t.Fatalf("after the last record: %v, consumer %d, producer %d; want empty", err, cons, prod)
	}
	// A record being written: read waits for it (it spins), so it is
	// submitted from another goroutine.
	next := put(prod, 2, 0xcc, ringBusyBit)
	prod = next
	go func() {
		time.Sleep(10 * time.Millisecond)
		// Submitting clears the busy bit (the kernel's xchg).
		hdrAt := (next - 16) & (size - 1)
		atomic.StoreUint32((*uint32)(unsafe.Pointer(&data[hdrAt])), 2)
	}()
	got, err = w.read(got)
	if err != nil || string(got) != "\xcc\xcc" {
		t.Fatalf("busy record once submitted: %x %v, want cc cc", got, err)
	}
	// A header past what the producer published is an error, not a read
	// beyond it.
	prod = cons + 4
	if _, err := w.read(got); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("short header: %v, want an error", err)
	}
}
