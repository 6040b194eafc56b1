package fastpath

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAppMarkInsideHooksKept (review1): TestAppMarkOutsideHooksKept for a
// process the connect hooks serve, which is every process by default
// (--fast-path-cgroup is the root): a VPN's daemon that gives its own sockets
// its fwmark (Mullvad's 0x6d6f6c65, MarkFastFlow under the mask) to leave the
// tunnel connects a destination no verdict of the fast path covers. The hook
// makes no hit, so nothing of the fast path is on the socket, yet decide's
// set_mark(ctx, sk, 0) takes the MarkFastFlow-valued bits off (it clears
// MarkFastFlow and MarkFastRedecide as well as the marks that decide a SYN),
// the SYN leaves without the VPN's mark and the VPN's kill switch drops it.
// Fails on the current code: decide should clear only MarkFastAllow and
// MarkReject (what send_pending clears), or the others only on a socket whose
// storage says this fast path gave them.
func TestAppMarkInsideHooksKept(t *testing.T) {
	ownNetns(t)
	cg, _ := testCgroup(t)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	nft := exec.Command("nft", "-f", "-")
	nft.Stdin = strings.NewReader(fmt.Sprintf("table inet vpn { chain out { type filter hook output priority 0; tcp dport %d meta mark != %#x drop\n}\n}\n", dst.Port(), vpnMark))
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	ownDir := ""
	for _, l := range strings.Split(string(own), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			ownDir = filepath.Join(filepath.Dir(cg), p)
		}
	}
	if ownDir == "" {
		t.Skipf("no cgroup v2 line in /proc/self/cgroup: %s", own)
	}
	// socket makes a socket in the hooks' cgroup (a socket's cgroup is its
	// maker's, for good), with the VPN's mark.
	socket := func() int {
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if merr := os.WriteFile(filepath.Join(ownDir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); merr != nil {
			t.Fatal(merr)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, vpnMark); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	connect := func() (int, error) {
		fd := socket()
		defer unix.Close(fd)
		tv := unix.NsecToTimeval(int64(3 * time.Second))
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		m, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		return m, err
	}
	if m, err := connect(); err != nil || m != vpnMark {
		t.Fatalf("without the fast path: connect %v with mark %#x: mark %#x, %v", dst, vpnMark, m, err)
	}
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal {
		t.Skipf("no sock_ops program: %+v", s)
	}
	m, err := connect()
	if err != nil || m != vpnMark {
		t.Errorf("a process the hooks serve connects %v with its own mark %#x (no fast-path verdict for it): mark %#x once connected, %v; want the mark kept and the connect through", dst, vpnMark, m, err)
	}
}
