package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Review 42, finding 4 (informational: the file is root's): hostsViaResolve reads
// /etc/nsswitch.conf with os.ReadFile, which blocks for ever on a FIFO (and reads a
// huge file whole); it runs from the blocklist manager's OnApply with the manager's
// lock held, at daemon start, so the daemon would hang starting. A bounded, regular-
// file-only read would not. Fails on the current code (after 2 s).
func TestReview42NsswitchFIFONoHang(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nsswitch.conf")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan string, 1)
	go func() { done <- sharedNamesWarning([]string{"ads"}, false, p) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Error("sharedNamesWarning still reading a FIFO at the nsswitch.conf path after 2 s (daemon start would hang with the lists' lock held)")
		// Unblock the reader: a writer that closes gives it EOF.
		if f, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
	}
}

// Review 42, finding 5 (low: a warning missed): glibc lets an action follow a
// service with no space ("resolve[!UNAVAIL=return]": a service name ends at a space
// or '[', nss_parse_service_list); hostsViaResolve splits on spaces only, so the
// hosts line "files resolve[!UNAVAIL=return] dns" is not seen to use nss-resolve and
// the daemon does not warn that its hostname lists match by address only. Fails on
// the current code.
func TestReview42NsswitchResolveWithAttachedAction(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nsswitch.conf")
	if err := os.WriteFile(p, []byte("hosts: files myhostname resolve[!UNAVAIL=return] dns\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if w := sharedNamesWarning([]string{"ads"}, false, p); w == "" {
		t.Error("no warning for hosts: ... resolve[!UNAVAIL=return] ... (nss-resolve in use)")
	}
}
