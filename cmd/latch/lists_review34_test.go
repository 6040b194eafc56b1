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

// review34Member runs latch as uid 65534 in group users (a member of --api-group).
func review34Member(t *testing.T, sock string, args ...string) result {
	t.Helper()
	g, err := user.LookupGroup("users")
	if err != nil {
		t.Skipf("no group users to test with: %v", err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	cmd := exec.Command(latchBin, args...)
	cmd.Env = append(os.Environ(), "LATCH_API="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{uint32(gid)}}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return result{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
}

// TestReview34ListFileReadForMember (review 34, medium): `latch lists add NAME FILE`
// has the daemon, as root (the service keeps CAP_DAC_READ_SEARCH), read FILE, and a
// bad line's error quotes the line. A member of --api-group, who is not root, so read
// the first line of any file only root may read: /etc/shadow's first line is root's
// password hash. A file the member could not read must not be read for it, and no
// error may show its contents.
func TestReview34ListFileReadForMember(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run latch as another user")
	}
	dir, err := os.MkdirTemp("", "latch-lists-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "latch.sock")
	startDaemon(t, filepath.Join(dir, "state"), sock, "--api-group", "users")
	// A file like /etc/shadow: root's, mode 0600, in a directory only root enters.
	secretDir := filepath.Join(dir, "root-only")
	os.Mkdir(secretDir, 0o700)
	secret := filepath.Join(secretDir, "shadow")
	const hash = "$y$j9T$review34salt$review34hashOfRootsPassword"
	if err := os.WriteFile(secret, []byte("root:"+hash+":19000:0:99999:7:::\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(secret); err != nil {
		t.Fatal(err)
	}
	r := review34Member(t, sock, "lists", "add", "x", secret, "--action", "deny")
	if strings.Contains(r.stdout+r.stderr, "review34") {
		t.Errorf("a member (uid 65534) learnt a root-only file's contents from `latch lists add`: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r.code == 0 {
		t.Errorf("a member loaded a file only root may read as a list:\n%s", r.stdout)
	}
}

// TestReview34ListFIFOKeepsDaemonStarting (review 34, medium-low): a list's file is
// opened and read with no check of what it is. A member of --api-group adds a list
// from a file of its own, then puts a FIFO in its place: the next `latch lists update`
// hung holding the lists' lock (and `latch lists` with it), and the next daemon start
// hung before its API came up, every connection held (fail-closed). A list file
// must be a regular file; one that is not is an error, not a wait.
func TestReview34ListFIFOKeepsDaemonStarting(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run latch as another user")
	}
	dir, err := os.MkdirTemp("", "latch-lists-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "latch.sock")
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state, sock, "--api-group", "users")
	mine := filepath.Join(dir, "member")
	os.Mkdir(mine, 0o755)
	os.Chown(mine, 65534, 65534)
	list := filepath.Join(mine, "ads.txt")
	os.WriteFile(list, []byte("ads.example.com\n"), 0o644)
	os.Chown(list, 65534, 65534)
	if r := review34Member(t, sock, "lists", "add", "ads", list, "--action", "deny"); r.code != 0 {
		t.Logf("the member may not add a list from its own file (%s): nothing to swap", strings.TrimSpace(r.stderr))
		return
	}
	// The member swaps its file for a FIFO nobody writes to.
	os.Remove(list)
	if err := syscall.Mkfifo(list, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chown(list, 65534, 65534)
	d.stop(t)
	// startDaemon fails the test if the API does not come up within 15 s.
	startDaemon(t, state, sock, "--api-group", "users")
	r := runLatch(t, []string{"LATCH_API=" + sock}, nil, "lists")
	if r.code != 0 || !strings.Contains(r.stdout, "ads") {
		t.Errorf("latch lists after the restart: %d %q %q", r.code, r.stdout, r.stderr)
	}
}
