package fastpath

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// clientPending runs the client's commands of the pending tests, and reports
// whether line was one:
//
//   - "tfo ADDRPORT": a new socket with TCP_FASTOPEN_CONNECT connects to ADDRPORT;
//     the kernel defers tcp_connect (and the SYN) to the first write, so the
//     decision the connect hook made waits meanwhile. Prints "ok MARK" or "err
//     ERRNO MARK" and keeps the socket.
//   - "send": writes a byte on that socket (tcp_connect: the SYN, with the byte)
//     and prints "ok LOCAL" (its local address) or "err ERRNO"; closes it.
//   - "many N ADDRPORT": N new sockets connect to ADDRPORT in turn, each closed
//     right after; prints "done CONNECTED FAILED".
func clientPending(line string, held *int) bool {
	f := strings.Fields(line)
	if len(f) == 0 {
		return false
	}
	connect := func(fd int, ap netip.AddrPort) error {
		if ap.Addr().Is4() {
			return unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
		}
		return unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
	}
	family := func(ap netip.AddrPort) int {
		if ap.Addr().Is4() {
			return unix.AF_INET
		}
		return unix.AF_INET6
	}
	switch {
	case (f[0] == "tfo" || f[0] == "tfomd5") && len(f) == 2:
		// "tfo ADDRPORT": a TCP_FASTOPEN_CONNECT connect, whose SYN waits for
		// the first write ("send"); prints "ok MARK". "tfomd5 ADDRPORT": the
		// same, but the socket's option memory (net.core.optmem_max) is used up
		// first, by TCP MD5 keys for other addresses, which any program may add:
		// the kernel cannot give the socket its storage. Prints "ok MARK KEYS".
		ap, err := netip.ParseAddrPort(f[1])
		if err != nil {
			fmt.Println("bad", err)
			return true
		}
		fd, err := unix.Socket(family(ap), unix.SOCK_STREAM, 0)
		if err != nil {
			fmt.Println("err socket", err)
			return true
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1); err != nil {
			fmt.Println("err TCP_FASTOPEN_CONNECT", err)
			unix.Close(fd)
			return true
		}
		keys := -1
		if f[0] == "tfomd5" {
			for keys = 0; keys < 1<<15; keys++ {
				var sig unix.TCPMD5Sig
				sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sig.Addr))
				sa.Family = unix.AF_INET
				sa.Addr = [4]byte{198, 19, byte(keys >> 8), byte(keys)}
				sig.Keylen = 16
				if err := unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig); err != nil {
					break
				}
			}
		}
		err = connect(fd, ap)
		mark, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			fmt.Printf("err %d %#x\n", err.(syscall.Errno), mark)
			unix.Close(fd)
			return true
		}
		*held = fd
		if keys < 0 {
			fmt.Printf("ok %#x\n", mark)
		} else {
			fmt.Printf("ok %#x %d\n", mark, keys)
		}
	case f[0] == "send" && len(f) == 1:
		if *held < 0 {
			fmt.Println("err no socket")
			return true
		}
		fd := *held
		*held = -1
		defer unix.Close(fd)
		if _, err := unix.Write(fd, []byte("x")); err != nil {
			fmt.Printf("err %d\n", err.(syscall.Errno))
			return true
		}
		local := "-"
		switch la, _ := unix.Getsockname(fd); la := la.(type) {
		case *unix.SockaddrInet4:
			local = netip.AddrPortFrom(netip.AddrFrom4(la.Addr), uint16(la.Port)).String()
		case *unix.SockaddrInet6:
			local = netip.AddrPortFrom(netip.AddrFrom16(la.Addr).Unmap(), uint16(la.Port)).String()
		}
		fmt.Println("ok", local)
	case f[0] == "many" && len(f) == 3:
		n, err := strconv.Atoi(f[1])
		ap, err2 := netip.ParseAddrPort(f[2])
		if err != nil || err2 != nil || n < 0 || n > 100000 {
			fmt.Println("bad", f)
			return true
		}
		ok, failed := 0, 0
		for i := 0; i < n; i++ {
			fd, err := unix.Socket(family(ap), unix.SOCK_STREAM, 0)
			if err != nil {
				failed++
				continue
			}
			if connect(fd, ap) == nil {
				ok++
			} else {
				failed++
			}
			unix.Close(fd)
		}
		fmt.Println("done", ok, failed)
	default:
		return false
	}
	return true
}

// enterTestNetns moves the calling test's goroutine, locked to its OS thread for
// good (the thread ends with the test), into a new network namespace with only
// its loopback up, which goes when the test ends. Sockets made and processes
// started by the test from then on are in it; goroutines it starts are not, but
// may use those sockets.
func enterTestNetns(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("needs ip: %v", err)
	}
	ns := fmt.Sprintf("latch-fp-%d-%s", os.Getpid(), strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v: %s", ns, err, out)
	}
	runtime.LockOSThread() // never unlocked: the thread dies with the test's goroutine
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns %s: %v", ns, err)
	}
	return ns
}

