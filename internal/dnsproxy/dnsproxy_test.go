package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
)

// upstream runs a DNS server on loopback that answers every A question with
// 198.18.0.1 behind a CNAME (www.NAME -> NAME) and AAAA with fd00::1.
func upstream(t testing.TB) string {
	addr, _ := recordingUpstream(t)
	return addr
}

// asked is the question names an upstream was asked, in order.
type asked struct {
	mu    sync.Mutex
	names []string
}

func (a *asked) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.names)
}

// recordingUpstream is upstream, keeping the names it was asked.
func recordingUpstream(t testing.TB) (string, *asked) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &asked{}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		for _, q := range r.Question {
			rec.mu.Lock()
			rec.names = append(rec.names, q.Name)
			rec.mu.Unlock()
		}
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			q := r.Question[0]
			target := "edge." + q.Name
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: target})
			switch q.Qtype {
			case dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(198, 18, 0, 1)})
				// Not reached from the question: must teach nothing.
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "bank.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(198, 18, 0, 66)})
			case dns.TypeAAAA:
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 300}, AAAA: net.ParseIP("fd00::1")})
			}
		}
		w.WriteMsg(m)
	})}
	go s.ActivateAndServe()
	t.Cleanup(func() { s.Shutdown() })
	return pc.LocalAddr().String(), rec
}

type fakeWriter struct {
	local, remote net.Addr
	got           *dns.Msg
}

func (w *fakeWriter) LocalAddr() net.Addr       { return w.local }
func (w *fakeWriter) RemoteAddr() net.Addr      { return w.remote }
func (w *fakeWriter) WriteMsg(m *dns.Msg) error { w.got = m; return nil }
func (w *fakeWriter) Write(b []byte) (int, error) {
	w.got = new(dns.Msg)
	return len(b), w.got.Unpack(b)
}
func (w *fakeWriter) Close() error        { return nil }
func (w *fakeWriter) TsigStatus() error   { return nil }
func (w *fakeWriter) TsigTimersOnly(bool) {}
func (w *fakeWriter) Hijack()             {}
func (w *fakeWriter) Network() string     { return "udp" }

var asker = engine.Request{PID: 42, Exe: "/usr/bin/asker", UID: 1000, Identity: engine.IdentityVerified}

