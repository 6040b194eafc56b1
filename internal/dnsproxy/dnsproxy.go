// Package dnsproxy is latch's local resolver mode: a small forwarding DNS server
// (github.com/miekg/dns, UDP and TCP) that the machine's resolv.conf points to while
// the daemon runs. Every query comes from a local socket, so it is attributed to the
// asking program before it is answered; the answer's addresses are learned as that
// program's own names, exactly (no copies of packets to match); a name that a deny
// rule covers for that program is refused at query time (NXDOMAIN, or the
// unspecified address), and recorded in history as a DNS decision; and the canary
// use-application-dns.net is answered NXDOMAIN, so that Firefox keeps plain DNS.
//
// A UDP query is forwarded as the bytes the program sent, from a socket of its own (a
// random source port; one of a small pool made ready beforehand, each used for one
// query and closed — see socketPool) under an id of the proxy's own, and the answer
// (it must echo the question) goes back as it came. A name no rule can refuse (Config.MayRefuse) goes upstream before its program
// is identified; any other name is decided first and a refused one is never sent.
//
// The proxy runs inside the daemon: while the daemon is stopped, nothing answers at
// the proxy's address. Fail-closed, DNS stops until the daemon is back or resolv.conf
// is restored (ResolvConf.Restore, on a clean stop); fail-open, resolv.conf names the
// upstream after the proxy (ResolvConf.Point), and resolvers move on to it as soon as
// the proxy's address refuses their query.
package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
)

// Canary is the name Firefox asks before it turns DNS over HTTPS on by itself: an
// NXDOMAIN answer keeps it on the system's resolver (and so on this proxy).
const Canary = "use-application-dns.net"

// Refusals: what a refused name gets.
const (
	RefuseNXDomain = "nxdomain" // NXDOMAIN
	RefuseZero     = "zero"     // 0.0.0.0 for A, :: for AAAA, no records otherwise
)

// NoteRefused is the Request.Note of a DNS decision in history.
const NoteRefused = "DNS query refused: a deny rule covers the name"

// Config configures a Proxy.
type Config struct {
	// Listen is the address to serve on, UDP and TCP (e.g. "127.0.0.53:53").
	Listen string
	// Upstream are the servers queries are forwarded to, tried in order ("ADDR:PORT").
	Upstream []string
	// UpstreamFile, if set, is a resolv.conf that gives the upstream servers from now
	// on whenever it changes (systemd-resolved's own resolv.conf, rewritten when the
	// network changes; see ResolvedNameservers), looked at every UpstreamCheck (0: 1 s).
	// OnUpstream, if set, is told each new list.
	UpstreamFile  string
	UpstreamCheck time.Duration
	OnUpstream    func(upstream []string)
	// Refuse is RefuseNXDomain (default) or RefuseZero.
	Refuse string
	// Identify describes the program whose socket (client, with proto) sent a query to
	// server, under the DNS id id (as the program sent it): PID, Exe, UID, User,
	// Identity, Container. It is called once per query. Nil: every query is
	// unattributed.
	Identify func(proto engine.Protocol, client, server netip.AddrPort, id uint16) engine.Request
	// Decide returns the rule that decides a request naming only a program and a
	// host (engine.Engine.RuleFor). Nil: nothing is refused.
	Decide func(req *engine.Request) (engine.Rule, bool)
	// MayRefuse reports whether Decide may refuse name to some program
	// (engine.Engine.HostRefusable). When it says no, a UDP query is sent upstream
	// while its program is being identified, and checked once more before it is
	// answered; when it says yes, or is nil, the program is identified and the name
	// decided first, and a refused name is never sent upstream.
	MayRefuse func(name string) bool
	// Names learns the answers (nil: not learned).
	Names *dnsname.Cache
	// Record is told every refused query (history).
	Record func(req engine.Request, v engine.Verdict)
	// Control is applied to upstream sockets and to the listeners (SO_MARK, so that
	// they are never held: the interception backend holds a UDP answer sent to a
	// client that spoke first when inbound connections are not held).
	Control func(network, address string, c syscall.RawConn) error
	// Timeout for one upstream exchange; 0: 2 s.
	Timeout time.Duration
	// Logf logs; nil: nothing.
	Logf func(format string, args ...any)
}

