package windows

import (
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/proto"
)

// TestCacheTTLClampedToRuleLifetime: a rule that ends in 1.5 s has its verdicts
// cached for at most what is left of it, never the configured 90 s; one that has
// (nearly) ended is not cached at all.
func TestCacheTTLClampedToRuleLifetime(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	st := newRuleState([]engine.Rule{
		{ID: 1},
		{ID: 2, Expires: now.Add(1500 * time.Millisecond)},
		{ID: 3, Expires: now.Add(500 * time.Microsecond)},
		{ID: 4, Expires: now.Add(-time.Second)},
		{ID: 5, Expires: now.Add(48 * time.Hour)},
	})
	rule := func(id engine.RuleID) engine.Verdict {
		return engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: id}
	}
	for _, c := range []struct {
		v    engine.Verdict
		want uint32
	}{
		{rule(1), 90000},
		{rule(2), 1500},
		{rule(3), 0},
		{rule(4), 0},
		{rule(5), 90000},
		{rule(6), 0}, // not in force
		{engine.Verdict{Action: engine.Deny, Reason: engine.ReasonPrompt, RuleID: 1}, 0},
		{engine.Verdict{Action: engine.Deny, Reason: engine.ReasonTimeout}, 0},
		{engine.Verdict{Action: engine.Allow, Reason: engine.ReasonDefault}, 0},
		{engine.Verdict{Action: engine.Deny, Reason: engine.ReasonQuestionCap}, 0},
		{engine.Verdict{Action: engine.NoAction, Reason: engine.ReasonRule, RuleID: 1}, 0},
	} {
		if got := st.cacheTTL(c.v, 90000, now); got != c.want {
			t.Errorf("cacheTTL(%+v) = %d ms, want %d", c.v, got, c.want)
		}
	}
	if got := st.cacheTTL(rule(1), 0, now); got != 0 {
		t.Errorf("with the cache off: %d, want 0", got)
	}
	var none *ruleState
	if got := none.cacheTTL(rule(1), 90000, now); got != 0 {
		t.Errorf("before any RulesChanged: %d, want 0", got)
	}
}

