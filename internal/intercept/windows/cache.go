package windows

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/proto"
)

// The driver's verdict cache decides a repeated connection (same process id and
// program path, direction, protocol, remote address and port) in the kernel, without
// asking the service. It follows the exactness rules of the Linux fast path
// (internal/fastpath): the cache never changes what latch decides.
//
//   - Only a verdict a rule made (engine.ReasonRule) carries a cache scope: never a
//     person's answer, a default, a timeout, a question cap or a mode.
//   - Its TTL is the smaller of Config.CacheTTL and what is left of the rule's
//     lifetime; a rule that ends within the millisecond is not cached.
//   - While any rule in force has a condition the driver's key cannot tell apart (a
//     host name, a local port, a service, a user, a command line, a parent, a unit,
//     a container, an app id or a content pin), or a blocklist is in force, nothing
//     is cached: such a rule can decide two connections with the same key
//     differently (a pid reused by another user's copy of the program, a name that
//     changes its address without a rule change).
//   - Every change of the rule set or the mode calls RulesChanged (ModeChanged) before the call
//     that changed them returns (FollowRules hooks the engine): it sends FLUSH (cache)
//     and waits for the driver's ACK. The driver starts a new generation with it and
//     never caches a verdict for a connection it held before that FLUSH, so a verdict
//     decided under the old rules is applied to its own connection only.

// ruleState is what the backend knows about the rules in force, for cache scopes.
type ruleState struct {
	cacheable bool
	why       string                      // why not, when !cacheable
	expires   map[engine.RuleID]time.Time // rules in force; zero: no expiry
}

// newRuleState describes rules (and off, non-empty reasons that forbid caching).
func newRuleState(rules []engine.Rule, off ...string) *ruleState {
	st := &ruleState{cacheable: true, expires: make(map[engine.RuleID]time.Time, len(rules))}
	for _, why := range off {
		if why != "" {
			st.cacheable, st.why = false, why
			break
		}
	}
	for _, r := range rules {
		st.expires[r.ID] = r.Expires
		if !st.cacheable {
			continue
		}
		if why := uncacheable(&r); why != "" {
			st.cacheable, st.why = false, fmt.Sprintf("rule %d has %s", r.ID, why)
		}
	}
	return st
}

// uncacheable says which condition of r the driver's cache key cannot tell apart, or "".
func uncacheable(r *engine.Rule) string {
	switch {
	case r.Host != "":
		return "a host-name condition"
	case r.LocalPort != (engine.PortRange{}):
		return "a local-port condition"
	case r.Service != "":
		return "a service condition"
	case r.User != "":
		return "a user condition"
	case r.Cmdline != "" || r.Parent != "" || r.Unit != "" || r.Container != "" || r.AppID != "" || r.SHA256 != "":
		return "an identity condition (cmdline, parent, unit, container, app id or pin)"
	}
	return ""
}

// cacheTTL is the VERDICT cache_ttl_ms for v under st at now, or 0: not cached.
func (st *ruleState) cacheTTL(v engine.Verdict, maxMS uint32, now time.Time) uint32 {
	if st == nil || !st.cacheable || maxMS == 0 || v.Reason != engine.ReasonRule || v.RuleID == 0 {
		return 0
	}
	switch v.Action {
	case engine.Allow, engine.Deny, engine.Reject, engine.Drop:
	default:
		return 0
	}
	exp, ok := st.expires[v.RuleID]
	if !ok {
		return 0 // a rule this state does not know (added or removed since): ask again
	}
	if exp.IsZero() {
		return maxMS
	}
	left := exp.Sub(now).Milliseconds() // rounded down: the entry never outlives the rule
	if left < 1 {
		return 0
	}
	return uint32(min(left, int64(maxMS)))
}

// cacheFollower serialises RulesChanged (rule changes and mode changes come from
// different engine locks).
type cacheFollower struct {
	mu sync.Mutex
}

