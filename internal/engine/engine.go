package engine

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultPromptTimeout is the prompt timeout when Config.PromptTimeout is zero.
const DefaultPromptTimeout = 30 * time.Second

// subscriberBuffer is how many events a subscriber may fall behind before it loses some.
const subscriberBuffer = 256

// Config of the decision engine.
type Config struct {
	Default       Action           // verdict for an unanswered question (Allow, Deny, Reject, Drop)
	PromptTimeout time.Duration    // how long a question may stay open (0: DefaultPromptTimeout); every hold ends by then
	Now           func() time.Time // nil: time.Now (tests inject a clock)

	// Open questions at most: on the whole (0: DefaultMaxPrompts), per user (0:
	// DefaultMaxPromptsPerUser) and per program of one user (0:
	// DefaultMaxPromptsPerApp), shared fairly as questioncap.go says; a connection
	// that may not raise a question gets Default at once (ReasonQuestionCap). A bound
	// above the one that contains it is lowered to it.
	MaxPrompts        int
	MaxPromptsPerUser int
	MaxPromptsPerApp  int
	// HostRulesMatchShared lets host rules match a name another program resolved
	// (Request.HostSource HostShared). Off, a host rule matches only names the
	// connecting program resolved itself, so that one program's lookup never lets
	// another through.
	HostRulesMatchShared bool

	// BootID names this boot of the machine (Linux: /proc/sys/kernel/random/boot_id).
	// Answers "until-reboot" store it in Rule.BootID; "" refuses them.
	BootID string
}

// PromptID identifies a question, unique within one Engine.
type PromptID uint64

// Prompt is an open question: a connection no rule decides, waiting for a person.
type Prompt struct {
	ID      PromptID  `json:"id"`
	Request Request   `json:"request"` // the first request that raised it
	Held    int       `json:"held"`    // connections waiting on it
	Opened  time.Time `json:"opened"`
	Expires time.Time `json:"expires"`
	// Note says why a pinned rule of the program did not decide: "the program at
	// PATH changed since you allowed it", or that latch is still hashing it.
	Note string `json:"note,omitempty"`
}

// EventKind says what an Event reports.
type EventKind string

// Event kinds.
const (
	EventPrompt   EventKind = "prompt"   // a question was opened
	EventAnswered EventKind = "answered" // a question was closed: answered, timed out, decided by a new rule, or the engine closed
	EventRules    EventKind = "rules"    // the rule set changed
	// EventGap says the subscriber was too slow and lost events before this one: it
	// should list the open questions and the rules again.
	EventGap EventKind = "gap"
)

// Event is something subscribers hear about. Receivers must not modify it.
type Event struct {
	Kind    EventKind `json:"kind"`
	Prompt  *Prompt   `json:"prompt,omitempty"`
	Verdict *Verdict  `json:"verdict,omitempty"`
	Rules   []Rule    `json:"rules,omitempty"` // for "rules": the new set, sorted by ID
}

// Stats are the engine's counters since New.
type Stats struct {
	Decisions   map[Reason]uint64 `json:"decisions"`   // verdicts given, by reason
	Open        int               `json:"open"`        // open questions
	Held        int               `json:"held"`        // connections waiting on them
	Rules       int               `json:"rules"`       // rules in force
	Dropped     uint64            `json:"dropped"`     // events slow subscribers lost
	Prompts     uint64            `json:"prompts"`     // questions opened
	Subscribers int               `json:"subscribers"` // live subscriptions
	// QuestionCaps are the question bounds and how often they applied.
	QuestionCaps QuestionCapStats `json:"question_caps"`
}

