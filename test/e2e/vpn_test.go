//go:build linux

package e2e

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tunSYNs opens a TUN device named name in namespace ns (as a userspace VPN does)
// and records the destination ports of the TCP SYNs the kernel routes into it.
type tunSYNs struct {
	f    *os.File
	mu   sync.Mutex
	seen map[uint16]int
}

func openTUN(t *testing.T, ns, name string) *tunSYNs {
	t.Helper()
	var fd int
	err := inNetns(ns, func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var ifr [unix.IFNAMSIZ + 64]byte
		copy(ifr[:], name)
		binary.NativeEndian.PutUint16(ifr[unix.IFNAMSIZ:], unix.IFF_TUN|unix.IFF_NO_PI)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0]))); errno != 0 {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, errno)
		}
		return nil
	})
	if err != nil {
		t.Skipf("no TUN device here: %v", err)
	}
	ts := &tunSYNs{f: os.NewFile(uintptr(fd), "/dev/net/tun"), seen: map[uint16]int{}}
	t.Cleanup(func() { ts.f.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := ts.f.Read(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			// IPv4, TCP, flags SYN only.
			if n < 40 || p[0]>>4 != 4 || p[9] != 6 {
				continue
			}
			ihl := int(p[0]&0x0f) * 4
			if n < ihl+20 || p[ihl+13]&0x17 != 0x02 {
				continue
			}
			ts.mu.Lock()
			ts.seen[binary.BigEndian.Uint16(p[ihl+2:])]++
			ts.mu.Unlock()
		}
	}()
	return ts
}

func (ts *tunSYNs) syns(port uint16) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.seen[port]
}

// TestTUNTunnelDoesNotBlindLatch: connections routed into a TUN device (a userspace
// VPN's interface) are held on their way in, like any other: a program with a rule
// reaches the tunnel, one without is asked and, denied, never enters it; both are
// attributed to the program.
func TestTUNTunnelDoesNotBlindLatch(t *testing.T) {
	n := NewNet(t)
	name := fmt.Sprintf("ltun%d", os.Getpid()%100000)
	tun := openTUN(t, n.Client, name)
	for _, args := range [][]string{
		{"-n", n.Client, "addr", "add", "198.19.250.1/24", "dev", name},
		{"-n", n.Client, "link", "set", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--port", "8443", "--action", "allow")
	connect := func(port int) {
		// Nobody answers inside the tunnel: the connect times out; what counts is
		// whether its SYN entered the tunnel.
		n.Exec(n.Client, helperBin, "connect", fmt.Sprintf("198.19.250.2:%d", port), "1500ms")
	}

	connect(8443)
	if tun.syns(8443) == 0 {
		t.Fatalf("the allowed connection's SYN never reached the tunnel; conns:\n%s", d.MustCLI(t, "conns"))
	}
	row := findConn(t, d, 8443, 0)
	if row["verdict"] != "allow" || row["exe"] != helperBin || row["remote_ip"] != "198.19.250.2" {
		t.Errorf("history row %v: want allow, exe %s, remote 198.19.250.2", row, helperBin)
	}

	done := make(chan struct{})
	go func() { connect(8444); close(done) }()
	p := waitPrompt(t, d, 8444)
	if p["remote_ip"] != "198.19.250.2" {
		t.Errorf("question %v: want remote 198.19.250.2", p)
	}
	if got := tun.syns(8444); got != 0 {
		t.Fatalf("%d SYNs entered the tunnel while the connection was held", got)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "deny", "--for", "once")
	<-done
	time.Sleep(200 * time.Millisecond)
	if got := tun.syns(8444); got != 0 {
		t.Errorf("denied, yet %d SYNs entered the tunnel", got)
	}
}
