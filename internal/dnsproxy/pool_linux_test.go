package dnsproxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// udpSocket is one line of /proc/net/udp (this network namespace's IPv4 UDP sockets).
type udpSocket struct {
	local, remote netip.AddrPort
	inode         uint64
}

func udpSockets(t *testing.T) []udpSocket {
	t.Helper()
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addr := func(s string) netip.AddrPort {
		h, p, _ := strings.Cut(s, ":")
		v, _ := strconv.ParseUint(h, 16, 32)
		port, _ := strconv.ParseUint(p, 16, 16)
		// The kernel prints the address as a native (little-endian) word.
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}), uint16(port))
	}
	var out []udpSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		ino, _ := strconv.ParseUint(f[9], 10, 64)
		out = append(out, udpSocket{local: addr(f[1]), remote: addr(f[2]), inode: ino})
	}
	return out
}

// connectedTo returns the sockets connected to server.
func connectedTo(t *testing.T, server netip.AddrPort) []udpSocket {
	var out []udpSocket
	for _, s := range udpSockets(t) {
		if s.remote == server {
			out = append(out, s)
		}
	}
	return out
}

// eventually polls cond for up to 3 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(3 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("after 3 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdingUpstream answers A queries with 198.18.0.7 once hold of them have come in (or
// at once, hold 0). Each query's source and the inode of the socket that sent it
// (looked up while the query waits for its answer) are kept.
type holdingUpstream struct {
	pc   net.PacketConn
	addr netip.AddrPort
	mu   sync.Mutex
	seen []udpSocket
}

func newHoldingUpstream(t *testing.T, hold int) *holdingUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	u := &holdingUpstream{pc: pc, addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		type pending struct {
			q    *dns.Msg
			from net.Addr
		}
		var held []pending
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
				continue
			}
			src := from.(*net.UDPAddr).AddrPort()
			sock := udpSocket{local: src}
			for _, s := range udpSockets(t) {
				if s.local == src && s.remote == u.addr {
					sock = s
				}
			}
			u.mu.Lock()
			u.seen = append(u.seen, sock)
			u.mu.Unlock()
			held = append(held, pending{q, from})
			if len(held) < hold {
				continue
			}
			for _, h := range held {
				m := new(dns.Msg)
				m.SetReply(h.q)
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: h.q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.IPv4(198, 18, 0, 7)}}
				b, _ := m.Pack()
				pc.WriteTo(b, h.from)
			}
			held = held[:0]
		}
	}()
	return u
}

func (u *holdingUpstream) sources() []udpSocket {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]udpSocket(nil), u.seen...)
}

func query(t *testing.T, addr, name string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

// TestPoolSocketsAreSingleUse: queries go out on pre-opened sockets (the pool is
// used, and refilled to its size); queries under way at once each have a socket and
// source port of their own, and the socket that carried a query is closed once its
// answer is out: no socket, and so no source port, carries two queries.
func TestPoolSocketsAreSingleUse(t *testing.T) {
	const concurrent = 12
	up := newHoldingUpstream(t, concurrent)
	p, _, _ := newProxy(t, up.addr.String())
	addr := startProxyT(t, p)
	eventually(t, "the pool is filled", func() bool { return p.pool.idleCount() == poolSize })

	var wg sync.WaitGroup
	for i := range concurrent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := query(t, addr, fmt.Sprintf("c%d.test", i)); len(r.Answer) != 1 {
				t.Errorf("c%d.test: %v", i, r)
			}
		}()
	}
	wg.Wait()
	if got := p.pool.taken.Load(); got != concurrent {
		t.Errorf("%d queries took %d pooled sockets, want one each", concurrent, got)
	}
	ports := map[uint16]bool{}
	for _, s := range up.sources() {
		if ports[s.local.Port()] {
			t.Errorf("two queries under way at once came from port %d", s.local.Port())
		}
		ports[s.local.Port()] = true
	}
	if len(ports) != concurrent {
		t.Errorf("%d queries from %d ports", concurrent, len(ports))
	}
	assertClosed(t, up.sources())
	eventually(t, "the pool is refilled", func() bool { return p.pool.idleCount() == poolSize })
}

// assertClosed: every socket of used is gone (its inode is no longer among the UDP
// sockets): none that carried a query waits for another one, none that waited in the
// pool is left there.
func assertClosed(t *testing.T, used []udpSocket) {
	t.Helper()
	for _, u := range used {
		if u.inode == 0 {
			t.Fatalf("the socket of %v was not found while its query waited", u.local)
		}
	}
	eventually(t, "the sockets are closed", func() bool {
		for _, s := range udpSockets(t) {
			for _, u := range used {
				if s.inode == u.inode {
					return false
				}
			}
		}
		return true
	})
}