// Engine decides held connections from rules and asks a person about the rest. All its
// methods are safe for concurrent use. Decide never blocks: rule evaluation reads an
// immutable compiled snapshot, and rule changes build a new one aside and swap it in.
type Engine struct {
	cfg Config
	now func() time.Time

	matcher atomic.Pointer[matcher]
	gen     atomic.Uint64 // rule sets put in force (see Generation)

	// writeMu serializes rule changes; it is never taken by Decide.
	writeMu     sync.Mutex
	nextID      RuleID
	expiryTimer *time.Timer
	closedRules bool
	// installHooks are the OnInstall hooks; guarded by writeMu.
	installHooks []func(live []Rule)

	// hookMu guards the OnRulesChanged hooks and the changes waiting for them.
	hookMu      sync.Mutex
	hooks       []func(old, new []Rule)
	hookQueue   []rulesChange
	hookRunning bool
	hookWake    chan struct{}
	// hookQueued counts the changes handed to the hooks, hookDone those they have
	// run for; hookWaiters wait for hookDone to reach their count (SettleHooks).
	hookQueued, hookDone uint64
	hookWaiters          []hookWaiter
	done                 chan struct{} // closed by Close

	// mu guards the open questions. It is held only briefly, never while calling out.
	mu           sync.Mutex
	closed       bool
	open         map[promptKey]*prompt
	byID         map[PromptID]*prompt
	lastPromptID PromptID
	users        map[userKey]*userLoad // open questions by user and program

	capApp, capUser, capGlobal, capEvicted atomic.Uint64

	subMu      sync.Mutex
	subs       map[*subscriber]struct{}
	subsClosed bool
	dropped    atomic.Uint64

	counts [numReasons]atomic.Uint64

	// hitsMu guards hits, the rule-hit counters by rule ID (see RuleHits).
	hitsMu sync.Mutex
	hits   map[RuleID]*ruleHits

	// mode is the Mode in force, read by Decide without a lock; it is stored with mu
	// held (see SetMode). modeMu guards the rest of the mode's state.
	mode      atomic.Uint32
	modeMu    sync.Mutex
	modeState ModeState
	modeTimer *time.Timer
	modeSeq   uint64
	modeHooks []func(ModeState)

	// sugMu guards learn mode's suggestions.
	sugMu      sync.Mutex
	sugs       map[suggestionKey]*Suggestion
	lastSugID  SuggestionID
	sugGen     uint64
	sugDropped atomic.Uint64
	sugUnnamed atomic.Uint64

	lists atomic.Pointer[[]BlockList] // see SetLists
}

var reasons = [...]Reason{ReasonRule, ReasonPrompt, ReasonDefault, ReasonTimeout, ReasonQuestionCap, ReasonMode, ReasonList}

const numReasons = len(reasons)

func (e *Engine) count(r Reason) {
	for i, x := range reasons {
		if x == r {
			e.counts[i].Add(1)
			return
		}
	}
}

// promptKey is what makes two questions identical.
type promptKey struct {
	exe    string
	dir    Direction
	proto  Protocol
	remote netip.AddrPort
	host   string
	uid    int32
	user   string
	// A forged or container program and the host's program of the same path are
	// different programs: they never share a question (nor its answer).
	identity  Identity
	container string
}

func keyOf(req *Request) promptKey {
	return promptKey{
		exe:    req.Exe,
		dir:    req.Direction,
		proto:  req.Protocol,
		remote: netip.AddrPortFrom(req.Remote.Addr().Unmap(), req.Remote.Port()),
		host:   normalizeHost(req.Host),
		uid:    req.UID,
		user:   req.User,

		identity:  req.Identity,
		container: req.Container,
	}
}

type waiter struct {
	req     Request
	verdict func(Verdict)
}

type prompt struct {
	Prompt
	key     promptKey
	user    userKey
	waiters []waiter
	timer   *time.Timer
}

func (p *prompt) snapshot() *Prompt {
	s := p.Prompt
	s.Held = len(p.waiters)
	return &s
}

// delivery is a verdict to hand out once locks are released.
type delivery struct {
	fn func(Verdict)
	v  Verdict
}

func (e *Engine) deliver(ds []delivery) {
	mode := e.Mode()
	for _, d := range ds {
		d.v.Mode = mode
		e.count(d.v.Reason)
		d.fn(d.v)
	}
}

