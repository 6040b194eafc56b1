package engine

// Affected returns a predicate that is true for requests whose verdict may differ
// between the rule sets old and new: those that a rule present in only one of the sets
// (added, removed, or changed in any field) matches. A request no changed rule matches
// gets the same verdict from both sets, because precedence depends only on the rules
// that match. Expiry is ignored, so a rule that expired counts as matching; the
// predicate errs on the side of re-deciding. Unknown request fields
// (no executable, no user, no services, no host) count as matching too: flows known only from conntrack lack
// them. A change of more than affectedCompileMax rules (an import) affects every
// request: compiling them all again beside the new matcher would double the memory
// the change needs, and such a change re-decides nearly everything anyway.
func Affected(old, new []Rule) func(*Request) bool { return affected(old, new, false) }

// AffectedAllowed is Affected for requests the old rule set allowed, which is all
// a backend that re-decides only allowed flows asks about: an allow rule that
// comes (added, or a rule's new version) and a deny, reject or drop rule that
// goes (removed, or a rule's old version) cannot change an allow, so they affect
// nothing. The new allow either wins, and allows, or loses to the rule that
// allowed before; the rule that goes was not the one that allowed. One
// exception: an allow rule naming no program (no app, no identity field) that
// wins over an app-less allow rule naming an identity field leaves the request
// to a blocklist that rule overrode (handsToList), so such a rule counts while
// such an identity rule was in force. So answering a
// question with a rule ("allow, forever") decides no flow again: before, the
// connection just answered was decided again and, if its program had closed it
// meanwhile, its last packets (no socket left to attribute them to) became a
// question about an unknown program.
func AffectedAllowed(old, new []Rule) func(*Request) bool { return affected(old, new, true) }

func affected(old, new []Rule, allowedOnly bool) func(*Request) bool {
	before := make(map[RuleID]int, len(old)) // index in old
	for i, r := range old {
		before[r.ID] = i
	}
	// changed: the rules that may change a verdict of a request they match;
	// toList (allowedOnly): the allow rules that come naming no program, which
	// change an allow only through a list (handsToList).
	var changed, toList []Rule
	for _, r := range new {
		i, ok := before[r.ID]
		if ok && sameRule(old[i], r) {
			delete(before, r.ID)
			continue
		}
		switch {
		case !allowedOnly || r.Action != Allow:
			changed = append(changed, r)
		case handsToList(r):
			toList = append(toList, r)
		}
	}
	for _, r := range old {
		if _, gone := before[r.ID]; gone && (!allowedOnly || r.Action == Allow) {
			changed = append(changed, r)
		}
	}
	// overrode: the old allow rules that name no app but an identity field, the
	// only winners over a list that a rule naming no program can beat.
	var overrode []Rule
	if len(toList) > 0 {
		for _, r := range old {
			if r.Action == Allow && r.App == "" && r.hasIdentity() {
				overrode = append(overrode, r)
			}
		}
		if len(overrode) == 0 {
			toList = nil
		}
	}
	if len(changed) == 0 && len(toList) == 0 {
		return func(*Request) bool { return false }
	}
	if len(changed)+len(toList)+len(overrode) > affectedCompileMax {
		return func(*Request) bool { return true }
	}
	compiled, listC, overC := compileRules(changed), compileRules(toList), compileRules(overrode)
	return func(req *Request) bool {
		if anyMayMatch(compiled, req) {
			return true
		}
		return anyMayMatch(listC, req) && anyMayMatch(overC, req)
	}
}

// compileRules compiles each of rs.
func compileRules(rs []Rule) []*compiledRule {
	out := make([]*compiledRule, len(rs))
	for i, r := range rs {
		out[i] = compileRule(r)
	}
	return out
}

// anyMayMatch reports whether one of cs may match req (mayMatch).
func anyMayMatch(cs []*compiledRule, req *Request) bool {
	for _, c := range cs {
		if c.mayMatch(req) {
			return true
		}
	}
	return false
}

// affectedCompileMax is the most changed rules Affected compiles to tell affected
// requests from others.
const affectedCompileMax = 4096

// mayMatch is matches without expiry and with unknown fields matching anything: flows
// known only from conntrack have no executable or user.
func (c *compiledRule) mayMatch(req *Request) bool {
	if !c.matchesFlow(req) {
		return false
	}
	if c.User != "" && (req.UID >= 0 || req.User != "") && !userMatches(c.User, req) {
		return false
	}
	if c.Service != "" && len(req.Services) > 0 && !serviceMatches(c.Service, req) {
		return false
	}
	if c.host != "" && req.ruleHost() != "" && !hostMatches(c.host, req.ruleHost()) {
		return false
	}
	if c.app != nil && req.Exe != "" && !c.app.match(req.Exe) {
		return false
	}
	return true
}

// handsToList reports whether an allow rule that comes may still change an
// allow: one that names no program (no app, no identity field) and wins over an
// app-less rule that names an identity field (by host, remote or port, which
// precede identity) leaves the request to a blocklist that rule overrode (see
// doc.go, "Lists"), which may deny it.
func handsToList(r Rule) bool { return r.App == "" && !r.hasIdentity() }

// sameRule compares every field that affects matching or the verdict: the
// identity fields and the pin too (an import keeps a rule's ID while it may
// change them).
func sameRule(a, b Rule) bool {
	return a.ID == b.ID && a.App == b.App && a.User == b.User && a.Service == b.Service && a.Host == b.Host && a.Direction == b.Direction &&
		a.Protocol == b.Protocol && a.Remote == b.Remote && a.Port == b.Port &&
		a.LocalPort == b.LocalPort && a.Action == b.Action && a.Expires.Equal(b.Expires) &&
		a.Cmdline == b.Cmdline && a.Parent == b.Parent && a.Unit == b.Unit && a.Container == b.Container &&
		a.AppID == b.AppID && a.SHA256 == b.SHA256
}