// TestPoolSequentialQueries: one query after another, each from a socket of its own,
// closed after its answer; the pool stays filled.
func TestPoolSequentialQueries(t *testing.T) {
	up := newHoldingUpstream(t, 0)
	p, _, _ := newProxy(t, up.addr.String())
	addr := startProxyT(t, p)
	eventually(t, "the pool is filled", func() bool { return p.pool.idleCount() == poolSize })
	const n = 3 * poolSize // more than the pool holds: it must be refilled
	for i := range n {
		if r := query(t, addr, fmt.Sprintf("s%d.test", i)); len(r.Answer) != 1 {
			t.Fatalf("s%d.test: %v", i, r)
		}
	}
	seen := up.sources()
	inodes := map[uint64]bool{}
	for _, s := range seen {
		if inodes[s.inode] {
			t.Errorf("socket inode %d carried two queries", s.inode)
		}
		inodes[s.inode] = true
	}
	if got := p.pool.taken.Load(); got < n-2 {
		t.Errorf("%d of %d sequential queries took a pooled socket: the pool is not refilled", got, n)
	}
	assertClosed(t, seen)
	eventually(t, "the pool is refilled", func() bool { return len(connectedTo(t, up.addr)) == poolSize })
}

// TestPoolDropsEarlyDatagrams: a datagram that reached a pooled socket while it waited
// (here: forged answers carrying the very id and question the next query will have)
// is dropped before the query is sent, never taken for its answer.
func TestPoolDropsEarlyDatagrams(t *testing.T) {
	up := newHoldingUpstream(t, 0)
	p, names, _ := newProxy(t, up.addr.String())
	addr := startProxyT(t, p)
	eventually(t, "the pool is filled", func() bool { return p.pool.idleCount() == poolSize })
	// The next ids are 0 (an attacker's best case: the id guessed right).
	queryIDs.mu.Lock()
	clear(queryIDs.buf[:])
	queryIDs.n = len(queryIDs.buf)
	queryIDs.mu.Unlock()
	t.Cleanup(func() { queryIDs.mu.Lock(); queryIDs.n = 0; queryIDs.mu.Unlock() })
	forged := new(dns.Msg)
	forged.SetQuestion("www.example.test.", dns.TypeA)
	forged.Id, forged.Response = 0, true
	forged.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A: net.IPv4(198, 18, 0, 66)}}
	b, _ := forged.Pack()
	idle := connectedTo(t, up.addr)
	if len(idle) != poolSize {
		t.Fatalf("%d sockets connected to the upstream, want %d", len(idle), poolSize)
	}
	for _, s := range idle { // from the upstream's own address: the socket takes it
		up.pc.WriteTo(b, net.UDPAddrFromAddrPort(s.local))
	}
	time.Sleep(20 * time.Millisecond)
	r := query(t, addr, "www.example.test")
	if len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(net.IPv4(198, 18, 0, 7)) {
		t.Fatalf("answer %v, want the upstream's 198.18.0.7", r)
	}
	if s := p.Stats(); s.Mismatched != 1 {
		t.Errorf("mismatched %d, want 1 (the datagram queued on the socket taken)", s.Mismatched)
	}
	if name, ok := names.Lookup(netip.MustParseAddr("198.18.0.66")); ok {
		t.Errorf("%s learned from a forged datagram", name)
	}
}

// TestPoolFollowsUpstream: when the upstream server changes (systemd-resolved's file),
// the sockets waiting for the old one are closed and the pool is filled with sockets
// to the new one, which the next query uses.
func TestPoolFollowsUpstream(t *testing.T) {
	a, b, file, write := upstreamFile(t, 79, 80)
	first, second := listenDNS53(t, a), listenDNS53(t, b)
	write("nameserver "+a+"\n", time.Hour)
	p, _, _ := newProxy(t, a+":53")
	p.cfg.UpstreamFile, p.cfg.UpstreamCheck = file, 10*time.Millisecond
	addr := startProxyT(t, p)
	oldUp, newUp := netip.MustParseAddrPort(a+":53"), netip.MustParseAddrPort(b+":53")
	eventually(t, "the pool is filled", func() bool { return len(connectedTo(t, oldUp)) == poolSize })
	old := connectedTo(t, oldUp)
	write("nameserver "+b+"\n", 0)
	eventually(t, "the pool holds sockets to the new server only", func() bool {
		return len(connectedTo(t, oldUp)) == 0 && len(connectedTo(t, newUp)) == poolSize
	})
	assertClosed(t, old)
	taken := p.pool.taken.Load()
	query(t, addr, "after.test")
	if len(first.list()) != 0 || len(second.list()) != 1 {
		t.Errorf("asked old %v, new %v", first.list(), second.list())
	}
	if p.pool.taken.Load() != taken+1 {
		t.Errorf("the query after the change did not take a pooled socket")
	}
}

