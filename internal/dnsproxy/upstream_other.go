//go:build !linux

package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"time"
)

// udpConn is a connected UDP socket to one upstream server.
type udpConn struct {
	c    net.Conn
	done func()
	made time.Time
}

// source: the pool, which asks, is not used here.
func (c *udpConn) source() netip.Addr { return netip.Addr{} }

// poolSize: no sockets wait ready here (see socketPool; drain needs a non-blocking
// read that Go's poller does not offer once a deadline has passed).
const poolSize = 0

func (p *Proxy) openUDP(server netip.AddrPort) (udpConn, error) {
	d := net.Dialer{Timeout: p.cfg.Timeout, Control: p.cfg.Control}
	c, err := d.Dial("udp", server.String())
	return udpConn{c: c, made: time.Now()}, err
}

// drain: a socket made for its query has nothing queued to drop.
func (c *udpConn) drain() int { return 0 }

func (c *udpConn) send(b []byte, deadline time.Time) error {
	c.c.SetWriteDeadline(deadline)
	_, err := c.c.Write(b)
	return err
}

func (c *udpConn) receive(buf []byte, deadline time.Time) (int, error) {
	c.c.SetReadDeadline(deadline)
	n, err := c.c.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return 0, errTimeout
	}
	return n, err
}

func (c *udpConn) close() {
	c.c.Close()
	if c.done != nil {
		c.done()
	}
}
