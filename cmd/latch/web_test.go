//go:build linux

package main

import (
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// freePort returns a loopback address with a port nobody listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestWebURLLogsIn: `latch web url` prints a URL that logs a browser in to the daemon's
// web UI once; without --web it says how to turn the UI on.
func TestWebURLLogsIn(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-web-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	addr := freePort(t)
	sock := filepath.Join(dir, "latch.sock")
	startDaemon(t, filepath.Join(dir, "state"), sock, "--web", addr)
	env := []string{"LATCH_API=" + sock}
	r := runLatch(t, env, nil, "web", "url")
	u := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(u, "http://"+addr+"/login?token=") {
		t.Fatalf("latch web url: %d %q %q", r.code, r.stdout, r.stderr)
	}
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `<script type="module" src="/app.js">`) {
		t.Fatalf("after login: %d %s", resp.StatusCode, body)
	}
	resp, err = c.Get("http://" + addr + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"backend":"none`) {
		t.Fatalf("status through the web UI: %d %s", resp.StatusCode, body)
	}
	// The URL works once.
	resp, err = http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("second use of the login URL: %d, want 401", resp.StatusCode)
	}

	sock2 := filepath.Join(dir, "latch2.sock")
	startDaemon(t, filepath.Join(dir, "state2"), sock2)
	r = runLatch(t, []string{"LATCH_API=" + sock2}, nil, "web", "url")
	if r.code != 1 || !strings.Contains(r.stderr, "the web UI is off: start the daemon with --web") {
		t.Errorf("latch web url without --web: %d %q", r.code, r.stderr)
	}
}

func TestWebFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--web", "0.0.0.0:7654"},
		{"--web", "198.18.0.1:7654"},
		{"--web", "198.18.0.1:7654", "--web-allow-remote"},
		{"--web", "localhost:7654"},
		{"--web-allow-remote"},
		{"--web", "127.0.0.1:7654", "--web-cert", "c.pem"},
	} {
		if _, err := parseDaemonFlags(args); err == nil {
			t.Errorf("daemon %v: accepted", args)
		}
	}
	o, err := parseDaemonFlags([]string{"--web", "198.18.0.1:7654", "--web-allow-remote", "--web-cert", "c", "--web-key", "k"})
	if err != nil || o.Web != "198.18.0.1:7654" {
		t.Errorf("remote with TLS: %+v, %v", o, err)
	}
}