// TestPoolClosedOnStop: stopping the proxy closes every socket it opened and ends
// every goroutine it started (the pool's refill, the kept UDP workers): the process
// holds as many descriptors and goroutines as before it started, and no socket to
// the upstream is left.
func TestPoolClosedOnStop(t *testing.T) {
	up := newHoldingUpstream(t, 0)
	fds := func() int {
		e, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(e)
	}
	p, _, _ := newProxy(t, up.addr.String())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.Listen = pc.LocalAddr().String()
	pc.Close()
	before, goroutines := fds(), runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() { done <- p.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	eventually(t, "the pool is filled", func() bool { return p.pool.idleCount() == poolSize })
	var wg sync.WaitGroup
	for i := range 8 { // at once: more than one worker
		wg.Add(1)
		go func() { defer wg.Done(); query(t, p.cfg.Listen, fmt.Sprintf("q%d.test", i)) }()
	}
	wg.Wait()
	if n := fds(); n < before+poolSize {
		t.Fatalf("%d descriptors while running, %d before: the pool holds none?", n, before)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := connectedTo(t, up.addr); len(s) != 0 {
		t.Errorf("%d sockets to the upstream left after stop", len(s))
	}
	// At most as many as before: an earlier test's goroutines and descriptors
	// may still have been on their way out when this one counted.
	eventually(t, fmt.Sprintf("no more descriptors than before the start (%d)", before), func() bool { return fds() <= before })
	eventually(t, fmt.Sprintf("no more goroutines than before the start (%d)", goroutines), func() bool { return runtime.NumGoroutine() <= goroutines })
}

// TestPoolRenewedOnNetworkChange: a connected socket keeps the source address the
// routes gave it. A route change that gives the upstream another source address
// closes the waiting sockets and fills the pool again with sockets of the new source;
// a change that does not (a route in a table no rule consults) leaves them be.
func TestPoolRenewedOnNetworkChange(t *testing.T) {
	pid := os.Getpid()
	server := fmt.Sprintf("127.81.%d.%d", pid>>8&0xff, pid&0xff)
	pc, err := net.ListenPacket("udp4", server+":0")
	if err != nil {
		t.Fatal(err)
	}
	upAddr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	p, _, _ := newProxy(t, upAddr.String())
	startProxyT(t, p)
	eventually(t, "the pool is filled", func() bool { return len(connectedTo(t, upAddr)) == poolSize })
	old := connectedTo(t, upAddr)
	for _, s := range old {
		if s.local.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("source %v, want 127.0.0.1 (lo's)", s.local)
		}
	}
	ip := func(args ...string) (func(), bool) {
		if out, err := exec.Command("ip", append([]string{"route", "add"}, args...)...).CombinedOutput(); err != nil {
			t.Logf("ip route add %v: %v: %s", args, err, out)
			return nil, false
		}
		return func() { exec.Command("ip", append([]string{"route", "del"}, args...)...).Run() }, true
	}
	// Unrelated: the sockets stay.
	undo, ok := ip(fmt.Sprintf("198.18.%d.0/24", pid%250), "dev", "lo", "table", strconv.Itoa(20000+pid%10000))
	if !ok {
		t.Skip("cannot add routes")
	}
	defer undo()
	time.Sleep(100 * time.Millisecond)
	if got := connectedTo(t, upAddr); len(got) != poolSize || got[0].inode == 0 || !sameInodes(got, old) {
		t.Errorf("an unrelated route change renewed the pool")
	}
	// The server's own local route, without lo's source: the source becomes the
	// server's address.
	undo2, ok := ip("local", server+"/32", "dev", "lo", "table", "local")
	if !ok {
		t.Skip("cannot add a local route")
	}
	defer undo2()
	assertClosed(t, old)
	eventually(t, "the pool is filled again from the new source", func() bool {
		now := connectedTo(t, upAddr)
		for _, s := range now {
			if s.local.Addr().String() != server {
				return false
			}
		}
		return len(now) == poolSize
	})
}

func sameInodes(a, b []udpSocket) bool {
	in := map[uint64]bool{}
	for _, s := range a {
		in[s.inode] = true
	}
	for _, s := range b {
		if !in[s.inode] {
			return false
		}
	}
	return len(a) == len(b)
}

// TestPoolSocketThatCannotSend: a pooled socket whose send fails is replaced by a
// fresh one for its query (which is answered), and the others are renewed.
func TestPoolSocketThatCannotSend(t *testing.T) {
	up := newHoldingUpstream(t, 0)
	p, _, _ := newProxy(t, up.addr.String())
	addr := startProxyT(t, p)
	eventually(t, "the pool is filled", func() bool { return p.pool.idleCount() == poolSize })
	p.pool.mu.Lock()
	for _, c := range p.pool.idle {
		unix.Shutdown(c.fd, unix.SHUT_WR) // sends fail (EPIPE)
	}
	broken := len(p.pool.idle)
	p.pool.mu.Unlock()
	old := connectedTo(t, up.addr)
	if len(old) != broken {
		t.Fatalf("%d sockets to the upstream, %d in the pool", len(old), broken)
	}
	if r := query(t, addr, "www.example.test"); len(r.Answer) != 1 || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("answer %v", r)
	}
	if s := p.Stats(); s.Failed != 0 {
		t.Errorf("%d failed", s.Failed)
	}
	assertClosed(t, old)
	eventually(t, "the pool is filled again", func() bool { return p.pool.idleCount() == poolSize })
}

