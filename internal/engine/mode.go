package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Mode says what the engine does with a connection no rule decides (and, for
// ModeBlockAll, with every connection). See the package documentation, "Modes".
type Mode uint8

// Modes. The zero value is ModeAsk.
const (
	// ModeAsk: a connection no rule decides becomes a question for a person.
	ModeAsk Mode = iota
	// ModeLearn: a connection no rule decides is allowed, and a rule that would allow
	// it is recorded as a Suggestion.
	ModeLearn
	// ModeSilentAllow: a connection no rule decides is allowed, unasked.
	ModeSilentAllow
	// ModeSilentDeny: a connection no rule decides is denied, unasked.
	ModeSilentDeny
	// ModeBlockAll: every new connection is denied, whatever the rules say (a panic
	// switch), except loopback connections, which the rules and questions decide as
	// in ModeAsk (the daemon's own traffic never reaches the engine).
	ModeBlockAll
)

var modeNames = [...]string{"ask", "learn", "silent-allow", "silent-deny", "block-all"}

// String returns "ask", "learn", "silent-allow", "silent-deny" or "block-all".
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParseMode.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// ParseMode parses what Mode.String returns, exactly so.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("mode %q: want %s", s, strings.Join(modeNames[:], ", "))
}

// ModeState is the mode in force and, for a mode set for a time (`latch pause`), when
// it ends and which mode follows.
type ModeState struct {
	Mode  Mode      `json:"mode"`
	Until time.Time `json:"until,omitzero"` // zero: until changed
	Then  Mode      `json:"then"`           // the mode after Until (unused when Until is zero)
}

// Mode returns the mode in force.
func (e *Engine) Mode() Mode { return Mode(e.mode.Load()) }

// ModeState returns the mode in force, with its end and the mode that follows.
func (e *Engine) ModeState() ModeState {
	e.modeMu.Lock()
	defer e.modeMu.Unlock()
	return e.modeState
}

// SetMode puts s.Mode in force; if s.Until is set, s.Then follows at that time by
// itself (a time already passed puts s.Then in force at once). s.Until is a
// wall-clock time: its monotonic reading, if any (time.Now().Add(d)), is dropped,
// so that a step of the wall clock moves the mode's end (see CheckModeEnd). When
// SetMode returns, every later Decide uses the new mode: block-all denies the very
// next connection. Open questions the new mode decides without asking (every one
// but loopback's in block-all, every one in learn and silent-*) are decided at once
// (ReasonMode). Hooks registered with OnModeChanged hear the new state.
func (e *Engine) SetMode(s ModeState) error {
	for _, m := range []Mode{s.Mode, s.Then} {
		if int(m) >= len(modeNames) {
			return fmt.Errorf("mode %d: unknown", m)
		}
	}
	e.modeMu.Lock()
	e.setModeLocked(s)
	return nil
}

// CheckModeEnd ends a timed mode (ModeState.Until set) whose end passed by the
// engine's wall clock, putting its Then in force as SetMode does, and otherwise
// arms the mode's timer again from that clock. The timer runs on the monotonic
// clock, which a step of the wall clock (or a suspend) does not move, so without
// this a 'latch pause' outlived its end by the size of a forward step (review29).
// The daemon calls it when the wall clock was stepped; without a timed mode it
// does nothing.
func (e *Engine) CheckModeEnd() {
	e.modeMu.Lock()
	e.checkModeEndLocked(e.modeSeq)
}

// checkModeEndLocked is CheckModeEnd for the mode set as number seq (a timer of a
// mode since replaced does nothing). Call with modeMu held; it releases it.
func (e *Engine) checkModeEndLocked(seq uint64) {
	s := e.modeState
	if e.modeSeq != seq || s.Until.IsZero() {
		e.modeMu.Unlock()
		return
	}
	now := e.now()
	if !now.Before(s.Until) {
		e.setModeLocked(ModeState{Mode: s.Then})
		return
	}
	e.armModeTimerLocked(s.Until.Sub(now), seq)
	e.modeMu.Unlock()
}

// armModeTimerLocked (re)arms the timer that ends the mode set as number seq after
// d (monotonic), when its end is checked against the wall clock again (before a
// backward step the timer fires early and arms itself again). Call with modeMu held.
func (e *Engine) armModeTimerLocked(d time.Duration, seq uint64) {
	if e.modeTimer != nil {
		e.modeTimer.Stop()
	}
	e.modeTimer = time.AfterFunc(d, func() {
		e.modeMu.Lock()
		e.checkModeEndLocked(seq)
	})
}

