package procattr

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The tests attribute connections made by a real client process: this test binary,
// copied under a name of its own (clientExe) and run with helperEnv set. The copy
// makes the client's /proc/PID/exe differ from the test process's own.
const helperEnv = "LATCH_PROCATTR_HELPER"

// bindDevEnv names a device the client binds its socket to (SO_BINDTODEVICE).
const bindDevEnv = "LATCH_PROCATTR_BINDDEV"

// shareWithEnv names the executable the second child of mode udp-share runs.
const shareWithEnv = "LATCH_PROCATTR_SHARE_WITH"

// bindPortEnv names a port a UDP client binds its socket to on the loopback address
// of its target's family, with SO_REUSEADDR, before its mode's operation.
const bindPortEnv = "LATCH_PROCATTR_BINDPORT"

var (
	clientExe    string // set by makeClientExe
	clientDir    string
	clientOnce   sync.Once
	clientExeErr error
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper(os.Args[1:]))
	}
	code := m.Run()
	if clientDir != "" {
		os.RemoveAll(clientDir)
	}
	os.Exit(code)
}

// makeClientExe copies this binary once, for the tests that start clients (fuzz
// workers and parser tests never need it).
func makeClientExe(t testing.TB) {
	t.Helper()
	clientOnce.Do(func() {
		if clientDir, clientExeErr = os.MkdirTemp("", "latch-procattr-"); clientExeErr != nil {
			return
		}
		clientExe = filepath.Join(clientDir, "latch-procattr-client")
		clientExeErr = copyFile(clientExe, "/proc/self/exe")
	})
	if clientExeErr != nil {
		t.Fatalf("copy test binary for the client: %v", clientExeErr)
	}
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// runHelper is the client process. Modes:
//
//	tcp ADDR         non-blocking connect (the socket may stay in SYN_SENT)
//	udp-sendto ADDR  unbound, unconnected socket; one sendto
//	udp-connect ADDR connect, then send
//	tcp-handoff ADDR connect, hand the socket to a child (mode hold), exit
//	udp-share ADDR   connect, send, start a child (mode hold) and then a second
//	                 one running $LATCH_PROCATTR_SHARE_WITH (mode hold), both
//	                 inheriting the socket, exit
//	tcp-listen ADDR  bind and listen
//	udp-bind ADDR    bind
//	MODE-dual ADDR   any of the above on an IPv6 socket, to IPv4-mapped ADDR
//	hold             keep fd 3 open for a minute (or until killed)
//	watch-dns ADDR   attach the DNS query program for ADDR, print "PROG id", wait a minute
//
// It prints "LOCAL ip:port" (and "CHILD pid" for tcp-handoff), then obeys stdin:
// "close" closes the socket and prints "CLOSED"; "send" sends the connected socket's
// datagram again and prints "SENT"; end of input exits.
func runHelper(args []string) int {
	fail := func(err error) int { fmt.Println("ERROR", err); return 1 }
	if len(args) > 1 && args[0] == "memfd-exec" {
		// Run the rest of the arguments from a memfd copy of this executable.
		return fail(execMemfd(args[1:]))
	}
	if len(args) > 2 && args[0] == "chroot-exec" {
		// Run the rest of the arguments from this executable, chrooted to args[1].
		return fail(execChrooted(args[1], args[2:]))
	}
	if len(args) == 2 && args[0] == "watch-dns" {
		return watchDNSHelper(args[1])
	}
	if len(args) == 1 && args[0] == "hold" {
		fmt.Println("HOLDING")
		// Bounded: the test kills this process when it is done with it.
		time.Sleep(time.Minute)
		return 0
	}
	if len(args) != 2 {
		return fail(fmt.Errorf("usage: mode addr, got %q", args))
	}
	mode, target := args[0], netip.MustParseAddrPort(args[1])
	// A "-dual" mode uses an IPv6 socket with the IPv4-mapped form of an IPv4
	// target, as dual-stack programs do.
	mode, dual := strings.CutSuffix(mode, "-dual")
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(target.Port()), Addr: target.Addr().As16()}
	if target.Addr().Is4() && !dual {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().As4()}
	}
	typ := unix.SOCK_DGRAM
	if mode == "tcp" || mode == "tcp-handoff" || mode == "tcp-listen" {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(family, typ, 0) // no CLOEXEC: tcp-handoff passes it on
	if err != nil {
		return fail(err)
	}
	if dev := os.Getenv(bindDevEnv); dev != "" {
		if err := unix.BindToDevice(fd, dev); err != nil {
			return fail(err)
		}
	}
	if port := os.Getenv(bindPortEnv); port != "" && typ == unix.SOCK_DGRAM {
		n, _ := strconv.Atoi(port)
		var local unix.Sockaddr = &unix.SockaddrInet4{Port: n, Addr: [4]byte{127, 0, 0, 1}}
		if family == unix.AF_INET6 {
			local = &unix.SockaddrInet6{Port: n, Addr: netip.IPv6Loopback().As16()}
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail(err)
		}
		if err := unix.Bind(fd, local); err != nil {
			return fail(fmt.Errorf("bind port %d: %w", n, err))
		}
	}
	switch mode {
	case "tcp", "tcp-handoff":
		unix.SetNonblock(fd, true)
		if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
			return fail(err)
		}
	case "udp-sendto":
		if err := unix.Sendto(fd, []byte("latch"), 0, sa); err != nil {
			return fail(err)
		}
	case "udp-connect", "udp-share":
		if err := unix.Connect(fd, sa); err != nil {
			return fail(err)
		}
		if _, err := unix.Write(fd, []byte("latch")); err != nil {
			return fail(err)
		}
	case "tcp-listen", "udp-bind":
		if err := unix.Bind(fd, sa); err != nil {
			return fail(err)
		}
		if mode == "tcp-listen" {
			if err := unix.Listen(fd, 16); err != nil {
				return fail(err)
			}
		}
	default:
		return fail(fmt.Errorf("unknown mode %q", mode))
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return fail(err)
	}
	switch a := local.(type) {
	case *unix.SockaddrInet4:
		fmt.Println("LOCAL", netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)))
	case *unix.SockaddrInet6:
		fmt.Println("LOCAL", netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)))
	}
	if mode == "tcp-handoff" {
		child := exec.Command("/proc/self/exe", "hold")
		child.Env = os.Environ()
		child.ExtraFiles = []*os.File{os.NewFile(uintptr(fd), "socket")}
		out, _ := child.StdoutPipe()
		if err := child.Start(); err != nil {
			return fail(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if strings.TrimSpace(line) != "HOLDING" {
			return fail(fmt.Errorf("child said %q", line))
		}
		fmt.Println("CHILD", child.Process.Pid)
		return 0 // the child keeps the socket; this process is gone
	}
	if mode == "udp-share" {
		// Two children inherit the socket: the first runs this program, the second
		// the one $LATCH_PROCATTR_SHARE_WITH names; then this process exits.
		for i, exe := range []string{"/proc/self/exe", os.Getenv(shareWithEnv)} {
			child := exec.Command(exe, "hold")
			child.Env = os.Environ()
			child.ExtraFiles = []*os.File{os.NewFile(uintptr(fd), "socket")}
			out, _ := child.StdoutPipe()
			if err := child.Start(); err != nil {
				return fail(err)
			}
			line, _ := bufio.NewReader(out).ReadString('\n')
			if strings.TrimSpace(line) != "HOLDING" {
				return fail(fmt.Errorf("child %s said %q", exe, line))
			}
			fmt.Println([]string{"CHILD", "CHILD2"}[i], child.Process.Pid)
		}
		return 0
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "close" {
			unix.Close(fd)
			fmt.Println("CLOSED")
		}
		if sc.Text() == "send" { // the connected socket's datagram once more
			if _, err := unix.Write(fd, []byte("latch")); err != nil {
				return fail(err)
			}
			fmt.Println("SENT")
		}
		// "exec-over FILE MODE ADDR": bind-mount FILE over this executable's path
		// (in this process's mount namespace, which must be private) and exec that
		// path again: the same pid and path, another program.
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "exec-over" {
			self, err := os.Readlink("/proc/self/exe")
			if err != nil {
				return fail(err)
			}
			if err := unix.Mount(f[1], self, "", unix.MS_BIND, ""); err != nil {
				return fail(fmt.Errorf("bind %s over %s: %w", f[1], self, err))
			}
			return fail(unix.Exec(self, []string{self, f[2], f[3]}, os.Environ()))
		}
		// "umount-exec": unmount what is mounted over this executable's path and
		// exec the file the path names then in mode hold, keeping the socket: the
		// same pid, another program.
		if sc.Text() == "umount-exec" {
			self, err := os.Readlink("/proc/self/exe")
			if err != nil {
				return fail(err)
			}
			if err := unix.Unmount(self, unix.MNT_DETACH); err != nil {
				return fail(fmt.Errorf("umount %s: %w", self, err))
			}
			return fail(unix.Exec(self, []string{self, "hold"}, os.Environ()))
		}
	}
	return 0
}

// client is a running helper process.
type client struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	Local netip.AddrPort
	Child int // tcp-handoff, udp-share: pid of the process now holding the socket
	// Child2 is udp-share's second child, which holds the socket too.
	Child2 int
}

