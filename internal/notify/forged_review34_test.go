//go:build linux

package notify

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
)

// TestReview34ForgedActionInvokedIgnored (review 34, medium-low): ActionInvoked is a
// broadcast signal any client of the session bus may emit, naming any sender path it
// likes; notify took it from whoever sent it, not only from the owner of
// org.freedesktop.Notifications. A client of the bus that may not use the API (a
// sandboxed app given the session bus but not /run/latch, e.g. a Flatpak with
// --socket=session-bus) could so answer Allow to any question shown, its own
// included, with notify's --for and --scope (a rule, "forever" if so configured).
// Notification ids are small consecutive numbers. Only the notification service's
// own signals may answer.
func TestReview34ForgedActionInvokedIgnored(t *testing.T) {
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
	apiServer(t, eng, sock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{API: api.NewClient(sock), Bus: connect(t, addr), For: "forever", Scope: "app",
			Retry: 50 * time.Millisecond, Logf: t.Logf})
	}()
	defer func() { cancel(); <-done }()

	verdict := ask(eng, "/usr/bin/curl", 443)
	var id uint32
	select {
	case id = <-s.notify:
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
	}
	// Another client of the bus (not the notification service) forges the signal.
	forger := connect(t, addr)
	if err := forger.Emit(Path, Interface+".ActionInvoked", id, "allow"); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-verdict:
		t.Fatalf("a forged ActionInvoked from %s (the service is %s) answered the question: %+v; rules now %+v",
			forger.Names()[0], srvConn.Names()[0], v, eng.Rules())
	case <-time.After(1500 * time.Millisecond):
	}
	// The service's own signal still answers (the id was right).
	if err := srvConn.Emit(Path, Interface+".ActionInvoked", id, "deny"); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-verdict:
		if v.Action != engine.Deny {
			t.Errorf("verdict %+v, want the service's deny", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the notification service's Deny did not answer the question")
	}
}
