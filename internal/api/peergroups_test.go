//go:build linux

package api

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestPeerGroupsMany: a member of the API group by its supplementary groups is
// admitted however many groups it has (SO_PEERGROUPS grows its buffer on ERANGE: the
// group here is the last of 300), and a non-member with as many groups is not.
func TestPeerGroupsMany(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other users")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("needs curl")
	}
	const gid = 42435
	dir, err := os.MkdirTemp("", "latch-api-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "latch.sock")
	eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	srv := NewServer(Config{Engine: eng, Group: &Group{Name: "latchtest", GID: gid}, Logf: t.Logf,
		Status: func() Status { return Status{Backend: "test"} }})
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o666)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-done; err != http.ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	}()
	status := func(groups []uint32) string {
		t.Helper()
		cmd := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--unix-socket", sock, "http://latch/v1/status")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: groups}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl as uid 65534 with %d groups: %v", len(groups), err)
		}
		return strings.TrimSpace(string(out))
	}
	many := make([]uint32, 0, 300)
	for i := range 299 {
		many = append(many, uint32(50000+i))
	}
	if got := status(many); got != "403" {
		t.Errorf("a non-member with 299 groups: %s, want 403", got)
	}
	if got := status(append(many, gid)); got != "200" {
		t.Errorf("a member by its 300th supplementary group: %s, want 200", got)
	}
	if got := status([]uint32{gid}); got != "200" {
		t.Errorf("a member by its only supplementary group: %s, want 200", got)
	}
}
