package engine

import (
	"cmp"
	"encoding/binary"
	"math"
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
	host string // Host in normal form
	// hostKey is the matcher's number for host (an exact name) or for its suffix (a
	// wildcard, ".example.com"); see matcher.hostKeys.
	hostKey int32
	hits    *ruleHits   // shared by every compilation of this rule ID; nil outside an Engine
	parent  *appPattern // Parent compiled; nil if none
}

func compileRule(r Rule) *compiledRule {
	app, _ := compileApp(r.App) // validated by the caller
	parent, _ := compileApp(r.Parent)
	return &compiledRule{Rule: r, app: app, host: normalizeHost(r.Host), parent: parent}
}

func (c *compiledRule) matches(req *Request, now time.Time) bool {
	if !c.Expires.IsZero() && !now.Before(c.Expires) {
		return false
	}
	if !c.matchesFlow(req) {
		return false
	}
	if c.User != "" && !userMatches(c.User, req) {
		return false
	}
	if c.Service != "" && !serviceMatches(c.Service, req) {
		return false
	}
	if c.host != "" && !hostMatches(c.host, req.ruleHost()) {
		return false
	}
	if c.hasIdentity() && !c.identityMatches(req) {
		return false
	}
	// The app is checked last: exact-path rules were already selected by exe, and glob
	// matching is the most expensive test.
	if c.app != nil && c.app.glob && !c.app.match(appExeFor(c.Container, req)) {
		return false
	}
	return true
}

// matchesFlow checks the fields every request carries: direction, protocol,
// addresses and ports.
func (c *compiledRule) matchesFlow(req *Request) bool {
	return (c.Direction == AnyDirection || c.Direction == req.Direction) &&
		(c.Protocol == AnyProtocol || c.Protocol == req.Protocol) &&
		c.Port.Contains(req.Remote.Port()) && c.LocalPort.Contains(req.Local.Port()) &&
		(!c.Remote.IsValid() || c.Remote.Contains(req.Remote.Addr().Unmap()))
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
	_, c := precedenceStep(a, b)
	return c
}

// precedenceStep compares a and b like comparePrecedence and also returns the step of
// the package doc's precedence list that settled it (StepNone when a and b are the
// same rule). Explain reports these steps; the matcher sorts by them.
func precedenceStep(a, b *compiledRule) (Step, int) {
	if c := cmp.Compare(appClass(b.app), appClass(a.app)); c != 0 {
		return StepApp, c
	}
	if c := cmp.Compare(boolInt(b.Service != ""), boolInt(a.Service != "")); c != 0 {
		return StepApp, c
	}
	if c := cmp.Compare(hostSpecificity(b.host), hostSpecificity(a.host)); c != 0 {
		return StepHost, c
	}
	if c := cmp.Compare(remoteBits(b.Remote), remoteBits(a.Remote)); c != 0 {
		return StepRemote, c
	}
	if c := cmp.Compare(a.Port.width(), b.Port.width()); c != 0 {
		return StepPort, c
	}
	if c := cmp.Compare(boolInt(b.User != ""), boolInt(a.User != "")); c != 0 {
		return StepUser, c
	}
	if c := cmp.Compare(b.identityCount(), a.identityCount()); c != 0 {
		return StepIdentity, c
	}
	if c := cmp.Compare(a.LocalPort.width(), b.LocalPort.width()); c != 0 {
		return StepLocalPort, c
	}
	if c := cmp.Compare(boolInt(b.Protocol != AnyProtocol), boolInt(a.Protocol != AnyProtocol)); c != 0 {
		return StepProtocol, c
	}
	if c := cmp.Compare(boolInt(b.Direction != AnyDirection), boolInt(a.Direction != AnyDirection)); c != 0 {
		return StepDirection, c
	}
	if c := cmp.Compare(boolInt(blocks(b.Action)), boolInt(blocks(a.Action))); c != 0 {
		return StepAction, c
	}
	if c := cmp.Compare(a.ID, b.ID); c != 0 {
		return StepID, c
	}
	return StepNone, 0
}

