package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/events"
	"github.com/latchfw/latch/internal/events/schemacheck"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/store"
)

// degradingBackend is a backend whose queue overflows and hold timeouts the test sets.
type degradingBackend struct{ overflows, timeouts atomic.Uint64 }

func (b *degradingBackend) Name() string { return "test" }
func (b *degradingBackend) Run(ctx context.Context, d intercept.Decider) error {
	<-ctx.Done()
	return nil
}
func (b *degradingBackend) Redecide(func(*engine.Request) bool) (int, error) { return 0, nil }
func (b *degradingBackend) Stats() intercept.Stats {
	return intercept.Stats{Backend: "test", Overflows: b.overflows.Load(), Extra: map[string]uint64{"hold_timeouts": b.timeouts.Load()}}
}

// TestObserversReportDegradation runs the daemon's observers with an events file:
// queue overflows and hold timeouts become backend.degraded events with the count
// since the last report, an unavailable attribution method is reported at start,
// questions and rule changes become events, all valid latch.event/1.
func TestObserversReportDegradation(t *testing.T) {
	dir := t.TempDir()
	eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	hist, err := store.OpenHistory(filepath.Join(dir, "h.db"), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	fb := &degradingBackend{}
	be := &platformBackend{Backend: fb, attribution: func() []string { return nil }, warnings: []string{"process attribution: ebpf unavailable: test"}}
	o := &daemonOptions{Default: engine.Deny}
	o.EventsFile, o.EventsFileMaxSize, o.EventsFileKeep, o.HostID = filepath.Join(dir, "events.jsonl"), 1<<20, 2, "test-host"
	obs, err := startObservers(o, eng, hist, be, "fail-closed", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	obs.started()
	fb.overflows.Store(3)
	fb.timeouts.Store(1)
	if _, err := eng.AddRule(engine.Rule{App: "/usr/bin/curl", Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	req := engine.Request{ID: 1, Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP, Exe: "/usr/bin/wget", UID: 0}
	eng.Decide(&req, func(v engine.Verdict) { obs.decided(&req, v) })
	time.Sleep(2500 * time.Millisecond) // one degradation check
	fb.overflows.Store(5)
	time.Sleep(2500 * time.Millisecond)
	obs.stopped(nil)
	obs.close()

	v, err := schemacheck.New(schemacheck.SchemaPath())
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(o.EventsFile)
	if err != nil {
		t.Fatal(err)
	}
	var overflows []uint64
	seen := map[string]int{}
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		if err := v.Validate(line); err != nil {
			t.Fatal(err)
		}
		var ev events.Event
		json.Unmarshal(line, &ev)
		seen[ev.Event]++
		if ev.HostID != "test-host" {
			t.Errorf("host_id %q", ev.HostID)
		}
		if b := ev.Backend; b != nil {
			seen[b.Condition]++
			if b.Condition == "queue_overflow" {
				overflows = append(overflows, b.Count)
			}
		}
	}
	if len(overflows) != 2 || overflows[0] != 3 || overflows[1] != 2 {
		t.Errorf("queue_overflow reports %v, want [3 2] (the count since the last report)", overflows)
	}
	for _, k := range []string{"attribution_unavailable", "hold_timeout", "daemon.started", "daemon.stopped", "rule.added", "question.opened"} {
		if seen[k] != 1 {
			t.Errorf("%s seen %d times, want once (all: %v)", k, seen[k], seen)
		}
	}
}