// startClient runs the helper in netns ns ("" : this namespace) and waits for its
// socket to exist.
func startClient(t *testing.T, ns, mode string, target netip.AddrPort, env ...string) *client {
	t.Helper()
	return startClientVia(t, ns, nil, mode, target, env...)
}

// startClientVia is startClient with the client's command line (the client
// executable, mode and target) passed through wrap, which may run it another way
// (in another mount namespace, say).
func startClientVia(t *testing.T, ns string, wrap func(args []string) []string, mode string, target netip.AddrPort, env ...string) *client {
	t.Helper()
	makeClientExe(t)
	args := []string{clientExe, mode, target.String()}
	if wrap != nil {
		args = wrap(args)
	}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(append(os.Environ(), helperEnv+"=1"), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start client %v: %v", args, err)
	}
	c := &client{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line := c.readLine(t)
	addr, ok := strings.CutPrefix(line, "LOCAL ")
	if !ok {
		t.Fatalf("client %s %v: %q", mode, target, line)
	}
	c.Local = netip.MustParseAddrPort(addr)
	if mode == "tcp-handoff" || mode == "udp-share" {
		pid, ok := strings.CutPrefix(c.readLine(t), "CHILD ")
		if !ok {
			t.Fatalf("client %s: no CHILD line", mode)
		}
		c.Child, _ = strconv.Atoi(pid)
		if c.Child > 0 {
			t.Cleanup(func() { unix.Kill(c.Child, unix.SIGKILL) })
		}
	}
	if mode == "udp-share" {
		pid, ok := strings.CutPrefix(c.readLine(t), "CHILD2 ")
		if !ok {
			t.Fatalf("client %s: no CHILD2 line", mode)
		}
		c.Child2, _ = strconv.Atoi(pid)
		if c.Child2 > 0 {
			t.Cleanup(func() { unix.Kill(c.Child2, unix.SIGKILL) })
		}
	}
	return c
}

func (c *client) readLine(t *testing.T) string {
	t.Helper()
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() { s, err := c.out.ReadString('\n'); ch <- result{strings.TrimSpace(s), err} }()
	select {
	case r := <-ch:
		if r.err != nil && r.s == "" {
			t.Fatalf("client output: %v", r.err)
		}
		return r.s
	case <-time.After(10 * time.Second):
		t.Fatal("client said nothing for 10s")
	}
	return ""
}

func (c *client) pid() int32 { return int32(c.cmd.Process.Pid) }

// closeSocket makes the client close its socket and stay alive.
func (c *client) closeSocket(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "close\n"); err != nil {
		t.Fatal(err)
	}
	if got := c.readLine(t); got != "CLOSED" {
		t.Fatalf("client after close: %q", got)
	}
}

