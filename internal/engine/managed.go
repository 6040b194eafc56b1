package engine

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrManaged is wrapped by the error of a change to a managed rule: one loaded from a
// managed rule file (Rule.Source), which only a change of that file changes.
var ErrManaged = errors.New("managed rule")

var errSourceNotYours = errors.New("only rules loaded from a managed rule file have a source; leave it empty")

func managedError(r Rule) error {
	return fmt.Errorf("rule %d comes from %s: %w: it is read-only here; change that file, then reload", r.ID, r.Source, ErrManaged)
}

// OwnRules returns the rules of rs that are the user's own (no Source): what the
// daemon saves in its rules file.
func OwnRules(rs []Rule) []Rule {
	out := make([]Rule, 0, len(rs))
	for _, r := range rs {
		if r.Source == "" {
			out = append(out, r)
		}
	}
	return out
}

// withManaged returns own plus the managed rules in force now; a managed rule whose
// ID one of own took gets a fresh ID. Call with writeMu held.
func (e *Engine) withManaged(own []Rule) []Rule {
	used := make(map[RuleID]bool, len(own))
	for _, r := range own {
		used[r.ID] = true
	}
	out := own
	for _, r := range e.currentRules() {
		if r.Source == "" {
			continue
		}
		if used[r.ID] {
			r.ID = e.nextID
			e.nextID++
		}
		out = append(out, r)
	}
	return out
}

// SetManaged puts rules in force as the managed rules, instead of the managed rules
// before, all or nothing; the user's own rules stay. Every rule must have a Source
// (the file it came from). IDs in rules are ignored: a rule identical to one in force
// keeps that one's ID (so nothing it decided is decided again), others get fresh IDs.
// Errors name the rule (its index in rules) and field.
func (e *Engine) SetManaged(rules []Rule) error {
	for i, r := range rules {
		if err := r.Validate(); err != nil {
			return &RuleError{Index: i, Err: err}
		}
		if r.Source == "" {
			return &RuleError{Index: i, Err: &FieldError{"source", `""`, errors.New("a managed rule names the file it came from")}}
		}
	}
	e.writeMu.Lock()
	cur := e.currentRules()
	own := OwnRules(cur)
	// Rules in force by content (ID left out), to keep their IDs.
	byContent := map[string][]RuleID{}
	for _, r := range cur {
		if r.Source != "" {
			k := ruleContent(r)
			byContent[k] = append(byContent[k], r.ID)
		}
	}
	out := own
	for _, r := range rules {
		k := ruleContent(r)
		if ids := byContent[k]; len(ids) > 0 {
			r.ID, byContent[k] = ids[0], ids[1:]
		} else {
			r.ID = e.nextID
			e.nextID++
		}
		out = append(out, r)
	}
	e.install(out)
	return nil
}

// ruleContent is the rule without its ID, for comparing.
func ruleContent(r Rule) string {
	r.ID = 0
	b, _ := r.MarshalJSON()
	return string(bytes.TrimSpace(b))
}
