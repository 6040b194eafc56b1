// Package localhttp holds what latch's own TCP servers (the web UI, metrics) share to
// stay harmless to the daemon when any local user may connect to them before any
// login: a bound on connections in all and per peer (a local peer is told apart by
// the uid owning its socket), the server timeouts, the Host check against DNS
// rebinding, and a Service that keeps retrying a bind another program got first,
// instead of stopping the daemon.
package localhttp

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limit bounds a listener's connections.
type Limit struct {
	// Total is the most connections open at once. When Total are open, a new
	// connection of a peer holding none, or at least 2 fewer than the peer holding
	// the most, takes the place of one of that peer's (see LimitListener); any
	// other is accepted and closed at once.
	Total int
	// PerPeer is the most one peer (a local uid, or a remote address) may hold at
	// once; its next connections are accepted and closed at once, so that one peer
	// cannot take all of Total.
	PerPeer int
}

// busyFor is how long after reading part of a request a connection that has not
// answered yet counts as busy (a request being handled), not as one worth closing.
const busyFor = time.Second

// limitListener is a net.Listener with a Limit.
type limitListener struct {
	net.Listener
	name    string
	lim     Limit
	logf    func(string, ...any)
	mu      sync.Mutex
	peers   map[string]int
	conns   map[*limitConn]struct{}
	refused uint64
	evicted uint64
	lastLog time.Time
}

// LimitListener returns l with lim applied to its connections. A peer's connection
// beyond PerPeer is closed at once. When Total are open and a peer arrives that holds
// none, or at least 2 fewer than the peer holding the most (so that peers do not
// take each other's places in turn), one connection of the peer holding the most is
// closed to make room: the one idle longest between requests (or silent, or stuck
// in a request's header), before one whose request is being answered. So a few
// peers (a user's subordinate uids, say) cannot fill Total and lock others out, and
// the daemon never holds more than Total+1 of these descriptors. name says what
// serves there in the log line about refused and closed connections (at most one a
// minute).
func LimitListener(l net.Listener, name string, lim Limit, logf func(string, ...any)) net.Listener {
	if lim.Total <= 0 {
		lim.Total = 1
	}
	if lim.PerPeer <= 0 || lim.PerPeer > lim.Total {
		lim.PerPeer = lim.Total
	}
	return &limitListener{Listener: l, name: name, lim: lim, logf: logf,
		peers: map[string]int{}, conns: map[*limitConn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := peerKey(c)
		now := time.Now()
		l.mu.Lock()
		have := l.peers[key]
		var victim *limitConn
		ok := have < l.lim.PerPeer
		if ok && len(l.conns) >= l.lim.Total {
			victim = l.victimLocked(have, now)
			ok = victim != nil
			if ok {
				l.removeLocked(victim)
				l.evicted++
			}
		}
		if !ok {
			l.refused++
		}
		logIt := l.logf != nil && (!ok || victim != nil) && now.Sub(l.lastLog) >= time.Minute
		if logIt {
			l.lastLog = now
		}
		refused, evicted, open := l.refused, l.evicted, len(l.conns)
		var lc *limitConn
		if ok {
			lc = &limitConn{Conn: c, l: l, key: key}
			lc.last.Store(now.UnixNano())
			l.conns[lc] = struct{}{}
			l.peers[key]++
		}
		l.mu.Unlock()
		if victim != nil {
			victim.Conn.Close()
		}
		if logIt {
			if ok {
				l.logf("%s: all %d connections open: closed one of %s to let %s in; %d closed so, %d refused so far",
					l.name, l.lim.Total, victim.key, key, evicted, refused)
			} else {
				l.logf("%s: refused a connection of %s, which holds %d of %d open (at most %d per peer, %d in all); %d refused, %d closed for others so far",
					l.name, key, have, open, l.lim.PerPeer, l.lim.Total, refused, evicted)
			}
		}
		if !ok {
			c.Close()
			continue
		}
		return lc, nil
	}
}

// victimLocked picks the connection to close so that a peer holding have
// connections gets in, or nil if it should not: one of the peer holding the most
// (ties: any of them), the least recently active of those not busy answering a
// request, else the least recently active.
func (l *limitListener) victimLocked(have int, now time.Time) *limitConn {
	most := 0
	for _, n := range l.peers {
		most = max(most, n)
	}
	if !(have == 0 && most > 0 || most >= have+2) {
		return nil
	}
	var best *limitConn
	var bestBusy bool
	var bestLast int64
	for c := range l.conns {
		if l.peers[c.key] != most {
			continue
		}
		last, busy := c.state(now)
		if best == nil || (!busy && bestBusy) || (busy == bestBusy && last < bestLast) {
			best, bestBusy, bestLast = c, busy, last
		}
	}
	return best
}

func (l *limitListener) removeLocked(c *limitConn) {
	if c.gone {
		return
	}
	c.gone = true
	delete(l.conns, c)
	if l.peers[c.key]--; l.peers[c.key] <= 0 {
		delete(l.peers, c.key)
	}
}

func (l *limitListener) release(c *limitConn) {
	l.mu.Lock()
	l.removeLocked(c)
	l.mu.Unlock()
}

type limitConn struct {
	net.Conn
	l   *limitListener
	key string
	// gone: no longer counted (guarded by l.mu).
	gone bool
	// last is when it was accepted or last read or wrote (Unix ns); lastRead and
	// lastWrite when it last read bytes, wrote bytes.
	last, lastRead, lastWrite atomic.Int64
}

// state says when c was last active and whether it is busy: it read bytes (part of
// a request) after its last write, within busyFor.
func (c *limitConn) state(now time.Time) (last int64, busy bool) {
	r, w := c.lastRead.Load(), c.lastWrite.Load()
	return c.last.Load(), r > w && now.UnixNano()-r < int64(busyFor)
}

func (c *limitConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		t := time.Now().UnixNano()
		c.lastRead.Store(t)
		c.last.Store(t)
	}
	return n, err
}

