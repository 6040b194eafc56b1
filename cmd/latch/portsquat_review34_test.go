//go:build linux

package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReview34PortSquatKeepsDeciding (review 34, medium): the web UI's and the
// metrics' ports (7654, 9184 in the examples) are above 1024, so any local user may
// bind them while no daemon holds them: at boot, or in the second between a daemon's
// stop and the next start (an upgrade, `systemctl restart latch`, a crash with
// Restart=on-failure). A daemon whose --web or --metrics address was taken exited at
// start: latch.service then failed again every second while the user held the port,
// with the last daemon's kernel rules in force (--keep-rules-on-exit): with --fail
// closed no new connection of anyone passed, with --fail open every one passed
// undecided. A taken web or metrics port must not keep the daemon from deciding
// (serve without it and say so, retrying; and not hand out login URLs for a UI that
// someone else's program answers).
func TestReview34PortSquatKeepsDeciding(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind as nobody")
	}
	perl, err := exec.LookPath("perl")
	if err != nil {
		t.Skip("needs perl")
	}
	for _, flag := range []string{"--web", "--metrics"} {
		t.Run(strings.TrimPrefix(flag, "--"), func(t *testing.T) {
			addr := freePort(t)
			host, port, _ := strings.Cut(addr, ":")
			// Another local user (nobody) listens on the address first.
			squat := exec.Command(perl, "-MIO::Socket::INET", "-e",
				`my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], LocalPort => $ARGV[1], Listen => 5) or die "bind: $!"; $| = 1; print "ok\n"; sleep 60;`,
				host, port)
			squat.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
			out, _ := squat.StdoutPipe()
			squat.Stderr = os.Stderr
			if err := squat.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { squat.Process.Kill(); squat.Wait() }()
			if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ok\n" {
				t.Fatalf("nobody could not listen on %s: %q %v", addr, line, err)
			}
			dir, err := os.MkdirTemp("", "latch-squat-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			sock := filepath.Join(dir, "latch.sock")
			// startDaemon fails the test if the daemon exits or its API does
			// not come up.
			startDaemon(t, filepath.Join(dir, "state"), sock, flag, addr)
			r := runLatch(t, []string{"LATCH_API=" + sock}, nil, "status")
			if r.code != 0 {
				t.Errorf("latch status with %s %s taken by another user: %d %s", flag, addr, r.code, r.stderr)
			}
			if flag == "--web" {
				if r := runLatch(t, []string{"LATCH_API=" + sock}, nil, "web", "url"); r.code == 0 {
					t.Errorf("latch web url handed out a login URL for %s, where nobody's program listens: %s", addr, r.stdout)
				}
			}
		})
	}
}