// TestCacheTTLOnTheWire: the VERDICT of a rule that expires soon carries that rule's
// remaining lifetime (found in the rules RulesChanged was given), not CacheTTL.
func TestCacheTTLOnTheWire(t *testing.T) {
	drv := newFakeDriver(t)
	dec := &portDecider{byPort: map[uint16]func(engine.Verdict){}}
	b, _, _ := startBackend(t, Config{Dial: drv.dial, CacheTTL: 90 * time.Second}, dec)
	drv.waitConnected(t)
	if err := b.RulesChanged([]engine.Rule{{ID: 1, Expires: time.Now().Add(2 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	drv.connect("198.19.0.2:443", `\Device\HarddiskVolume3\app.exe`)
	eventually(t, "the question", func() bool { return dec.count() == 1 })
	dec.answer(443, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1})
	v := drv.waitVerdict(t)
	if v.CacheScope != proto.CacheProcessRemotePort || v.CacheTTLMS == 0 || v.CacheTTLMS > 2000 {
		t.Errorf("verdict %+v: want scope 1 with a TTL of at most the rule's 2000 ms left", v)
	}
}

// TestNothingCachedWhileARuleNeedsMoreThanTheKey: the driver's key is process id,
// program path, direction, protocol, remote address and port. A rule with any other
// condition, or a blocklist, turns caching off for as long as it is in force.
func TestNothingCachedWhileARuleNeedsMoreThanTheKey(t *testing.T) {
	base := engine.Rule{ID: 1, App: `C:\app.exe`, Action: engine.Allow}
	for _, c := range []struct {
		name string
		mod  func(*engine.Rule)
		want string
	}{
		{"host", func(r *engine.Rule) { r.Host = "example.com" }, "host-name"},
		{"local port", func(r *engine.Rule) { r.LocalPort = engine.PortRange{Lo: 80, Hi: 80} }, "local-port"},
		{"service", func(r *engine.Rule) { r.Service = "dnscache" }, "service"},
		{"user", func(r *engine.Rule) { r.User = "alice" }, "user"},
		{"cmdline", func(r *engine.Rule) { r.Cmdline = "-x *" }, "identity"},
		{"parent", func(r *engine.Rule) { r.Parent = `C:\p.exe` }, "identity"},
		{"pin", func(r *engine.Rule) { r.SHA256 = strings.Repeat("ab", 32) }, "identity"},
	} {
		other := base
		other.ID = 2
		c.mod(&other)
		st := newRuleState([]engine.Rule{base, other})
		if st.cacheable || !strings.Contains(st.why, c.want) || !strings.Contains(st.why, "rule 2") {
			t.Errorf("%s: cacheable %v (%q), want off naming rule 2 and %q", c.name, st.cacheable, st.why, c.want)
		}
		if ttl := st.cacheTTL(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}, 90000, time.Now()); ttl != 0 {
			t.Errorf("%s: rule 1's verdict cached for %d ms while rule 2 is in force", c.name, ttl)
		}
	}
	if st := newRuleState([]engine.Rule{base}, "", "a blocklist is in force"); st.cacheable || st.why != "a blocklist is in force" {
		t.Errorf("with a blocklist: cacheable %v (%q)", st.cacheable, st.why)
	}
	if st := newRuleState([]engine.Rule{base}, ""); !st.cacheable {
		t.Errorf("a plain rule: cache off (%q)", st.why)
	}
}

// TestRuleChangeFlushesBeforeReturn: with FollowRules, the driver has acknowledged a
// FLUSH of its cache by the time a rule change, an import, a removal or a mode change
// returns; a rule with a host name turns the cache off for its verdicts at once.
func TestRuleChangeFlushesBeforeReturn(t *testing.T) {
	drv := newFakeDriver(t)
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, newRuleDecider())
	drv.waitConnected(t)
	eventually(t, "the session", func() bool { return b.cur.Load() != nil })
	eng, err := engine.New(engine.Config{Default: engine.Deny}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	flushes := func() int {
		drv.mu.Lock()
		defer drv.mu.Unlock()
		for _, f := range drv.flushes {
			if f.Flags&proto.FlushCache == 0 {
				t.Errorf("FLUSH %+v does not empty the cache", f)
			}
		}
		return len(drv.flushes)
	}
	b.FollowRules(eng)
	n := flushes()
	if n != 1 {
		t.Fatalf("%d FLUSHes when FollowRules hooked the engine, want 1", n)
	}
	r, err := eng.AddRule(engine.Rule{App: `C:\app.exe`, Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Allow})
	if err != nil {
		t.Fatal(err)
	}
	if got := flushes(); got != n+1 {
		t.Fatalf("after AddRule returned: %d FLUSHes, want %d", got, n+1)
	}
	if why := b.CacheOff(); why != "" {
		t.Errorf("CacheOff = %q with one plain rule", why)
	}
	if got := b.wireVerdict(1, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: r.ID}); got.CacheScope != proto.CacheProcessRemotePort {
		t.Errorf("the new rule's verdict: %+v, want cached", got)
	}
	h, err := eng.AddRule(engine.Rule{App: `C:\app.exe`, Host: "example.com", Action: engine.Deny})
	if err != nil {
		t.Fatal(err)
	}
	if got := flushes(); got != n+2 {
		t.Fatalf("after the second AddRule returned: %d FLUSHes, want %d", got, n+2)
	}
	if got := b.wireVerdict(1, engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: r.ID}); got.CacheScope != proto.CacheNone {
		t.Errorf("with a host rule in force: %+v, want not cached", got)
	}
	if !strings.Contains(b.CacheOff(), "host-name") {
		t.Errorf("CacheOff = %q, want the host rule named", b.CacheOff())
	}
	if _, err := eng.RemoveRule(h.ID); err != nil {
		t.Fatal(err)
	}
	if got := flushes(); got != n+3 {
		t.Fatalf("after RemoveRule returned: %d FLUSHes, want %d", got, n+3)
	}
	if err := eng.ReplaceRules(nil); err != nil {
		t.Fatal(err)
	}
	if got := flushes(); got != n+4 {
		t.Fatalf("after ReplaceRules returned: %d FLUSHes, want %d", got, n+4)
	}
	if err := eng.SetMode(engine.ModeState{Mode: engine.ModeBlockAll}); err != nil {
		t.Fatal(err)
	}
	if got := flushes(); got != n+5 {
		t.Fatalf("after SetMode returned: %d FLUSHes, want %d", got, n+5)
	}
}

