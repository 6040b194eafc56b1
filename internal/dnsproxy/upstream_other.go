//go:build !linux

package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"time"
)

// udpRoundTrip sends q to server from a fresh connected socket and reads until an
// answer matching q arrives or the deadline passes.
func (p *Proxy) udpRoundTrip(q []byte, server netip.AddrPort, buf []byte, qend int, deadline time.Time) (int, error) {
	d := net.Dialer{Deadline: deadline, Control: p.cfg.Control}
	c, err := d.Dial("udp", server.String())
	if err != nil {
		return 0, errUpstream(server, err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := c.Write(q); err != nil {
		return 0, errUpstream(server, err)
	}
	for {
		n, err := c.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return 0, errUpstream(server, errors.New("no answer in time"))
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
