//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// memberLatch runs latch as uid 65534 in group users, with a deadline (a command that
// waits on a FIFO fails the test instead of hanging it).
func memberLatch(t *testing.T, sock string, args ...string) result {
	t.Helper()
	g, err := user.LookupGroup("users")
	if err != nil {
		t.Skipf("no group users to test with: %v", err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, latchBin, args...)
	cmd.Env = append(os.Environ(), "LATCH_API="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{uint32(gid)}}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("latch %v as uid 65534 did not return within 15 s", args)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return result{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
}

// TestListsUpdateReadsAsTheCaller (review 34): `latch lists update` reads each list's
// file with the rights of whoever runs it, not the daemon's. A member's update of a
// list root added from a file only root may read fails, naming the file, and changes
// no list; a list file a member swapped for a FIFO is an error at once (it hung the
// update, under the lists' lock); root's update of the same works once the file is
// back.
func TestListsUpdateReadsAsTheCaller(t *testing.T) {
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
	env := []string{"LATCH_API=" + sock}
	rootDir := filepath.Join(dir, "root-only")
	os.Mkdir(rootDir, 0o700)
	rootList := filepath.Join(rootDir, "corp.txt")
	os.WriteFile(rootList, []byte("corp-secret-review34.example\n"), 0o600)
	if r := runLatch(t, env, nil, "lists", "add", "corp", rootList, "--action", "deny"); r.code != 0 {
		t.Fatalf("root's lists add: %d %s%s", r.code, r.stdout, r.stderr)
	}
	// The member's own list, then a FIFO in its place.
	mine := filepath.Join(dir, "member")
	os.Mkdir(mine, 0o755)
	os.Chown(mine, 65534, 65534)
	list := filepath.Join(mine, "ads.txt")
	os.WriteFile(list, []byte("ads.example\n"), 0o644)
	os.Chown(list, 65534, 65534)
	if r := memberLatch(t, sock, "lists", "add", "ads", list, "--action", "deny"); r.code != 0 {
		t.Fatalf("member's lists add of its own file: %d %s%s", r.code, r.stdout, r.stderr)
	}
	r := memberLatch(t, sock, "lists", "update")
	if r.code == 0 || !strings.Contains(r.stderr, rootList) || !strings.Contains(r.stderr, "permission denied") || strings.Contains(r.stdout+r.stderr, "review34") {
		t.Errorf("member's update of root's list: %d %s%s; want an error naming the file", r.code, r.stdout, r.stderr)
	}
	os.Remove(list)
	if err := syscall.Mkfifo(list, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chown(list, 65534, 65534)
	os.WriteFile(rootList, []byte("a.example\nb.example\n"), 0o600)
	r = runLatch(t, env, nil, "lists", "update")
	if r.code == 0 || !strings.Contains(r.stderr, "FIFO") {
		t.Errorf("update with a FIFO for a list: %d %s%s; want an error saying so", r.code, r.stdout, r.stderr)
	}
	// Nothing changed, and the lists answer.
	r = runLatch(t, env, nil, "lists", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"domains":1`) || strings.Contains(r.stdout, `"domains":2`) {
		t.Errorf("lists after refused updates: %d %s%s", r.code, r.stdout, r.stderr)
	}
	os.Remove(list)
	os.WriteFile(list, []byte("ads.example\nads2.example\n"), 0o644)
	r = runLatch(t, env, nil, "lists", "update")
	if r.code != 0 || strings.Count(r.stdout, " 2 ") < 2 {
		t.Errorf("root's update: %d %s%s; want both lists with 2 domains", r.code, r.stdout, r.stderr)
	}
}