// ruleRef is what the index stores per rule: the fields the match tests read, inline,
// so that scanning a list reads memory in order instead of chasing a pointer per rule.
type ruleRef struct {
	remote           netip.Prefix // zero if none
	expires          int64        // Unix ns; math.MaxInt64 if none
	rank             int32
	portLo, portHi   uint16 // 0, 65535 if any
	lportLo, lportHi uint16
	dir              Direction
	proto            Protocol
	hasUser, isGlob  bool
	hasService       bool
	hasIdentity      bool  // cmdline, parent, unit, container or app id: checked by compiledRule.identityMatches
	hostKey          int32 // -1: no host; see compiledRule.hostKey
	c                *compiledRule
}

func refOf(c *compiledRule) ruleRef {
	r := ruleRef{
		remote: c.Remote, expires: unixNanoClamped(c.Expires), rank: int32(c.rank),
		portLo: c.Port.Lo, portHi: c.Port.Hi, lportLo: c.LocalPort.Lo, lportHi: c.LocalPort.Hi,
		dir: c.Direction, proto: c.Protocol, hasUser: c.User != "", isGlob: c.app != nil && c.app.glob, hasService: c.Service != "",
		hasIdentity: c.hasIdentity(), hostKey: -1, c: c,
	}
	if c.host != "" {
		r.hostKey = c.hostKey
	}
	if c.Expires.IsZero() {
		r.expires = math.MaxInt64
	}
	if c.Port.IsZero() {
		r.portHi = math.MaxUint16
	}
	if c.LocalPort.IsZero() {
		r.lportHi = math.MaxUint16
	}
	return r
}

// unixNanoClamped is t in Unix nanoseconds, clamped to the int64 range (years
// 1678-2262) so that comparisons stay right for any valid time.
func unixNanoClamped(t time.Time) int64 {
	const limit = math.MaxInt64/int64(time.Second) - 1 // seconds
	switch sec := t.Unix(); {
	case sec < -limit:
		return math.MinInt64
	case sec > limit:
		return math.MaxInt64 - 1
	}
	return t.UnixNano()
}

// query is a request with what the match tests need computed once.
type query struct {
	req    *Request
	remote netip.Addr // unmapped
	host   string     // normalized; "" if unknown
	port   uint16
	lport  uint16
	now    int64
	// The matcher's numbers for host (if a rule names it exactly) and for those of its
	// suffixes that a wildcard names, longest first (the order of precedence): nKeys of
	// them, in keyBuf and then moreKeys. None when no rule can match the host, the
	// common case. (A slice of keyBuf would make every query escape to the heap.)
	nKeys    int
	keyBuf   [4]int32
	moreKeys []int32
}

func (q *query) hostKey(i int) int32 {
	if i < len(q.keyBuf) {
		return q.keyBuf[i]
	}
	return q.moreKeys[i-len(q.keyBuf)]
}

// hasHostKey reports whether the request's name is k (an exact name) or lies below it
// (a wildcard's suffix).
func (q *query) hasHostKey(k int32) bool {
	for i := range q.nKeys {
		if q.hostKey(i) == k {
			return true
		}
	}
	return false
}

func (q *query) addHostKey(k int32) {
	if q.nKeys < len(q.keyBuf) {
		q.keyBuf[q.nKeys] = k
	} else {
		q.moreKeys = append(q.moreKeys, k)
	}
	q.nKeys++
}

