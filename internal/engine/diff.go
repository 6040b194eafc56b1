package engine

// RuleChange is a rule whose ID stays and whose content changes.
type RuleChange struct{ Old, New Rule }

// RulesDiff is what replacing one rule set by another does.
type RulesDiff struct {
	Added   []Rule // in the new set only (new rules without an ID among them)
	Removed []Rule // in the old set only
	Changed []RuleChange
}

// DiffRules compares rule sets by ID: a rule of next whose ID old has with other
// content is changed; one whose ID old lacks (or with ID 0) is added; a rule of old
// whose ID next lacks is removed.
func DiffRules(old, next []Rule) RulesDiff {
	var d RulesDiff
	byID := make(map[RuleID]Rule, len(old))
	for _, r := range old {
		byID[r.ID] = r
	}
	seen := make(map[RuleID]bool, len(next))
	for _, r := range next {
		o, ok := byID[r.ID]
		switch {
		case r.ID == 0 || !ok:
			d.Added = append(d.Added, r)
		case ruleContent(o) != ruleContent(r):
			d.Changed = append(d.Changed, RuleChange{o, r})
		}
		if r.ID != 0 {
			seen[r.ID] = true
		}
	}
	for _, r := range old {
		if !seen[r.ID] {
			d.Removed = append(d.Removed, r)
		}
	}
	return d
}

// MergeRules returns set with the rules of more added that it does not have yet
// (same content, whatever the ID and creation time). Added rules lose their ID: they
// get a fresh one when the set is put in force.
func MergeRules(set, more []Rule) []Rule {
	have := make(map[string]bool, len(set))
	key := func(r Rule) string {
		r.Created = Rule{}.Created
		return ruleContent(r)
	}
	for _, r := range set {
		have[key(r)] = true
	}
	out := append([]Rule(nil), set...)
	for _, r := range more {
		if k := key(r); !have[k] {
			have[k] = true
			r.ID = 0
			out = append(out, r)
		}
	}
	return out
}