// New returns an engine with the given rules in force. Rules with ID 0 get fresh IDs;
// invalid rules or duplicate IDs are an error naming the rule and field. Expired rules
// are dropped.
func New(cfg Config, rules []Rule) (*Engine, error) {
	switch cfg.Default {
	case Allow, Deny, Reject, Drop:
	default:
		return nil, fmt.Errorf("engine config: Default %s: want allow, deny, reject or drop", cfg.Default)
	}
	if cfg.PromptTimeout < 0 {
		return nil, fmt.Errorf("engine config: PromptTimeout %v is negative", cfg.PromptTimeout)
	}
	if cfg.PromptTimeout == 0 {
		cfg.PromptTimeout = DefaultPromptTimeout
	}
	for _, b := range []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxPrompts", &cfg.MaxPrompts, DefaultMaxPrompts},
		{"MaxPromptsPerUser", &cfg.MaxPromptsPerUser, DefaultMaxPromptsPerUser},
		{"MaxPromptsPerApp", &cfg.MaxPromptsPerApp, DefaultMaxPromptsPerApp},
	} {
		if *b.v < 0 {
			return nil, fmt.Errorf("engine config: %s %d is negative", b.name, *b.v)
		}
		if *b.v == 0 {
			*b.v = b.def
		}
	}
	cfg.MaxPromptsPerUser = min(cfg.MaxPromptsPerUser, cfg.MaxPrompts)
	cfg.MaxPromptsPerApp = min(cfg.MaxPromptsPerApp, cfg.MaxPromptsPerUser)
	e := &Engine{
		cfg:    cfg,
		now:    cfg.Now,
		nextID: 1,
		open:   map[promptKey]*prompt{},
		byID:   map[PromptID]*prompt{},
		users:  map[userKey]*userLoad{},
		subs:   map[*subscriber]struct{}{},
		sugs:   map[suggestionKey]*Suggestion{},

		hookWake: make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if e.now == nil {
		e.now = time.Now
	}
	e.matcher.Store(compile(nil))
	prepared, err := e.prepare(slices.Clone(rules))
	if err != nil {
		return nil, err
	}
	e.writeMu.Lock()
	e.install(prepared)
	return e, nil
}

// prepare validates a whole rule set and gives IDs to rules without one, in place
// (the slice must be the engine's own); on error it changes nothing. Call with writeMu
// held, or before the engine is shared.
func (e *Engine) prepare(out []Rule) ([]Rule, error) {
	for i := range out {
		if err := out[i].Validate(); err != nil {
			return nil, &RuleError{Index: i, ID: out[i].ID, Err: err}
		}
	}
	if err := checkIDs(out); err != nil {
		return nil, err
	}
	next := e.nextID
	for _, r := range out {
		if r.ID >= next {
			next = r.ID + 1
		}
	}
	for i := range out {
		if out[i].ID == 0 {
			out[i].ID = next
			next++
		}
	}
	e.nextID = next
	return out, nil
}

// RuleFor returns the rule that would decide req now, if one does, without asking
// anyone or counting a decision. A DNS resolver asks it with a request that names
// only the program and the host (no address, port or protocol), so only rules that
// constrain none of those can match.
func (e *Engine) RuleFor(req *Request) (Rule, bool) {
	e.readyRequest(req)
	if c := e.matcher.Load().match(req, e.now()); c != nil {
		return c.Rule, true
	}
	return Rule{}, false
}

// readyRequest readies req for matching against this engine's rules and lists: the one
// step Decide, RuleFor and Explain all take first, so that they match alike.
func (e *Engine) readyRequest(req *Request) {
	req.matchShared = e.cfg.HostRulesMatchShared
}

// HostRefusable reports whether some rule that is not an allow rule names host, or a
// wildcard covering it, whatever program, address or port it is for. When it is false,
// RuleFor gives no such rule for a request naming that host, for any program (until
// the rules change): the local resolver may then ask upstream before it knows which
// program asked.
func (e *Engine) HostRefusable(host string) bool {
	return e.matcher.Load().hostRefusable(normalizeHost(host))
}

