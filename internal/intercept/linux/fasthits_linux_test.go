package linux

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/cgroup2"
)

// fastHits makes a test's fast connects real ones: the test daemon's connect
// hooks (the kernel fast path, internal/fastpath) serve a cgroup the test made,
// the daemon stores an allow (rule 1) for this test process to each of the
// test's remotes through the fast path's own API (Remember, as the daemon does
// once a rule decided a connect), and dial connects from a socket made in that
// cgroup: the connect hook decides it and marks it MarkFastAllow, the sock_ops
// program MarkFastFlow once established, as any fast connect. A socket marked by
// hand instead is no fast connect: the sock_ops program takes a MarkFastAllow no
// connect hook of its daemon gave off as the SYN is built.
type fastHits struct {
	root string // the cgroup2 hierarchy's root, as this process sees it
	dir  string // the hooks' cgroup
	env  []string
}

// fastCgroups numbers the cgroups of newFastHits.
var fastCgroups atomic.Int32

// newFastHits makes the cgroup (removed when the test ends) and returns the
// daemon's environment for it and the allows (fastHits.env: pass it to
// startDaemon with LATCH_TEST_NOTRACK, which opens the fast path). remotes are
// "ADDR:PORT" (IPv6 in brackets).
func newFastHits(t *testing.T, remotes ...string) *fastHits {
	t.Helper()
	root, err := cgroup2.Find()
	if err != nil {
		t.Skip(err)
	}
	rel := fmt.Sprintf("latch-lt-fast-%d-%d", os.Getpid(), fastCgroups.Add(1))
	dir := filepath.Join(root, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s not removed", dir)
	})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &fastHits{root: root, dir: dir, env: []string{
		"LATCH_TEST_FAST_CGROUP=" + rel,
		fmt.Sprintf("LATCH_TEST_FAST_ALLOW=%d %s %d %s", os.Getpid(), exe, os.Getuid(), strings.Join(remotes, ",")),
	}}
}

// ownCgroup returns this process's cgroup v2 directory.
func (h *fastHits) ownCgroup() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join(h.root, p), nil
		}
	}
	return "", errors.New("/proc/self/cgroup has no cgroup v2 line")
}

// moveTo moves this process (cgroup v2 moves every thread) into cgroup dir.
func moveTo(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fmt.Errorf("move the test process into cgroup %s: %w", dir, err)
	}
	return nil
}

// dial connects from ns A to addr:port as a fast connect (see fastHits), from
// a socket with an application's own SO_MARK bits appBits (outside MarkMask).
// The socket is made while this process is in the hooks' cgroup (a socket's
// cgroup is its maker's, for good), which is why this package's tests must not
// run in parallel. That the connect hook decided it: hitFor.
func (h *fastHits) dial(t *testing.T, tp *topo, addr string, port int, appBits uint32) (net.Conn, error) {
	t.Helper()
	own, err := h.ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	if err := moveTo(h.dir); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	err = inNS(tp.a, func() error {
		d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			if appBits == 0 {
				return nil
			}
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(appBits))
			})
			return errors.Join(err, serr)
		}}
		var err error
		c, err = d.Dial("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		return err
	})
	if merr := moveTo(own); merr != nil {
		t.Fatal(merr)
	}
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// hitFor counts the daemon's lines in lines saying the kernel fast path
// allowed c's connect.
func hitFor(lines []string, c net.Conn) int {
	n := 0
	want := " " + c.LocalAddr().String() + " " + c.RemoteAddr().String() + " rule=1"
	for _, l := range lines {
		if strings.HasPrefix(l, "fast-hit allow ") && strings.Contains(l, want) {
			n++
		}
	}
	return n
}
