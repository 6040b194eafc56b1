//go:build linux

package main

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
)

// TestWatchGapRelists: when the event stream says it lost events ("gap"), `latch watch`
// lists the open questions at once, not at its next periodic refresh (2 s later).
func TestWatchGapRelists(t *testing.T) {
	listed := make(chan time.Time, 100)
	gap := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/prompts", func(w http.ResponseWriter, r *http.Request) {
		listed <- time.Now()
		json.NewEncoder(w).Encode(map[string]any{"prompts": []api.Prompt{}})
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
	dir := t.TempDir()
	sock := filepath.Join(dir, "latch.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(l)
	defer hs.Close()

	cmd := exec.Command(latchBin, "watch")
	cmd.Env = append(os.Environ(), "LATCH_API="+sock)
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Right after a listing (the first, or a periodic one), the stream says it lost
	// events: the next listing comes at once.
	var last time.Time
	select {
	case last = <-listed:
	case <-time.After(10 * time.Second):
		t.Fatal("watch never listed the questions")
	}
	close(gap)
	select {
	case at := <-listed:
		if d := at.Sub(last); d > time.Second {
			t.Errorf("watch listed the questions %v after the gap's listing before, not at once", d.Round(time.Millisecond))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not list the questions after the gap")
	}
}