func (r *ruleRef) matches(q *query) bool {
	return q.now < r.expires &&
		(r.dir == AnyDirection || r.dir == q.req.Direction) &&
		(r.proto == AnyProtocol || r.proto == q.req.Protocol) &&
		r.portLo <= q.port && q.port <= r.portHi &&
		r.lportLo <= q.lport && q.lport <= r.lportHi &&
		(!r.remote.IsValid() || r.remote.Contains(q.remote)) &&
		(!r.hasUser || userMatches(r.c.User, q.req)) &&
		(!r.hasService || serviceMatches(r.c.Service, q.req)) &&
		(r.hostKey < 0 || q.hasHostKey(r.hostKey)) &&
		(!r.hasIdentity || r.c.identityMatches(q.req)) &&
		// The app is checked last: exact-path rules were selected by exe already (for a
		// verified program: a container's program is matched only by rules that name a
		// container, see appExeFor), and glob matching is the most expensive test.
		(q.req.Identity == IdentityVerified && !r.isGlob || r.c.app == nil || r.c.app.match(appExeFor(r.c.Container, q.req)))
}

func firstMatch(list []ruleRef, q *query) *ruleRef {
	for i := range list {
		if list[i].matches(q) {
			return &list[i]
		}
	}
	return nil
}

// smallList is the size up to which rules are scanned linearly, unindexed.
const smallList = 8

// v6Key indexes an IPv6 prefix: the masked address and the prefix length.
type v6Key struct {
	hi, lo uint64
	bits   uint8
}

// bucket holds rules of one app class (all exact for one path, all globs with one
// index key, or all app-less rules) in precedence order. Rules that name a service go
// to a sub-bucket tried first (service is the next precedence key). Host comes next: a
// small bucket is scanned in rank order and checks each rule's host against the
// request's host keys (no pointer to chase); a large one moves its host rules to
// sub-buckets by host key, tried first in the order of the request's keys (exact
// name, then the longest suffix). Because the app class, service and host are then
// equal within what is indexed, the remote prefix length is the first key that
// differs: the first matching rule under the longest matching prefix wins, and rules
// without a remote come last. Large buckets index the rules by prefix; each prefix's
// rules, and the rules without a remote, are then indexed by port (see portIndex).
type bucket struct {
	all    []ruleRef
	svc    *bucket           // rules of the same app class that name a service: they win first
	hosts  map[int32]*bucket // rules that name a host, by hostKey
	isHost bool              // b is a host sub-bucket: its rules all name one host key

	indexed  bool
	v4       map[uint64]*portIndex // key: bits<<32 | masked address
	v4Bits   []uint8               // prefix lengths present, longest first
	v6       map[v6Key]*portIndex
	v6Bits   []uint8
	noRemote *portIndex
}

func (b *bucket) add(c *compiledRule) {
	if c.Service != "" {
		if b.svc == nil {
			b.svc = &bucket{}
		}
		b = b.svc
	}
	b.all = append(b.all, refOf(c))
}

// empty reports whether b holds no rules.
func (b *bucket) empty() bool {
	return len(b.all) == 0 && !b.indexed && b.svc == nil && b.hosts == nil
}

