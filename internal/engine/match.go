package engine

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// compiledRule is a Rule prepared for evaluation.
type compiledRule struct {
	Rule
	rank int // position in precedence order: lower wins
	app  *appPattern
}

func (c *compiledRule) matches(req *Request, now time.Time) bool {
	if !c.Expires.IsZero() && !now.Before(c.Expires) {
		return false
	}
	if c.Direction != AnyDirection && c.Direction != req.Direction {
		return false
	}
	if c.Protocol != AnyProtocol && c.Protocol != req.Protocol {
		return false
	}
	if !c.Port.Contains(req.Remote.Port()) || !c.LocalPort.Contains(req.Local.Port()) {
		return false
	}
	if c.Remote.IsValid() && !c.Remote.Contains(req.Remote.Addr().Unmap()) {
		return false
	}
	if c.User != "" && !userMatches(c.User, req) {
		return false
	}
	// The app is checked last: exact-path rules were already selected by exe, and glob
	// matching is the most expensive test.
	if c.app != nil && c.app.glob && !c.app.match(req.Exe) {
		return false
	}
	return true
}

// appClass ranks the App field: exact beats glob beats any.
func appClass(a *appPattern) int {
	switch {
	case a == nil:
		return 0
	case a.glob:
		return 1
	}
	return 2
}

func remoteBits(p netip.Prefix) int {
	if !p.IsValid() {
		return -1
	}
	return p.Bits()
}

func blocks(a Action) bool { return a == Deny || a == Reject || a == Drop }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// comparePrecedence orders rules by precedence (see the package doc): negative when a
// wins over b. It is a total order on rules with distinct IDs.
func comparePrecedence(a, b *compiledRule) int {
	if c := cmp.Compare(appClass(b.app), appClass(a.app)); c != 0 {
		return c
	}
	if c := cmp.Compare(remoteBits(b.Remote), remoteBits(a.Remote)); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port.width(), b.Port.width()); c != 0 {
		return c
	}
	if c := cmp.Compare(boolInt(b.User != ""), boolInt(a.User != "")); c != 0 {
		return c
	}
	if c := cmp.Compare(a.LocalPort.width(), b.LocalPort.width()); c != 0 {
		return c
	}
	if c := cmp.Compare(boolInt(b.Protocol != AnyProtocol), boolInt(a.Protocol != AnyProtocol)); c != 0 {
		return c
	}
	if c := cmp.Compare(boolInt(b.Direction != AnyDirection), boolInt(a.Direction != AnyDirection)); c != 0 {
		return c
	}
	if c := cmp.Compare(boolInt(blocks(b.Action)), boolInt(blocks(a.Action))); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// smallBucket is the size up to which a bucket is scanned linearly.
const smallBucket = 8

// v6Key indexes an IPv6 prefix: the masked address and the prefix length.
type v6Key struct {
	hi, lo uint64
	bits   uint8
}

// bucket holds rules of one app class (all exact for one path, all globs, or all
// app-less rules) in precedence order. Because the app class is equal within a bucket,
// the remote prefix length is the first key that differs; so the first matching rule
// under the longest matching prefix is the bucket's winner, then single-port rules
// without a remote, then the rest. Large buckets index those groups.
type bucket struct {
	all []*compiledRule

	indexed  bool
	v4       map[uint64][]*compiledRule // key: bits<<32 | masked address
	v4Bits   []uint8                    // prefix lengths present, longest first
	v6       map[v6Key][]*compiledRule
	v6Bits   []uint8
	onePort  map[uint16][]*compiledRule // no remote, Port is a single port
	leftover []*compiledRule            // no remote, Port any or a range
}

func (b *bucket) add(c *compiledRule) { b.all = append(b.all, c) }

// finish sorts the bucket and builds its index if it is large.
func (b *bucket) finish() {
	slices.SortFunc(b.all, func(x, y *compiledRule) int { return cmp.Compare(x.rank, y.rank) })
	if len(b.all) <= smallBucket {
		return
	}
	b.indexed = true
	b.v4 = map[uint64][]*compiledRule{}
	b.v6 = map[v6Key][]*compiledRule{}
	b.onePort = map[uint16][]*compiledRule{}
	seen4, seen6 := map[uint8]bool{}, map[uint8]bool{}
	for _, c := range b.all { // rank order, so every list below is in rank order
		switch {
		case c.Remote.IsValid() && c.Remote.Addr().Is4():
			bits := uint8(c.Remote.Bits())
			k := v4KeyOf(c.Remote.Addr(), bits)
			b.v4[k] = append(b.v4[k], c)
			if !seen4[bits] {
				seen4[bits] = true
				b.v4Bits = append(b.v4Bits, bits)
			}
		case c.Remote.IsValid():
			bits := uint8(c.Remote.Bits())
			k := v6KeyOf(c.Remote.Addr(), bits)
			b.v6[k] = append(b.v6[k], c)
			if !seen6[bits] {
				seen6[bits] = true
				b.v6Bits = append(b.v6Bits, bits)
			}
		case !c.Port.IsZero() && c.Port.Lo == c.Port.Hi:
			b.onePort[c.Port.Lo] = append(b.onePort[c.Port.Lo], c)
		default:
			b.leftover = append(b.leftover, c)
		}
	}
	desc := func(x, y uint8) int { return cmp.Compare(y, x) }
	slices.SortFunc(b.v4Bits, desc)
	slices.SortFunc(b.v6Bits, desc)
}