// Proxy is a running local resolver.
type Proxy struct {
	cfg      Config
	inflight chan struct{} // upstream UDP exchanges under way
	shares   *userShares   // the same, per user (see fastLane)
	serving  chan struct{} // UDP queries being answered
	upstream atomic.Pointer[[]netip.AddrPort]
	pool     *socketPool // sockets ready for the first upstream server
	// releaseFn is release, made once (a method value made per query allocates).
	releaseFn func()
	mu        sync.Mutex
	stats     Stats
}

// maxInflight bounds the upstream UDP exchanges under way at once (each holds a
// thread while it waits); more queries wait their turn.
const maxInflight = 256

// maxServing bounds the UDP queries being answered at once; more are dropped (their
// clients ask again).
const maxServing = 4096

// Stats count what the proxy did.
type Stats struct {
	Queries   uint64 `json:"queries"`
	Refused   uint64 `json:"refused"`
	Canary    uint64 `json:"canary"`
	Failed    uint64 `json:"upstream_failed"`
	Attribute uint64 `json:"attributed"`
	// Mismatched counts datagrams on an upstream socket that did not answer its
	// query (another id or question: late, or forged; or there before the query was
	// sent, on a pooled socket), skipped.
	Mismatched uint64 `json:"upstream_mismatched"`
	// Dropped counts UDP queries left unread because maxServing were being answered.
	Dropped uint64 `json:"dropped"`
	// Throttled counts UDP queries not answered because their user had its share of
	// the upstream exchanges under way and enough of its queries waiting (see
	// fastLane).
	Throttled uint64 `json:"throttled"`
}

// New checks cfg.
func New(cfg Config) (*Proxy, error) {
	if ap, err := netip.ParseAddrPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("dns proxy: listen address %q: %v", cfg.Listen, err)
	} else if ap.Addr().IsUnspecified() {
		return nil, fmt.Errorf("dns proxy: listen address %q: want one address (a client takes only answers from the address it asked)", cfg.Listen)
	}
	if len(cfg.Upstream) == 0 {
		return nil, errors.New("dns proxy: no upstream server (configure one, or list one in resolv.conf)")
	}
	for _, u := range cfg.Upstream {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return nil, fmt.Errorf("dns proxy: upstream %q: want ADDRESS:PORT", u)
		}
	}
	switch cfg.Refuse {
	case "":
		cfg.Refuse = RefuseNXDomain
	case RefuseNXDomain, RefuseZero:
	default:
		return nil, fmt.Errorf("dns proxy: refuse %q: want nxdomain or zero", cfg.Refuse)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	ups := make([]netip.AddrPort, len(cfg.Upstream))
	for i, u := range cfg.Upstream {
		ups[i] = netip.MustParseAddrPort(u)
	}
	if cfg.UpstreamCheck <= 0 {
		cfg.UpstreamCheck = time.Second
	}
	p := &Proxy{cfg: cfg, inflight: make(chan struct{}, maxInflight), shares: newUserShares(), serving: make(chan struct{}, maxServing)}
	p.upstream.Store(&ups)
	p.pool = newSocketPool(poolSize, p.openUDP, cfg.Logf)
	p.releaseFn = p.release
	return p, nil
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

func (p *Proxy) count(f func(*Stats)) {
	p.mu.Lock()
	f(&p.stats)
	p.mu.Unlock()
}

// Run serves until ctx is done. It returns once both listeners are bound (ready
// closed) or failed.
func (p *Proxy) Run(ctx context.Context, ready func()) error {
	lc := net.ListenConfig{Control: p.cfg.Control}
	pc, err := lc.ListenPacket(ctx, "udp", p.cfg.Listen)
	if err != nil {
		return listenError("udp", p.cfg.Listen, err)
	}
	ln, err := lc.Listen(ctx, "tcp", p.cfg.Listen)
	if err != nil {
		pc.Close()
		return listenError("tcp", p.cfg.Listen, err)
	}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { p.serve(w, r, nil, engine.TCP) }),
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
	errs := make(chan error, 1)
	started := make(chan struct{})
	tcp.NotifyStartedFunc = func() { close(started) }
	go func() { errs <- tcp.ActivateAndServe() }()
	p.pool.start((*p.upstream.Load())[0])
	defer p.pool.stop()
	if p.cfg.UpstreamFile != "" {
		go p.watchUpstream(ctx)
	}
	var queries sync.WaitGroup
	udpDone := make(chan error, 1)
	go func() { udpDone <- p.serveUDPConn(pc.(*net.UDPConn), &queries) }()
	select {
	case <-started:
		if ready != nil {
			ready()
		}
	case err := <-errs:
		pc.Close()
		<-udpDone
		queries.Wait()
		return fmt.Errorf("dns proxy: %w", err)
	}
	var err2 error
	select {
	case <-ctx.Done():
	case err2 = <-udpDone:
		udpDone <- err2
	}
	pc.Close()
	err2 = <-udpDone
	tcp.ShutdownContext(context.Background())
	queries.Wait()
	if err2 != nil {
		return fmt.Errorf("dns proxy: udp %s: %w", p.cfg.Listen, err2)
	}
	return nil
}

