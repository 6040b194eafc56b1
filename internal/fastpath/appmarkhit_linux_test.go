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

	"github.com/latchfw/latch/internal/engine"
)

// TestAppMarkInsideHooksKeptOnHit (review2): TestAppMarkInsideHooksKept for a
// connect the hook decides by a hit. e414b9d keeps a VPN's own fwmark
// (Mullvad's 0x6d6f6c65, MarkFastFlow under the mask) on a connect that
// misses, but a hit's set_mark at TCP_CONNECT_CB puts MarkFastAllow in its
// place (0x3d6f6c65) and the route is looked up again with it: the SYN
// leaves without the VPN's mark and the VPN's kill switch (here an nft rule
// that drops the port's packets without the mark) drops it, so the connect
// that went through while the queue decided it (a miss) times out once the
// verdict is cached. Once established the socket would have MarkFastFlow,
// the VPN's value again, so its mark alone shows nothing: the connect's
// outcome does. decide makes no hit for a socket whose mark under the mask is
// MarkFastFlow's or MarkFastRedecide's value (the queue decides its connect,
// and the mark stays); on e414b9d the connect timed out.
func TestAppMarkInsideHooksKeptOnHit(t *testing.T) {
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
	// connect makes a socket in the hooks' cgroup with the VPN's mark and
	// connects it to dst from there (the hook identifies the connecting
	// task), then moves back.
	connect := func() (int, error) {
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := os.WriteFile(filepath.Join(ownDir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
				t.Fatal(err)
			}
		}()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, vpnMark); err != nil {
			t.Fatal(err)
		}
		tv := unix.NsecToTimeval(int64(2 * time.Second))
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		err = unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		m, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		return m, err
	}
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal {
		t.Skipf("no sock_ops program: %+v", s)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	// A miss (no verdict yet): the mark is kept, the connect goes through.
	if m, err := connect(); err != nil || m != vpnMark {
		t.Fatalf("a miss: connect %v with mark %#x: mark %#x, %v", dst, vpnMark, m, err)
	}
	exe, _ := os.Executable()
	r := &engine.Request{Direction: engine.Outbound, Protocol: engine.TCP, Remote: dst, PID: int32(os.Getpid()), Exe: exe, UID: int32(os.Getuid()), Identity: engine.IdentityVerified}
	if ok, err := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember allow %v: %v %v", dst, ok, err)
	}
	before := fp.Stats()
	m, err := connect()
	after := fp.Stats()
	if after.Misses != before.Misses+1 {
		t.Errorf("the hook did not count the connect with the VPN's mark as a miss (hits %d -> %d, misses %d -> %d): a hit's mark replaces the VPN's", before.HitsAllow, after.HitsAllow, before.Misses, after.Misses)
	}
	if err != nil || m != vpnMark {
		t.Errorf("a process the hooks serve connects %v with its own mark %#x (a verdict cached for it): %v (mark %#x); want it through with the VPN's mark, as the miss before", dst, vpnMark, err, m)
	}
}
