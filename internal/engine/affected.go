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
// allowed before; the rule that goes was not the one that allowed. So answering a
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
	var changed []Rule
	for _, r := range new {
		i, ok := before[r.ID]
		if ok && sameRule(old[i], r) {
			delete(before, r.ID)
			continue
		}
		if !allowedOnly || r.Action != Allow {
			changed = append(changed, r)
		}
	}
	for _, r := range old {
		if _, gone := before[r.ID]; gone && (!allowedOnly || r.Action == Allow) {
			changed = append(changed, r)
		}
	}
	if len(changed) == 0 {
		return func(*Request) bool { return false }
	}
	if len(changed) > affectedCompileMax {
		return func(*Request) bool { return true }
	}
	compiled := make([]*compiledRule, len(changed))
	for i, r := range changed {
		compiled[i] = compileRule(r)
	}
	return func(req *Request) bool {
		for _, c := range compiled {
			if c.mayMatch(req) {
				return true
			}
		}
		return false
	}
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

// sameRule compares every field that affects matching or the verdict.
func sameRule(a, b Rule) bool {
	return a.ID == b.ID && a.App == b.App && a.User == b.User && a.Service == b.Service && a.Host == b.Host && a.Direction == b.Direction &&
		a.Protocol == b.Protocol && a.Remote == b.Remote && a.Port == b.Port &&
		a.LocalPort == b.LocalPort && a.Action == b.Action && a.Expires.Equal(b.Expires)
}