// watchUpstream takes the upstream servers from Config.UpstreamFile whenever it
// changes, until ctx is done. A file naming no server (the network is down) keeps the
// servers as they are.
func (p *Proxy) watchUpstream(ctx context.Context) {
	listen := netip.MustParseAddrPort(p.cfg.Listen).Addr()
	stamp := func() (time.Time, int64) {
		fi, err := os.Stat(p.cfg.UpstreamFile)
		if err != nil {
			return time.Time{}, -1
		}
		return fi.ModTime(), fi.Size()
	}
	mtime, size := stamp()
	t := time.NewTicker(p.cfg.UpstreamCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m, sz := stamp()
		if m.Equal(mtime) && sz == size {
			continue
		}
		mtime, size = m, sz
		list, err := ResolvedNameservers(p.cfg.UpstreamFile, listen)
		if err != nil {
			p.cfg.Logf("dns proxy: upstream servers kept: %v", err)
			continue
		}
		ups := make([]netip.AddrPort, len(list))
		for i, u := range list {
			ups[i] = netip.MustParseAddrPort(u)
		}
		if slices.Equal(ups, *p.upstream.Load()) {
			continue
		}
		p.upstream.Store(&ups)
		p.pool.setServer(ups[0])
		p.cfg.Logf("dns proxy: upstream servers now %s (from %s)", strings.Join(list, ", "), p.cfg.UpstreamFile)
		if p.cfg.OnUpstream != nil {
			p.cfg.OnUpstream(list)
		}
	}
}

var queryBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// serveUDPConn reads queries from pc until it is closed (then it returns nil), each
// answered by a worker goroutine, counted in queries. Workers are kept for the next
// queries (up to maxIdleWorkers wait, each for up to workerIdle): a fresh goroutine
// would grow its stack again on every query, copying it each time it doubles.
func (p *Proxy) serveUDPConn(pc *net.UDPConn, queries *sync.WaitGroup) error {
	local := pc.LocalAddr()
	work := make(chan udpQuery)
	stop := make(chan struct{})
	var workers sync.WaitGroup
	var idle atomic.Int32
	defer func() { close(stop); workers.Wait() }()
	for {
		bp := queryBufs.Get().(*[]byte)
		n, from, err := pc.ReadFromUDPAddrPort(*bp)
		if err != nil {
			queryBufs.Put(bp)
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EINTR) {
				continue // an ICMP error of an earlier answer
			}
			return err
		}
		select {
		case p.serving <- struct{}{}:
		default:
			queryBufs.Put(bp)
			p.count(func(s *Stats) { s.Dropped++ })
			continue // the client asks again
		}
		queries.Add(1)
		q := udpQuery{bp: bp, n: n, from: from}
		select {
		case work <- q: // a waiting worker takes it
		default:
			workers.Add(1)
			go func() {
				defer workers.Done()
				p.udpWorker(pc, local, q, work, stop, &idle, queries)
			}()
		}
	}
}

// udpQuery is a query read from the UDP listener, in a buffer of queryBufs.
type udpQuery struct {
	bp   *[]byte
	n    int
	from netip.AddrPort
}

// maxIdleWorkers bounds the workers waiting for a query; workerIdle is how long one
// waits before it ends.
const (
	maxIdleWorkers = 16
	workerIdle     = 10 * time.Second
)

