//go:build linux

package notify

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
)

// sessionBus starts a real dbus-daemon with a session bus configuration and returns
// its address; it stops when the test ends.
func sessionBus(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		t.Skip("dbus-daemon not installed (apt-get install dbus): the notification test needs a real bus")
	}
	dir, err := os.MkdirTemp("", "latch-dbus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cmd := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address", "--address=unix:path="+filepath.Join(dir, "bus"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon: %v", err)
	}
	return strings.TrimSpace(line)
}

func connect(t *testing.T, addr string) *dbus.Conn {
	t.Helper()
	c, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// server is a small org.freedesktop.Notifications service that records what it is
// asked to show and close.
type server struct {
	mu     sync.Mutex
	next   uint32
	shown  map[uint32][]string // id -> summary, body, actions...
	closed []uint32
	notify chan uint32
}

func (s *server) GetCapabilities() ([]string, *dbus.Error) {
	return []string{"actions", "body", "body-markup"}, nil
}

func (s *server) Notify(app string, replaces uint32, icon, summary, body string, actions []string,
	hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	s.mu.Lock()
	s.next++
	id := s.next
	s.shown[id] = append([]string{summary, body}, actions...)
	s.mu.Unlock()
	s.notify <- id
	return id, nil
}

func (s *server) CloseNotification(id uint32) *dbus.Error {
	s.mu.Lock()
	s.closed = append(s.closed, id)
	s.mu.Unlock()
	return nil
}

func (s *server) GetServerInformation() (string, string, string, string, *dbus.Error) {
	return "latch-test", "latch", "1", "1.2", nil
}

func (s *server) isClosed(id uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.closed {
		if c == id {
			return true
		}
	}
	return false
}

// apiServer is a real API server on a unix socket over eng; stop ends it.
func apiServer(t *testing.T, eng *engine.Engine, sock string) (stop func()) {
	t.Helper()
	login := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"url":"http://127.0.0.1:7654/login?token=t"}`))
	})
	srv := api.NewServer(api.Config{Engine: eng, Logf: t.Logf, Routes: map[string]http.Handler{"POST /v1/web/login": login}})
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			srv.Close()
			if err := <-done; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func ask(eng *engine.Engine, exe string, port uint16) chan engine.Verdict {
	ch := make(chan engine.Verdict, 1)
	eng.Decide(&engine.Request{Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
		Local: netip.MustParseAddrPort("198.18.0.1:40000"), Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
		PID: 4242, Exe: exe, Identity: engine.IdentityVerified, User: "alice"}, func(v engine.Verdict) { ch <- v })
	return ch
}

// TestNotifications runs notify against a real session bus: a question becomes a
// notification with Allow/Deny/Open; Allow answers it; an answered question's
// notification closes; when the daemon stops and comes back, notify follows it.
func TestNotifications(t *testing.T) {
	addr := sessionBus(t)
	srvConn := connect(t, addr)
	s := &server{shown: map[uint32][]string{}, notify: make(chan uint32, 16)}
	if err := srvConn.Export(s, Path, Interface); err != nil {
		t.Fatal(err)
	}
	if reply, err := srvConn.RequestName(Service, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v %v", reply, err)
	}
	eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	dir, err := os.MkdirTemp("", "latch-notify-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "latch.sock")
	stop := apiServer(t, eng, sock)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var opened []string
	var mu sync.Mutex
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{API: api.NewClient(sock), Bus: connect(t, addr), For: "forever", Scope: "app",
			Retry: 50 * time.Millisecond, Logf: t.Logf,
			Open: func(u string) error { mu.Lock(); opened = append(opened, u); mu.Unlock(); return nil }})
	}()
	waitNotify := func() uint32 {
		t.Helper()
		select {
		case id := <-s.notify:
			return id
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
		}
		return 0
	}

	verdict := ask(eng, "/usr/bin/evil\x1b[2J<b>x", 443)
	id := waitNotify()
	s.mu.Lock()
	n := s.shown[id]
	s.mu.Unlock()
	if !strings.Contains(n[0], `evil\x1b[2J<b>x wants to connect to 198.18.0.2:443/tcp`) ||
		!strings.Contains(n[1], `/usr/bin/evil\x1b[2J&lt;b&gt;x`) || strings.Contains(n[0]+n[1], "\x1b") {
		t.Errorf("notification %q: want the program escaped (and the body's markup escaped)", n)
	}
	if a := strings.Join(n[2:], ","); a != "default,Open latch,allow,Allow,deny,Deny,open,Open" {
		t.Errorf("actions %q", a)
	}
	// Allow in the notification answers the question as configured.
	if err := srvConn.Emit(Path, Interface+".ActionInvoked", id, "allow"); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-verdict:
		if v.Action != engine.Allow || v.Reason != engine.ReasonPrompt {
			t.Errorf("verdict %+v, want allow by answer", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Allow did not answer the question")
	}
	rs := eng.Rules()
	if len(rs) != 1 || !strings.HasPrefix(rs[0].App, "/usr/bin/evil") || rs[0].Port.Lo != 0 || !rs[0].Expires.IsZero() {
		t.Errorf("rules after Allow (forever, scope app): %+v", rs)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !s.isClosed(id) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !s.isClosed(id) {
		t.Error("the answered question's notification was not closed")
	}

	// Deny denies.
	verdict = ask(eng, "/usr/bin/curl", 8443)
	id = waitNotify()
	srvConn.Emit(Path, Interface+".ActionInvoked", id, "deny")
	select {
	case v := <-verdict:
		if v.Action != engine.Deny {
			t.Errorf("verdict %+v, want deny", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Deny did not answer the question")
	}
	// The daemon stops: the notification of an open question closes.
	ask(eng, "/usr/bin/wget", 80)
	id = waitNotify()
	stop()
	deadline = time.Now().Add(5 * time.Second)
	for !s.isClosed(id) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !s.isClosed(id) {
		t.Error("notifications stayed after the daemon stopped")
	}
	// It comes back: notify reconnects and shows the questions open then.
	apiServer(t, eng, sock)
	id = waitNotify()
	s.mu.Lock()
	n = s.shown[id]
	s.mu.Unlock()
	if !strings.Contains(n[0], "wget") {
		t.Errorf("after the daemon came back: %q, want the open question", n)
	}
	// Open opens the web UI's login URL, which notify asks the daemon for.
	srvConn.Emit(Path, Interface+".ActionInvoked", id, "open")
	deadline = time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := strings.Join(opened, " ")
		mu.Unlock()
		if got == "http://127.0.0.1:7654/login?token=t" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Open opened %q, want the login URL", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Run did not return after cancel")
	}
}

// TestUnverifiedAnswersOnce: a question about a program whose identity is not
// verified says so, and its Allow/Deny answer that question only.
func TestUnverifiedAnswersOnce(t *testing.T) {
	p := &api.Prompt{ID: 1, Exe: "/usr/bin/curl", Identity: engine.IdentityUnverified, RemoteIP: "198.18.0.2", RemotePort: 443, Proto: engine.TCP}
	if _, body := Text(p); !strings.Contains(body, "NOT VERIFIED") || !onceOnly(p) {
		t.Errorf("unverified program: body %q, onceOnly %v", body, onceOnly(p))
	}
	p.Identity = engine.IdentityVerified
	if _, body := Text(p); strings.Contains(body, "NOT VERIFIED") || onceOnly(p) {
		t.Errorf("verified program: body %q, onceOnly %v", body, onceOnly(p))
	}
}