func newProxy(t testing.TB, up string) (*Proxy, *dnsname.Cache, *[]engine.Request) {
	t.Helper()
	names := dnsname.NewCache(0)
	var recorded []engine.Request
	p, err := New(Config{
		Listen: "127.0.0.1:53", Upstream: []string{up}, Names: names,
		Identify: func(engine.Protocol, netip.AddrPort, netip.AddrPort, uint16) engine.Request { return asker },
		Decide: func(req *engine.Request) (engine.Rule, bool) {
			if req.Host == "denied.test" && req.Exe == asker.Exe {
				return engine.Rule{ID: 7, Host: "denied.test", Action: engine.Deny}, true
			}
			return engine.Rule{}, false
		},
		MayRefuse: func(name string) bool { return name == "denied.test" },
		Record:    func(req engine.Request, v engine.Verdict) { recorded = append(recorded, req) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return p, names, &recorded
}

func ask(p *Proxy, name string, qtype uint16) *dns.Msg {
	w := &fakeWriter{local: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.Id = 0x4242
	p.serve(w, m, nil, engine.UDP)
	return w.got
}

func TestServe(t *testing.T) {
	p, names, recorded := newProxy(t, upstream(t))
	prog := dnsname.Program{Exe: asker.Exe, Identity: uint8(asker.Identity), UID: asker.UID}

	r := ask(p, "www.example.test", dns.TypeA)
	if r == nil || r.Rcode != dns.RcodeSuccess || r.Id != 0x4242 || len(r.Answer) != 3 {
		t.Fatalf("forwarded answer: %v", r)
	}
	if name, own, ok := names.LookupFor(prog, netip.MustParseAddr("198.18.0.1")); !ok || !own || name != "www.example.test" {
		t.Errorf("learned %q own %v ok %v; want www.example.test, own", name, own, ok)
	}
	if name, _, ok := names.LookupFor(prog, netip.MustParseAddr("198.18.0.66")); ok {
		t.Errorf("a record not reached from the question taught %q", name)
	}
	ask(p, "v6.example.test", dns.TypeAAAA)
	if name, own, _ := names.LookupFor(prog, netip.MustParseAddr("fd00::1")); !own || name != "v6.example.test" {
		t.Errorf("AAAA: learned %q own %v", name, own)
	}

	if r := ask(p, "denied.test", dns.TypeA); r == nil || r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
		t.Errorf("denied name: %v, want NXDOMAIN", r)
	}
	if len(*recorded) != 1 || (*recorded)[0].Host != "denied.test" || (*recorded)[0].PID != 42 || (*recorded)[0].Note != NoteRefused {
		t.Errorf("recorded %+v", *recorded)
	}
	if r := ask(p, "Use-Application-DNS.net", dns.TypeA); r == nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("canary: %v, want NXDOMAIN", r)
	}
	p.cfg.Refuse = RefuseZero
	if r := ask(p, "denied.test", dns.TypeA); r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(net.IPv4zero) {
		t.Errorf("denied name, refuse zero: %v, want 0.0.0.0", r)
	}
	if s := p.Stats(); s.Refused != 2 || s.Canary != 1 || s.Attribute != s.Queries {
		t.Errorf("stats %+v", s)
	}

	// No upstream answers: SERVFAIL, never a hang.
	dead, _, _ := newProxy(t, "127.0.0.1:9")
	dead.cfg.Timeout = 200 * time.Millisecond
	if r := ask(dead, "www.example.test", dns.TypeA); r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("dead upstream: %v, want SERVFAIL", r)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Listen: "nowhere", Upstream: []string{"127.0.0.1:53"}},
		{Listen: "127.0.0.1:53"},
		{Listen: "127.0.0.1:53", Upstream: []string{"dns.example"}},
		{Listen: "127.0.0.1:53", Upstream: []string{"127.0.0.1:53"}, Refuse: "drop"},
		{Listen: "0.0.0.0:53", Upstream: []string{"127.0.0.1:53"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestResolvConfRestored: a symbolic link (systemd-resolved's stub file) comes back as
// the same link; a daemon that crashed after pointing the file finds the original
// again at its next start.
func TestResolvConfRestored(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	stub := filepath.Join(dir, "stub-resolv.conf")
	os.WriteFile(stub, []byte("nameserver 198.18.0.53\nnameserver 127.0.0.1\nsearch lan\n"), 0o644)
	path := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink(stub, path); err != nil {
		t.Fatal(err)
	}
	rc, err := OpenResolvConf(path, state)
	if err != nil {
		t.Fatal(err)
	}
	if ns := rc.Nameservers(netip.MustParseAddr("127.0.0.1")); len(ns) != 1 || ns[0] != "198.18.0.53:53" {
		t.Errorf("upstream %v, want 198.18.0.53:53 (not the proxy's own address)", ns)
	}
	if err := rc.Point(netip.MustParseAddr("127.0.0.1"), nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "nameserver 127.0.0.1\nsearch lan\n") || strings.Contains(string(b), "198.18.0.53") {
		t.Errorf("pointed file:\n%s", b)
	}
	if b, _ := os.ReadFile(stub); !strings.Contains(string(b), "198.18.0.53") {
		t.Errorf("the link's target was written through: %s", b)
	}
	// A crash now; the next start reads the kept original, not its own file.
	again, err := OpenResolvConf(path, state)
	if err != nil {
		t.Fatal(err)
	}
	if ns := again.Nameservers(netip.MustParseAddr("127.0.0.1")); len(ns) != 1 || ns[0] != "198.18.0.53:53" {
		t.Errorf("after a crash: upstream %v", ns)
	}
	if err := again.Restore(); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(path); err != nil || target != stub {
		t.Errorf("restored: link %q %v, want a link to %s", target, err, stub)
	}
	if _, err := os.Stat(filepath.Join(state, "resolv.conf.orig")); err == nil {
		t.Error("backup left behind after restore")
	}
}

// FuzzServe hands the proxy any message a local program could send: it answers
// each with its id, or not at all, and never panics; only names of the question are
// learned.
func FuzzServe(f *testing.F) {
	up := upstream(f)
	for _, name := range []string{"www.example.test", "denied.test", Canary, "."} {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		b, _ := m.Pack()
		f.Add(b)
	}
	p, names, _ := newProxy(f, up)
	p.cfg.Timeout = 500 * time.Millisecond
	prog := dnsname.Program{Exe: asker.Exe, Identity: uint8(asker.Identity), UID: asker.UID}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := new(dns.Msg)
		if m.Unpack(b) != nil {
			return // the server answers FORMERR itself
		}
		w := &fakeWriter{local: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
		p.serve(w, m, slices.Clone(b), engine.UDP) // the bytes as the UDP loop hands them on
		if w.got == nil || w.got.Id != m.Id {
			t.Fatalf("answer %v to id %d", w.got, m.Id)
		}
		if name, _, ok := names.LookupFor(prog, netip.MustParseAddr("198.18.0.66")); ok {
			t.Fatalf("learned %q from a record outside the question's chain", name)
		}
	})
}

// The listeners get Control too (latch's SO_MARK): without it, answers to clients on
// other hosts (a proxy listening on a bridge address) would be held by the Linux
// backend as the daemon's own outbound UDP when inbound connections are not held.
func TestListenersGetControl(t *testing.T) {
	p, _, _ := newProxy(t, upstream(t))
	var mu sync.Mutex
	var controlled []string
	p.cfg.Control = func(network, address string, c syscall.RawConn) error {
		mu.Lock()
		controlled = append(controlled, network+" "+address)
		mu.Unlock()
		return nil
	}
	startProxyT(t, p)
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"udp4 " + p.cfg.Listen, "tcp4 " + p.cfg.Listen} {
		if !slices.Contains(controlled, want) {
			t.Errorf("listener %q did not get Control; got %q", want, controlled)
		}
	}
}

// TestPointFallback: fail-open names up to two upstream servers after the proxy (never
// the proxy twice), fail-closed only the proxy; "rotate" goes (it would send every
// other query past the proxy), the other options stay.
func TestPointFallback(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	orig := "nameserver 198.18.0.53\noptions rotate ndots:2\nsearch lan\noptions rotate\n"
	os.WriteFile(path, []byte(orig), 0o644)
	rc, err := OpenResolvConf(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	proxy := netip.MustParseAddr("127.0.0.153")
	ups := []netip.Addr{proxy, netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("198.18.0.54"), netip.MustParseAddr("198.18.0.55")}
	if err := rc.Point(proxy, ups); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var ns []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "nameserver" {
			ns = append(ns, f[1])
		}
	}
	if want := []string{"127.0.0.153", "198.18.0.53", "198.18.0.54"}; !slices.Equal(ns, want) {
		t.Errorf("fail-open name servers %v, want %v", ns, want)
	}
	if s := string(b); strings.Contains(s, "rotate") || !strings.Contains(s, "\noptions ndots:2\nsearch lan\n") {
		t.Errorf("fail-open file:\n%s", s)
	}
	if err := rc.Point(proxy, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); strings.Count(string(b), "nameserver") != 1 || !strings.Contains(string(b), "nameserver 127.0.0.153\n") {
		t.Errorf("fail-closed file:\n%s", b)
	}
	if err := rc.Restore(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != orig {
		t.Errorf("restored:\n%s\nwant:\n%s", b, orig)
	}
}

// TestRelease: a start that failed before pointing the file forgets its backup (a
// later start reads the file as it is then); a backup an earlier run left stays.
func TestRelease(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	os.WriteFile(path, []byte("nameserver 198.18.0.53\n"), 0o644)
	rc, err := OpenResolvConf(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	rc.Release()
	os.WriteFile(path, []byte("nameserver 198.18.0.99\n"), 0o644) // DHCP changed it since
	rc, err = OpenResolvConf(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	if ns := rc.Nameservers(netip.Addr{}); !slices.Equal(ns, []string{"198.18.0.99:53"}) {
		t.Errorf("after a released start: upstream %v, want the file as it is now", ns)
	}
	rc.Point(netip.MustParseAddr("127.0.0.153"), nil) // then a crash
	again, err := OpenResolvConf(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	again.Release()
	if _, err := os.Stat(filepath.Join(dir, "resolv.conf.orig")); err != nil {
		t.Errorf("an earlier run's backup was dropped: %v", err)
	}
	var none *ResolvConf
	none.Release()
}

// resolvedLayout lays out systemd-resolved's files under dir as resolved does under
// /run/systemd/resolve, with etc/resolv.conf a link to the stub file (relative or
// absolute).
func resolvedLayout(t *testing.T, dir string, relative bool) (resolv, stub string) {
	t.Helper()
	run := filepath.Join(dir, "run", "systemd", "resolve")
	os.MkdirAll(run, 0o755)
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	stub = filepath.Join(run, "stub-resolv.conf")
	os.WriteFile(stub, []byte("# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n"), 0o644)
	os.WriteFile(filepath.Join(run, "resolv.conf"), []byte("# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\nnameserver 198.18.0.53\nnameserver 127.0.0.153\nnameserver 198.18.0.54\nsearch lan\n"), 0o644)
	resolv = filepath.Join(dir, "etc", "resolv.conf")
	target := stub
	if relative {
		target = "../run/systemd/resolve/stub-resolv.conf"
	}
	if err := os.Symlink(target, resolv); err != nil {
		t.Fatal(err)
	}
	return resolv, target
}

// TestSystemdResolved: resolv.conf as systemd-resolved's stub is recognised (a link to
// stub-resolv.conf, relative or absolute, or a file naming only the stub), and the
// upstream comes from resolved's own resolv.conf beside it, without the proxy's
// address or the stub's.
func TestSystemdResolved(t *testing.T) {
	proxy := netip.MustParseAddr("127.0.0.153")
	for _, relative := range []bool{false, true} {
		dir := t.TempDir()
		resolv, target := resolvedLayout(t, dir, relative)
		rc, err := OpenResolvConf(resolv, dir)
		if err != nil {
			t.Fatal(err)
		}
		uplink, ok := rc.SystemdResolved()
		if want := filepath.Join(dir, "run", "systemd", "resolve", "resolv.conf"); !ok || uplink != want {
			t.Fatalf("relative %v: SystemdResolved() = %q %v, want %q", relative, uplink, ok, want)
		}
		ns, err := ResolvedNameservers(uplink, proxy)
		if err != nil || !slices.Equal(ns, []string{"198.18.0.53:53", "198.18.0.54:53"}) {
			t.Errorf("resolved's servers %v %v", ns, err)
		}
		rc.Point(proxy, nil)
		if err := rc.Restore(); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(resolv); err != nil || got != target {
			t.Errorf("restored link %q %v, want %q", got, err, target)
		}
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	defer func(old string) { resolvedUplink = old }(resolvedUplink)
	resolvedUplink = filepath.Join(dir, "no-such-uplink.conf")
	os.WriteFile(path, []byte("nameserver 127.0.0.53\n"), 0o644)
	if rc, err := OpenResolvConf(path, dir); err != nil {
		t.Fatal(err)
	} else if uplink, ok := rc.SystemdResolved(); ok {
		t.Errorf("127.0.0.53 without resolved's files: SystemdResolved() = %q, want not resolved", uplink)
	} else {
		rc.Release()
	}
	resolvedUplink = filepath.Join(dir, "uplink.conf")
	os.WriteFile(resolvedUplink, []byte("nameserver 198.18.0.53\n"), 0o644)
	for conf, want := range map[string]bool{
		"nameserver 127.0.0.53\noptions edns0\n":          true,
		"nameserver 127.0.0.53\nnameserver 198.18.0.53\n": false,
		"nameserver 198.18.0.53\n":                        false,
		"# no servers\n":                                  false,
	} {
		os.WriteFile(path, []byte(conf), 0o644)
		rc, err := OpenResolvConf(path, dir)
		if err != nil {
			t.Fatal(err)
		}
		if uplink, ok := rc.SystemdResolved(); ok != want || (ok && uplink != resolvedUplink) {
			t.Errorf("%q: SystemdResolved() = %q %v, want %v", conf, uplink, ok, want)
		}
		rc.Release()
	}

	os.WriteFile(path, []byte("# No DNS servers known.\nnameserver 127.0.0.53\n"), 0o644)
	if _, err := ResolvedNameservers(path, proxy); err == nil || !strings.Contains(err.Error(), "names none") {
		t.Errorf("no servers: %v", err)
	}
}

// TestListenInUse: an address another program serves is refused with its name.
func TestListenInUse(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p, _, _ := newProxy(t, upstream(t))
	p.cfg.Listen = pc.LocalAddr().String()
	err = p.Run(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), p.cfg.Listen+" (UDP) is already in use") {
		t.Errorf("Run on a taken address: %v", err)
	}
}

// TestAskWhileIdentifying: a name no rule can refuse (MayRefuse false) goes upstream
// while the program is being identified, and is still learned as that program's own;
// a name some rule may refuse is never sent upstream before the program is known and
// the name decided, however slow the identification; a rule that came while the
// query was upstream still refuses it (the upstream's answer is dropped).
func TestAskWhileIdentifying(t *testing.T) {
	up, rec := recordingUpstream(t)
	p, names, recorded := newProxy(t, up)
	var lateDeny atomic.Bool
	decide := p.cfg.Decide
	p.cfg.Decide = func(req *engine.Request) (engine.Rule, bool) {
		if lateDeny.Load() && req.Host == "late.test" {
			return engine.Rule{ID: 9, Host: "late.test", Action: engine.Deny}, true
		}
		return decide(req)
	}
	// As the engine's: the new rule makes the name refusable.
	mayRefuse := p.cfg.MayRefuse
	p.cfg.MayRefuse = func(name string) bool { return (lateDeny.Load() && name == "late.test") || mayRefuse(name) }
	var upstreamFirst atomic.Bool
	p.cfg.Identify = func(engine.Protocol, netip.AddrPort, netip.AddrPort, uint16) engine.Request {
		deadline := time.Now().Add(2 * time.Second)
		for len(rec.list()) == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		upstreamFirst.Store(len(rec.list()) > 0)
		return asker
	}
	r := askUDP(p, "www.example.test", dns.TypeA)
	if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 || r.Id != 0x4242 {
		t.Fatalf("answer: %v", r)
	}
	if !upstreamFirst.Load() {
		t.Error("the upstream was asked only after the program was identified")
	}
	prog := dnsname.Program{Exe: asker.Exe, Identity: uint8(asker.Identity), UID: asker.UID}
	if name, own, _ := names.LookupFor(prog, netip.MustParseAddr("198.18.0.1")); !own || name != "www.example.test" {
		t.Errorf("learned %q own %v", name, own)
	}

	// Refusable: identified first (this Identify would wait 2 s for an upstream query
	// that must not come), refused, never sent.
	before := len(rec.list())
	p.cfg.Identify = func(engine.Protocol, netip.AddrPort, netip.AddrPort, uint16) engine.Request {
		time.Sleep(50 * time.Millisecond)
		if len(rec.list()) != before {
			t.Error("denied.test went upstream before it was decided")
		}
		return asker
	}
	if r := askUDP(p, "denied.test", dns.TypeA); r == nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("denied.test: %v, want NXDOMAIN", r)
	}
	if got := rec.list(); len(got) != before {
		t.Errorf("upstream asked %v after the refusal", got[before:])
	}

	p.cfg.Identify = func(engine.Protocol, netip.AddrPort, netip.AddrPort, uint16) engine.Request { return asker }
	lateDeny.Store(true)
	if r := askUDP(p, "late.test", dns.TypeA); r == nil || r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
		t.Errorf("late.test, denied while upstream: %v, want NXDOMAIN", r)
	}
	if n := len(*recorded); n != 2 || (*recorded)[1].Host != "late.test" {
		t.Errorf("recorded %+v", *recorded)
	}
	if s := p.Stats(); s.Attribute != 3 || s.Queries != 3 {
		t.Errorf("stats %+v", s)
	}
}

// askUDP is ask with the query's packed bytes, as the UDP loop hands them on.
func askUDP(p *Proxy, name string, qtype uint16) *dns.Msg {
	w := &fakeWriter{local: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.Id = 0x4242
	raw, _ := m.Pack()
	p.serve(w, m, raw, engine.UDP)
	return w.got
}

// TestAnswerMustMatch: on the upstream socket, a datagram with another id, or the
// query's id but another question, is not taken for the answer (counted, skipped);
// the answer that matches is, and goes back under the client's id. An error answer
// without a question (FORMERR) is taken, and teaches nothing.
func TestAnswerMustMatch(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			send := func(m *dns.Msg) { b, _ := m.Pack(); pc.WriteTo(b, from) }
			if q.Question[0].Name == "formerr.test." {
				m := new(dns.Msg)
				m.Id, m.Response, m.Rcode = q.Id, true, dns.RcodeFormatError
				send(m)
				continue
			}
			answer := func(name string, id uint16, ip net.IP) *dns.Msg {
				m := new(dns.Msg)
				m.SetQuestion(name, dns.TypeA)
				m.Id, m.Response = id, true
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip}}
				return m
			}
			send(answer(q.Question[0].Name, q.Id+1, net.IPv4(198, 18, 0, 66)))                // another id
			send(answer("bank.test.", q.Id, net.IPv4(198, 18, 0, 66)))                        // another question
			send(answer(strings.ToUpper(q.Question[0].Name), q.Id, net.IPv4(198, 18, 0, 66))) // another case
			send(answer(q.Question[0].Name, q.Id, net.IPv4(198, 18, 0, 7)))
		}
	}()
	p, names, _ := newProxy(t, pc.LocalAddr().String())
	r := askUDP(p, "www.example.test", dns.TypeA)
	if r == nil || r.Id != 0x4242 || len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(net.IPv4(198, 18, 0, 7)) {
		t.Fatalf("answer %v, want 198.18.0.7 under id 0x4242", r)
	}
	if s := p.Stats(); s.Mismatched != 3 {
		t.Errorf("mismatched %d, want 3", s.Mismatched)
	}
	prog := dnsname.Program{Exe: asker.Exe, Identity: uint8(asker.Identity), UID: asker.UID}
	if name, _, ok := names.LookupFor(prog, netip.MustParseAddr("198.18.0.66")); ok {
		t.Errorf("a mismatched answer taught %q", name)
	}
	if r := askUDP(p, "formerr.test", dns.TypeA); r == nil || r.Rcode != dns.RcodeFormatError || r.Id != 0x4242 {
		t.Errorf("FORMERR without a question: %v", r)
	}
}

// listenDNS53 runs upstream's answers on addr:53 (a loopback address of this test's
// own: resolv.conf files name no port), or skips without the privilege.
func listenDNS53(t *testing.T, addr string) *asked {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr+":53")
	if err != nil {
		t.Skipf("no DNS server on %s:53: %v", addr, err)
	}
	rec := &asked{}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		rec.mu.Lock()
		rec.names = append(rec.names, r.Question[0].Name)
		rec.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		w.WriteMsg(m)
	})}
	go s.ActivateAndServe()
	t.Cleanup(func() { s.Shutdown() })
	return rec
}

