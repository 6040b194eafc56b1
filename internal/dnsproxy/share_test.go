package dnsproxy

import (
	"testing"
	"time"
)

// TestUserShares: a user holds at most perUserInflight exchanges through acquire, a
// query over it waits until one of that user's ends (not another user's), at most
// perUserWaiting wait, and a wait ends after its timeout.
func TestUserShares(t *testing.T) {
	s := newUserShares()
	for range perUserInflight {
		if !s.acquire(1000, time.Second) {
			t.Fatal("acquire under the share failed")
		}
	}
	if !s.acquire(1001, 0) {
		t.Fatal("another user's acquire failed while the first holds its share")
	}
	start := time.Now()
	if s.acquire(1000, 50*time.Millisecond) || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("acquire over the share: got a share, or gave up after %v", time.Since(start))
	}
	got := make(chan bool, perUserWaiting+1)
	for range perUserWaiting {
		go func() { got <- s.acquire(1000, 5*time.Second) }()
	}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		n := s.waiting[1000]
		s.mu.Unlock()
		if n == perUserWaiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d queries wait, want %d", n, perUserWaiting)
		}
	}
	if s.acquire(1000, time.Second) {
		t.Fatal("a query over the waiting bound got a share")
	}
	s.release(1001) // another user's: frees nothing for 1000
	select {
	case ok := <-got:
		t.Fatalf("a waiting query ended (%v) when another user's exchange did", ok)
	case <-time.After(50 * time.Millisecond):
	}
	s.release(1000)
	if ok := <-got; !ok {
		t.Fatal("a waiting query did not get the share its user freed")
	}
	for range perUserWaiting - 1 {
		s.release(1000)
		if ok := <-got; !ok {
			t.Fatal("a waiting query did not get the share its user freed")
		}
	}
}