// RulesChanged tells the backend which rules are now in force, and empties the
// driver's verdict cache before it returns: FLUSH (cache) is sent and acknowledged.
// Call it synchronously with every change of the rule set (ModeChanged: of the mode), after the
// engine decides by the new rules and before the change is reported done
// (engine.OnInstall; FollowRules does this). A non-empty off says why nothing may be
// cached besides the rules (e.g. a blocklist in force). Not connected, there is
// nothing to flush: the driver empties its cache when the service disconnects and
// again at HELLO. If the FLUSH fails the session is closed, which empties the cache
// too (the driver's disconnect), and the error says so.
func (b *Backend) RulesChanged(rules []engine.Rule, off ...string) error {
	b.follow.mu.Lock()
	defer b.follow.mu.Unlock()
	// The state first, then the FLUSH: a verdict for a connection the driver holds
	// from the FLUSH on is described by this state.
	b.rules.Store(newRuleState(rules, off...))
	return b.flushCache("a rule change")
}

// ModeChanged empties the driver's verdict cache before it returns, as
// RulesChanged does, over the rules and blocklist flag the last RulesChanged put
// in force. Call it synchronously with every change of the mode (FollowRules
// does). It reads no rules: a mode hook that read them outside the engine's rule
// lock could put an older set's state in force after a concurrent rule change's
// (review28).
func (b *Backend) ModeChanged() error {
	b.follow.mu.Lock()
	defer b.follow.mu.Unlock()
	return b.flushCache("a mode change")
}

// flushCache sends FLUSH (cache) for RulesChanged and ModeChanged, after what;
// call it with follow.mu held.
func (b *Backend) flushCache(after string) error {
	s := b.cur.Load()
	if s == nil {
		return nil
	}
	err := b.flush(s, proto.FlushCache)
	if err != nil {
		if errors.Is(err, ErrPortClosed) {
			return nil // the session ended: the driver emptied the cache at the disconnect
		}
		s.port.Close()
		return fmt.Errorf("windows backend: empty the driver's verdict cache after %s: %w "+
			"(closed the port: the driver empties it at the disconnect)", after, err)
	}
	return nil
}

// flush sends FLUSH with flags and waits for the driver's ACK.
func (b *Backend) flush(s *session, flags proto.FlushFlags) error {
	ans, err := b.request(s, &proto.Flush{Flags: flags}, proto.AckSize)
	if err != nil {
		return fmt.Errorf("FLUSH: %w", err)
	}
	a, ok := ans.(*proto.Ack)
	if !ok {
		return fmt.Errorf("FLUSH: the driver answered with %v, not an ACK", ans.Type())
	}
	if a.Status != proto.StatusSuccess {
		return fmt.Errorf("FLUSH: the driver refused it: %v", a.Status)
	}
	return nil
}

// FollowRules keeps the driver's verdict cache exact for eng: RulesChanged runs on
// every change of eng's rules (engine.OnInstall: before the change returns, with the
// blocklists in force counted) and ModeChanged on every change of its mode. Errors go to Config.Logf. Call it once,
// before Run.
func (b *Backend) FollowRules(eng *engine.Engine) {
	listsOff := func() string {
		if eng.HasLists() {
			return "a blocklist is in force (it can overrule a rule by a host name)"
		}
		return ""
	}
	eng.OnInstall(func(live []engine.Rule) {
		if err := b.RulesChanged(live, listsOff()); err != nil {
			b.logf("%v", err)
		}
	})
	eng.OnModeChanged(func(engine.ModeState) {
		if err := b.ModeChanged(); err != nil {
			b.logf("%v", err)
		}
	})
}

// CacheOff says why the driver caches nothing now, or "" when verdicts of rules are
// cached (Config.CacheTTL > 0 and no rule in force forbids it).
func (b *Backend) CacheOff() string {
	if b.cacheMS == 0 {
		return "the driver's cache is off (CacheTTL < 0)"
	}
	st := b.rules.Load()
	switch {
	case st == nil:
		return "no rule set known yet (FollowRules or RulesChanged not called)"
	case !st.cacheable:
		return st.why
	}
	return ""
}