// upstreamFile gives two loopback addresses of this process (127.net1.x.y and
// 127.net2.x.y) and a resolv.conf path with a function that writes it, dated age ago.
func upstreamFile(t *testing.T, net1, net2 int) (a, b, file string, write func(conf string, age time.Duration)) {
	pid := os.Getpid()
	a = fmt.Sprintf("127.%d.%d.%d", net1, pid>>8&0xff, pid&0xff)
	b = fmt.Sprintf("127.%d.%d.%d", net2, pid>>8&0xff, pid&0xff)
	file = filepath.Join(t.TempDir(), "resolv.conf")
	write = func(conf string, age time.Duration) {
		os.WriteFile(file, []byte(conf), 0o644)
		when := time.Now().Add(-age)
		os.Chtimes(file, when, when)
	}
	return a, b, file, write
}

// TestUpstreamFollowsFile: with UpstreamFile (systemd-resolved's own resolv.conf) the
// upstream servers follow the file when it changes (a new network), OnUpstream hears
// the new list; a file naming no server keeps the list.
func TestUpstreamFollowsFile(t *testing.T) {
	a, b, file, write := upstreamFile(t, 77, 78)
	first, second := listenDNS53(t, a), listenDNS53(t, b)
	write("nameserver "+a+"\n", time.Hour)
	p, _, _ := newProxy(t, a+":53")
	p.cfg.UpstreamFile, p.cfg.UpstreamCheck = file, 10*time.Millisecond
	heard := make(chan []string, 4)
	p.cfg.OnUpstream = func(l []string) { heard <- l }
	addr := startProxyT(t, p)
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion("one.test.", dns.TypeA)
	if _, _, err := c.Exchange(q, addr); err != nil || len(first.list()) != 1 {
		t.Fatalf("first: %v, asked %v", err, first.list())
	}
	write("# the network changed\nnameserver "+b+"\n", 0)
	select {
	case l := <-heard:
		if !slices.Equal(l, []string{b + ":53"}) {
			t.Errorf("OnUpstream %v", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the new upstream was not taken")
	}
	q.SetQuestion("two.test.", dns.TypeA)
	if _, _, err := c.Exchange(q, addr); err != nil || !slices.Equal(second.list(), []string{"two.test."}) || len(first.list()) != 1 {
		t.Errorf("after the change: %v; asked first %v, second %v", err, first.list(), second.list())
	}
	write("# No DNS servers known.\n", -time.Hour)
	time.Sleep(100 * time.Millisecond)
	q.SetQuestion("three.test.", dns.TypeA)
	if _, _, err := c.Exchange(q, addr); err != nil || len(second.list()) != 2 {
		t.Errorf("a file naming no server: %v; asked second %v", err, second.list())
	}
}

// TestRefusalsAreFinal: the proxy's own answers (a refusal in either mode, the canary)
// say recursion is available. glibc and Go take an empty NOERROR answer without it for
// a lame referral and ask the next server — with --fail open, the upstream named after
// the proxy, which would answer the refused name.
func TestRefusalsAreFinal(t *testing.T) {
	p, _, _ := newProxy(t, upstream(t))
	for _, mode := range []string{RefuseNXDomain, RefuseZero} {
		p.cfg.Refuse = mode
		for _, qt := range []uint16{dns.TypeA, dns.TypeMX} {
			if r := ask(p, "denied.test", qt); r == nil || !r.RecursionAvailable || !r.Response {
				t.Errorf("refusal (%s, %s): %v, want recursion available", mode, dns.TypeToString[qt], r)
			}
		}
	}
	if r := ask(p, Canary, dns.TypeA); r == nil || !r.RecursionAvailable || r.Rcode != dns.RcodeNameError {
		t.Errorf("canary: %v, want NXDOMAIN, recursion available", r)
	}
}
