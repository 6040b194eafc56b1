package fastpath

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// vpnMark is a VPN's fwmark whose bits under the fast path's mask
// (0x70000000) are MarkFastFlow's value: Mullvad's 0x6d6f6c65 ("mole"),
// which its daemon gives the sockets that must bypass its tunnel.
const vpnMark = 0x6d6f6c65

// TestAppMarkOutsideHooksKept (review2): a process the connect hooks do not
// serve (outside --fast-path-cgroup) sets its own SO_MARK before connect, and
// its kill switch lets only packets with that mark leave for the destination. The
// fast path never decided the connect, so it must leave the mark alone; the
// sock_ops program's send_pending (7be93e5) takes the MarkFastFlow-valued bits
// off at TCP_CONNECT_CB, the SYN leaves without the VPN's mark (and is
// routed again without it: sk_dst_reset, rebuild_header) and the connect fails.
func TestAppMarkOutsideHooksKept(t *testing.T) {
	ownNetns(t)
	cg, _ := testCgroup(t)
	dst := listen(t, "tcp4", "127.0.0.1:0")
	// The VPN's kill switch (as Mullvad's nftables table does): only packets
	// with its mark may leave for dst's port.
	nft := exec.Command("nft", "-f", "-")
	nft.Stdin = strings.NewReader(fmt.Sprintf("table inet vpn { chain out { type filter hook output priority 0; tcp dport %d meta mark != %#x drop\n}\n}\n", dst.Port(), vpnMark))
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	connect := func() (int, error) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, vpnMark); err != nil {
			t.Fatal(err)
		}
		tv := unix.NsecToTimeval(int64(3 * time.Second))
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		err = unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		m, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		return m, err
	}
	// Without the fast path: the routing works.
	if m, err := connect(); err != nil || m != vpnMark {
		t.Fatalf("without the fast path: connect %v with mark %#x: mark %#x, %v", dst, vpnMark, m, err)
	}
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal {
		t.Skipf("no sock_ops program: %+v", s)
	}
	m, err := connect()
	if err != nil || m != vpnMark {
		t.Errorf("a process outside the hooks' cgroup connects %v with its own mark %#x: mark %#x once connected, %v; want the mark kept and the connect through", dst, vpnMark, m, err)
	}
}