// wait reaps a client that exits by itself (tcp-handoff), so its pid is gone from
// /proc. Its stdin stays open: the child it handed the socket to reads it.
func (c *client) wait(t *testing.T) {
	t.Helper()
	if err := c.cmd.Wait(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Logf("client exit: %v", err)
	}
}

var netnsSeq atomic.Uint32

// newNetns makes a network namespace with loopback up and a veth pair whose end pa0
// is 198.18.0.1/24. Packets to 198.18.0.2 vanish: a TCP connect to it stays in
// SYN_SENT, as it does while latch holds its SYN.
func newNetns(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("latch-pa-%d-%d", os.Getpid(), netnsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "ip", "-n", name, "link", "add", "pa0", "type", "veth", "peer", "name", "pa1")
	run(t, "ip", "-n", name, "addr", "add", "198.18.0.1/24", "dev", "pa0")
	run(t, "ip", "-n", name, "link", "set", "pa0", "up")
	run(t, "ip", "-n", name, "link", "set", "pa1", "up")
	// Frames to 198.18.0.2 go to a MAC nobody has: pa1 drops them, no ARP failure
	// ever reports the host unreachable.
	run(t, "ip", "-n", name, "neigh", "add", "198.18.0.2", "lladdr", "02:00:00:00:00:02", "dev", "pa0", "nud", "permanent")
	return name
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// inNetns runs fn on a thread switched to netns ns; sockets fn opens live there.
func inNetns(t testing.TB, ns string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", ns, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with the goroutine instead of
			// serving others in the wrong namespace.
			t.Errorf("setns back: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// listenIn opens a TCP listener in netns ns on addr, closed at cleanup.
func listenIn(t testing.TB, ns string, addr string) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	var err error
	inNetns(t, ns, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	accepted := make(chan net.Conn, 1024)
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case accepted <- c:
			default:
				c.Close()
			}
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, sock_diag of other processes, eBPF cgroup hooks")
	}
}

// execMemfd copies this executable into a memfd and executes it (fexecve) with
// args: a program that exists in memory only.
func execMemfd(args []string) error {
	fd, err := unix.MemfdCreate("latch-test", 0)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	defer self.Close()
	mem := os.NewFile(uintptr(fd), "memfd")
	defer mem.Close() // only if the exec failed
	if _, err := io.Copy(mem, self); err != nil {
		return fmt.Errorf("copy into memfd: %w", err)
	}
	argv := append([]string{"latch-procattr-client"}, args...)
	return unix.Exec(fmt.Sprintf("/proc/self/fd/%d", fd), argv, os.Environ())
}

// execChrooted opens this executable, chroots to dir and executes the open file
// (execveat, AT_EMPTY_PATH): the host's file runs, while its loader and libraries
// are looked up in dir.
func execChrooted(dir string, args []string) error {
	fd, err := unix.Open("/proc/self/exe", unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	if err := unix.Chroot(dir); err != nil {
		return fmt.Errorf("chroot %s: %w", dir, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	argv, err := syscall.SlicePtrFromStrings(append([]string{"latch-procattr-client"}, args...))
	if err != nil {
		return err
	}
	envv, err := syscall.SlicePtrFromStrings(os.Environ())
	if err != nil {
		return err
	}
	empty, _ := syscall.BytePtrFromString("")
	_, _, errno := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
	return fmt.Errorf("execveat: %w", errno)
}