func (c *limitConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		t := time.Now().UnixNano()
		c.lastWrite.Store(t)
		c.last.Store(t)
	}
	return n, err
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.l.release(c)
	return err
}

// peerKey names who is at the other end of c: "uid N" for a socket of this host
// whose owner sock_diag tells (Linux), N the user whose subordinate uid (/etc/subuid)
// the owner is if it is one, else "address IP".
func peerKey(c net.Conn) string {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	la, lok := c.LocalAddr().(*net.TCPAddr)
	if !ok || !lok {
		return "peer " + c.RemoteAddr().String()
	}
	if uid, err := localPeerUID(la.AddrPort(), ra.AddrPort()); err == nil {
		return fmt.Sprintf("uid %d", ownerUID(uid))
	}
	return "address " + ra.AddrPort().Addr().Unmap().String()
}

// Timeouts sets the timeouts of a server whose clients need no login to connect: a
// request's header within 10s, all of it within 30s, the response within 60s, and
// an idle connection closed after 60s. A handler that streams (server-sent events)
// lifts the read and write deadlines for its own connection
// (http.ResponseController) and bounds each of its writes instead.
func Timeouts(s *http.Server) {
	s.ReadHeaderTimeout = 10 * time.Second
	s.ReadTimeout = 30 * time.Second
	s.WriteTimeout = 60 * time.Second
	s.IdleTimeout = 60 * time.Second
	s.MaxHeaderBytes = 64 << 10
}

// LoopbackHost reports whether a request's Host header names a loopback address or
// localhost, with any port or none (a DNS rebinding page names its own host; the port
// may differ from the listener's behind a tunnel, e.g. ssh -L).
func LoopbackHost(host string) bool {
	h := host
	if sh, _, err := net.SplitHostPort(host); err == nil {
		h = sh
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		h = host[1 : len(host)-1]
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Zone() == "" && a.Unmap().IsLoopback()
}
