package dnsproxy

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// The upstream exchange over UDP works on the packed messages: the query the client
// sent, under an id of the proxy's own, goes out from a socket of its own (a new
// random source port each query, as resolvers keep it since DNS cache poisoning:
// made ready beforehand by socketPool, used once, closed), and the answer goes back
// to the client as it came, under the client's id: nothing is packed again, and the
// answer is parsed once, for learning.

// errMismatch is an answer that is not to the query sent (counted; the wait goes on).
var errMismatch = errors.New("answer to another question")

// maxUDPAnswer bounds a UDP answer read from upstream.
const maxUDPAnswer = 65535

var answerBufs = sync.Pool{New: func() any { b := make([]byte, maxUDPAnswer); return &b }}

// ids gives random query ids, read from the system's random source in blocks.
type ids struct {
	mu  sync.Mutex
	buf [512]byte
	n   int
}

func (g *ids) next() uint16 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n == 0 {
		rand.Read(g.buf[:])
		g.n = len(g.buf)
	}
	g.n -= 2
	return binary.BigEndian.Uint16(g.buf[g.n:])
}

var queryIDs ids

// questionEnd returns the offset just past the question section of a packed message
// with one question, or 0 if it is malformed.
func questionEnd(m []byte) int {
	if len(m) < 12 || binary.BigEndian.Uint16(m[4:6]) != 1 {
		return 0
	}
	i := 12
	for {
		if i >= len(m) {
			return 0
		}
		l := int(m[i])
		if l == 0 {
			i++
			break
		}
		if l&0xC0 != 0 { // a query's question name is never compressed
			return 0
		}
		i += 1 + l
	}
	if i+4 > len(m) {
		return 0
	}
	return i + 4
}

// matches reports whether answer a answers the query with id and question q[12:qend]:
// the same id, the response bit, and the same question, byte for byte (letter case
// included) — or no question at all in an error answer (a server that could not read
// the question, FORMERR, may leave it out; such an answer teaches no name).
func matches(id uint16, q, a []byte, qend int) bool {
	if len(a) < 12 || binary.BigEndian.Uint16(a[0:2]) != id || a[2]&0x80 == 0 {
		return false
	}
	switch binary.BigEndian.Uint16(a[4:6]) {
	case 0:
		return a[3]&0x0F != 0
	case 1:
		return len(a) >= qend && bytes.Equal(a[12:qend], q[12:qend])
	}
	return false
}

// asking is a query sent upstream over UDP whose answer is still to be read.
type asking struct {
	conn     udpConn
	server   netip.AddrPort
	id       uint16 // the proxy's own
	clientID [2]byte
	q        []byte
	qend     int
	deadline time.Time
}

// ask sends the packed query q to server from a socket of its own (a random source
// port: a pooled one, else a fresh one), under an id of the proxy's own; q is left as
// it was.
func (p *Proxy) ask(q []byte, server netip.AddrPort) (*asking, error) {
	qend := questionEnd(q)
	if qend == 0 {
		return nil, errors.New("not a query with one question")
	}
	now := time.Now()
	a := &asking{server: server, id: queryIDs.next(), clientID: [2]byte{q[0], q[1]}, q: q, qend: qend,
		deadline: now.Add(p.cfg.Timeout)}
	binary.BigEndian.PutUint16(q[0:2], a.id)
	pooled, err := p.dialUDP(&a.conn, server, now)
	if err == nil {
		err = a.conn.send(q, a.deadline)
		if err != nil && pooled {
			// Its source address may be gone (the network changed before the
			// pool heard of it): the others' too. A fresh socket gets one of now.
			a.conn.done = nil // the inflight slot passes to the fresh socket
			a.conn.close()
			p.pool.flush()
			if err = p.dialFresh(&a.conn, server); err == nil { // (on failure, slot released)
				if err = a.conn.send(q, a.deadline); err != nil {
					a.conn.close()
				}
			}
		} else if err != nil {
			a.conn.close()
		}
	}
	q[0], q[1] = a.clientID[0], a.clientID[1]
	if err != nil {
		return nil, errUpstream(server, err)
	}
	return a, nil
}

// dialUDP sets c to a socket connected to server, once one of maxInflight exchanges
// may start: a pooled socket (anything that reached it while it waited is dropped),
// else a fresh one. pooled says which.
func (p *Proxy) dialUDP(c *udpConn, server netip.AddrPort, now time.Time) (pooled bool, err error) {
	p.inflight <- struct{}{}
	if pc, ok := p.pool.take(server, now); ok {
		*c = pc
		c.done = p.releaseFn
		if n := c.drain(); n > 0 {
			p.count(func(s *Stats) { s.Mismatched += uint64(n) })
		}
		return true, nil
	}
	if err := p.dialFresh(c, server); err != nil {
		return false, err
	}
	return false, nil
}

// dialFresh sets c to a fresh socket connected to server, within the inflight slot
// the caller holds (released when c is closed, or here on failure).
func (p *Proxy) dialFresh(c *udpConn, server netip.AddrPort) error {
	fresh, err := p.openUDP(server)
	if err != nil {
		<-p.inflight
		return err
	}
	*c = fresh
	c.done = p.releaseFn
	return nil
}

// release ends one of the exchanges counted in inflight.
func (p *Proxy) release() { <-p.inflight }

// answer waits for the answer (datagrams that do not answer the query are counted and
// skipped), reads it into buf and returns it under the client's id. The caller
// closes the socket.
func (a *asking) answer(p *Proxy, buf []byte) ([]byte, error) {
	for {
		n, err := a.conn.receive(buf, a.deadline)
		if err != nil {
			return nil, errUpstream(a.server, err)
		}
		if matches(a.id, a.q, buf[:n], a.qend) {
			buf[0], buf[1] = a.clientID[0], a.clientID[1]
			return buf[:n], nil
		}
		p.count(func(s *Stats) { s.Mismatched++ })
	}
}

// errTimeout: no answer before the deadline.
var errTimeout = errors.New("no answer in time")

func errUpstream(server netip.AddrPort, err error) error {
	return fmt.Errorf("upstream %s: %w", server, err)
}