// finish sorts the bucket and builds its index if it is large.
func (b *bucket) finish() {
	if b.svc != nil {
		b.svc.finish()
	}
	slices.SortFunc(b.all, func(x, y ruleRef) int { return cmp.Compare(x.rank, y.rank) })
	if len(b.all) <= smallList {
		// Scanned in rank order; ruleRef.matches checks the host.
		b.all = slices.Clip(b.all)
		return
	}
	// Host rules outrank the rest of the bucket: they go to sub-buckets by host, and
	// the rest is indexed by remote and port.
	rest := b.all[:0]
	for _, r := range b.all {
		if r.hostKey < 0 || b.isHost {
			rest = append(rest, r)
			continue
		}
		if b.hosts == nil {
			b.hosts = map[int32]*bucket{}
		}
		sub := b.hosts[r.hostKey]
		if sub == nil {
			sub = &bucket{isHost: true}
			b.hosts[r.hostKey] = sub
		}
		sub.all = append(sub.all, r)
	}
	b.all = rest
	for _, sub := range b.hosts {
		sub.finish()
	}
	if len(b.all) <= smallList {
		b.all = slices.Clip(b.all)
		return
	}
	b.indexed = true
	b.v4 = map[uint64]*portIndex{}
	b.v6 = map[v6Key]*portIndex{}
	b.noRemote = &portIndex{}
	seen4, seen6 := map[uint8]bool{}, map[uint8]bool{}
	for _, r := range b.all { // rank order, so every list below is in rank order
		switch {
		case r.remote.IsValid() && r.remote.Addr().Is4():
			bits := uint8(r.remote.Bits())
			k := v4KeyOf(r.remote.Addr(), bits)
			if b.v4[k] == nil {
				b.v4[k] = &portIndex{}
			}
			b.v4[k].all = append(b.v4[k].all, r)
			if !seen4[bits] {
				seen4[bits] = true
				b.v4Bits = append(b.v4Bits, bits)
			}
		case r.remote.IsValid():
			bits := uint8(r.remote.Bits())
			k := v6KeyOf(r.remote.Addr(), bits)
			if b.v6[k] == nil {
				b.v6[k] = &portIndex{}
			}
			b.v6[k].all = append(b.v6[k].all, r)
			if !seen6[bits] {
				seen6[bits] = true
				b.v6Bits = append(b.v6Bits, bits)
			}
		default:
			b.noRemote.all = append(b.noRemote.all, r)
		}
	}
	b.all = nil
	for _, pi := range b.v4 {
		pi.finish()
	}
	for _, pi := range b.v6 {
		pi.finish()
	}
	b.noRemote.finish()
	desc := func(x, y uint8) int { return cmp.Compare(y, x) }
	slices.SortFunc(b.v4Bits, desc)
	slices.SortFunc(b.v6Bits, desc)
}

// portBlockShift sets the width of the port blocks narrow ranges are filed under, and
// wideRange the width from which a range goes to the wide list instead.
const (
	portBlockShift = 8
	wideRange      = 1024
)

// portIndex holds rules that agree on app class and remote prefix, in precedence
// order. Port width is then the first key that differs, so single-port rules are tried
// first, then ranges (narrow ones filed by 256-port block, wide ones in a list), then
// rules for any port; the first match wins.
type portIndex struct {
	all     []ruleRef
	indexed bool
	one     map[uint16][]ruleRef
	blocks  map[uint16][]ruleRef
	wide    []ruleRef
	anyPort []ruleRef
}

func (pi *portIndex) finish() {
	if len(pi.all) <= smallList {
		pi.all = slices.Clip(pi.all)
		return
	}
	pi.indexed = true
	pi.one = map[uint16][]ruleRef{}
	pi.blocks = map[uint16][]ruleRef{}
	for _, r := range pi.all {
		switch w := int(r.portHi) - int(r.portLo); {
		case r.portLo == 0 && r.portHi == math.MaxUint16:
			pi.anyPort = append(pi.anyPort, r)
		case w == 0:
			pi.one[r.portLo] = append(pi.one[r.portLo], r)
		case w < wideRange:
			for blk := r.portLo >> portBlockShift; blk <= r.portHi>>portBlockShift; blk++ {
				pi.blocks[blk] = append(pi.blocks[blk], r)
			}
		default:
			pi.wide = append(pi.wide, r)
		}
	}
	pi.all = nil
}

