package windows

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/proto"
)

// ruleDecider answers port 443 at once with an allow rule, port 25 with a deny
// rule, and holds everything else as an open question until release is called.
type ruleDecider struct {
	mu    sync.Mutex
	held  []func(engine.Verdict)
	reqs  []*engine.Request
	asked chan *engine.Request
}

func newRuleDecider() *ruleDecider { return &ruleDecider{asked: make(chan *engine.Request, 1024)} }

func (r *ruleDecider) Decide(req *engine.Request, verdict func(engine.Verdict)) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	switch req.Remote.Port() {
	case 443:
		verdict(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 7})
	case 25:
		verdict(engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 8})
	default:
		r.mu.Lock()
		r.held = append(r.held, verdict)
		r.mu.Unlock()
	}
	r.asked <- req
}

func (r *ruleDecider) heldCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.held)
}

// answerHeld answers the i-th held question.
func (r *ruleDecider) answerHeld(i int, v engine.Verdict) {
	r.mu.Lock()
	f := r.held[i]
	r.mu.Unlock()
	f(v)
}

func startBackend(t *testing.T, cfg Config, d intercept.Decider) (*Backend, <-chan error, context.CancelFunc) {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.Run(ctx, d) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return b, errc, cancel
}

func TestHelloCarriesDefaultAndTimeout(t *testing.T) {
	for _, c := range []struct {
		def     engine.Action
		timeout time.Duration
		action  proto.Action
		ms      uint32
	}{
		{engine.Allow, 5 * time.Second, proto.ActionPermit, 6000},
		{engine.Deny, 0, proto.ActionBlock, 31000},
		{engine.Reject, 20 * time.Minute, proto.ActionBlock, proto.MaxPendingTimeoutMS},
		{engine.NoAction, time.Millisecond, proto.ActionBlock, 1001},
	} {
		drv := newFakeDriver(t)
		startBackend(t, Config{Dial: drv.dial, Default: c.def, PromptTimeout: c.timeout}, newRuleDecider())
		drv.waitConnected(t)
		drv.mu.Lock()
		h := drv.hellos[0]
		drv.mu.Unlock()
		if h.ServiceVersion != uint32(proto.Version) || h.DefaultAction != c.action || h.PendingTimeoutMS != c.ms {
			t.Errorf("default %v timeout %v: HELLO %+v, want action %v, %d ms", c.def, c.timeout, h, c.action, c.ms)
		}
	}
}

func TestVersionMismatchRefused(t *testing.T) {
	cases := []struct {
		name  string
		reply func(*proto.Hello) []byte
		want  string
	}{
		{"driver_version 1", func(*proto.Hello) []byte {
			b, _ := proto.Encode(&proto.HelloReply{DriverVersion: 1, Status: proto.StatusRevisionMismatch})
			return b
		}, "the latch driver speaks protocol version 1 and this service version 2"},
		{"wire version 1", func(*proto.Hello) []byte {
			b, _ := proto.Encode(&proto.HelloReply{DriverVersion: 1})
			b[4] = 1
			return b
		}, "the latch driver speaks protocol version 1 and this service version 2"},
		{"driver_version 3", func(*proto.Hello) []byte {
			b, _ := proto.Encode(&proto.HelloReply{DriverVersion: 3})
			return b
		}, "the latch driver speaks protocol version 3 and this service version 2"},
		{"status refused", func(*proto.Hello) []byte {
			b, _ := proto.Encode(&proto.HelloReply{DriverVersion: 2, Status: proto.StatusRevisionMismatch})
			return b
		}, "refused this service's HELLO: STATUS_REVISION_MISMATCH"},
		{"ack", func(*proto.Hello) []byte {
			b, _ := proto.Encode(&proto.Ack{Status: proto.StatusInvalidParameter})
			return b
		}, "driver of another version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			drv := newFakeDriver(t)
			drv.hello = c.reply
			b, err := New(Config{Dial: drv.dial, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = b.Run(ctx, newRuleDecider())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Run = %v, want an error saying %q", err, c.want)
			}
			if !drv.current().isClosed() {
				t.Error("the port was left open after the refused handshake")
			}
		})
	}
}