// TestRulesChangedFlushRefused: a driver that refuses the FLUSH gets its port closed
// (its disconnect empties the cache) and the error says what failed; with no driver
// connected there is nothing to flush.
func TestRulesChangedFlushRefused(t *testing.T) {
	drv := newFakeDriver(t)
	b, err := New(Config{Dial: drv.dial, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.RulesChanged([]engine.Rule{{ID: 1}}); err != nil {
		t.Errorf("not connected: %v", err)
	}
	p, _ := drv.dial(t.Context())
	b.cur.Store(&session{port: p, q: newVerdictQueue()})
	drv.mu.Lock()
	drv.refuseFlush = true
	drv.mu.Unlock()
	err = b.RulesChanged([]engine.Rule{{ID: 1}})
	if err == nil || !strings.Contains(err.Error(), "FLUSH") || !strings.Contains(err.Error(), "closed the port") {
		t.Errorf("refused FLUSH: %v", err)
	}
	if !p.(*fakePort).isClosed() {
		t.Error("the port stays open with the driver's cache not emptied")
	}
}

// TestModeChangeKeepsRuleState (review28): a mode change flushes the cache over
// the rule state in force and reads no rules of its own. The mode hook read
// eng.Rules() outside the engine's rule lock, so a rule change landing between
// that read and follow.mu had its state replaced by the older set's; here the
// state a concurrent change put in force (one the engine's rules do not say:
// a host rule) must survive the mode change.
func TestModeChangeKeepsRuleState(t *testing.T) {
	drv := newFakeDriver(t)
	b, _, _ := startBackend(t, Config{Dial: drv.dial}, newRuleDecider())
	drv.waitConnected(t)
	eventually(t, "the session", func() bool { return b.cur.Load() != nil })
	eng, err := engine.New(engine.Config{Default: engine.Deny}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	b.FollowRules(eng)
	if _, err := eng.AddRule(engine.Rule{App: `C:\app.exe`, Port: engine.PortRange{Lo: 443, Hi: 443}, Action: engine.Allow}); err != nil {
		t.Fatal(err)
	}
	// The state of a change the mode hook's read of the rules missed.
	if err := b.RulesChanged([]engine.Rule{{ID: 9, App: `C:\app.exe`, Host: "example.com", Action: engine.Deny}}); err != nil {
		t.Fatal(err)
	}
	drv.mu.Lock()
	n := len(drv.flushes)
	drv.mu.Unlock()
	if err := eng.SetMode(engine.ModeState{Mode: engine.ModeBlockAll}); err != nil {
		t.Fatal(err)
	}
	drv.mu.Lock()
	got := len(drv.flushes)
	drv.mu.Unlock()
	if got != n+1 {
		t.Errorf("after SetMode returned: %d FLUSHes, want %d", got, n+1)
	}
	if !strings.Contains(b.CacheOff(), "host-name") {
		t.Errorf("after the mode change CacheOff = %q, want the host rule in force named (the mode hook put an older rule set in force)", b.CacheOff())
	}
}
