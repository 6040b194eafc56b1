package dnsproxy

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// socketPool keeps UDP sockets ready for the upstream exchange, so that a query spends
// no time making one: each is already made, given a fresh source port by the kernel
// (a random one, as for any socket the kernel binds) and connected to the first
// upstream server. Each socket carries exactly ONE query and is then closed, never
// reused: the per-query randomness (the source port, the proxy's random id, the
// question the answer must echo) is the same as with a socket made for the query.
// Datagrams that reached an idle socket before its query was sent are read and
// dropped before the query goes out (see udpConn.drain), so that nothing queued
// earlier can pass for the answer.
//
// A background goroutine fills the pool at the start, after a change of server, when
// a burst has nearly emptied it, and after every answer: the query that took a socket
// hands it back once its answer is out (retire), and the goroutine closes it and opens
// one in its place. The pool is emptied (its sockets closed) when the
// first upstream server changes, and closed when the proxy stops.
//
// A connected socket keeps the source address the routes gave it then. After an
// address or route change (rtnetlink), the pool is emptied if a socket made now gets
// another source address (see netChanged); a socket idle longer than maxPooledAge is
// not used (the pool is emptied, the query gets a fresh socket); and a pooled socket
// that cannot send is replaced by a fresh one for its query (and the pool emptied).
// An empty pool (the proxy not running, or a burst that outran the refill) means a
// fresh socket, as without the pool.
type socketPool struct {
	open func(server netip.AddrPort) (udpConn, error)
	size int
	logf func(string, ...any)

	mu      sync.Mutex
	server  netip.AddrPort // the server the idle sockets are connected to
	idle    []udpConn      // newest last
	doomed  []udpConn      // to be closed by the refill goroutine (used, stale or flushed)
	running bool
	closed  bool
	wake    chan struct{}
	done    chan struct{}
	taken   atomic.Uint64 // sockets handed to queries
	// stopWatch ends the watch of the network (nil: none).
	stopWatch func()
}

// maxPooledAge is how long a pooled socket may wait for its query.
const maxPooledAge = 5 * time.Second