// Decide implements intercept.Decider: a matching rule answers at once (ReasonRule,
// RuleID set); otherwise the request joins a question (Prompt). Identical questions
// (same exe + direction + proto + remote ip + remote port, same user) share one Prompt.
// When the Prompt is answered, times out (Default, ReasonTimeout) or the engine is
// closed, verdict is called for every request attached. Never blocks; verdict may be
// called before Decide returns, or later from another goroutine, exactly once.
func (e *Engine) Decide(req *Request, verdict func(Verdict)) {
	e.readyRequest(req)
	now := e.now()
	mode := e.Mode()
	if mode == ModeBlockAll && !isLoopback(req) {
		// The panic switch: no rule is consulted.
		e.count(ReasonMode)
		verdict(Verdict{Action: Deny, Reason: ReasonMode, Mode: mode})
		return
	}
	m := e.matcher.Load()
	c := m.match(req, now)
	// Lists come after the rules that name a program, before those that do not.
	if c == nil || (c.app == nil && !c.hasIdentity()) {
		if v, listed := e.listVerdict(req); listed {
			e.count(ReasonList)
			v.Mode = mode
			verdict(v)
			return
		}
	}
	if c != nil {
		c.hits.add(now)
		e.count(ReasonRule)
		verdict(Verdict{Action: c.Action, Reason: ReasonRule, RuleID: c.ID, Mode: mode})
		return
	}
	e.mu.Lock()
	// Rule sets and modes are swapped under mu; if one arrived since the lock-free
	// look, it may decide this request, and its sweep of open prompts has already run.
	if m2 := e.matcher.Load(); m2 != m && e.Mode() != ModeBlockAll {
		if c := m2.match(req, now); c != nil {
			e.mu.Unlock()
			c.hits.add(now)
			e.count(ReasonRule)
			verdict(Verdict{Action: c.Action, Reason: ReasonRule, RuleID: c.ID, Mode: e.Mode()})
			return
		}
	}
	if v, decided := e.modeVerdict(e.Mode(), req); decided {
		mode := e.Mode()
		if mode == ModeLearn {
			e.suggest(req, now)
		}
		e.mu.Unlock()
		e.count(v.Reason)
		v.Mode = mode
		verdict(v)
		return
	}
	if e.closed {
		e.mu.Unlock()
		e.deliver([]delivery{{verdict, Verdict{Action: e.cfg.Default, Reason: ReasonDefault}}})
		return
	}
	key := keyOf(req)
	if p := e.open[key]; p != nil {
		p.waiters = append(p.waiters, waiter{*req, verdict})
		e.mu.Unlock()
		return
	}
	uk := userKeyOf(req)
	evict, refused := e.admitLocked(uk, appKeyOf(key))
	if refused != "" {
		e.mu.Unlock()
		e.countCap(refused)
		e.deliver([]delivery{{verdict, Verdict{Action: e.cfg.Default, Reason: ReasonQuestionCap}}})
		return
	}
	var evicted []delivery
	if evict != nil {
		evicted = e.closeLocked(evict, Verdict{Action: e.cfg.Default, Reason: ReasonQuestionCap})
		e.capEvicted.Add(1)
	}
	e.lastPromptID++
	p := &prompt{
		Prompt: Prompt{
			ID:      e.lastPromptID,
			Request: *req,
			Opened:  now,
			Expires: now.Add(e.cfg.PromptTimeout),
			Note:    e.matcher.Load().pinNote(req),
		},
		key:     key,
		user:    uk,
		waiters: []waiter{{*req, verdict}},
	}
	e.open[key] = p
	e.byID[p.ID] = p
	e.addLoadLocked(p)
	p.timer = time.AfterFunc(e.cfg.PromptTimeout, func() { e.expire(p) })
	e.publish(Event{Kind: EventPrompt, Prompt: p.snapshot()})
	e.mu.Unlock()
	e.deliver(evicted)
}

// forgetLocked removes p from the open questions. Call with mu held.
func (e *Engine) forgetLocked(p *prompt) {
	delete(e.open, p.key)
	delete(e.byID, p.ID)
	e.dropLoadLocked(p)
	p.timer.Stop()
}

// closeLocked removes p from the open questions and returns its deliveries. Call with
// mu held.
func (e *Engine) closeLocked(p *prompt, v Verdict) []delivery {
	e.forgetLocked(p)
	ds := make([]delivery, len(p.waiters))
	for i, w := range p.waiters {
		ds[i] = delivery{w.verdict, v}
	}
	vv := v
	e.publish(Event{Kind: EventAnswered, Prompt: p.snapshot(), Verdict: &vv})
	return ds
}

// expire gives the default to everything waiting on p when its time is up.
func (e *Engine) expire(p *prompt) {
	e.mu.Lock()
	if e.byID[p.ID] != p {
		e.mu.Unlock() // answered meanwhile
		return
	}
	ds := e.closeLocked(p, Verdict{Action: e.cfg.Default, Reason: ReasonTimeout})
	e.mu.Unlock()
	e.deliver(ds)
}

