//go:build linux

package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 256)
	n, err := c.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:n])
}

func TestNotifyPathAndAbstract(t *testing.T) {
	p := filepath.Join(t.TempDir(), "notify")
	c := listen(t, p)
	t.Setenv("NOTIFY_SOCKET", p)
	if ok, err := Notify(Ready); !ok || err != nil {
		t.Fatalf("Notify: %v %v", ok, err)
	}
	if got := recv(t, c); got != "READY=1" {
		t.Fatalf("got %q", got)
	}

	abs := "@latch-sdnotify-test-" + time.Now().Format("150405.000000000")
	ac := listen(t, "\x00"+abs[1:])
	t.Setenv("NOTIFY_SOCKET", abs)
	if ok, err := Notify(Stopping); !ok || err != nil {
		t.Fatalf("Notify abstract: %v %v", ok, err)
	}
	if got := recv(t, ac); got != "STOPPING=1" {
		t.Fatalf("got %q", got)
	}
}

func TestNotifyUnsetAndMissing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if ok, err := Notify(Ready); ok || err != nil {
		t.Fatalf("unset: %v %v", ok, err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "none"))
	if ok, err := Notify(Ready); ok || err == nil {
		t.Fatalf("missing socket: %v %v", ok, err)
	}
}