// udpWorker answers q, then the queries handed to it on work, until it has waited
// workerIdle for one, maxIdleWorkers others wait already, or stop is closed.
func (p *Proxy) udpWorker(pc *net.UDPConn, local net.Addr, q udpQuery, work <-chan udpQuery, stop <-chan struct{},
	idle *atomic.Int32, queries *sync.WaitGroup) {
	var t *time.Timer
	for {
		p.handleUDP(pc, local, q)
		queryBufs.Put(q.bp)
		<-p.serving
		queries.Done()
		if idle.Add(1) > maxIdleWorkers {
			idle.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(workerIdle)
			defer t.Stop()
		} else {
			t.Reset(workerIdle)
		}
		select {
		case q = <-work:
			idle.Add(-1)
		case <-t.C:
			idle.Add(-1)
			return
		case <-stop:
			idle.Add(-1)
			return
		}
	}
}

// handleUDP answers one query read from the UDP listener.
func (p *Proxy) handleUDP(pc *net.UDPConn, local net.Addr, q udpQuery) {
	raw := (*q.bp)[:q.n]
	w := &udpWriter{pc: pc, local: local, remote: net.UDPAddrFromAddrPort(q.from), to: q.from}
	r := new(dns.Msg)
	if err := r.Unpack(raw); err != nil {
		// As miekg/dns's server: a query whose header is readable gets FORMERR.
		if len(raw) >= 12 && raw[2]&0x80 == 0 {
			m := new(dns.Msg)
			m.Id, m.Response, m.Opcode = binary.BigEndian.Uint16(raw[0:2]), true, int(raw[2]>>3)&0xF
			m.Rcode = dns.RcodeFormatError
			w.WriteMsg(m)
		}
		return
	}
	p.serve(w, r, raw, engine.UDP)
}

// udpWriter answers one query that came over UDP.
type udpWriter struct {
	pc            *net.UDPConn
	local, remote net.Addr
	to            netip.AddrPort
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.local }
func (w *udpWriter) RemoteAddr() net.Addr { return w.remote }
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) { return w.pc.WriteToUDPAddrPort(b, w.to) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}
func (w *udpWriter) Network() string             { return "udp" }

// listenError says which address could not be served, and why in plain words when
// another program holds it.
func listenError(network, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("dns proxy: %s (%s) is already in use: another program listens there "+
			"(a resolver such as systemd-resolved's stub on 127.0.0.53, or dnsmasq); choose another --dns-proxy address: %w",
			addr, strings.ToUpper(network), err)
	}
	return fmt.Errorf("dns proxy: listen %s %s: %w", network, addr, err)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// serve answers one query.
