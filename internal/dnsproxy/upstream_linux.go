package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// udpRoundTrip sends q to server from a fresh connected socket and reads until an
// answer matching q arrives or the deadline passes. It blocks its thread in the
// system calls (no poller round trips: the answer wakes the reader directly).
func (p *Proxy) udpRoundTrip(q []byte, server netip.AddrPort, buf []byte, qend int, deadline time.Time) (int, error) {
	p.inflight <- struct{}{} // bounds the threads blocked here
	defer func() { <-p.inflight }()
	family, network := unix.AF_INET, "udp4"
	var sa unix.Sockaddr
	if a := server.Addr().Unmap(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(server.Port()), Addr: a.As4()}
	} else {
		family, network = unix.AF_INET6, "udp6"
		sa6 := &unix.SockaddrInet6{Port: int(server.Port()), Addr: a.As16()}
		if z := server.Addr().Zone(); z != "" {
			if ifi, err := interfaceIndex(z); err == nil {
				sa6.ZoneId = uint32(ifi)
			}
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return 0, errUpstream(server, err)
	}
	defer unix.Close(fd)
	if p.cfg.Control != nil {
		if err := p.cfg.Control(network, server.String(), fdConn(fd)); err != nil {
			return 0, errUpstream(server, err)
		}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return 0, errUpstream(server, err)
	}
	if err := setTimeout(fd, unix.SO_SNDTIMEO, time.Until(deadline)); err != nil {
		return 0, errUpstream(server, err)
	}
	if _, err := retry(func() (int, error) { return unix.Write(fd, q) }); err != nil {
		return 0, errUpstream(server, err)
	}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return 0, errUpstream(server, errTimeout)
		}
		if err := setTimeout(fd, unix.SO_RCVTIMEO, left); err != nil {
			return 0, errUpstream(server, err)
		}
		n, err := retry(func() (int, error) { return unix.Read(fd, buf) })
		if errors.Is(err, unix.EAGAIN) {
			return 0, errUpstream(server, errTimeout)
		}
		if err != nil {
			return 0, errUpstream(server, err)
		}
		if matches(q, buf[:n], qend) {
			return n, nil
		}
		p.count(func(s *Stats) { s.Mismatched++ })
	}
}

var errTimeout = errors.New("no answer in time")

func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func setTimeout(fd, opt int, d time.Duration) error {
	if d < time.Microsecond {
		d = time.Microsecond
	}
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv)
}

// fdConn is a syscall.RawConn over a plain descriptor, for Config.Control.
type fdConn int

func (c fdConn) Control(f func(fd uintptr)) error { f(uintptr(c)); return nil }
func (c fdConn) Read(func(fd uintptr) bool) error {
	return errors.New("dnsproxy: Read on a bare descriptor")
}
func (c fdConn) Write(func(fd uintptr) bool) error {
	return errors.New("dnsproxy: Write on a bare descriptor")
}

var _ syscall.RawConn = fdConn(0)

func interfaceIndex(zone string) (int, error) {
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, err
	}
	return ifi.Index, nil
}
