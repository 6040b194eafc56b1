package engine

import "slices"

// Precedence returns the IDs of rules in precedence order: the rule that wins when
// several match comes first (see the package doc). The web UI shows it as each
// rule's rank.
func Precedence(rules []Rule) []RuleID {
	cs := make([]*compiledRule, len(rules))
	for i := range rules {
		cs[i] = compileRule(rules[i])
	}
	slices.SortStableFunc(cs, comparePrecedence)
	ids := make([]RuleID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}
