package engine

import "net/netip"

// ListMatcher is a loaded blocklist (package blocklist): whether a hostname (by
// suffix) or an address is listed.
type ListMatcher interface {
	MatchHost(host string) bool
	MatchAddr(a netip.Addr) bool
}

// BlockList is a list in force: connections to a listed hostname or address get
// Action (ReasonList), after the rules that name a program (an app rule for one
// program overrides the list) and before the rules that do not.
type BlockList struct {
	Name   string
	Action Action
	List   ListMatcher
}

// SetLists puts lists in force (replacing those before); later Decides use them.
// The OnInstall hooks run before it returns, as for a rule change: a list can
// overrule what a rule without a program decided, so caches of such decisions (the
// kernel fast path) must not outlive it.
func (e *Engine) SetLists(ls []BlockList) {
	cp := append([]BlockList(nil), ls...)
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	e.lists.Store(&cp)
	if len(e.installHooks) == 0 {
		return
	}
	now := e.now()
	live := make([]Rule, 0)
	for _, r := range e.currentRules() {
		if !r.Expired(now) {
			live = append(live, r)
		}
	}
	for _, fn := range e.installHooks {
		fn(live)
	}
}

// listVerdict is the verdict of the first list that names req's hostname or remote
// address. The hostname is the one host rules match (ruleHost): the program's own
// name for the address, not the machine-wide one another program's lookup set
// (unless Config.HostRulesMatchShared), which any local user can set for any
// address by asking a server of its own (review 38).
func (e *Engine) listVerdict(req *Request) (Verdict, bool) {
	if l, _ := e.listFor(req); l != nil {
		return Verdict{Action: l.Action, Reason: ReasonList}, true
	}
	return Verdict{}, false
}

// listFor returns the first list in force naming req's hostname (the one rules
// match: ruleHost) or remote address, and whether it named the hostname; nil if
// none does.
func (e *Engine) listFor(req *Request) (*BlockList, bool) {
	ls := e.lists.Load()
	if ls == nil {
		return nil, false
	}
	host := req.ruleHost()
	for i := range *ls {
		l := &(*ls)[i]
		if host != "" && l.List.MatchHost(host) {
			return l, true
		}
		if l.List.MatchAddr(req.Remote.Addr()) {
			return l, false
		}
	}
	return nil, false
}

// HasLists says whether a blocklist is in force (safe to call from an OnInstall
// hook).
func (e *Engine) HasLists() bool {
	ls := e.lists.Load()
	return ls != nil && len(*ls) > 0
}