func TestFirstDialFailureIsReturned(t *testing.T) {
	drv := newFakeDriver(t)
	drv.dialErr = errors.New("no such port")
	b, _ := New(Config{Dial: drv.dial, Logf: t.Logf})
	err := b.Run(context.Background(), newRuleDecider())
	if err == nil || !strings.Contains(err.Error(), `\LatchPort`) || !strings.Contains(err.Error(), "no such port") {
		t.Fatalf("Run = %v, want the dial error naming the port", err)
	}
}

// TestSlowQuestionsHoldNoReader: with every reader's worth of questions open and
// unanswered, a further request is still read and decided by a rule, and every reader
// is back waiting on the port.
func TestSlowQuestionsHoldNoReader(t *testing.T) {
	const readers = 3
	drv := newFakeDriver(t)
	dec := newRuleDecider()
	b, _, _ := startBackend(t, Config{Dial: drv.dial, Readers: readers}, dec)
	port := drv.waitConnected(t)
	eventually(t, "all readers waiting", func() bool { return port.waiting.Load() == readers })

	for i := range 2 * readers {
		drv.connect("198.19.0.2:8080", `\Device\HarddiskVolume3\slow.exe`)
		_ = i
	}
	eventually(t, "slow questions asked", func() bool { return dec.heldCount() == 2*readers })
	eventually(t, "readers re-armed while questions are open", func() bool { return port.waiting.Load() == readers })

	id := drv.connect("198.19.0.2:443", `\Device\HarddiskVolume3\fast.exe`)
	v := drv.waitVerdict(t)
	if v.RequestID != id || v.Action != proto.ActionPermit {
		t.Fatalf("verdict %+v, want permit for request %d", v, id)
	}
	eventually(t, "the ACK counted", func() bool { return b.Stats().Allowed == 1 })
	if got := b.Stats(); got.Held != 2*readers+1 {
		t.Fatalf("stats %+v, want held %d", got, 2*readers+1)
	}
}

// portDecider holds every question, keyed by remote port, until the test answers it.
type portDecider struct {
	mu     sync.Mutex
	byPort map[uint16]func(engine.Verdict)
}

func (p *portDecider) Decide(req *engine.Request, verdict func(engine.Verdict)) {
	p.mu.Lock()
	p.byPort[req.Remote.Port()] = verdict
	p.mu.Unlock()
}

func (p *portDecider) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byPort)
}

func (p *portDecider) answer(port uint16, v engine.Verdict) {
	p.mu.Lock()
	f := p.byPort[port]
	p.mu.Unlock()
	f(v)
}

// TestVerdictCacheScope: only a verdict a rule stands behind may be cached by the
// driver; an answer given once, a timeout or a default must be asked again.
func TestVerdictCacheScope(t *testing.T) {
	drv := newFakeDriver(t)
	dec := &portDecider{byPort: map[uint16]func(engine.Verdict){}}
	b, _, _ := startBackend(t, Config{Dial: drv.dial, CacheTTL: 90 * time.Second}, dec)
	drv.waitConnected(t)
	if err := b.RulesChanged([]engine.Rule{{ID: 1}, {ID: 3}, {ID: 9}}); err != nil {
		t.Fatal(err)
	}
	cached := func(a proto.Action, rule uint64) proto.Verdict {
		return proto.Verdict{Action: a, CacheScope: proto.CacheProcessRemotePort, CacheTTLMS: 90000, RuleTag: rule}
	}
	cases := []struct {
		port uint16
		v    engine.Verdict
		want proto.Verdict
	}{
		{2001, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt}, proto.Verdict{Action: proto.ActionPermit}},
		// An answer remembered as rule 3 is still a person's answer: not cached.
		{2002, engine.Verdict{Action: engine.Reject, Reason: engine.ReasonPrompt, RuleID: 3}, proto.Verdict{Action: proto.ActionReject}},
		{2003, engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}, proto.Verdict{Action: proto.ActionBlock}},
		{2004, engine.Verdict{Action: engine.Drop, Reason: engine.ReasonRule, RuleID: 9}, cached(proto.ActionBlock, 9)},
		{2005, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}, cached(proto.ActionPermit, 1)},
		{2006, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonDefault}, proto.Verdict{Action: proto.ActionPermit}},
		{2007, engine.Verdict{Action: engine.Deny, Reason: engine.ReasonQuestionCap}, proto.Verdict{Action: proto.ActionBlock}},
		{2008, engine.Verdict{Action: engine.NoAction, Reason: engine.ReasonError}, proto.Verdict{Action: proto.ActionBlock}},
		{2009, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonMode}, proto.Verdict{Action: proto.ActionPermit}},
		{2010, engine.Verdict{Action: engine.Deny, Reason: engine.ReasonList}, proto.Verdict{Action: proto.ActionBlock}},
		// A rule the backend was not told about (added or removed since): not cached.
		{2011, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 5}, proto.Verdict{Action: proto.ActionPermit}},
	}
	ids := map[uint16]proto.RequestID{}
	for _, c := range cases {
		ids[c.port] = drv.connect("198.19.0.2:"+itoa(int(c.port)), `\Device\HarddiskVolume3\app.exe`)
	}
	eventually(t, "questions open", func() bool { return dec.count() == len(cases) })
	for _, c := range cases {
		dec.answer(c.port, c.v)
		got := drv.waitVerdict(t)
		want := c.want
		want.RequestID = ids[c.port]
		if got != want {
			t.Errorf("%v for port %d: sent %+v, want %+v", c.v, c.port, got, want)
		}
	}
	eventually(t, "every ACK counted", func() bool { st := b.Stats(); return st.Allowed+st.Denied+st.Rejected == 11 })
	st := b.Stats()
	if st.Allowed != 5 || st.Rejected != 1 || st.Denied != 5 {
		t.Errorf("stats %+v, want allowed 5 rejected 1 denied 5", st)
	}
}

