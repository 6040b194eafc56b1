package procattr

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// helperID is the DNS id of the helper's datagram ("latch": 'l', 'a').
const helperID = 'l'<<8 | 'a'

// dnsServer is a UDP socket in netns ns on addr (port 0: any) that stands for the
// local resolver: its datagrams are read as the resolver reads them.
type dnsServer struct {
	pc   *net.UDPConn
	addr netip.AddrPort
}

func newDNSServer(t *testing.T, ns, addr string) *dnsServer {
	t.Helper()
	var pc net.PacketConn
	var err error
	inNetns(t, ns, func() { pc, err = net.ListenPacket("udp", addr) })
	if err != nil {
		t.Skipf("listen %s in the namespace: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return &dnsServer{pc: pc.(*net.UDPConn), addr: netip.MustParseAddrPort(pc.LocalAddr().String())}
}

// read waits for one datagram and returns its sender.
func (s *dnsServer) read(t *testing.T) netip.AddrPort {
	t.Helper()
	s.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, from, err := s.pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("the resolver read no query: %v", err)
	}
	if n < 2 || uint16(buf[0])<<8|uint16(buf[1]) != helperID {
		t.Fatalf("datagram %q: not the helper's", buf[:n])
	}
	return netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

func (c *client) say(t *testing.T, cmd, want string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
	if got := c.readLine(t); got != want {
		t.Fatalf("client after %s: %q, want %q", cmd, got, want)
	}
}

// freeUDPPort is a UDP port free on the loopback addresses of netns ns.
func freeUDPPort(t *testing.T, ns string) int {
	t.Helper()
	var pc net.PacketConn
	var err error
	inNetns(t, ns, func() { pc, err = net.ListenPacket("udp", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// dnsQueryNetns makes a network namespace with a DNS server on its loopback and the
// query records of a socket Resolver (no /proc scan) for it.
func dnsQueryNetns(t *testing.T) (ns string, srv *dnsServer, q *DNSQueries) {
	t.Helper()
	ns = newNetns(t)
	r := newResolverIn(t, ns, Options{DisableProcfs: true})
	srv = newDNSServer(t, ns, "127.0.0.1:0")
	return ns, srv, watchDNS(t, r, srv.addr)
}

func watchDNS(t *testing.T, r *Resolver, server netip.AddrPort) *DNSQueries {
	t.Helper()
	q, err := r.WatchDNSQueries(server, "")
	if err != nil {
		t.Fatalf("WatchDNSQueries(%v): %v", server, err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return q
}

// TestDNSQueriesSender: a query a client process sends to the resolver is credited
// to that process (not to this one, which reads it), over IPv4, IPv6 and an IPv6
// socket to an IPv4 resolver; once its process is known, by the record alone; a
// record credits one datagram; a datagram to another address is not recorded.
func TestDNSQueriesSender(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct{ name, server, mode string }{
		{"ipv4", "127.0.0.1:0", "udp-connect"},
		{"ipv6", "[::1]:0", "udp-connect"},
		{"dual-stack", "127.0.0.1:0", "udp-connect-dual"},
		{"sendto", "127.0.0.1:0", "udp-sendto"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t)
			r := newResolverIn(t, ns, Options{DisableProcfs: true})
			srv := newDNSServer(t, ns, tc.server)
			q := watchDNS(t, r, srv.addr)
			c := startClient(t, ns, tc.mode, srv.addr)
			from := srv.read(t)
			if from != c.Local && !(c.Local.Addr().IsUnspecified() && from.Port() == c.Local.Port()) {
				t.Fatalf("datagram from %v, client at %v", from, c.Local)
			}
			p, err := q.Resolve(from, srv.addr, helperID)
			wantProcess(t, p, err, c.pid(), MethodEBPF)
			if st := q.Stats(); st.Slow != 1 || st.Fast != 0 {
				t.Errorf("stats %+v: want the first query checked through its socket", st)
			}
			if tc.mode == "udp-sendto" {
				return
			}
			// The process is known now: its next query by the record alone.
			c.say(t, "send", "SENT")
			from = srv.read(t)
			p, err = q.Resolve(from, srv.addr, helperID)
			wantProcess(t, p, err, c.pid(), MethodEBPF)
			if st := q.Stats(); st.Fast != 1 {
				t.Errorf("stats %+v: want the second query by its record", st)
			}
			// The record is spent: the same key again is Resolve's way.
			p, err = q.Resolve(from, srv.addr, helperID)
			wantProcess(t, p, err, c.pid(), MethodEBPF)
			if st := q.Stats(); st.Missing != 1 {
				t.Errorf("stats %+v: want a spent record missing", st)
			}
			// Another id of that socket was never sent: no record.
			q.Resolve(from, srv.addr, helperID+1)
			if st := q.Stats(); st.Missing != 2 {
				t.Errorf("stats %+v: want no record for an id never sent", st)
			}
		})
	}
}

// TestDNSQueriesPortTakenLater: a client sends a query from a port and closes its
// socket before the resolver asks who sent it; another program then binds that
// port. The query is credited to the first client, never to the second (a lookup of
// the socket now at that port, Resolve's way, finds the second: shown too).
func TestDNSQueriesPortTakenLater(t *testing.T) {
	requireRoot(t)
	ns, srv, q := dnsQueryNetns(t)
	port := freeUDPPort(t, ns)
	env := bindPortEnv + "=" + strconv.Itoa(port)
	first := startClient(t, ns, "udp-connect", srv.addr, env)
	from := srv.read(t)
	p, err := q.Resolve(from, srv.addr, helperID)
	wantProcess(t, p, err, first.pid(), MethodEBPF)

	first.say(t, "send", "SENT")
	first.closeSocket(t)
	later := startClient(t, ns, "udp-bind", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)))
	from = srv.read(t)
	if p, err := q.r.Resolve(engine.UDP, from, srv.addr, -1); p.PID != later.pid() {
		t.Logf("Resolve (the socket at the port now) = pid %d, %v; the later program is pid %d", p.PID, err, later.pid())
	}
	p, err = q.Resolve(from, srv.addr, helperID)
	if p.PID == later.pid() {
		t.Fatalf("the query was credited to pid %d, which bound the port after the sender (pid %d) closed it", p.PID, first.pid())
	}
	wantProcess(t, p, err, first.pid(), MethodEBPF)
}

// TestDNSQueriesAmbiguous: two programs' sockets share an address and port
// (SO_REUSEADDR) and both send a query with one id before the resolver reads the
// first: it cannot tell which datagram is whose, so neither is credited.
func TestDNSQueriesAmbiguous(t *testing.T) {
	requireRoot(t)
	ns, srv, q := dnsQueryNetns(t)
	env := bindPortEnv + "=" + strconv.Itoa(freeUDPPort(t, ns))
	a := startClient(t, ns, "udp-connect", srv.addr, env)
	b := startClient(t, ns, "udp-connect", srv.addr, env)
	for i := range 2 {
		from := srv.read(t)
		p, err := q.Resolve(from, srv.addr, helperID)
		if p.PID != 0 || !errors.Is(err, ErrNoSocket) {
			t.Fatalf("query %d of 2 (pids %d and %d sent one each) = pid %d, %v; want none, ErrNoSocket", i+1, a.pid(), b.pid(), p.PID, err)
		}
	}
	if st := q.Stats(); st.Ambiguous != 2 {
		t.Errorf("stats %+v: want two ambiguous", st)
	}
}

// TestDNSQueriesChecks: bad servers are refused; a closed DNSQueries is Resolve.
func TestDNSQueriesChecks(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{DisableProcfs: true})
	for _, bad := range []string{"0.0.0.0:53", "127.0.0.1:0", "[::]:53"} {
		if q, err := r.WatchDNSQueries(netip.MustParseAddrPort(bad), ""); err == nil {
			q.Close()
			t.Errorf("WatchDNSQueries(%s): no error", bad)
		}
	}
	if _, err := (&Resolver{closed: true}).WatchDNSQueries(netip.MustParseAddrPort("127.0.0.1:53"), ""); err == nil {
		t.Error("WatchDNSQueries on a closed Resolver: no error")
	}
	srv := newDNSServer(t, ns, "127.0.0.1:0")
	q := watchDNS(t, r, srv.addr)
	c := startClient(t, ns, "udp-connect", srv.addr)
	from := srv.read(t)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	p, err := q.Resolve(from, srv.addr, helperID)
	wantProcess(t, p, err, c.pid(), MethodEBPF)
}

// TestDNSQueriesForgedSource: a datagram forged from a raw socket with the address
// and port of another program's socket (which sent a query of its own) is not
// credited to that program: its record names the raw socket, which is not the
// socket at that address. (A lookup of the socket at the address, Resolve's way,
// credits the program whose address was forged.)
func TestDNSQueriesForgedSource(t *testing.T) {
	requireRoot(t)
	ns, srv, q := dnsQueryNetns(t)
	victim := startClient(t, ns, "udp-connect", srv.addr)
	from := srv.read(t)
	p, err := q.Resolve(from, srv.addr, helperID)
	wantProcess(t, p, err, victim.pid(), MethodEBPF)

	var fd int
	inNetns(t, ns, func() { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP) })
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	dgram := []byte{byte(victim.Local.Port() >> 8), byte(victim.Local.Port()), byte(srv.addr.Port() >> 8), byte(srv.addr.Port()),
		0, 8 + 5, 0, 0, 'l', 'a', 't', 'c', 'h'}
	if err := unix.Sendto(fd, dgram, 0, &unix.SockaddrInet4{Addr: srv.addr.Addr().As4()}); err != nil {
		t.Fatal(err)
	}
	if from = srv.read(t); from != victim.Local {
		t.Fatalf("forged datagram from %v, want %v", from, victim.Local)
	}
	if p, err := q.r.Resolve(engine.UDP, from, srv.addr, -1); p.PID != victim.pid() {
		t.Logf("Resolve (the socket at the address) = pid %d, %v", p.PID, err)
	}
	p, err = q.Resolve(from, srv.addr, helperID)
	if p.PID != 0 || !errors.Is(err, ErrNoSocket) {
		t.Fatalf("forged query = pid %d (victim %d), %v; want none, ErrNoSocket", p.PID, victim.pid(), err)
	}
}

// TestDNSQueriesOtherNamespace: a datagram sent to the resolver's address and port
// in another network namespace (its own loopback, not the resolver) leaves no
// record.
func TestDNSQueriesOtherNamespace(t *testing.T) {
	requireRoot(t)
	ns, other := newNetns(t), newNetns(t)
	r := newResolverIn(t, ns, Options{DisableProcfs: true})
	srv := newDNSServer(t, ns, "127.0.0.1:0")
	q := watchDNS(t, r, srv.addr)
	elsewhere := newDNSServer(t, other, srv.addr.String())
	c := startClient(t, other, "udp-connect", srv.addr)
	from := elsewhere.read(t)
	p, err := q.Resolve(from, srv.addr, helperID)
	if p.PID != 0 || err == nil {
		t.Fatalf("a query in another namespace = pid %d (sender %d), %v; want none", p.PID, c.pid(), err)
	}
	if st := q.Stats(); st.Missing != 1 || st.Slow+st.Fast+st.Ambiguous != 0 {
		t.Errorf("stats %+v: want no record", st)
	}
}

// TestDNSQueriesStaleRecord: a record older than dnsQueryFresh when its datagram is
// read (the resolver stalled) is not used: the query is attributed through its
// socket, as without records.
func TestDNSQueriesStaleRecord(t *testing.T) {
	requireRoot(t)
	ns, srv, q := dnsQueryNetns(t)
	c := startClient(t, ns, "udp-connect", srv.addr)
	from := srv.read(t)
	time.Sleep(dnsQueryFresh + 100*time.Millisecond)
	p, err := q.Resolve(from, srv.addr, helperID)
	wantProcess(t, p, err, c.pid(), MethodEBPF)
	if st := q.Stats(); st.Missing != 1 || st.Slow+st.Fast != 0 {
		t.Errorf("stats %+v: want the stale record unused", st)
	}
}
