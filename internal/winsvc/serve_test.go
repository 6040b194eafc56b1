package winsvc

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeEventLog struct {
	mu      sync.Mutex
	entries []string
}

func (f *fakeEventLog) add(kind string, eid uint32, msg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, fmt.Sprintf("%s %d %s", kind, eid, msg))
	return nil
}
func (f *fakeEventLog) Info(eid uint32, msg string) error    { return f.add("info", eid, msg) }
func (f *fakeEventLog) Warning(eid uint32, msg string) error { return f.add("warning", eid, msg) }
func (f *fakeEventLog) Error(eid uint32, msg string) error   { return f.add("error", eid, msg) }

func (f *fakeEventLog) all() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.entries, "\n")
}

type states struct {
	mu sync.Mutex
	s  []svcState
}

func (s *states) report(st svcState) { s.mu.Lock(); s.s = append(s.s, st); s.mu.Unlock() }
func (s *states) get() []svcState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]svcState(nil), s.s...)
}

func TestServeStopCancelsAndWaits(t *testing.T) {
	elog := &fakeEventLog{}
	st := &states{}
	stop := make(chan struct{})
	var cleanedUp bool
	run := func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond) // removing what it installed
		cleanedUp = true
		return nil
	}
	go func() { time.Sleep(20 * time.Millisecond); close(stop) }()
	err, failed := serve("latchsvc", run, stop, st.report, elog, time.Second)
	if err != nil || failed || !cleanedUp {
		t.Fatalf("serve = %v, %v; cleaned up %v", err, failed, cleanedUp)
	}
	if got := st.get(); fmt.Sprint(got) != fmt.Sprint([]svcState{stateStartPending, stateRunning, stateStopPending}) {
		t.Fatalf("states %v", got)
	}
	if got := elog.all(); !strings.Contains(got, "info 1 latch service latchsvc starting") || !strings.Contains(got, "info 1 latch service latchsvc stopped") {
		t.Fatalf("event log:\n%s", got)
	}
}

func TestServeRunFailsOnItsOwn(t *testing.T) {
	elog := &fakeEventLog{}
	st := &states{}
	err, failed := serve("latchsvc", func(context.Context) error { return errors.New("driver port: no such port") },
		make(chan struct{}), st.report, elog, time.Second)
	if err == nil || !failed {
		t.Fatalf("serve = %v, %v; want the error and failed", err, failed)
	}
	if got := elog.all(); !strings.Contains(got, "error 3 latch service latchsvc failed: driver port: no such port") {
		t.Fatalf("event log:\n%s", got)
	}
	if got := st.get(); len(got) != 2 || got[1] != stateRunning {
		t.Fatalf("states %v", got)
	}
}

func TestServeRunEndsCleanly(t *testing.T) {
	err, failed := serve("x", func(context.Context) error { return nil }, make(chan struct{}), func(svcState) {}, nil, time.Second)
	if err != nil || failed {
		t.Fatalf("serve = %v, %v", err, failed)
	}
}

func TestServeStopTimeout(t *testing.T) {
	elog := &fakeEventLog{}
	stop := make(chan struct{})
	close(stop)
	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	err, failed := serve("latchsvc", func(context.Context) error { <-release; return nil }, stop, func(svcState) {}, elog, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not stop within 50ms") || failed {
		t.Fatalf("serve = %v, %v", err, failed)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("serve waited past the stop timeout")
	}
	if !strings.Contains(elog.all(), "error 3 latch service latchsvc stopped with an error") {
		t.Fatalf("event log:\n%s", elog.all())
	}
}

func TestEventWriter(t *testing.T) {
	elog := &fakeEventLog{}
	l := log.New(&eventWriter{elog: elog}, "", 0)
	l.Printf("windows: reconnected to the driver")
	l.Printf("windows: lost the driver's port: EOF; reconnecting")
	l.Printf("history: write failed: disk full")
	want := "info 1 windows: reconnected to the driver\n" +
		"warning 2 windows: lost the driver's port: EOF; reconnecting\n" +
		"warning 2 history: write failed: disk full"
	if got := elog.all(); got != want {
		t.Fatalf("event log:\n%s\nwant:\n%s", got, want)
	}
}
