//go:build linux

package notify

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
)

// TestNotifyGapRelists: when the daemon's event stream says it lost events ("gap": this
// client was too slow), notify lists the open questions again: a question whose
// "prompt" event was lost is shown, and the notification of one whose "answered" event
// was lost is closed.
func TestNotifyGapRelists(t *testing.T) {
	addr := sessionBus(t)
	srvConn := connect(t, addr)
	s := &server{shown: map[uint32][]string{}, notify: make(chan uint32, 16)}
	if err := srvConn.Export(s, Path, Interface); err != nil {
		t.Fatal(err)
	}
	if reply, err := srvConn.RequestName(Service, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v %v", reply, err)
	}
	// A daemon's API that says hello, lists questions, and sends a gap when told.
	var mu sync.Mutex
	prompt := func(id engine.PromptID, exe string) api.Prompt {
		return api.Prompt{ID: id, Exe: exe, Identity: engine.IdentityVerified, RemoteIP: "198.18.0.2", RemotePort: 443,
			Proto: engine.TCP, Expires: time.Now().Add(time.Minute)}
	}
	open := []api.Prompt{prompt(1, "/usr/bin/curl")}
	gap := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/prompts", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"prompts": open})
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		enc := json.NewEncoder(w)
		enc.Encode(api.Event{Kind: api.EventHello})
		w.(http.Flusher).Flush()
		select {
		case <-gap:
			enc.Encode(api.Event{Kind: api.EventGap})
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
		<-r.Context().Done()
	})
	dir, err := os.MkdirTemp("", "latch-notify-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "latch.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(l)
	defer hs.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{API: api.NewClient(sock), Bus: connect(t, addr), Retry: 50 * time.Millisecond, Logf: t.Logf})
	}()
	defer func() { cancel(); <-done }()
	wait := func(what string) uint32 {
		t.Helper()
		select {
		case id := <-s.notify:
			return id
		case <-time.After(10 * time.Second):
			t.Fatalf("no notification for %s", what)
		}
		return 0
	}
	first := wait("the question open at hello")

	// Question 1 is answered and question 2 opened, and the stream lost both events.
	mu.Lock()
	open = []api.Prompt{prompt(2, "/usr/bin/wget")}
	mu.Unlock()
	close(gap)
	second := wait("the question whose event was lost")
	s.mu.Lock()
	summary := s.shown[second][0]
	s.mu.Unlock()
	if !strings.Contains(summary, "wget") {
		t.Errorf("after the gap: %q, want question 2", summary)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !s.isClosed(first) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !s.isClosed(first) {
		t.Error("after the gap the notification of the question no longer open stayed")
	}
}
