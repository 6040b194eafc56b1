package engine

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Step is a step of the precedence list in the package doc: the field comparison that
// settled which of two matching rules wins.
type Step uint8

// Precedence steps, numbered as in the package doc. StepNone: no comparison was
// needed (a rule was the only one that matched).
const (
	StepNone      Step = iota
	StepApp            // 1. exact path > glob > no app; then a named service > none
	StepHost           // 2. exact name > wildcard (more labels first) > no host
	StepRemote         // 3. narrower prefix > wider > no remote
	StepPort           // 4. narrower range > wider > no port
	StepUser           // 5. set > unset
	StepIdentity       // 6. more of cmdline, parent, unit, container, app id set > fewer
	StepLocalPort      // 7. narrower > wider > unset
	StepProtocol       // 8. set > any
	StepDirection      // 9. set > any
	StepAction         // 10. deny, reject, drop > allow
	StepID             // 11. lower ID (older rule)
)

var stepNames = [...]string{"none", "app", "host", "remote", "port", "user", "identity", "local-port", "protocol", "direction", "action", "id"}

var stepWhy = [...]string{
	"it is the only rule that matches",
	"app: an exact path beats a glob, a glob beats no app; then a rule naming a service beats one that does not",
	"host: an exact name beats a wildcard, a wildcard with more labels beats one with fewer, any host beats none",
	"remote: a narrower prefix beats a wider one, any prefix beats none",
	"port: a narrower range beats a wider one, any range beats none",
	"user: a rule naming a user beats one that does not",
	"identity: a rule naming more of cmdline, parent, unit, container and app id beats one naming fewer",
	"local port: a narrower range beats a wider one, any range beats none",
	"protocol: a rule naming a protocol beats one for any",
	"direction: a rule naming a direction beats one for any",
	"action: at equal specificity deny, reject and drop beat allow",
	"id: at equal specificity and action the older rule (lower id) wins",
}

// String returns the step's short name: "app", "host", "remote", "port", "user",
// "identity", "local-port", "protocol", "direction", "action", "id", or "none".
func (s Step) String() string {
	if int(s) < len(stepNames) {
		return stepNames[s]
	}
	return fmt.Sprintf("step(%d)", uint8(s))
}

// Why is a sentence saying what the step compares.
func (s Step) Why() string {
	if int(s) < len(stepWhy) {
		return stepWhy[s]
	}
	return s.String()
}

// MarshalText implements encoding.TextMarshaler.
func (s Step) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Step) UnmarshalText(b []byte) error {
	for i, n := range stepNames {
		if strings.EqualFold(n, string(b)) {
			*s = Step(i)
			return nil
		}
	}
	return fmt.Errorf("precedence step %q: want one of %s", b, strings.Join(stepNames[:], ", "))
}

// Outcome says how the engine would handle a request.
type Outcome string

// Outcomes of Explain.
const (
	OutcomeRule     Outcome = "rule"     // a rule decides it at once
	OutcomeQuestion Outcome = "question" // no rule matches: it becomes a question (Default if unanswered)
	OutcomeList     Outcome = "list"     // a blocklist decides it at once (no rule naming a program matches)
)

// Explanation says how the engine would decide a request under the rules in force.
type Explanation struct {
	Outcome Outcome `json:"outcome"`
	// Rule is the rule that would decide (nil for a question or a list); Step is the
	// precedence step at which it beat the best of the other matching rules
	// (StepNone if it was the only one).
	Rule *Rule `json:"rule,omitempty"`
	Step Step  `json:"step"`
	// List is the name of the blocklist that would decide (OutcomeList).
	List string `json:"list,omitempty"`
	// Action is what would happen: the rule's or list's action, or for a question the
	// default applied if nobody answers in time (Default).
	Action  Action `json:"action"`
	Default Action `json:"default"`
	// Losers are the other rules that match, best first, each with the step at which
	// the deciding rule beat it (StepNone when a list decides: a list comes before
	// every rule that names no program).
	Losers []Loser `json:"losers"`
	// Notes say what a person should know about how the deciding rule matched, e.g.
	// that its container matched by the name the runtime gives the container now.
	Notes []string `json:"notes,omitempty"`
}

// Loser is a rule that matches a request but does not decide it.
type Loser struct {
	Rule Rule `json:"rule"`
	Step Step `json:"step"` // the precedence step at which the deciding rule beat it
}