// TestPendingPerSocket: a TCP decision waits for the socket's local port in the
// socket's own storage, so nothing else the kernel does meanwhile can lose it, and
// every connect that sends a SYN is recorded once, with its local port:
//
//   - a TCP_FASTOPEN_CONNECT socket's connect is decided at connect(2) but sends its
//     SYN only at the first write; thousands of hits on other sockets whose connect
//     fails before tcp_connect (no route to 198.19.255.1 in this namespace) come in
//     between. Each of those leaves a decision that was never sent: in a map shared
//     by all sockets (the LRU hash before) they pushed the waiting one out, and the
//     connection went unrecorded; with socket storage they go with their sockets;
//   - a socket whose first connect fails before tcp_connect, then connects, is
//     recorded once, with its local port;
//   - hundreds of sockets closed right after their hit: as many records as SYNs
//     sent, each with its own local port.
func TestPendingPerSocket(t *testing.T) {
	cg, cgfd := testCgroup(t)
	ns := enterTestNetns(t)
	// Deferred connects without a Fast Open cookie (client on, no cookie needed).
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_fastopen", []byte("5"), 0); err != nil {
		t.Fatalf("net.ipv4.tcp_fastopen in %s: %v", ns, err)
	}
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal {
		t.Fatalf("no sock_ops program: %+v", s)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	server := listen(t, "tcp4", "127.0.0.1:0")
	unrouted := netip.MustParseAddrPort("198.19.255.1:80")
	for _, to := range []netip.AddrPort{server, unrouted} {
		if ok, err := fp.Remember(fp.Ticket(), req(c, to), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
			t.Fatalf("Remember %v: %v %v", to, ok, err)
		}
	}
	decisions := runDecisions(t, fp)

	// A hit; the mark waits for the SYN (TCP_CONNECT_CB).
	if r := c.say(t, "tfo "+server.String()); r != "ok 0x0" || fp.Stats().HitsAllow != 1 {
		t.Fatalf("deferred connect to %v: %q, %+v; want a hit, no mark before the SYN", server, r, fp.Stats())
	}
	const failing = 3 * 4096 // three times the old pending map's size
	if r, want := c.say(t, fmt.Sprintf("many %d %s", failing, unrouted)), fmt.Sprintf("done 0 %d", failing); r != want {
		t.Fatalf("connects to %v: %q, want %q", unrouted, r, want)
	}
	r := c.say(t, "send")
	f := strings.Fields(r)
	if len(f) != 2 || f[0] != "ok" {
		t.Fatalf("first write of the deferred connect: %q", r)
	}
	tfoLocal := netip.MustParseAddrPort(f[1])

	r = c.say(t, "local "+unrouted.String()+" "+server.String())
	first, second, _ := strings.Cut(r, "; ")
	f = strings.Fields(second)
	if !strings.HasPrefix(first, fmt.Sprintf("err %d 0x0", unix.ENETUNREACH)) || len(f) != 3 || f[0] != "ok" || f[1] != "0x60000000" {
		t.Fatalf("connect to %v, then %v: %q; want ENETUNREACH then connected, both hits", unrouted, server, r)
	}
	againLocal := netip.MustParseAddrPort(f[2])

	const closed = 500
	if r, want := c.say(t, fmt.Sprintf("many %d %s", closed, server)), fmt.Sprintf("done %d 0", closed); r != want {
		t.Fatalf("connects to %v: %q, want %q", server, r, want)
	}

	seen := map[netip.AddrPort]int{}
	deadline := time.After(10 * time.Second)
	for n := 0; n < 2+closed; n++ {
		select {
		case d := <-decisions:
			if d.Remote != server || d.PID != c.pid || d.Action != engine.Allow || d.RuleID != 1 || !d.Local.IsValid() || d.Local.Port() == 0 {
				t.Errorf("decision %+v: want one of %d's connections to %v, with its local end", d, c.pid, server)
			}
			seen[d.Local]++
		case <-deadline:
			t.Fatalf("%d decisions recorded, want %d; the deferred connect's: %d, the reconnected socket's: %d", n, 2+closed, seen[tfoLocal], seen[againLocal])
		}
	}
	select {
	case d := <-decisions:
		t.Errorf("a decision too many: %+v", d)
	case <-time.After(300 * time.Millisecond):
	}
	if seen[tfoLocal] != 1 || seen[againLocal] != 1 {
		t.Errorf("the deferred connect (%v) recorded %d times, the reconnected socket (%v) %d times; want once each", tfoLocal, seen[tfoLocal], againLocal, seen[againLocal])
	}
	if len(seen) != 2+closed {
		t.Errorf("%d distinct local ends among %d records, want one each", len(seen), 2+closed)
	}
	s := fp.Stats()
	if want := uint64(1 + failing + 2 + closed); s.HitsAllow != want || s.Events != 2+closed || s.RingLost != 0 {
		t.Errorf("stats %+v: want %d hits, %d recorded (one per SYN sent), none lost", s, want, 2+closed)
	}
}