// TestPoolRunAgain: a proxy stopped and run again has its pool again, and the second
// stop closes it too.
func TestPoolRunAgain(t *testing.T) {
	up := newHoldingUpstream(t, 0)
	p, _, _ := newProxy(t, up.addr.String())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.Listen = pc.LocalAddr().String()
	pc.Close()
	for run := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		ready := make(chan struct{})
		go func() { done <- p.Run(ctx, func() { close(ready) }) }()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("run %d: %v", run+1, err)
		}
		eventually(t, "the pool is filled", func() bool { return len(connectedTo(t, up.addr)) == poolSize })
		taken := p.pool.taken.Load()
		query(t, p.cfg.Listen, "again.test")
		if p.pool.taken.Load() != taken+1 {
			t.Errorf("run %d: the query took no pooled socket", run+1)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if s := connectedTo(t, up.addr); len(s) != 0 {
			t.Errorf("run %d: %d sockets to the upstream left after stop", run+1, len(s))
		}
	}
}

// TestPoolRetire: a socket handed back after its answer releases its query's slot at
// once and is closed, by the pool's goroutine while the pool runs (and another opened
// in its place), at once when the pool is not running or sp.size sockets wait to be
// closed already; it never waits in the pool for another query.
func TestPoolRetire(t *testing.T) {
	up := netip.MustParseAddrPort(upstream(t))
	p, _, _ := newProxy(t, up.String())
	inode := func(c udpConn) uint64 {
		var st unix.Stat_t
		if err := unix.Fstat(c.fd, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	gone := func(ino uint64) bool {
		for _, s := range udpSockets(t) {
			if s.inode == ino {
				return false
			}
		}
		return true
	}
	retire := func(sp *socketPool) (ino uint64, released *bool) {
		c, err := p.openUDP(up)
		if err != nil {
			t.Fatal(err)
		}
		released = new(bool)
		c.done = func() { *released = true }
		ino = inode(c)
		sp.retire(c)
		if !*released {
			t.Fatal("retire did not release the query's slot")
		}
		return ino, released
	}

	stopped := newSocketPool(4, p.openUDP, t.Logf)
	if ino, _ := retire(stopped); !gone(ino) {
		t.Error("a socket handed back to a pool that is not running is still open")
	}

	sp := newSocketPool(4, p.openUDP, t.Logf)
	sp.start(up)
	defer sp.stop()
	eventually(t, "the pool is filled", func() bool { return sp.idleCount() == 4 })
	var inos []uint64
	for range 3 {
		ino, _ := retire(sp)
		inos = append(inos, ino)
	}
	assertClosed(t, []udpSocket{{inode: inos[0]}, {inode: inos[1]}, {inode: inos[2]}})
	for _, c := range sp.idle {
		for _, ino := range inos {
			if inode(c) == ino {
				t.Fatalf("a socket handed back waits in the pool")
			}
		}
	}
	eventually(t, "the pool is refilled", func() bool { return sp.idleCount() == 4 })

	// The goroutine is behind (here: a pool marked running whose goroutine never
	// runs): sockets wait to be closed up to sp.size of them, the next is closed at
	// once.
	behind := newSocketPool(2, p.openUDP, t.Logf)
	behind.running = true
	defer func() {
		for _, c := range behind.doomed {
			c.close()
		}
	}()
	var waiting []uint64
	for range behind.size {
		ino, _ := retire(behind)
		waiting = append(waiting, ino)
	}
	for _, ino := range waiting {
		if gone(ino) {
			t.Fatal("a socket handed back was closed before the pool's goroutine ran")
		}
	}
	if ino, _ := retire(behind); !gone(ino) {
		t.Errorf("with %d sockets waiting to be closed, one more handed back is still open", behind.size)
	}
}