// setModeLocked is SetMode after the check of the modes. Call with modeMu held; it
// releases it.
func (e *Engine) setModeLocked(s ModeState) {
	now := e.now()
	s.Until = s.Until.Round(0) // a wall-clock time: see SetMode
	if !s.Until.IsZero() && !now.Before(s.Until) {
		s = ModeState{Mode: s.Then}
	}
	if s.Until.IsZero() {
		s.Then = ModeAsk
	}
	if e.modeTimer != nil {
		e.modeTimer.Stop()
		e.modeTimer = nil
	}
	e.modeSeq++
	seq := e.modeSeq
	e.modeState = s
	if !s.Until.IsZero() {
		e.armModeTimerLocked(s.Until.Sub(now), seq)
	}
	// Under mu, so that no question opens under the old mode after the sweep below.
	e.mu.Lock()
	e.mode.Store(uint32(s.Mode))
	var ds []delivery
	for _, p := range e.byID {
		v, decided := e.modeVerdict(s.Mode, &p.Request)
		if !decided {
			continue
		}
		if s.Mode == ModeLearn {
			e.suggest(&p.Request, now)
		}
		ds = append(ds, e.closeLocked(p, v)...)
	}
	e.mu.Unlock()
	hooks := slices.Clone(e.modeHooks)
	e.modeMu.Unlock()
	e.deliver(ds)
	for _, fn := range hooks {
		fn(s)
	}
}

// OnModeChanged registers fn to be called after every later mode change (by SetMode
// or when a timed mode ends), with the new state. fn must not call SetMode.
func (e *Engine) OnModeChanged(fn func(ModeState)) {
	e.modeMu.Lock()
	e.modeHooks = append(e.modeHooks, fn)
	e.modeMu.Unlock()
}

// modeVerdict is what mode m decides for req when no rule does: decided is false in
// ModeAsk (ask a person).
func (e *Engine) modeVerdict(m Mode, req *Request) (v Verdict, decided bool) {
	switch m {
	case ModeLearn, ModeSilentAllow:
		return Verdict{Action: Allow, Reason: ReasonMode}, true
	case ModeSilentDeny, ModeBlockAll:
		if m == ModeBlockAll && isLoopback(req) {
			return Verdict{}, false
		}
		return Verdict{Action: Deny, Reason: ReasonMode}, true
	}
	return Verdict{}, false
}

// isLoopback reports whether req stays on this machine's loopback.
func isLoopback(req *Request) bool {
	return req.Remote.Addr().Unmap().IsLoopback()
}

// SuggestionID identifies a suggestion, unique within one Engine.
type SuggestionID uint64

// Suggestion is a rule learn mode recorded: it would allow connections that were let
// through because no rule decided them.
type Suggestion struct {
	ID    SuggestionID `json:"id"`
	Rule  Rule         `json:"rule"`  // an allow rule for the program (verified), direction, protocol, host or address, and port
	Count uint64       `json:"count"` // connections it would have decided
	First time.Time    `json:"first"`
	Last  time.Time    `json:"last"`
}

// MaxSuggestions bounds the suggestions kept; connections beyond are still allowed
// in learn mode, and counted (SuggestionStats.Dropped).
const MaxSuggestions = 10000

// suggestionKey is what makes two suggestions the same.
type suggestionKey struct {
	app, host, remote, port string
	dir                     Direction
	proto                   Protocol
}

func keyOfRule(r *Rule) suggestionKey {
	return suggestionKey{r.App, r.Host, r.Remote.String(), r.Port.String(), r.Direction, r.Protocol}
}

// suggest records a suggestion for req (learn mode). A program whose identity is not
// verified gets none: no app rule could name it (see ruleFromAnswer).
func (e *Engine) suggest(req *Request, now time.Time) {
	r, err := ruleFromAnswer(0, req, Answer{Action: Allow, For: Forever, Scope: ScopeAppHostPort}, now)
	if err != nil {
		e.sugUnnamed.Add(1)
		return
	}
	r.Note = "learned"
	k := keyOfRule(&r)
	e.sugMu.Lock()
	defer e.sugMu.Unlock()
	if s := e.sugs[k]; s != nil {
		s.Count++
		s.Last = now
		return
	}
	if len(e.sugs) >= MaxSuggestions {
		e.sugDropped.Add(1)
		return
	}
	e.lastSugID++
	e.sugs[k] = &Suggestion{ID: e.lastSugID, Rule: r, Count: 1, First: now, Last: now}
	e.sugGen++
}

