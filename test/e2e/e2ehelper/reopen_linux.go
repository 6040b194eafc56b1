package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// reopen disconnects c's socket (connect with AF_UNSPEC) and connects it again,
// to addr, for up to timeout (talk's "reopen").
func reopen(c *net.TCPConn, addr string, timeout time.Duration) Result {
	start := time.Now()
	r := Result{PID: os.Getpid()}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		fatal(fmt.Errorf("talk: reopen %q: %w", addr, err))
	}
	rc, err := c.SyscallConn()
	if err != nil {
		fatal(err)
	}
	var mark int
	var cerr error
	rc.Control(func(fd uintptr) {
		unspec := syscall.RawSockaddr{Family: syscall.AF_UNSPEC}
		if _, _, e := syscall.Syscall(syscall.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&unspec)), unsafe.Sizeof(unspec)); e != 0 {
			cerr = fmt.Errorf("disconnect: %w", e)
			return
		}
		mark, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK)
		var sa syscall.Sockaddr = &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		if ap.Addr().Is6() {
			sa = &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		}
		// The fd is non-blocking (Go's): wait for the connect's end by poll.
		if err := syscall.Connect(int(fd), sa); err != nil && err != syscall.EINPROGRESS {
			cerr = err
			return
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, err := unix.Poll(pfd, int(timeout.Milliseconds())); err != nil || n == 0 {
			cerr = os.ErrDeadlineExceeded
			return
		}
		if e, _ := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR); e != 0 {
			cerr = syscall.Errno(e)
		}
	})
	r.Millis = float64(time.Since(start).Microseconds()) / 1000
	r.Error = fmt.Sprintf("mark %#x", mark)
	switch {
	case cerr == nil:
		r.Outcome = "connected"
	case errors.Is(cerr, syscall.ECONNREFUSED), errors.Is(cerr, syscall.ECONNRESET):
		r.Outcome = "refused"
	case errors.Is(cerr, os.ErrDeadlineExceeded), errors.Is(cerr, syscall.ETIMEDOUT):
		r.Outcome = "timeout"
	default:
		r.Outcome = "error"
		r.Error += ": " + cerr.Error()
	}
	return r
}
