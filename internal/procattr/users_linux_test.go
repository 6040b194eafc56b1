package procattr

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUserNameKeepsExactBytes: an account name in the password database may hold any
// byte but ':' and a line feed. The name latch reports is the exact bytes, so that its
// text output can show them escaped (and JSON as they are), never a cleaned-up name
// that could pass for another account. The lookup runs in a private mount namespace
// where a test file is bind-mounted over /etc/passwd.
func TestUserNameKeepsExactBytes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	const name = "mal\x1b[2K\rroot\u202E\u200D\xff"
	passwd := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\n"+
		name+":x:4242:4242::/nonexistent:/usr/sbin/nologin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		name string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		// This thread gets a mount namespace of its own and is never unlocked: it
		// ends with the goroutine, so no other goroutine ever runs in it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Mount(passwd, "/etc/passwd", "", unix.MS_BIND, ""); err != nil {
			done <- result{err: err}
			return
		}
		var c userCache
		done <- result{name: c.name(4242)}
	}()
	r := <-done
	if r.err != nil {
		t.Skipf("private mount namespace: %v", r.err)
	}
	if r.name != name {
		t.Errorf("uid 4242 is named %q in the password database, reported as %q", name, r.name)
	}
}
