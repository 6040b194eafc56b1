//go:build linux

package notify

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
)

// TestNotifyFollowsServiceOwner: when another notification service takes
// org.freedesktop.Notifications while a question is shown, the new one shows the open
// question, the old one is asked to close its notification, and the old one's signals
// no longer answer (its notification ids are another service's).
func TestNotifyFollowsServiceOwner(t *testing.T) {
	addr := sessionBus(t)
	oldConn := connect(t, addr)
	oldSrv := &server{shown: map[uint32][]string{}, notify: make(chan uint32, 16)}
	if err := oldConn.Export(oldSrv, Path, Interface); err != nil {
		t.Fatal(err)
	}
	if reply, err := oldConn.RequestName(Service, dbus.NameFlagAllowReplacement|dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
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
		done <- Run(ctx, Config{API: api.NewClient(sock), Bus: connect(t, addr), Retry: 50 * time.Millisecond, Logf: t.Logf})
	}()
	defer func() { cancel(); <-done }()

	verdict := ask(eng, "/usr/bin/curl", 443)
	var oldID uint32
	select {
	case oldID = <-oldSrv.notify:
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
	}

	// Another service replaces it.
	newConn := connect(t, addr)
	newSrv := &server{shown: map[uint32][]string{}, notify: make(chan uint32, 16), next: 100}
	if err := newConn.Export(newSrv, Path, Interface); err != nil {
		t.Fatal(err)
	}
	if reply, err := newConn.RequestName(Service, dbus.NameFlagReplaceExisting|dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName (replacing): %v %v", reply, err)
	}
	var newID uint32
	select {
	case newID = <-newSrv.notify:
	case <-time.After(10 * time.Second):
		t.Fatal("the new notification service was not shown the open question")
	}
	newSrv.mu.Lock()
	summary := newSrv.shown[newID][0]
	newSrv.mu.Unlock()
	if !strings.Contains(summary, "curl") {
		t.Errorf("the new service shows %q, want the open question", summary)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !oldSrv.isClosed(oldID) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !oldSrv.isClosed(oldID) {
		t.Error("the old service's notification was not closed")
	}

	// The old service (still on the bus, no longer the owner) cannot answer.
	if err := oldConn.Emit(Path, Interface+".ActionInvoked", oldID, "allow"); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-verdict:
		t.Fatalf("the former owner's ActionInvoked answered the question: %+v", v)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := newConn.Emit(Path, Interface+".ActionInvoked", newID, "deny"); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-verdict:
		if v.Action != engine.Deny {
			t.Errorf("verdict %+v, want the new service's deny", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the new notification service's Deny did not answer the question")
	}
}