// Explain says which rule or list would decide req now, why, and which other rules
// match and lose (and at which precedence step). The deciding rule is the one Decide
// would use: it comes from the same compiled matcher, readied alike (readyRequest), and
// the lists are consulted in the same place (after the rules that name a program,
// before those that name none); the other matching rules come from the matcher's own
// per-rule test, and the steps from the comparison that orders the matcher's rules.
// Explain changes nothing (rule-hit counters included). The mode (block-all, learn,
// ...) is not part of the explanation.
func (e *Engine) Explain(req *Request) Explanation {
	e.readyRequest(req)
	now := e.now()
	m := e.matcher.Load()
	win := m.match(req, now)
	ex := Explanation{Outcome: OutcomeQuestion, Action: e.cfg.Default, Default: e.cfg.Default, Losers: []Loser{}}
	if l, byHost := e.listFor(req); l != nil {
		what := "address " + req.Remote.Addr().String()
		if byHost {
			what = "host " + req.ruleHost()
		}
		if win == nil || (win.app == nil && !win.hasIdentity()) {
			ex.Outcome, ex.List, ex.Action = OutcomeList, l.Name, l.Action
			ex.Notes = append(ex.Notes, fmt.Sprintf("list %q names the %s: lists decide after the rules that name a program, before those that name none", l.Name, what))
			win = nil
		} else {
			ex.Notes = append(ex.Notes, fmt.Sprintf("list %q names the %s, but a rule that names a program decides before lists", l.Name, what))
		}
	}
	if win != nil {
		r := win.Rule
		ex.Outcome, ex.Rule, ex.Action = OutcomeRule, &r, win.Action
		if r.Container != "" && containerMatchedByName(r.Container, req.Container, req.ContainerName) {
			ex.Notes = append(ex.Notes, ContainerNameNote(r.Container))
		}
	}
	// m.rules is in precedence order, so the losers come out best first.
	for _, c := range m.rules {
		if c == win || !c.matchesRequest(req, now) {
			continue
		}
		l := Loser{Rule: c.Rule}
		if win != nil {
			l.Step, _ = precedenceStep(win, c)
		}
		ex.Losers = append(ex.Losers, l)
	}
	if win != nil && len(ex.Losers) > 0 {
		ex.Step = ex.Losers[0].Step
	}
	return ex
}

// ruleHits counts the connections one rule decided. It survives recompilation: the
// engine keeps one per rule ID and every compiledRule of that ID points to it.
type ruleHits struct {
	rule Rule // the rule counted: a rule replaced under the same ID starts from zero
	n    atomic.Uint64
	last atomic.Int64 // Unix ns of the latest hit; 0: never
}

func (h *ruleHits) add(now time.Time) {
	if h == nil {
		return
	}
	h.n.Add(1)
	h.last.Store(now.UnixNano())
}

// RuleHits is a rule's hit counter: how many connections it decided and when last.
type RuleHits struct {
	ID      RuleID    `json:"id"`
	Hits    uint64    `json:"hits"`
	LastHit time.Time `json:"last_hit,omitzero"`
}

// RuleHits returns the hit counters of the rules in force, sorted by rule ID. A rule
// that never decided a connection has Hits 0 and a zero LastHit.
func (e *Engine) RuleHits() []RuleHits {
	rules := e.Rules()
	e.hitsMu.Lock()
	defer e.hitsMu.Unlock()
	out := make([]RuleHits, len(rules))
	for i, r := range rules {
		out[i].ID = r.ID
		if h := e.hits[r.ID]; h != nil {
			out[i].Hits = h.n.Load()
			if ns := h.last.Load(); ns != 0 {
				out[i].LastHit = time.Unix(0, ns).UTC()
			}
		}
	}
	return out
}

// SeedRuleHits adds saved counters (from an earlier run) to the rules' counters: Hits
// are added, LastHit kept if later. Entries for rules not in force are ignored.
func (e *Engine) SeedRuleHits(saved []RuleHits) {
	live := map[RuleID]bool{}
	for _, r := range e.Rules() {
		live[r.ID] = true
	}
	e.hitsMu.Lock()
	defer e.hitsMu.Unlock()
	for _, s := range saved {
		if !live[s.ID] {
			continue
		}
		h := e.hitsLocked(s.ID)
		h.n.Add(s.Hits)
		if !s.LastHit.IsZero() && s.LastHit.UnixNano() > h.last.Load() {
			h.last.Store(s.LastHit.UnixNano())
		}
	}
}

// hitsLocked returns rule id's counter, creating it. Call with hitsMu held.
func (e *Engine) hitsLocked(id RuleID) *ruleHits {
	h := e.hits[id]
	if h == nil {
		if e.hits == nil {
			e.hits = map[RuleID]*ruleHits{}
		}
		h = &ruleHits{}
		e.hits[id] = h
	}
	return h
}

// CountHit counts a connection that rule id decided outside Decide (the kernel fast
// path decides repeats of a rule's decision itself), at time at. An id no longer in
// force is ignored.
func (e *Engine) CountHit(id RuleID, at time.Time) {
	e.hitsMu.Lock()
	h := e.hits[id]
	e.hitsMu.Unlock()
	h.add(at)
}

// attachHits points m's rules at their counters and forgets the counters of rules m
// no longer holds. Call before m is in force.
func (e *Engine) attachHits(m *matcher) {
	e.hitsMu.Lock()
	defer e.hitsMu.Unlock()
	keep := make(map[RuleID]bool, len(m.rules))
	for _, c := range m.rules {
		if h := e.hits[c.ID]; h != nil && h.rule != c.Rule {
			delete(e.hits, c.ID) // changed (rules import): its counts were another rule's
		}
		c.hits = e.hitsLocked(c.ID)
		c.hits.rule = c.Rule
		keep[c.ID] = true
	}
	for id := range e.hits {
		if !keep[id] {
			delete(e.hits, id)
		}
	}
}