func v4KeyOf(a netip.Addr, bits uint8) uint64 {
	a4 := a.As4()
	u := uint64(binary.BigEndian.Uint32(a4[:]))
	if bits < 32 {
		u &^= (1 << (32 - bits)) - 1
	}
	return uint64(bits)<<32 | u
}

func v6KeyOf(a netip.Addr, bits uint8) v6Key {
	a16 := a.As16()
	hi, lo := binary.BigEndian.Uint64(a16[:8]), binary.BigEndian.Uint64(a16[8:])
	switch {
	case bits == 0:
		hi, lo = 0, 0
	case bits < 64:
		hi &^= (1 << (64 - bits)) - 1
		lo = 0
	case bits < 128:
		lo &^= (1 << (128 - bits)) - 1
	}
	return v6Key{hi, lo, bits}
}

func firstMatch(list []*compiledRule, req *Request, now time.Time) *compiledRule {
	for _, c := range list {
		if c.matches(req, now) {
			return c
		}
	}
	return nil
}

// match returns the bucket's winning rule for req, or nil.
func (b *bucket) match(req *Request, remote netip.Addr, now time.Time) *compiledRule {
	if b == nil {
		return nil
	}
	if !b.indexed {
		return firstMatch(b.all, req, now)
	}
	if remote.Is4() {
		if len(b.v4) > 0 {
			for _, bits := range b.v4Bits {
				if c := firstMatch(b.v4[v4KeyOf(remote, bits)], req, now); c != nil {
					return c
				}
			}
		}
	} else if remote.IsValid() && len(b.v6) > 0 {
		for _, bits := range b.v6Bits {
			if c := firstMatch(b.v6[v6KeyOf(remote, bits)], req, now); c != nil {
				return c
			}
		}
	}
	if len(b.onePort) > 0 {
		if c := firstMatch(b.onePort[req.Remote.Port()], req, now); c != nil {
			return c
		}
	}
	return firstMatch(b.leftover, req, now)
}

// matcher is an immutable, compiled rule set. Engine swaps whole matchers, so Decide
// reads one without locks.
type matcher struct {
	sorted   []Rule          // as given: sorted by ID
	rules    []*compiledRule // precedence order
	byID     map[RuleID]*compiledRule
	exact    map[string]*bucket // exact Unix paths
	exactWin map[string]*bucket // exact Windows paths, lower-cased
	globBase map[string]*bucket // globs whose last segment is literal, by that segment
	globRest *bucket            // other globs
	anyApp   *bucket            // rules without app
	expiries bool               // some rule has an expiry
}

// compile builds a matcher. The rules must be valid (see Rule.Validate).
func compile(rules []Rule) *matcher {
	m := &matcher{
		sorted:   rules,
		rules:    make([]*compiledRule, 0, len(rules)),
		byID:     make(map[RuleID]*compiledRule, len(rules)),
		exact:    map[string]*bucket{},
		exactWin: map[string]*bucket{},
		globBase: map[string]*bucket{},
		globRest: &bucket{},
		anyApp:   &bucket{},
	}
	for _, r := range rules {
		app, _ := compileApp(r.App) // validated by the caller
		c := &compiledRule{Rule: r, app: app}
		m.rules = append(m.rules, c)
		m.byID[r.ID] = c
		if !r.Expires.IsZero() {
			m.expiries = true
		}
	}
	slices.SortFunc(m.rules, comparePrecedence)
	getBucket := func(mp map[string]*bucket, k string) *bucket {
		b := mp[k]
		if b == nil {
			b = &bucket{}
			mp[k] = b
		}
		return b
	}
	for i, c := range m.rules {
		c.rank = i
		switch {
		case c.app == nil:
			m.anyApp.add(c)
		case !c.app.glob && c.app.windows:
			getBucket(m.exactWin, c.app.key).add(c)
		case !c.app.glob:
			getBucket(m.exact, c.app.key).add(c)
		case c.app.base != "":
			getBucket(m.globBase, c.app.base).add(c)
		default:
			m.globRest.add(c)
		}
	}
	for _, mp := range []map[string]*bucket{m.exact, m.exactWin, m.globBase} {
		for _, b := range mp {
			b.finish()
		}
	}
	m.globRest.finish()
	m.anyApp.finish()
	return m
}

// match returns the winning rule for req at now, or nil. It does not allocate for
// Unix paths.
func (m *matcher) match(req *Request, now time.Time) *compiledRule {
	remote := req.Remote.Addr().Unmap()
	exe := req.Exe
	if exe != "" {
		// App is the first precedence key: any exact-path match beats every glob, and
		// any glob match beats every app-less rule.
		windows := isWindowsPath(exe)
		if b := m.exact[exe]; b != nil {
			if c := b.match(req, remote, now); c != nil {
				return c
			}
		}
		if windows && len(m.exactWin) > 0 {
			if c := m.exactWin[strings.ToLower(exe)].match(req, remote, now); c != nil {
				return c
			}
		}
		var best *compiledRule
		if len(m.globBase) > 0 {
			best = m.globBase[baseName(exe, windows)].match(req, remote, now)
		}
		if c := m.globRest.match(req, remote, now); c != nil && (best == nil || c.rank < best.rank) {
			best = c
		}
		if best != nil {
			return best
		}
	}
	return m.anyApp.match(req, remote, now)
}

// matchLinear is the unindexed reference: the first rule in precedence order that
// matches. Tests compare it with match; benchmarks use it as the baseline.
func (m *matcher) matchLinear(req *Request, now time.Time) *compiledRule {
	for _, c := range m.rules {
		if c.matches(req, now) && (c.app == nil || c.app.match(req.Exe)) {
			return c
		}
	}
	return nil
}
