package fastpath

import (
	"context"
	"testing"
	"time"
)

// TestCloseEndsRunQuietly: Run reads "until ctx is done or Close is called";
// Close while Run's readers wait for records ends Run without an error (as
// it did with ringbuf.Reader's ReadInto, which Close interrupts with
// os.ErrClosed), so a caller that closes the fast path first does not log a
// failure of the reader.
func TestCloseEndsRunQuietly(t *testing.T) {
	cg, _ := testCgroup(t)
	fp := openTest(t, cg, Config{})
	done := make(chan error, 1)
	go func() { done <- fp.Run(context.Background(), func(Decision) {}, func(End) {}) }()
	waitReading(t, fp)
	time.Sleep(20 * time.Millisecond) // into the wait for records
	if err := fp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still running 5 s after Close")
	}
	if err := fp.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
}
