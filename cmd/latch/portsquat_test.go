//go:build linux

package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/api"
)

// TestWebPortTakenThenFreed: while another program holds the --web and --metrics
// addresses the daemon runs, `latch status` says both are down and why (text and
// JSON), and `latch web url` says so instead of printing a URL; once the addresses
// are free the daemon binds them by itself and `latch web url` works.
func TestWebPortTakenThenFreed(t *testing.T) {
	web, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	met, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer met.Close()
	dir, err := os.MkdirTemp("", "latch-squat-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "latch.sock")
	webAddr, metAddr := web.Addr().String(), met.Addr().String()
	startDaemon(t, filepath.Join(dir, "state"), sock, "--web", webAddr, "--metrics", metAddr)
	env := []string{"LATCH_API=" + sock}

	r := runLatch(t, env, nil, "status")
	for _, want := range []string{"web UI", "metrics", "DOWN since", "address already in use"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("latch status while the addresses are taken: want %q in:\n%s%s", want, r.stdout, r.stderr)
		}
	}
	r = runLatch(t, env, nil, "status", "--json")
	var st api.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("latch status --json: %v\n%s", err, r.stdout)
	}
	if st.Web == nil || st.Web.Up || st.Web.Addr != webAddr || !strings.Contains(st.Web.Error, "address already in use") ||
		st.Metrics == nil || st.Metrics.Up || !strings.Contains(st.Metrics.Error, "address already in use") {
		t.Errorf("status --json web %+v, metrics %+v: want both down with the bind's error", st.Web, st.Metrics)
	}
	r = runLatch(t, env, nil, "web", "url")
	if r.code == 0 || strings.Contains(r.stdout, "token=") || !strings.Contains(r.stderr, "the web UI is down") {
		t.Errorf("latch web url while the address is taken: %d %q %q", r.code, r.stdout, r.stderr)
	}

	web.Close()
	met.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r = runLatch(t, env, nil, "web", "url")
		if r.code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("latch web url 15s after the address was freed: %d %q", r.code, r.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if u := strings.TrimSpace(r.stdout); !strings.HasPrefix(u, "http://"+webAddr+"/login?token=") {
		t.Errorf("latch web url once bound: %q", u)
	}
	for time.Now().Before(deadline) {
		if r = runLatch(t, env, nil, "status"); !strings.Contains(r.stdout, "DOWN") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(r.stdout, "up at "+webAddr) || !strings.Contains(r.stdout, "up at "+metAddr) {
		t.Errorf("latch status once both are bound:\n%s", r.stdout)
	}
}
