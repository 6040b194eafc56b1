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
// to addr, for up to timeout (talk's "reopen"). With port (not 0) it first binds
// the socket to port on every address (talk's "simopen"): the peer may then
// answer with a SYN of its own from addr (a simultaneous open).
func reopen(c *net.TCPConn, port int, addr string, timeout time.Duration) Result {
	start := time.Now()
	r := Result{PID: os.Getpid()}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		fatal(fmt.Errorf("talk: reopen/simopen %q: %w", addr, err))
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
		var local, sa syscall.Sockaddr = &syscall.SockaddrInet6{Port: port}, &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		if ap.Addr().Is4() {
			local, sa = &syscall.SockaddrInet4{Port: port}, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		}
		if port != 0 {
			if err := syscall.Bind(int(fd), local); err != nil {
				cerr = fmt.Errorf("bind: %w", err)
				return
			}
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

// v6only connects a new IPv6-only socket to addr (talk's "v6only"), then clears
// IPV6_V6ONLY (the socket is still unbound after a connect that failed before
// any packet, as one to an IPv4-mapped address does) and returns it, whatever
// the connect's outcome, with the outcome.
func v6only(addr string) (*net.TCPConn, Result) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		fatal(fmt.Errorf("talk: v6only %q: %w", addr, err))
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fatal(fmt.Errorf("talk: v6only: %w", err))
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
		fatal(fmt.Errorf("talk: v6only: %w", err))
	}
	r := Result{PID: os.Getpid(), Outcome: "connected"}
	cerr := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
	mark, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
	r.Error = fmt.Sprintf("mark %#x", mark)
	if cerr != nil {
		r.Outcome = "error"
		if errors.Is(cerr, syscall.ECONNREFUSED) {
			r.Outcome = "refused"
		}
		r.Error += ": " + cerr.Error()
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			fatal(fmt.Errorf("talk: v6only: allow IPv4 again: %w", err))
		}
	}
	f := os.NewFile(uintptr(fd), "v6only")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fatal(fmt.Errorf("talk: v6only: %w", err))
	}
	return c.(*net.TCPConn), r
}

// simopenPeer connects from local to remote (e2ehelper simopen-peer), again
// every 200 ms until one connects or dur is over: the other side of a
// simultaneous open. Prints the last result.
func simopenPeer(local, remote string, dur time.Duration) Result {
	la, err := net.ResolveTCPAddr("tcp", local)
	if err != nil {
		fatal(err)
	}
	d := net.Dialer{LocalAddr: la, Timeout: 200 * time.Millisecond, Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
		return nil
	}}
	start := time.Now()
	for {
		c, err := d.Dial("tcp", remote)
		r := Result{Outcome: classify(err), Millis: ms(time.Since(start)), PID: os.Getpid()}
		if err == nil {
			r.Local = c.LocalAddr().String()
			c.Close()
			return r
		}
		r.Error = err.Error()
		if time.Since(start) > dur {
			return r
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// connectSRH connects to addr (IPv6) from a socket with an IPv6 segment routing
// header (IPV6_RTHDR, type 4, which needs no privilege) whose one segment left
// is via: the packets' IPv6 destination is via, and addr only the SRH's final
// segment (e2ehelper connect-srh).
func connectSRH(addr, via string, timeout time.Duration) Result {
	start := time.Now()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		fatal(fmt.Errorf("connect-srh %q: %w", addr, err))
	}
	va, err := netip.ParseAddr(via)
	if err != nil {
		fatal(fmt.Errorf("connect-srh via %q: %w", via, err))
	}
	r := Result{PID: os.Getpid()}
	d := net.Dialer{Timeout: timeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// next header, length in 8 bytes past the first 8, type 4,
			// segments left 1, last entry 1, flags, tag; then the
			// segments: [0] the final one (the kernel writes the
			// connect's address there), [1] the first hop.
			srh := []byte{0, 4, 4, 1, 1, 0, 0, 0}
			final, first := ap.Addr().As16(), va.As16()
			srh = append(append(srh, final[:]...), first[:]...)
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srh))
		})
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp6", addr)
	r.Millis = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		r.Outcome, r.Error = "error", err.Error()
		var ne net.Error
		switch {
		case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
			r.Outcome = "refused"
		case errors.As(err, &ne) && ne.Timeout():
			r.Outcome = "timeout"
		}
		return r
	}
	r.Outcome, r.Local = "connected", c.LocalAddr().String()
	c.Close()
	return r
}

// setSRH gives c's socket an IPv6 segment routing header whose next segment is
// via (talk's "srh"): its next packets' IPv6 destination is via.
func setSRH(c *net.TCPConn, via string) Result {
	va, err := netip.ParseAddr(via)
	if err != nil {
		fatal(fmt.Errorf("talk: srh %q: %w", via, err))
	}
	rc, err := c.SyscallConn()
	if err != nil {
		fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) {
		final := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().As16()
		first := va.As16()
		srh := append(append([]byte{0, 4, 4, 1, 1, 0, 0, 0}, final[:]...), first[:]...)
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srh))
	})
	if serr != nil {
		return Result{Outcome: "error", Error: serr.Error()}
	}
	return Result{Outcome: "set"}
}

// pending starts a connect to addr that does not wait for its end (talk's
// "pending"): with TCP_SYNCNT 127 the socket stays in SYN_SENT, its SYN sent
// again and again, for as long as addr drops it. Returns the socket and its
// mark once the SYN is built, in the error field.
func pending(addr string) (*net.TCPConn, Result) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		fatal(fmt.Errorf("talk: pending %q: %w", addr, err))
	}
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
	if ap.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		fatal(fmt.Errorf("talk: pending: %w", err))
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_SYNCNT, 127); err != nil {
		fatal(fmt.Errorf("talk: pending: TCP_SYNCNT: %w", err))
	}
	r := Result{PID: os.Getpid(), Outcome: "pending"}
	if err := unix.Connect(fd, sa); err != unix.EINPROGRESS {
		r.Outcome = classify(err)
	}
	mark, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
	r.Error = fmt.Sprintf("mark %#x", mark)
	if local, err := unix.Getsockname(fd); err == nil {
		if l, ok := local.(*unix.SockaddrInet4); ok {
			r.Local = netip.AddrPortFrom(netip.AddrFrom4(l.Addr), uint16(l.Port)).String()
		} else if l, ok := local.(*unix.SockaddrInet6); ok {
			r.Local = netip.AddrPortFrom(netip.AddrFrom16(l.Addr), uint16(l.Port)).String()
		}
	}
	f := os.NewFile(uintptr(fd), "pending")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fatal(fmt.Errorf("talk: pending: %w", err))
	}
	return c.(*net.TCPConn), r
}
