package managed

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWatchSeesWritesRenamesAndRemovals(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := make(chan struct{}, 100)
	if err := Watch(ctx, dir, func() { calls <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	wait := func(what string) {
		t.Helper()
		select {
		case <-calls:
		case <-time.After(5 * time.Second):
			t.Fatalf("no change seen after %s", what)
		}
		// Settled: one call for a burst.
		select {
		case <-calls:
			t.Fatalf("more than one call for one burst (%s)", what)
		case <-time.After(2 * settle):
		}
	}
	for i := 0; i < 5; i++ { // a burst of writes
		os.WriteFile(filepath.Join(dir, "a.json"), []byte("{}"), 0o644)
	}
	wait("writes")
	tmp := filepath.Join(t.TempDir(), "b.json")
	os.WriteFile(tmp, []byte("{}"), 0o644)
	os.Rename(tmp, filepath.Join(dir, "b.json"))
	wait("a rename into the directory")
	os.Remove(filepath.Join(dir, "a.json"))
	wait("a removal")
	cancel()
	time.Sleep(50 * time.Millisecond)
	os.WriteFile(filepath.Join(dir, "c.json"), []byte("{}"), 0o644)
	select {
	case <-calls:
		t.Fatal("a call after the context ended")
	case <-time.After(3 * settle):
	}
	if err := Watch(context.Background(), filepath.Join(dir, "none"), func() {}); err == nil {
		t.Fatal("watching a missing directory: no error")
	}
}