// Suggestions returns the recorded suggestions, grouped by program (sorted by app,
// then by ID).
func (e *Engine) Suggestions() []Suggestion {
	e.sugMu.Lock()
	out := make([]Suggestion, 0, len(e.sugs))
	for _, s := range e.sugs {
		out = append(out, *s)
	}
	e.sugMu.Unlock()
	slices.SortFunc(out, func(a, b Suggestion) int {
		return cmp.Or(cmp.Compare(a.Rule.App, b.Rule.App), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// SuggestionsGeneration changes whenever a suggestion is added, accepted or restored
// (counts of existing ones aside), for callers that save them.
func (e *Engine) SuggestionsGeneration() uint64 {
	e.sugMu.Lock()
	defer e.sugMu.Unlock()
	return e.sugGen
}

// RestoreSuggestions replaces the suggestions with ss (saved by an earlier run);
// invalid ones are an error and change nothing.
func (e *Engine) RestoreSuggestions(ss []Suggestion) error {
	m := make(map[suggestionKey]*Suggestion, len(ss))
	var last SuggestionID
	for i := range ss {
		s := ss[i]
		if err := s.Rule.Validate(); err != nil {
			return fmt.Errorf("suggestion %d: %w", s.ID, err)
		}
		if s.ID == 0 || s.Rule.App == "" || s.Rule.Action != Allow {
			return fmt.Errorf("suggestion %d: want an ID and an allow rule for an app", s.ID)
		}
		m[keyOfRule(&s.Rule)] = &s
		last = max(last, s.ID)
	}
	e.sugMu.Lock()
	e.sugs = m
	e.lastSugID = max(e.lastSugID, last)
	e.sugGen++
	e.sugMu.Unlock()
	return nil
}

// AcceptSuggestions turns the suggestions ids (all of them if all is set) into rules
// and forgets them; it returns the rules added. An unknown ID is an error, and then
// nothing changes.
func (e *Engine) AcceptSuggestions(ids []SuggestionID, all bool) ([]Rule, error) {
	e.sugMu.Lock()
	byID := make(map[SuggestionID]suggestionKey, len(e.sugs))
	for k, s := range e.sugs {
		byID[s.ID] = k
	}
	var keys []suggestionKey
	if all {
		for _, k := range byID {
			keys = append(keys, k)
		}
	} else {
		for _, id := range ids {
			k, ok := byID[id]
			if !ok {
				e.sugMu.Unlock()
				return nil, fmt.Errorf("suggestion %d: no such suggestion", id)
			}
			keys = append(keys, k)
		}
	}
	picked := make([]Suggestion, 0, len(keys))
	for _, k := range keys {
		if s := e.sugs[k]; s != nil {
			picked = append(picked, *s)
			delete(e.sugs, k)
		}
	}
	e.sugGen++
	e.sugMu.Unlock()
	slices.SortFunc(picked, func(a, b Suggestion) int { return cmp.Compare(a.ID, b.ID) })
	if len(picked) == 0 {
		return nil, nil
	}
	now := e.now()
	e.writeMu.Lock()
	old := e.currentRules()
	added := make([]Rule, len(picked))
	for i, s := range picked {
		r := s.Rule
		r.ID = e.nextID
		e.nextID++
		r.Created = now
		r.Note = fmt.Sprintf("learned: suggestion %d", s.ID)
		added[i] = r
	}
	e.install(append(slices.Clip(old), added...))
	return added, nil
}

// SuggestionStats count what learn mode could not record.
type SuggestionStats struct {
	Kept    int    `json:"kept"`    // suggestions recorded now
	Dropped uint64 `json:"dropped"` // connections allowed past MaxSuggestions, unrecorded
	Unnamed uint64 `json:"unnamed"` // connections allowed whose program no rule can name (not verified)
}

// SuggestionStats returns learn mode's counters.
func (e *Engine) SuggestionStats() SuggestionStats {
	e.sugMu.Lock()
	n := len(e.sugs)
	e.sugMu.Unlock()
	return SuggestionStats{Kept: n, Dropped: e.sugDropped.Load(), Unnamed: e.sugUnnamed.Load()}
}