func (pi *portIndex) match(q *query) *ruleRef {
	if pi == nil {
		return nil
	}
	if !pi.indexed {
		return firstMatch(pi.all, q)
	}
	if len(pi.one) > 0 {
		if r := firstMatch(pi.one[q.port], q); r != nil {
			return r
		}
	}
	if len(pi.blocks) > 0 {
		if r := firstMatch(pi.blocks[q.port>>portBlockShift], q); r != nil {
			return r
		}
	}
	if r := firstMatch(pi.wide, q); r != nil {
		return r
	}
	return firstMatch(pi.anyPort, q)
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

// match returns the bucket's winning rule for q, or nil.
func (b *bucket) match(q *query) *ruleRef {
	if b == nil {
		return nil
	}
	if b.svc != nil && len(q.req.Services) > 0 {
		if r := b.svc.match(q); r != nil {
			return r
		}
	}
	if b.hosts != nil {
		for i := range q.nKeys { // exact name, then longest suffix first
			if r := b.hosts[q.hostKey(i)].match(q); r != nil {
				return r
			}
		}
	}
	if !b.indexed {
		return firstMatch(b.all, q)
	}
	if q.remote.Is4() {
		if len(b.v4) > 0 {
			for _, bits := range b.v4Bits {
				if r := b.v4[v4KeyOf(q.remote, bits)].match(q); r != nil {
					return r
				}
			}
		}
	} else if q.remote.IsValid() && len(b.v6) > 0 {
		for _, bits := range b.v6Bits {
			if r := b.v6[v6KeyOf(q.remote, bits)].match(q); r != nil {
				return r
			}
		}
	}
	return b.noRemote.match(q)
}

// matcher is an immutable, compiled rule set. Engine swaps whole matchers, so Decide
// reads one without locks.
type matcher struct {
	sorted   []Rule                  // as given: sorted by ID
	rules    []*compiledRule         // precedence order
	pinned   []*compiledRule         // the rules with a SHA256 pin (see pinNote)
	exact    map[string]*bucket      // exact Unix paths
	known    map[string]*knownApp    // per exact Unix path: its rules and the glob buckets that fit it
	exactWin map[string]*bucket      // exact Windows paths, lower-cased
	globs    map[globDirKey]*globDir // globs by their literal leading segments
	globDeps []int                   // numbers of leading segments present in globs, ascending
	anyApp   *bucket                 // rules without app
	// hostKeys numbers every exact host and every wildcard suffix (".example.com")
	// rules name, by hostHash, so that a request's name and suffixes are hashed once,
	// in one pass, and not per bucket; hostNames[k] is the name, to rule out hash
	// collisions. suffixLabels has bit n set if a wildcard suffix of n labels exists,
	// so that suffixes no wildcard can name are not looked up.
	hostKeys     map[uint64]int32
	hostNames    []string
	hostCollided map[string]int32 // names whose hash another name took first
	suffixLabels uint64
	// hostRefusing[k] is true if a rule that is not an allow rule names host key k.
	hostRefusing []bool
}

// hostHash is FNV-1a over s's bytes from last to first, so that hostKeysOf gets the
// hash of every suffix of a name in one pass.
func hostHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := len(s) - 1; i >= 0; i-- {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// globDir holds the globs that share literal leading segments, by last segment. A glob
// can only match paths that start with its literal leading segments and, if its last
// segment is literal, end with it.
type globDir struct {
	byBase map[string]*bucket
	noBase *bucket // globs whose last segment has wildcards
}

// globDirKey keys m.globs: the leading segments, and how many there are (the empty
// prefix of zero segments differs from the empty first segment of an absolute path).
type globDirKey struct {
	depth  int
	prefix string
}

// compile builds a matcher. The rules must be valid (see Rule.Validate).
func compile(rules []Rule) *matcher {
	m := &matcher{
		sorted:   rules,
		rules:    make([]*compiledRule, 0, len(rules)),
		exact:    map[string]*bucket{},
		known:    map[string]*knownApp{},
		exactWin: map[string]*bucket{},
		globs:    map[globDirKey]*globDir{},
		anyApp:   &bucket{},
		hostKeys: map[uint64]int32{},
	}
	for _, r := range rules {
		c := compileRule(r)
		if c.host != "" {
			key, wild := strings.CutPrefix(c.host, "*") // ".example.com" cannot be an exact name
			if wild {
				m.suffixLabels |= 1 << min(strings.Count(key, "."), 63)
			}
			c.hostKey = m.internHost(key)
			for int(c.hostKey) >= len(m.hostRefusing) {
				m.hostRefusing = append(m.hostRefusing, false)
			}
			if c.Action != Allow {
				m.hostRefusing[c.hostKey] = true
			}
		}
		m.rules = append(m.rules, c)
		if c.SHA256 != "" {
			m.pinned = append(m.pinned, c)
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
		default:
			k := globDirKey{c.app.depth, c.app.prefix}
			d := m.globs[k]
			if d == nil {
				d = &globDir{byBase: map[string]*bucket{}, noBase: &bucket{}}
				m.globs[k] = d
				if !slices.Contains(m.globDeps, c.app.depth) {
					m.globDeps = append(m.globDeps, c.app.depth)
				}
			}
			if c.app.base == "" {
				d.noBase.add(c)
			} else {
				getBucket(d.byBase, c.app.base).add(c)
			}
		}
	}
	for _, mp := range []map[string]*bucket{m.exact, m.exactWin} {
		for _, b := range mp {
			b.finish()
		}
	}
	for _, d := range m.globs {
		for _, b := range d.byBase {
			b.finish()
		}
		d.noBase.finish()
	}
	slices.Sort(m.globDeps)
	m.anyApp.finish()
	// Paths with exact rules are the ones requests name most; find their glob buckets
	// now so that evaluation hashes the path once.
	for exe, b := range m.exact {
		k := &knownApp{exact: b}
		m.eachGlobBucket(exe, func(gb *bucket) { k.globs = append(k.globs, gb) })
		m.known[exe] = k
	}
	return m
}

// knownApp is what the matcher knows about an executable path that has exact rules.
type knownApp struct {
	exact *bucket
	globs []*bucket // glob buckets whose literal segments fit the path
}

// eachGlobBucket calls fn for every glob bucket whose literal leading segments and last
// segment fit name.
func (m *matcher) eachGlobBucket(name string, fn func(*bucket)) {
	base := lastSegment(name)
	for _, depth := range m.globDeps {
		prefix, ok := leadingSegments(name, depth)
		if !ok {
			return
		}
		if d := m.globs[globDirKey{depth, prefix}]; d != nil {
			if b := d.byBase[base]; b != nil {
				fn(b)
			}
			if !d.noBase.empty() {
				fn(d.noBase)
			}
		}
	}
}

// match returns the winning rule for req at now, or nil. It does not allocate for
// Unix paths.
func (m *matcher) match(req *Request, now time.Time) *compiledRule {
	q := query{
		req:    req,
		remote: req.Remote.Addr().Unmap(),
		host:   req.ruleHost(),
		port:   req.Remote.Port(),
		lport:  req.Local.Port(),
		now:    unixNanoClamped(now),
	}
	if q.host != "" && len(m.hostKeys) > 0 {
		m.hostKeysOf(&q)
	}
	if r := m.matchQuery(&q); r != nil {
		return r.c
	}
	return nil
}

// hostRefusable reports whether a rule that is not an allow rule names host (normalized)
// or a wildcard that covers it.
func (m *matcher) hostRefusable(host string) bool {
	if host == "" || len(m.hostKeys) == 0 {
		return false
	}
	q := query{host: host}
	m.hostKeysOf(&q)
	for i := range q.nKeys {
		if k := q.hostKey(i); int(k) < len(m.hostRefusing) && m.hostRefusing[k] {
			return true
		}
	}
	return false
}

// internHost returns name's key, adding it if new.
func (m *matcher) internHost(name string) int32 {
	h := hostHash(name)
	if k, ok := m.hostKeys[h]; ok {
		if m.hostNames[k] == name {
			return k
		}
		// Another name has this hash: practically never, but never a wrong verdict.
		if k, ok := m.hostCollided[name]; ok {
			return k
		}
		if m.hostCollided == nil {
			m.hostCollided = map[string]int32{}
		}
		k = int32(len(m.hostNames))
		m.hostNames = append(m.hostNames, name)
		m.hostCollided[name] = k
		return k
	}
	k := int32(len(m.hostNames))
	m.hostKeys[h] = k
	m.hostNames = append(m.hostNames, name)
	return k
}

// lookupHost returns the key of name, whose hash is h.
func (m *matcher) lookupHost(h uint64, name string) (int32, bool) {
	k, ok := m.hostKeys[h]
	if !ok {
		return 0, false
	}
	if m.hostNames[k] == name {
		return k, true
	}
	k, ok = m.hostCollided[name]
	return k, ok
}

// hostKeysOf fills q's host keys: the exact name's key, then the keys of the suffixes
// wildcards name, longest first. One right-to-left pass hashes every suffix.
func (m *matcher) hostKeysOf(q *query) {
	host := q.host
	var buf [8]int32
	suffixes := buf[:0] // found right to left: shortest first
	labels := 0
	h := uint64(14695981039346656037)
	for i := len(host) - 1; i >= 0; i-- {
		h = (h ^ uint64(host[i])) * 1099511628211
		if host[i] != '.' {
			continue
		}
		labels++
		if m.suffixLabels&(1<<min(labels, 63)) == 0 {
			continue
		}
		if k, ok := m.lookupHost(h, host[i:]); ok {
			suffixes = append(suffixes, k)
		}
	}
	if k, ok := m.lookupHost(h, host); ok {
		q.addHostKey(k)
	}
	for i := len(suffixes) - 1; i >= 0; i-- {
		q.addHostKey(suffixes[i])
	}
}

func (m *matcher) matchQuery(q *query) *ruleRef {
	exe := q.req.ruleExe() // "" for an identity that is neither verified nor a container's: no app rule matches
	if exe != "" {
		// App is the first precedence key: any exact-path match beats every glob, and
		// any glob match beats every app-less rule.
		windows := isWindowsPath(exe)
		if k := m.known[exe]; k != nil {
			if r := k.exact.match(q); r != nil {
				return r
			}
			var best *ruleRef
			for _, b := range k.globs {
				if r := b.match(q); r != nil && (best == nil || r.rank < best.rank) {
					best = r
				}
			}
			if best != nil {
				return best
			}
			return m.anyApp.match(q)
		}
		if windows && len(m.exactWin) > 0 {
			if r := m.exactWin[strings.ToLower(exe)].match(q); r != nil {
				return r
			}
		}
		if len(m.globs) > 0 {
			var best *ruleRef
			m.matchGlobs(q, exe, &best) // Unix globs see the path as it is
			if windows {
				m.matchGlobs(q, normalizeWindows(exe), &best) // Windows globs: lower case, '/'
			}
			if best != nil {
				return best
			}
		}
	}
	return m.anyApp.match(q)
}

// matchGlobs improves *best with the glob buckets that fit name: those whose literal
// leading segments and last segment are name's.
func (m *matcher) matchGlobs(q *query, name string, best **ruleRef) {
	base := lastSegment(name)
	for _, depth := range m.globDeps {
		prefix, ok := leadingSegments(name, depth)
		if !ok {
			return
		}
		d := m.globs[globDirKey{depth, prefix}]
		if d == nil {
			continue
		}
		for _, b := range [2]*bucket{d.byBase[base], d.noBase} {
			if r := b.match(q); r != nil && (*best == nil || r.rank < (*best).rank) {
				*best = r
			}
		}
	}
}

// matchLinear is the unindexed reference: the first rule in precedence order that
// matches. Tests compare it with match; benchmarks use it as the baseline.
func (m *matcher) matchLinear(req *Request, now time.Time) *compiledRule {
	for _, c := range m.rules {
		if c.matchesRequest(req, now) {
			return c
		}
	}
	return nil
}

// matchesRequest reports whether c matches req at now, every field checked (the
// unindexed test: matchLinear and Explain use it).
func (c *compiledRule) matchesRequest(req *Request, now time.Time) bool {
	return c.matches(req, now) && (c.app == nil || c.app.match(appExeFor(c.Container, req)))
}