//
// raw is the query as it came over UDP (nil: TCP): forwarded as it is, under an id of
// the proxy's own.
func (p *Proxy) serve(w dns.ResponseWriter, r *dns.Msg, raw []byte, proto engine.Protocol) {
	p.count(func(s *Stats) { s.Queries++ })
	if r.Response || len(r.Question) != 1 || r.Opcode != dns.OpcodeQuery {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := dnsname.Normalize(q.Name)
	client, server := addrPortOf(w.RemoteAddr()), addrPortOf(w.LocalAddr())
	if proto == engine.UDP && name != Canary && p.cfg.Identify != nil &&
		(p.cfg.Decide == nil || name == "" || (p.cfg.MayRefuse != nil && !p.cfg.MayRefuse(name))) {
		// No rule can refuse the name to any program: the query goes upstream, then
		// the program is identified while the answer is on its way.
		p.serveUDP(w, r, raw, q, name, func() engine.Request {
			req := p.cfg.Identify(proto, client, server, r.Id)
			if req.PID != 0 {
				p.count(func(s *Stats) { s.Attribute++ })
			}
			return req
		})
		return
	}
	req := engine.Request{UID: -1}
	if p.cfg.Identify != nil {
		req = p.cfg.Identify(proto, client, server, r.Id)
	}
	if req.PID != 0 {
		p.count(func(s *Stats) { s.Attribute++ })
	}
	if name == Canary {
		p.count(func(s *Stats) { s.Canary++ })
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		m.RecursionAvailable = true
		w.WriteMsg(m)
		return
	}
	if p.refused(w, r, q, name, req, proto, client, server) {
		return
	}
	if proto == engine.UDP {
		p.serveUDP(w, r, raw, q, name, func() engine.Request { return req })
		return
	}
	resp, err := p.forward(r, proto)
	if err != nil {
		p.failed(w, r, q, name, err)
		return
	}
	p.learn(req, q, resp)
	resp.Id = r.Id
	w.WriteMsg(resp)
}

// refused answers the query as refused, and records it, if a deny rule covers the name
// for the program req.
func (p *Proxy) refused(w dns.ResponseWriter, r *dns.Msg, q dns.Question, name string, req engine.Request, proto engine.Protocol, client, server netip.AddrPort) bool {
	if p.cfg.Decide == nil || name == "" {
		return false
	}
	if p.cfg.MayRefuse != nil && !p.cfg.MayRefuse(name) {
		// No rule refuses the name to any program (an index look-up, where Decide
		// matches the rules for this program).
		return false
	}
	ask := engine.Request{Direction: engine.Outbound, PID: req.PID, Exe: req.Exe, UID: req.UID, User: req.User,
		Identity: req.Identity, Container: req.Container, Host: name, HostSource: engine.HostOwn}
	rule, ok := p.cfg.Decide(&ask)
	if !ok || rule.Host == "" || rule.Action == engine.Allow {
		return false
	}
	p.refuse(w, r, q)
	p.count(func(s *Stats) { s.Refused++ })
	if p.cfg.Record != nil {
		rec := req
		rec.Time, rec.Direction, rec.Protocol = time.Now(), engine.Outbound, proto
		rec.Local, rec.Remote = client, server
		rec.Host, rec.HostSource, rec.Note = name, engine.HostOwn, NoteRefused
		p.cfg.Record(rec, engine.Verdict{Action: rule.Action, Reason: engine.ReasonRule, RuleID: rule.ID})
	}
	return true
}

// serveUDP forwards a query that came over UDP as packed bytes and hands the answer
// back as it came (under the client's id). identified gives the asking program; it
// is called once the query is sent, so that the program is identified while the
// answer is on its way, when the query gets a fast-lane slot, else before, so that
// the query goes out within its user's share (see fastLane). Once the answer is in, the name is checked against the rules
// for that program once more (they may have changed), then learned as its own.
func (p *Proxy) serveUDP(w dns.ResponseWriter, r *dns.Msg, raw []byte, q dns.Question, name string, identified func() engine.Request) {
	packed := raw
	if questionEnd(raw) == 0 { // not given, or its question name compressed
		var err error
		if packed, err = r.Pack(); err != nil || questionEnd(packed) == 0 {
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeFormatError)
			w.WriteMsg(m)
			return
		}
	}
	var req engine.Request
	fast := p.shares.tryFast()
	if !fast {
		req = identified()
		if !p.shares.acquire(req.UID, p.cfg.Timeout) {
			p.count(func(s *Stats) { s.Throttled++ })
			return // not answered: the client asks again
		}
	}
	var errs []error
	next := 0
	ups := *p.upstream.Load()
	send := func() *asking {
		for ; next < len(ups); next++ {
			a, err := p.ask(packed, ups[next])
			if err == nil {
				next++
				return a
			}
			errs = append(errs, err)
		}
		return nil
	}
	pending := send()
	if fast {
		req = identified()
		p.shares.charge(req.UID)
		defer p.shares.endFast()
	}
	defer p.shares.release(req.UID)
	bp := answerBufs.Get().(*[]byte)
	defer answerBufs.Put(bp)
	var answer []byte
	for pending != nil {
		a, err := pending.answer(p, *bp)
		if err == nil {
			answer = a
			// Closed, and another made ready, once the answer is out (by the
			// pool's goroutine, off this worker).
			defer p.pool.retire(pending.conn)
			break
		}
		pending.conn.close()
		errs = append(errs, err)
		pending = send()
	}
	switch {
	case answer == nil:
		p.failed(w, r, q, name, errors.Join(errs...))
	case !p.refused(w, r, q, name, req, engine.UDP, addrPortOf(w.RemoteAddr()), addrPortOf(w.LocalAddr())):
		p.learnPacked(req, q, answer)
		w.Write(answer)
	}
}

// failed answers SERVFAIL: no upstream answered.
func (p *Proxy) failed(w dns.ResponseWriter, r *dns.Msg, q dns.Question, name string, err error) {
	p.count(func(s *Stats) { s.Failed++ })
	p.cfg.Logf("dns proxy: %s %s: %v", name, dns.TypeToString[q.Qtype], err)
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeServerFailure)
	w.WriteMsg(m)
}

