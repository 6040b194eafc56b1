//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReview34UnauthenticatedConnsKeepAPI (review 34, medium): the web UI's and the
// metrics' TCP ports answer anyone on this host before any login (a local user needs
// no token to connect), and their servers had no bound on connections and no idle
// timeout: a client that sends one request and keeps the connection held one of the
// daemon's file descriptors for as long as it liked. A local user holding enough of
// them used up the daemon's descriptors; root's API socket then stopped accepting
// (`latch status`, `latch mode block-all` hang), rules could not be saved and /proc
// could not be opened to attribute connections. The daemon must keep answering root
// while an unauthenticated client keeps reconnecting.
func TestReview34UnauthenticatedConnsKeepAPI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to lower the daemon's descriptor limit")
	}
	const (
		limit = 512  // the daemon's RLIMIT_NOFILE in this test
		held  = 700  // connections the client keeps open at once
		dials = 8000 // bound on the client's connects in all
	)
	for _, tc := range []struct{ name, flag string }{
		{"web", "--web"},
		{"metrics", "--metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "latch-flood-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			addr := freePort(t)
			sock := filepath.Join(dir, "latch.sock")
			d := startDaemon(t, filepath.Join(dir, "state"), sock, tc.flag, addr)
			pid := d.cmd.Process.Pid
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
				t.Fatalf("prlimit on the daemon: %v", err)
			}

			// The client: no token, no session; it sends one request (answered
			// 401 or 404) and keeps the connection, and connects again whenever
			// the daemon closes one.
			ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
			var (
				mu    sync.Mutex
				conns = map[net.Conn]bool{}
				n     atomic.Int64
				wg    sync.WaitGroup
			)
			req := fmt.Sprintf("GET /metricsx HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
			for range held {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil && n.Add(1) <= dials {
						c, err := net.DialTimeout("tcp", addr, 2*time.Second)
						if err != nil {
							time.Sleep(50 * time.Millisecond)
							continue
						}
						mu.Lock()
						conns[c] = true
						mu.Unlock()
						c.Write([]byte(req))
						io.Copy(io.Discard, c) // until the daemon closes it
						mu.Lock()
						delete(conns, c)
						mu.Unlock()
						c.Close()
					}
				}()
			}
			stop := func() {
				cancel()
				mu.Lock()
				for c := range conns {
					c.Close()
				}
				mu.Unlock()
				wg.Wait()
			}
			defer stop()
			time.Sleep(3 * time.Second)
			fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			mu.Lock()
			open := len(conns)
			mu.Unlock()
			t.Logf("client holds %d connections (%d connects); the daemon has %d of %d descriptors open", open, n.Load(), len(fds), limit)

			sctx, scancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer scancel()
			cmd := exec.CommandContext(sctx, latchBin, "status")
			cmd.Env = append(os.Environ(), "LATCH_API="+sock)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("root's `latch status` while an unauthenticated client holds %s connections: %v (%v)\n%s",
					tc.name, err, sctx.Err(), out)
			}
		})
	}
}