func newSocketPool(size int, open func(netip.AddrPort) (udpConn, error), logf func(string, ...any)) *socketPool {
	return &socketPool{open: open, size: size, logf: logf, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// start fills the pool with sockets to server and keeps it filled until stop.
func (sp *socketPool) start(server netip.AddrPort) {
	if sp.size <= 0 {
		return
	}
	sp.mu.Lock()
	if sp.running || sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.running, sp.server = true, server
	sp.mu.Unlock()
	if stop, err := watchNetwork(sp.netChanged); err != nil {
		sp.logf("dns proxy: %v; ready upstream sockets are renewed every %v only", err, maxPooledAge)
	} else {
		sp.stopWatch = stop
	}
	go sp.refill()
	sp.poke()
}

func (sp *socketPool) poke() {
	select {
	case sp.wake <- struct{}{}:
	default:
	}
}

// take returns an idle socket connected to server, if there is one.
func (sp *socketPool) take(server netip.AddrPort, now time.Time) (udpConn, bool) {
	sp.mu.Lock()
	if !sp.running || sp.server != server || len(sp.idle) == 0 {
		sp.mu.Unlock()
		return udpConn{}, false
	}
	c := sp.idle[len(sp.idle)-1]
	sp.idle = sp.idle[:len(sp.idle)-1]
	if now.Sub(c.made) > maxPooledAge {
		// The newest is stale: so are all the others.
		sp.doomed = append(append(sp.doomed, sp.idle...), c)
		sp.idle = sp.idle[:0]
		sp.mu.Unlock()
		sp.poke()
		return udpConn{}, false
	}
	low := len(sp.idle) < sp.size/4
	sp.mu.Unlock()
	sp.taken.Add(1)
	if low { // a burst: refill in the background too
		sp.poke()
	}
	return c, true
}

// retire takes back the socket of a query whose answer is out: the query's inflight
// slot is released at once, and the refill goroutine closes the socket and opens one
// in its place. Closing and opening a socket (with the eBPF hooks' connect record)
// costs some 10 µs of system calls: done by the query's worker, it kept that worker,
// and a processor, from the next query a client sends as soon as it has its answer
// (BenchmarkProxyLatency: the proxy arms took ~10 µs longer). The socket is never
// used again; it is closed at once if the pool is not running, or if sp.size sockets
// wait to be closed already (the goroutine is behind: their descriptors stay bounded).
func (sp *socketPool) retire(c udpConn) {
	if c.done != nil {
		c.done()
		c.done = nil
	}
	sp.mu.Lock()
	if !sp.running || sp.closed || len(sp.doomed) >= sp.size {
		sp.mu.Unlock()
		c.close()
		return
	}
	sp.doomed = append(sp.doomed, c)
	sp.mu.Unlock()
	sp.poke()
}

// put adds c, connected to server, to the pool (or closes it: the pool is stopped,
// full, or for another server now).
func (sp *socketPool) put(c udpConn, server netip.AddrPort) {
	sp.mu.Lock()
	if sp.closed || !sp.running || sp.server != server || len(sp.idle) >= sp.size {
		sp.mu.Unlock()
		c.close()
		return
	}
	sp.idle = append(sp.idle, c)
	sp.mu.Unlock()
}

// flush closes the idle sockets and fills the pool again (the network changed: their
// source addresses may be wrong now).
func (sp *socketPool) flush() {
	sp.mu.Lock()
	if len(sp.idle) == 0 || sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.doomed = append(sp.doomed, sp.idle...)
	sp.idle = sp.idle[:0]
	sp.mu.Unlock()
	sp.poke()
}

// netChanged checks, after an address or route change, whether a socket connected
// to the server now gets another source address than the waiting ones: if so, they
// are closed (see flush). The socket made to check joins the pool.
func (sp *socketPool) netChanged() {
	sp.mu.Lock()
	server, running := sp.server, sp.running && !sp.closed
	sp.mu.Unlock()
	if !running {
		return
	}
	c, err := sp.open(server)
	if err != nil {
		sp.flush()
		return
	}
	src := c.source()
	sp.mu.Lock()
	moved := false
	for i := range sp.idle {
		if moved = sp.idle[i].source() != src; moved {
			break
		}
	}
	sp.mu.Unlock()
	if moved {
		sp.flush()
	}
	sp.put(c, server)
}

// setServer empties the pool and fills it again with sockets to server.
func (sp *socketPool) setServer(server netip.AddrPort) {
	sp.mu.Lock()
	if sp.server == server || sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.server = server
	sp.doomed = append(sp.doomed, sp.idle...)
	sp.idle = sp.idle[:0]
	sp.mu.Unlock()
	sp.poke()
}

// stop closes every idle socket and ends the refill and the watch of the network;
// start may be called again. Sockets already taken are closed by their queries.
func (sp *socketPool) stop() {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.closed = true
	running := sp.running
	sp.mu.Unlock()
	if sp.stopWatch != nil {
		sp.stopWatch()
	}
	if running {
		sp.poke()
		<-sp.done
	}
	sp.mu.Lock()
	idle := append(sp.doomed, sp.idle...)
	sp.idle, sp.doomed = nil, nil
	// Ready to start again (a proxy run again).
	sp.closed, sp.running, sp.stopWatch, sp.done = false, false, nil, make(chan struct{})
	sp.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// idleCount is how many sockets wait in the pool.
func (sp *socketPool) idleCount() int {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return len(sp.idle)
}

// refill keeps the pool full until it is closed.
func (sp *socketPool) refill() {
	defer close(sp.done)
	failing := false
	for range sp.wake {
		for {
			sp.mu.Lock()
			doomed := sp.doomed
			sp.doomed = nil
			closed, n, server := sp.closed, len(sp.idle), sp.server
			sp.mu.Unlock()
			for _, c := range doomed {
				c.close()
			}
			if closed {
				return
			}
			if n >= sp.size {
				break
			}
			c, err := sp.open(server)
			if err != nil {
				if !failing {
					sp.logf("dns proxy: pre-opening a socket to upstream %s: %v (queries make their own)", server, err)
				}
				failing = true
				break // tried again at the next query
			}
			failing = false
			sp.put(c, server)
		}
	}
}
