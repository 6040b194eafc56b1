//go:build !linux

package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"time"
)

// udpConn is a connected UDP socket to one upstream server.
type udpConn struct{ c net.Conn }

func (p *Proxy) dialUDP(server netip.AddrPort) (udpConn, error) {
	d := net.Dialer{Timeout: p.cfg.Timeout, Control: p.cfg.Control}
	c, err := d.Dial("udp", server.String())
	return udpConn{c}, err
}

func (c udpConn) send(b []byte, deadline time.Time) error {
	c.c.SetWriteDeadline(deadline)
	_, err := c.c.Write(b)
	return err
}

func (c udpConn) receive(buf []byte, deadline time.Time) (int, error) {
	c.c.SetReadDeadline(deadline)
	n, err := c.c.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return 0, errTimeout
	}
	return n, err
}

func (c udpConn) close() { c.c.Close() }