// Prompts returns the open questions, oldest first.
func (e *Engine) Prompts() []Prompt {
	e.mu.Lock()
	out := make([]Prompt, 0, len(e.byID))
	for _, p := range e.byID {
		out = append(out, *p.snapshot())
	}
	e.mu.Unlock()
	slices.SortFunc(out, func(a, b Prompt) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Answer decides prompt id: every connection waiting on it gets a.Action
// (ReasonPrompt). Unless a.For is 0 (once), it also creates a rule from the prompt's
// request, as a.Scope says, expiring after a.For unless Forever; it returns that rule.
// Other open prompts the new rule matches are decided by it at once (ReasonRule).
// Answering a prompt that is not open is an error; so is asking to remember an answer
// for an unknown executable; in both cases nothing changes.
func (e *Engine) Answer(id PromptID, a Answer) (*Rule, error) {
	if err := a.validate(); err != nil {
		return nil, fmt.Errorf("prompt %d: %w", id, err)
	}
	now := e.now()
	// Hold writeMu across closing the prompt and adding its rule, so that the rule's ID
	// is known when the verdicts go out and no other change slips in between.
	e.writeMu.Lock()
	e.mu.Lock()
	p := e.byID[id]
	if p == nil {
		e.mu.Unlock()
		e.writeMu.Unlock()
		return nil, fmt.Errorf("prompt %d: not open (already answered, timed out, or never asked)", id)
	}
	var rule Rule
	if a.For != 0 {
		var err error
		if rule, err = ruleFromAnswer(id, &p.Request, a, now); err == nil {
			if a.For == UntilReboot {
				rule.BootID = e.cfg.BootID
				if rule.BootID == "" {
					err = fmt.Errorf("prompt %d: this system's boot is unknown, so a rule until-reboot cannot be made", id)
				}
			}
		}
		if err == nil {
			err = rule.Validate()
		}
		if err != nil {
			e.mu.Unlock()
			e.writeMu.Unlock()
			return nil, err
		}
		rule.ID = e.nextID
		e.nextID++
	}
	v := Verdict{Action: a.Action, Reason: ReasonPrompt, RuleID: rule.ID}
	ds := e.closeLocked(p, v)
	e.mu.Unlock()
	if a.For == 0 {
		e.writeMu.Unlock()
		e.deliver(ds)
		return nil, nil
	}
	old := e.currentRules()
	rest := e.installLocked(append(slices.Clip(old), rule), old)
	e.deliver(ds)
	e.deliver(rest)
	return &rule, nil
}

// currentRules returns a copy of the rules in force, expired ones included.
func (e *Engine) currentRules() []Rule {
	m := e.matcher.Load()
	out := make([]Rule, len(m.sorted))
	copy(out, m.sorted)
	return out
}

// Generation counts the rule sets put in force since New: it changes with every
// change of the rules (adding, removing, importing, an answer's rule, expiry), so a
// caller that saved the rules at one generation knows whether they changed since.
// Read it before Rules: the rules are then at least as new.
func (e *Engine) Generation() uint64 { return e.gen.Load() }

// Rules returns the rules in force, sorted by ID, without expired ones.
func (e *Engine) Rules() []Rule {
	now := e.now()
	m := e.matcher.Load()
	out := make([]Rule, 0, len(m.sorted))
	for _, r := range m.sorted {
		if !r.Expired(now) {
			out = append(out, r)
		}
	}
	return out
}

// liveRules is len(e.Rules()) without the copy of every rule (Stats answers
// each status request: at 10,000 rules the copy was megabytes).
func (e *Engine) liveRules() int {
	now := e.now()
	m := e.matcher.Load()
	n := 0
	for i := range m.sorted {
		if !m.sorted[i].Expired(now) {
			n++
		}
	}
	return n
}

// AddRule validates r, gives it the next ID (any ID in r is ignored) and, if it has
// none, the current time as Created, and puts it in force. The error names the field.
func (e *Engine) AddRule(r Rule) (Rule, error) {
	if err := r.Validate(); err != nil {
		return Rule{}, err
	}
	if r.Source != "" {
		return Rule{}, &FieldError{"source", strconv.Quote(r.Source), errSourceNotYours}
	}
	now := e.now()
	if r.Expired(now) {
		return Rule{}, &FieldError{"expires", r.Expires.String(), fmt.Errorf("already passed")}
	}
	if r.Created.IsZero() {
		r.Created = now
	}
	e.writeMu.Lock()
	r.ID = e.nextID
	e.nextID++
	old := e.currentRules()
	e.install(append(slices.Clip(old), r))
	return r, nil
}

// RemoveRule takes rule id out of force and returns it. It is an error if there is no
// such rule (or it has expired).
func (e *Engine) RemoveRule(id RuleID) (Rule, error) {
	now := e.now()
	e.writeMu.Lock()
	old := e.currentRules()
	i := slices.IndexFunc(old, func(r Rule) bool { return r.ID == id })
	if i < 0 || old[i].Expired(now) {
		e.writeMu.Unlock()
		return Rule{}, fmt.Errorf("rule %d: no such rule", id)
	}
	if old[i].Source != "" {
		e.writeMu.Unlock()
		return Rule{}, managedError(old[i])
	}
	removed := old[i]
	e.install(slices.Delete(slices.Clone(old), i, i+1))
	return removed, nil
}

// ReplaceRules puts rs in force instead of the current set, all or nothing (import).
// Rules with ID 0 get fresh IDs; errors name the rule and field. The engine takes rs
// over, without a copy (an import of 100,000 rules would otherwise need them twice
// while the new matcher is built): the caller must not use rs afterwards.
//
// Managed rules (Source set) stay as they are: those in rs are ignored, so an export,
// which lists them too, imports again as it was.
func (e *Engine) ReplaceRules(rs []Rule) error {
	e.writeMu.Lock()
	saved := e.nextID
	prepared, err := e.prepare(OwnRules(rs))
	if err != nil {
		e.nextID = saved
		e.writeMu.Unlock()
		return err
	}
	e.install(e.withManaged(prepared))
	return nil
}

// PruneExpired drops expired rules from the set now, telling subscribers and
// OnRulesChanged hooks. The engine also does this by itself when a rule expires.
// With none expired it arms the expiry timer again from now: the timer runs on
// the monotonic clock and a rule's expiry is a wall-clock time, so after the wall
// clock was stepped back the timer fires before the rule expires (review28: it
// was not armed again, and the rule outlived its expiry in the rule set, its
// OnRulesChanged hooks never told). Call it also when the wall clock was
// stepped.
func (e *Engine) PruneExpired() {
	now := e.now()
	e.writeMu.Lock()
	old := e.currentRules()
	if !slices.ContainsFunc(old, func(r Rule) bool { return r.Expired(now) }) {
		e.scheduleExpiry(old, now)
		e.writeMu.Unlock()
		return
	}
	e.install(old)
}

// OnRulesChanged registers fn to be called after every later change of the rule set,
// with the set before and after (sorted by ID; old may hold rules that expired, new
// holds none). Use it to re-decide flows the change affects (see Affected). Calls come
// from one goroutine, in the order the changes happened, soon after each change is in
// force, outside every engine lock (fn may call the engine). After Close, changes
// already queued are still reported.
func (e *Engine) OnRulesChanged(fn func(old, new []Rule)) {
	e.hookMu.Lock()
	e.hooks = append(e.hooks, fn)
	start := !e.hookRunning
	e.hookRunning = true
	e.hookMu.Unlock()
	if start {
		go e.runHooks()
	}
}

// OnInstall registers fn to be called synchronously with the rules in force (sorted
// by ID, none expired): once at once, and then on every later change (add, remove,
// import, an answer remembered as a rule, expiry), after the engine decides by the
// new rules and before the call that changed them returns. fn runs with the
// engine's rule lock held: it must be quick and must not call the engine. Use it
// for caches of decisions that must never outlive the rules that made them (the
// kernel fast path).
func (e *Engine) OnInstall(fn func(live []Rule)) {
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	e.installHooks = append(e.installHooks, fn)
	now := e.now()
	live := make([]Rule, 0)
	for _, r := range e.currentRules() {
		if !r.Expired(now) {
			live = append(live, r)
		}
	}
	fn(live)
}

// install puts rules in force, decides the open prompts they now match, and tells
// everyone. Call with writeMu held; install releases it.
func (e *Engine) install(rules []Rule) {
	e.deliver(e.installLocked(rules, e.currentRules()))
}

// installLocked swaps the matcher, sweeps open prompts and queues the change for
// subscribers and hooks. Call with writeMu held; it releases writeMu and returns the
// verdicts to hand out.
func (e *Engine) installLocked(rules, old []Rule) []delivery {
	now := e.now()
	// rules is the caller's own copy (every caller builds it for this call), so the
	// expired ones are filtered out in place: at 100,000 rules a second copy would
	// be another 20 MB while the old and the new matcher both live.
	live := rules[:0]
	for _, r := range rules {
		// An expiry is a wall-clock time: time.Now().Add(d) carries a monotonic
		// reading, with which Before and Sub ignore a step of the wall clock
		// (review29), so it is dropped.
		r.Expires = r.Expires.Round(0)
		if !r.Expired(now) {
			live = append(live, r)
		}
	}
	slices.SortFunc(live, func(a, b Rule) int { return cmp.Compare(a.ID, b.ID) })
	m := compile(live)
	e.attachHits(m)

	var ds []delivery
	e.mu.Lock()
	e.matcher.Store(m)
	e.gen.Add(1)
	for _, p := range e.byID {
		kept := p.waiters[:0]
		decided := 0
		var last Verdict
		for _, w := range p.waiters {
			if c := m.match(&w.req, now); c != nil {
				c.hits.add(now)
				last = Verdict{Action: c.Action, Reason: ReasonRule, RuleID: c.ID}
				ds = append(ds, delivery{w.verdict, last})
				decided++
			} else {
				kept = append(kept, w)
			}
		}
		clear(p.waiters[len(kept):])
		p.waiters = kept
		if len(kept) == 0 {
			// Every connection waiting on it was decided: the question is closed.
			e.forgetLocked(p)
			snap := p.snapshot()
			snap.Held = decided
			e.publish(Event{Kind: EventAnswered, Prompt: snap, Verdict: &last})
		}
	}
	e.mu.Unlock()
	for _, fn := range e.installHooks {
		fn(live)
	}

	e.scheduleExpiry(live, now)
	e.publish(Event{Kind: EventRules, Rules: live})
	e.queueHooks(old, live)
	e.writeMu.Unlock()
	return ds
}

type rulesChange struct{ old, new []Rule }

// hookWaiter is a SettleHooks call waiting for the hooks to have run for the first
// n changes.
type hookWaiter struct {
	n    uint64
	done chan struct{}
}

// SettleHooks waits until the OnRulesChanged hooks have run for every rule change
// made before it was called (at once if there are none), or until ctx is done. An
// API call that changes the rules waits for it, so that what the hooks do (flows
// decided again under the new rules, the rules file saved) is done once it returns.
func (e *Engine) SettleHooks(ctx context.Context) error {
	e.hookMu.Lock()
	if e.hookDone >= e.hookQueued || !e.hookRunning {
		e.hookMu.Unlock()
		return nil
	}
	w := hookWaiter{n: e.hookQueued, done: make(chan struct{})}
	e.hookWaiters = append(e.hookWaiters, w)
	e.hookMu.Unlock()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the effects of a rule change: %w", ctx.Err())
	}
}

// hooksRan records that the hooks ran for n more changes and releases the
// SettleHooks calls that waited for them (all of them with all). Call with hookMu
// held.
func (e *Engine) hooksRan(n uint64, all bool) {
	e.hookDone += n
	kept := e.hookWaiters[:0]
	for _, w := range e.hookWaiters {
		if all || w.n <= e.hookDone {
			close(w.done)
		} else {
			kept = append(kept, w)
		}
	}
	clear(e.hookWaiters[len(kept):])
	e.hookWaiters = kept
}

// queueHooks hands a change to the hook goroutine. Call with writeMu held, so that
// changes queue in the order they happened.
func (e *Engine) queueHooks(old, new []Rule) {
	e.hookMu.Lock()
	if len(e.hooks) > 0 {
		e.hookQueue = append(e.hookQueue, rulesChange{old, new})
		e.hookQueued++
	}
	e.hookMu.Unlock()
	select {
	case e.hookWake <- struct{}{}:
	default:
	}
}

// runHooks calls the OnRulesChanged hooks, in order, outside every engine lock.
func (e *Engine) runHooks() {
	for {
		select {
		case <-e.hookWake:
		case <-e.done:
		}
		e.hookMu.Lock()
		q, hooks := e.hookQueue, e.hooks
		e.hookQueue = nil
		e.hookMu.Unlock()
		for _, c := range q {
			for _, fn := range hooks {
				fn(c.old, c.new)
			}
		}
		e.hookMu.Lock()
		e.hooksRan(uint64(len(q)), false)
		e.hookMu.Unlock()
		select {
		case <-e.done:
			e.hookMu.Lock()
			empty := len(e.hookQueue) == 0
			if empty {
				// No more runs: nobody waits for one.
				e.hookRunning = false
				e.hooksRan(0, true)
			}
			e.hookMu.Unlock()
			if empty {
				return
			}
		default:
		}
	}
}

// scheduleExpiry arms a timer for the earliest expiry in rules. Call with writeMu held.
func (e *Engine) scheduleExpiry(rules []Rule, now time.Time) {
	if e.expiryTimer != nil {
		e.expiryTimer.Stop()
		e.expiryTimer = nil
	}
	if e.closedRules {
		return
	}
	var first time.Time
	for _, r := range rules {
		if !r.Expires.IsZero() && (first.IsZero() || r.Expires.Before(first)) {
			first = r.Expires
		}
	}
	if first.IsZero() {
		return
	}
	e.expiryTimer = time.AfterFunc(max(first.Sub(now), 0)+time.Millisecond, e.PruneExpired)
}

// Close answers every open prompt with Default (ReasonDefault), stops the timers and
// closes every subscription. Later requests still get rule verdicts; those no rule
// matches get Default at once.
func (e *Engine) Close() {
	e.writeMu.Lock()
	if !e.closedRules {
		close(e.done)
	}
	e.closedRules = true
	if e.expiryTimer != nil {
		e.expiryTimer.Stop()
		e.expiryTimer = nil
	}
	e.writeMu.Unlock()
	// The timed mode's timer too (it arms itself again while the engine's clock
	// has not reached the mode's end).
	e.modeMu.Lock()
	if e.modeTimer != nil {
		e.modeTimer.Stop()
		e.modeTimer = nil
	}
	e.modeSeq++ // a timer firing meanwhile is stale
	e.modeMu.Unlock()

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	var ds []delivery
	for _, p := range e.byID {
		ds = append(ds, e.closeLocked(p, Verdict{Action: e.cfg.Default, Reason: ReasonDefault})...)
	}
	e.mu.Unlock()
	e.deliver(ds)

	e.subMu.Lock()
	e.subsClosed = true
	for s := range e.subs {
		close(s.ch)
		delete(e.subs, s)
	}
	e.subMu.Unlock()
}

type subscriber struct {
	ch chan Event
	// lastGap: the last event queued is a gap, so a later loss is covered by it
	// (the subscriber has not read it yet if the queue is still full).
	lastGap bool
}

// Subscribe returns a channel of events (prompts opened and closed, rule changes) and a
// func that ends the subscription and closes the channel. The channel is buffered; a
// subscriber that falls behind loses events and never slows the engine, and then gets
// an EventGap (the queue's last place is kept for it) so that it can list the state
// again. Close closes every subscription.
func (e *Engine) Subscribe() (events <-chan Event, cancel func()) {
	s := &subscriber{ch: make(chan Event, subscriberBuffer)}
	e.subMu.Lock()
	if e.subsClosed {
		close(s.ch)
	} else {
		e.subs[s] = struct{}{}
	}
	e.subMu.Unlock()
	return s.ch, func() {
		e.subMu.Lock()
		if _, ok := e.subs[s]; ok {
			delete(e.subs, s)
			close(s.ch)
		}
		e.subMu.Unlock()
	}
}

func (e *Engine) publish(ev Event) {
	e.subMu.Lock()
	for s := range e.subs {
		// Only publish sends (under subMu), so the queue only shrinks meanwhile.
		if len(s.ch) < cap(s.ch)-1 {
			s.ch <- ev
			s.lastGap = false
			continue
		}
		e.dropped.Add(1)
		if !s.lastGap {
			select {
			case s.ch <- Event{Kind: EventGap}:
				s.lastGap = true
			default:
			}
		}
	}
	e.subMu.Unlock()
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	st := Stats{Decisions: map[Reason]uint64{}, Dropped: e.dropped.Load()}
	for i, r := range reasons {
		st.Decisions[r] = e.counts[i].Load()
	}
	e.mu.Lock()
	st.Open = len(e.byID)
	for _, p := range e.byID {
		st.Held += len(p.waiters)
	}
	st.Prompts = uint64(e.lastPromptID)
	e.mu.Unlock()
	st.QuestionCaps = QuestionCapStats{
		Max: e.cfg.MaxPrompts, PerUser: e.cfg.MaxPromptsPerUser, PerApp: e.cfg.MaxPromptsPerApp,
		App: e.capApp.Load(), User: e.capUser.Load(), Global: e.capGlobal.Load(), Evicted: e.capEvicted.Load(),
	}
	st.Rules = e.liveRules()
	e.subMu.Lock()
	st.Subscribers = len(e.subs)
	e.subMu.Unlock()
	return st
}
