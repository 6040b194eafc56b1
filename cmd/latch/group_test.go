//go:build linux

package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestAPIGroup: with --api-group, an unprivileged user in that group (by its group or a
// supplementary one) may use the API; a user outside it is still refused, even when
// the socket's file mode would let it connect.
func TestAPIGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run latch as another user")
	}
	g, err := user.LookupGroup("users")
	if err != nil {
		t.Skipf("no group users to test with: %v", err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	dir, err := os.MkdirTemp("", "latch-group-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "latch.sock")
	startDaemon(t, filepath.Join(dir, "state"), sock, "--api-group", "users")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || int(st.Gid) != gid || st.Uid != 0 {
		t.Errorf("socket mode %v owner %d:%d, want 0660 root:%d", fi.Mode().Perm(), st.Uid, st.Gid, gid)
	}
	as := func(cred *syscall.Credential, args ...string) result {
		cmd := exec.Command(latchBin, args...)
		cmd.Env = append(os.Environ(), "LATCH_API="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return result{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
	}
	// A member by a supplementary group, and one by its own group: both may.
	for _, cred := range []*syscall.Credential{
		{Uid: 65534, Gid: 65534, Groups: []uint32{uint32(gid)}},
		{Uid: 65534, Gid: uint32(gid), Groups: []uint32{}},
	} {
		if r := as(cred, "rules", "add", "--app", "/usr/bin/curl", "--port", "443", "--action", "allow"); r.code != 0 {
			t.Errorf("member %+v: rules add: exit %d, %q", cred, r.code, r.stderr)
		}
	}
	// Not a member: the socket's mode refuses; with the mode opened, the peer check.
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}
	if r := as(nobody, "rules", "list"); r.code != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("non-member: exit %d, %q", r.code, r.stderr)
	}
	os.Chmod(sock, 0o666)
	r := as(nobody, "rules", "add", "--action", "deny")
	if r.code != 1 || !strings.Contains(r.stderr, "latch API: permission denied: uid 65534 is not root and not in group users") {
		t.Errorf("non-member through an open socket: exit %d, %q", r.code, r.stderr)
	}
	out := runLatch(t, []string{"LATCH_API=" + sock}, nil, "rules", "list", "--json")
	if n := strings.Count(out.stdout, "\n"); n != 2 {
		t.Errorf("rules after two members and one refused non-member added: %d\n%s", n, out.stdout)
	}
}