func TestVerdictIDsMatchRequests(t *testing.T) {
	drv := newFakeDriver(t)
	var mu sync.Mutex
	byPort := map[uint16]func(engine.Verdict){}
	dec := intercept.DeciderFunc(func(req *engine.Request, verdict func(engine.Verdict)) {
		mu.Lock()
		byPort[req.Remote.Port()] = verdict
		mu.Unlock()
	})
	startBackend(t, Config{Dial: drv.dial}, dec)
	drv.waitConnected(t)
	idByPort := map[uint16]proto.RequestID{}
	for p := uint16(1000); p < 1010; p++ {
		idByPort[p] = drv.connect("198.19.0.2:"+itoa(int(p)), `\Device\HarddiskVolume3\app.exe`)
	}
	eventually(t, "ten questions", func() bool { mu.Lock(); defer mu.Unlock(); return len(byPort) == 10 })
	for p := uint16(1009); p >= 1000; p-- {
		act := engine.Deny
		if p%2 == 0 {
			act = engine.Allow
		}
		mu.Lock()
		f := byPort[p]
		mu.Unlock()
		f(engine.Verdict{Action: act, Reason: engine.ReasonPrompt})
		f(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt}) // a second call is ignored
		v := drv.waitVerdict(t)
		wantAct := proto.ActionBlock
		if p%2 == 0 {
			wantAct = proto.ActionPermit
		}
		if v.RequestID != idByPort[p] || v.Action != wantAct {
			t.Fatalf("port %d: verdict %+v, want id %d action %v", p, v, idByPort[p], wantAct)
		}
	}
	select {
	case v := <-drv.verdicts:
		t.Fatalf("an extra verdict reached the driver: %+v", v)
	case <-time.After(50 * time.Millisecond):
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestMalformedMessagesCountedAndSkipped(t *testing.T) {
	drv := newFakeDriver(t)
	dec := newRuleDecider()
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, dec)
	port := drv.waitConnected(t)
	if err := b.RulesChanged([]engine.Rule{{ID: 7}, {ID: 8}}); err != nil {
		t.Fatal(err)
	}

	good, _ := proto.Encode(&proto.Ack{})
	badMagic := append([]byte(nil), good...)
	badMagic[0] = 'X'
	verdict, _ := proto.Encode(&proto.Verdict{RequestID: 1, Action: proto.ActionPermit})
	port.deliver(nil)
	port.deliver([]byte("short"))
	port.deliver(badMagic)
	port.deliver(verdict) // valid, but not something the driver sends on its own
	port.deliver(good)    // an ACK is an answer, never a message

	id := drv.connect("198.19.0.2:25", `\Device\HarddiskVolume3\mail.exe`)
	v := drv.waitVerdict(t)
	if v.RequestID != id || v.Action != proto.ActionBlock || v.CacheScope != proto.CacheProcessRemotePort {
		t.Fatalf("verdict %+v, want a cacheable block for %d", v, id)
	}
	eventually(t, "5 malformed counted", func() bool { return b.Stats().Extra["malformed_messages"] == 5 })
	st := b.Stats()
	if st.Extra["malformed_messages"] != 5 || st.Errors != 5 || st.Held != 1 {
		t.Fatalf("stats %+v, want 5 malformed, 5 errors, 1 held", st)
	}
}