// refuse answers a refused name. The answer says recursion is available: glibc and
// Go take an empty answer without it for a lame referral and ask the next server in
// resolv.conf (with --fail open, the upstream itself).
func (p *Proxy) refuse(w dns.ResponseWriter, r *dns.Msg, q dns.Question) {
	m := new(dns.Msg)
	if p.cfg.Refuse == RefuseNXDomain {
		m.SetRcode(r, dns.RcodeNameError)
		m.RecursionAvailable = true
		w.WriteMsg(m)
		return
	}
	m.SetReply(r)
	m.RecursionAvailable = true
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 60}
	switch q.Qtype {
	case dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4zero})
	case dns.TypeAAAA:
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.IPv6unspecified})
	}
	w.WriteMsg(m)
}

// forward asks the upstream servers in turn.
func (p *Proxy) forward(r *dns.Msg, proto engine.Protocol) (*dns.Msg, error) {
	network := "udp"
	if proto == engine.TCP {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: p.cfg.Timeout,
		Dialer: &net.Dialer{Timeout: p.cfg.Timeout, Control: p.cfg.Control}}
	var errs []error
	for _, ap := range *p.upstream.Load() {
		u := ap.String()
		resp, _, err := c.Exchange(r.Copy(), u)
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", u, err))
	}
	return nil, errors.Join(errs...)
}

// learnPacked is learn for a packed answer, parsed only when it can teach a name.
func (p *Proxy) learnPacked(req engine.Request, q dns.Question, a []byte) {
	if p.cfg.Names == nil || len(a) < 12 || a[3]&0x0F != dns.RcodeSuccess || q.Qclass != dns.ClassINET ||
		(q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA) {
		return
	}
	resp := new(dns.Msg)
	if resp.Unpack(a) != nil {
		return
	}
	p.learn(req, q, resp)
}

// learn records the answer's addresses of the question's type, reached from the
// question name directly or along its CNAME chain, as the asking program's names.
// A question name the packet learner would not take (see learnable) teaches nothing.
func (p *Proxy) learn(req engine.Request, q dns.Question, resp *dns.Msg) {
	if p.cfg.Names == nil || resp.Rcode != dns.RcodeSuccess || q.Qclass != dns.ClassINET ||
		(q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA) {
		return
	}
	qname := dnsname.Normalize(q.Name)
	if !learnable(qname) {
		return
	}
	chain := map[string]uint32{strings.ToLower(q.Name): ^uint32(0)}
	for range 16 { // CNAME hops
		grew := false
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok {
				if ttl, in := chain[strings.ToLower(c.Hdr.Name)]; in {
					t := strings.ToLower(c.Target)
					if _, seen := chain[t]; !seen {
						chain[t] = min(ttl, c.Hdr.Ttl)
						grew = true
					}
				}
			}
		}
		if !grew {
			break
		}
	}
	var prog dnsname.Program
	if req.PID != 0 && req.Exe != "" {
		prog = dnsname.Program{Exe: req.Exe, Identity: uint8(req.Identity), Container: req.Container, UID: req.UID}
	}
	for _, rr := range resp.Answer {
		var a netip.Addr
		switch v := rr.(type) {
		case *dns.A:
			if q.Qtype == dns.TypeA {
				a, _ = netip.AddrFromSlice(v.A.To4())
			}
		case *dns.AAAA:
			if q.Qtype == dns.TypeAAAA {
				a, _ = netip.AddrFromSlice(v.AAAA.To16())
			}
		}
		ttl, in := chain[strings.ToLower(rr.Header().Name)]
		if !a.IsValid() || !in {
			continue
		}
		p.cfg.Names.AddFor(prog, a, qname, time.Duration(min(ttl, rr.Header().Ttl))*time.Second)
	}
}

// learnable reports whether name, a question name in miekg/dns's presentation form
// (dnsname.Normalize'd), is one the packet learner takes (package dnsname): labels of
// letters, digits, '-' and '_', none empty, at most 253 characters. Any other byte in
// a label is escaped in that form ('\.', '\\', '\DDD'): such a name could not be
// named by a rule, and its escaped dots would be read as label ends by the rules'
// wildcards (`evil\.example.com`, labels "evil.example" and "com", is no name below
// example.com) — review 38.
func learnable(name string) bool {
	if name == "" || len(name) > 253 || name[0] == '.' || name[len(name)-1] == '.' {
		return false
	}
	prev := byte(0)
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.':
			if prev == '.' {
				return false
			}
		default:
			return false
		}
		prev = c
	}
	return true
}
