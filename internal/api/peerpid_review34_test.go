//go:build linux

package api

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// connectThenExit connects to the API socket as uid 65534 with no supplementary group,
// then the connecting process exits while a child it forked keeps the connection.
// Written to, the child sends GET /v1/status and copies the reply to its stdout.
const connectThenExit = `
use Socket;
socket(S, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
connect(S, pack_sockaddr_un($ARGV[0])) or die "connect: $!";
$| = 1;
my $child = fork();
die "fork: $!" unless defined $child;
if ($child) { print "$$\n"; exit 0; }
my $go = <STDIN>;
syswrite(S, "GET /v1/status HTTP/1.0\r\n\r\n");
my $buf;
while (sysread(S, $buf, 4096)) { print $buf; }
`

// TestReview34PeerGroupsOfRecycledPid (review 34, low: defence in depth behind the
// socket's file mode): the server took the peer's supplementary groups from
// /proc/PID/status at accept, PID being the number SO_PEERCRED gave at connect. A
// process that connects and exits leaves that number free while its connection lives
// on (a child or a process it passed the descriptor to keeps it); once a process of
// a member of --api-group gets the number, the connection was admitted as a member.
// The groups must be those the peer had when it connected (SO_PEERGROUPS), not those
// of whoever has its number now.
func TestReview34PeerGroupsOfRecycledPid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other users and to choose the next pid")
	}
	perl, err := exec.LookPath("perl")
	if err != nil {
		t.Skip("needs perl")
	}
	const gid = 42434 // the --api-group of this test
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
	// The socket's mode is opened (as TestAPIGroup does): the peer check must hold
	// by itself.
	os.Chmod(sock, 0o666)

	// The non-member connects before the server accepts, and its connecting
	// process exits.
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	defer inW.Close()
	defer outR.Close()
	cmd := exec.Command(perl, "-e", connectThenExit, sock)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	out := bufio.NewReader(outR)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatalf("the client did not connect: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	cmd.Wait() // the connecting process is gone; its number is free

	// A process of a member (by a supplementary group) gets that number.
	var member *exec.Cmd
	for try := 0; try < 200 && member == nil; try++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot choose the next pid: %v", err)
		}
		c := exec.Command("sleep", "30")
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{gid}}}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		if c.Process.Pid == pid {
			member = c
			break
		}
		c.Process.Kill()
		c.Wait()
	}
	if member == nil {
		t.Skipf("pid %d was not given to the member's process in 200 tries (a busy machine)", pid)
	}
	defer func() { member.Process.Kill(); member.Wait() }()

	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-done; err != http.ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	}()
	inW.Write([]byte("go\n"))
	outR.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, _ := io.ReadAll(out)
	status, _, _ := strings.Cut(string(reply), "\r\n")
	if !strings.Contains(status, "403") {
		t.Errorf("a non-member whose connecting process's number went to a member's process: %q, want 403\n%s", status, reply)
	}
}