func TestReconnectAfterPortCloses(t *testing.T) {
	drv := newFakeDriver(t)
	dec := newRuleDecider()
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, dec)
	first := drv.waitConnected(t)

	// A question open when the port goes away: its verdict must not be sent on the
	// new connection (the driver already completed it with the default).
	drv.connect("198.19.0.2:8080", `\Device\HarddiskVolume3\app.exe`)
	eventually(t, "question open", func() bool { return dec.heldCount() == 1 })

	first.Close() // the driver unloads, or the port breaks
	second := drv.waitConnected(t)
	if second == first {
		t.Fatal("no new connection")
	}
	dec.answerHeld(0, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonPrompt})

	id := drv.connect("198.19.0.2:443", `\Device\HarddiskVolume3\app.exe`)
	v := drv.waitVerdict(t)
	if v.RequestID != id {
		t.Fatalf("verdict %+v, want one for the new request %d", v, id)
	}
	st := b.Stats()
	if st.Extra["reconnects"] != 1 || st.Extra["verdicts_dropped"] != 1 || st.Extra["connected"] != 1 {
		t.Fatalf("stats %+v, want reconnects 1, verdicts_dropped 1, connected 1", st.Extra)
	}
	drv.mu.Lock()
	n := len(drv.hellos)
	drv.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d HELLOs, want one per connection (2)", n)
	}
}

func TestReconnectBacksOffWhileDriverIsAway(t *testing.T) {
	drv := newFakeDriver(t)
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, newRuleDecider())
	first := drv.waitConnected(t)
	drv.mu.Lock()
	drv.dialErr = errors.New("driver unloaded")
	drv.mu.Unlock()
	first.Close()
	time.Sleep(700 * time.Millisecond)
	drv.mu.Lock()
	dials := drv.dials
	drv.dialErr = nil
	drv.mu.Unlock()
	// 100, 200, 400 ms backoff: a handful of tries, not a busy loop.
	if dials < 2 || dials > 6 {
		t.Fatalf("%d dials in 700 ms while the driver was away, want 2..6", dials)
	}
	if _, err := b.Redecide(nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Redecide while disconnected = %v, want ErrNotConnected", err)
	}
	drv.waitConnected(t)
}

func TestRedecideSendsFlush(t *testing.T) {
	drv := newFakeDriver(t)
	drv.stats.FlowContextsLive = 17
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, newRuleDecider())
	drv.waitConnected(t)
	if n, err := b.Redecide(nil); err != nil || n != 17 {
		t.Fatalf("Redecide = %d, %v; want the driver's 17 live flows", n, err)
	}
	drv.mu.Lock()
	defer drv.mu.Unlock()
	if len(drv.flushes) != 1 || drv.flushes[0].Flags != proto.FlushCache|proto.FlushReauthorize {
		t.Fatalf("flushes %+v, want one with flags 3", drv.flushes)
	}
}

func TestStatsIncludeDriverCounters(t *testing.T) {
	drv := newFakeDriver(t)
	drv.stats = proto.StatsReply{Classified: 10, Pended: 9, CapExceeded: 2, MalformedMessages: 1, PendingNow: 3}
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, newRuleDecider())
	drv.waitConnected(t)
	eventually(t, "connected", func() bool { return b.Stats().Extra["connected"] == 1 })
	st := b.Stats()
	if st.Extra["driver_classified"] != 10 || st.Extra["driver_pended"] != 9 || st.Extra["driver_pending_now"] != 3 ||
		st.Extra["driver_malformed_messages"] != 1 || st.Overflows != 2 || st.Extra["driver_max_pending"] != 4096 {
		t.Fatalf("stats %+v", st)
	}
	if !strings.HasPrefix(st.Backend, "wfp/") {
		t.Fatalf("backend name %q", st.Backend)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, c := range []Config{
		{Readers: -1},
		{Readers: 1000},
		{PromptTimeout: -time.Second},
		{Default: engine.Action(99)},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

func TestRunTwiceRefused(t *testing.T) {
	drv := newFakeDriver(t)
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, newRuleDecider())
	drv.waitConnected(t)
	if err := b.Run(context.Background(), newRuleDecider()); err == nil {
		t.Fatal("a second Run was accepted")
	}
}
