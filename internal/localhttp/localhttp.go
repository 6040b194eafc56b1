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
	// Total is the most connections open at once; more wait in the kernel's accept
	// queue (they hold none of the daemon's descriptors there).
	Total int
	// PerPeer is the most one peer (a local uid, or a remote address) may hold at
	// once; its next connections are accepted and closed at once, so that one peer
	// cannot take all of Total.
	PerPeer int
}

// limitListener is a net.Listener with a Limit.
type limitListener struct {
	net.Listener
	name    string
	lim     Limit
	sem     chan struct{}
	done    chan struct{}
	once    sync.Once
	logf    func(string, ...any)
	mu      sync.Mutex
	peers   map[string]int
	refused atomic.Uint64
	lastLog time.Time
}

// LimitListener returns l with lim applied to its connections. name says what
// serves there in the log line about refused connections (at most one a minute).
func LimitListener(l net.Listener, name string, lim Limit, logf func(string, ...any)) net.Listener {
	if lim.Total <= 0 {
		lim.Total = 1
	}
	if lim.PerPeer <= 0 || lim.PerPeer > lim.Total {
		lim.PerPeer = lim.Total
	}
	return &limitListener{Listener: l, name: name, lim: lim, sem: make(chan struct{}, lim.Total),
		done: make(chan struct{}), logf: logf, peers: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.sem
			return nil, err
		}
		key := peerKey(c)
		l.mu.Lock()
		if l.peers[key] >= l.lim.PerPeer {
			now := time.Now()
			n := l.refused.Add(1)
			logIt := l.logf != nil && now.Sub(l.lastLog) >= time.Minute
			if logIt {
				l.lastLog = now
			}
			l.mu.Unlock()
			<-l.sem
			c.Close()
			if logIt {
				l.logf("%s: refused a connection of %s, which holds %d (the most one peer may); %d refused so far", l.name, key, l.lim.PerPeer, n)
			}
			continue
		}
		l.peers[key]++
		l.mu.Unlock()
		return &limitConn{Conn: c, l: l, key: key}, nil
	}
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func (l *limitListener) release(key string) {
	l.mu.Lock()
	if l.peers[key]--; l.peers[key] <= 0 {
		delete(l.peers, key)
	}
	l.mu.Unlock()
	<-l.sem
}

type limitConn struct {
	net.Conn
	l    *limitListener
	key  string
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// peerKey names who is at the other end of c: "uid N" for a socket of this host
// whose owner sock_diag tells (Linux), else "address IP".
func peerKey(c net.Conn) string {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	la, lok := c.LocalAddr().(*net.TCPAddr)
	if !ok || !lok {
		return "peer " + c.RemoteAddr().String()
	}
	if uid, err := localPeerUID(la.AddrPort(), ra.AddrPort()); err == nil {
		return fmt.Sprintf("uid %d", uid)
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
