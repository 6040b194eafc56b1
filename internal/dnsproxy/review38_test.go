package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
)

// Review 38, finding 2 (low): the local resolver learns names the packet learner
// never would. dnsname's parser takes only names of letters, digits, '-' and '_'
// ("anything else could not be shown safely or matched by a rule"), and rules are
// checked against that form (engine.ParseHost); but the proxy labels answers with
// miekg/dns's presentation form of the question (dnsname.Normalize of q.Name), which
// keeps any byte, escaped. A question whose label holds a dot — wire labels
// "evil.example" and "com", a name below com, not below example.com — is learned as
// `evil\.example.com`, and the engine's wildcard matching, which splits names at
// every '.', finds the suffix ".example.com" in it: `--host '*.example.com' --action
// allow` lets the program reach whatever address that name's answer gave. (Whoever
// answers for such a name — the com servers for a real resolver — decides the
// address; a resolver with a local zone or a forwarder that answers it lets a
// program that may only talk to it label an address of its choice.)
//
// Run: go test -count=1 -run TestReview38ProxyLearnsEscapedLabels ./internal/dnsproxy/
func TestReview38ProxyLearnsEscapedLabels(t *testing.T) {
	p, names, _ := newProxy(t, upstream(t))
	prog := dnsname.Program{Exe: asker.Exe, Identity: uint8(asker.Identity), UID: asker.UID}

	// Labels "evil.example" and "com" (the test upstream answers any A question with
	// 198.18.0.1 behind a CNAME).
	r := ask(p, `evil\.example.com.`, dns.TypeA)
	if r == nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("answer: %v", r)
	}
	addr := netip.MustParseAddr("198.18.0.1")
	name, own, ok := names.LookupFor(prog, addr)
	if !ok {
		return // learned nothing: what the packet learner does for such a name
	}
	if _, err := engine.ParseHost(name); err != nil || strings.ContainsAny(name, `\ `) {
		t.Errorf("learned %q (own %v) for %v: not a hostname rules can name (ParseHost: %v); "+
			"the packet learner learns nothing for such a question", name, own, addr, err)
	}

	// What it lets through: an allow rule for *.example.com matches that name.
	e, err := engine.New(engine.Config{Default: engine.Deny}, []engine.Rule{
		{ID: 1, App: asker.Exe, Host: "*.example.com", Action: engine.Allow},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	req := engine.Request{Direction: engine.Outbound, Protocol: engine.TCP, PID: asker.PID, Exe: asker.Exe,
		UID: asker.UID, Identity: asker.Identity, Remote: netip.AddrPortFrom(addr, 443),
		Local: netip.MustParseAddrPort("198.18.0.2:40000"), Host: name, HostSource: engine.HostOwn}
	if rule, ok := e.RuleFor(&req); ok && rule.ID == 1 {
		t.Errorf("a connection to %v labelled %q (a name below com, not below example.com) is allowed by %q", addr, name, rule.Host)
	}
}

// selectiveUpstream answers every question as upstream does, except names under
// slow.test, which it never answers (an authoritative server that does not reply).
func selectiveUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if len(r.Question) != 1 || strings.HasSuffix(r.Question[0].Name, ".slow.test.") {
			return
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(198, 18, 0, 1)})
		w.WriteMsg(m)
	})}
	go s.ActivateAndServe()
	t.Cleanup(func() { s.Shutdown() })
	return pc.LocalAddr().String()
}

// Review 38, finding 6 (medium with --fail closed, low otherwise; DoS of every user's
// DNS): the local resolver bounds the upstream exchanges under way at 256 for the
// whole machine (maxInflight), with no share per user or program, and each holds its
// slot until the answer or the 2 s timeout. One unprivileged user asking 128 names a
// second under a zone whose servers do not answer (a zone of its own) keeps every
// slot taken: every other user's query waits behind them for seconds (glibc gives a
// server 5 s, then, with --fail closed, has no other server). The test has one user
// (uid 1000) send 300 such queries and times another user's (uid 1001) query for a
// name the upstream answers at once.
//
// Run: go test -count=1 -run TestReview38SlowNamesStarveOtherQueries ./internal/dnsproxy/
func TestReview38SlowNamesStarveOtherQueries(t *testing.T) {
	p, _, _ := newProxy(t, selectiveUpstream(t))
	// The client's port says whose socket asked: 40001 is another user's program.
	other := engine.Request{PID: 43, Exe: "/usr/bin/other", UID: 1001, Identity: engine.IdentityVerified}
	p.cfg.Identify = func(_ engine.Protocol, client, _ netip.AddrPort, _ uint16) engine.Request {
		if client.Port() == 40001 {
			return other
		}
		return asker
	}
	if r := ask(p, "warm.example.test", dns.TypeA); r == nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("upstream does not answer: %v", r)
	}
	var wg sync.WaitGroup
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ask(p, fmt.Sprintf("n%d.slow.test", i), dns.TypeA)
		}()
	}
	defer wg.Wait()
	// Until the flood's queries hold every upstream slot they can get: the count
	// stops growing for 200 ms (the first query times out only after 2 s).
	held, since := 0, time.Now()
	for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if n := len(p.inflight); n != held {
			held, since = n, time.Now()
		} else if n > 0 && time.Since(since) > 200*time.Millisecond {
			break
		}
	}
	if held < maxInflight/8 {
		t.Fatalf("the flood holds %d upstream slots of %d", held, maxInflight)
	}
	t.Logf("the flood holds %d upstream slots of %d", held, maxInflight)
	start := time.Now()
	w := &fakeWriter{local: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40001}}
	m := new(dns.Msg)
	m.SetQuestion("www.example.test.", dns.TypeA)
	p.serve(w, m, nil, engine.UDP)
	r, took := w.got, time.Since(start)
	if r == nil || r.Rcode != dns.RcodeSuccess || took > 500*time.Millisecond {
		t.Errorf("another user's query for a name the upstream answers at once took %v (answer %v) while one user's "+
			"300 queries for a silent zone were waiting: one user's queries starve every other user's DNS", took.Round(time.Millisecond), r != nil)
	}
}

// TestLearnable: the question names the proxy learns are those the packet learner
// takes (letters, digits, '-', '_'); any other byte is escaped in miekg/dns's form.
func TestLearnable(t *testing.T) {
	for name, want := range map[string]bool{
		"www.example.com": true, "_dmarc.example.com": true, "x-1.example": true, "localhost": true,
		`evil\.example.com`: false, `a\\b.example`: false, `a\032b.example`: false, "a b.example": false,
		"": false, ".": false, "a..b": false, ".a": false, "a.": false, strings.Repeat("a.", 127) + "ab": false,
	} {
		if got := learnable(name); got != want {
			t.Errorf("learnable(%q) = %v, want %v", name, got, want)
		}
	}
}
