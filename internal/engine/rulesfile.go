package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"github.com/latchfw/latch/internal/strictjson"
)

// RulesFileVersion is the version of the rules file format ParseRules reads and
// MarshalRules writes.
const RulesFileVersion = 1

// RuleError says which rule of a set is wrong. Index counts from 0 in the order given.
type RuleError struct {
	Index int
	ID    RuleID // 0 if the rule has none (yet)
	Err   error
}

// Error returns e.g. `rule 3 (id 7): field "dir" ("up"): ...`.
func (e *RuleError) Error() string {
	if e.ID != 0 {
		return fmt.Sprintf("rule %d (id %d): %v", e.Index, e.ID, e.Err)
	}
	return fmt.Sprintf("rule %d: %v", e.Index, e.Err)
}

// Unwrap returns the underlying error, often a *FieldError.
func (e *RuleError) Unwrap() error { return e.Err }

// ParseRules strictly parses a rules file, {"version":1,"rules":[...]}: both fields
// are required ("rules": [] for none; null is an error), spelt exactly, given once,
// with nothing after the object. Each rule is read as Rule.UnmarshalJSON says; bad
// fields and duplicate IDs are errors naming the rule (index and ID) and field. A rule
// with ID 0 (or none) gets an ID when it is given to an Engine. The rules come back in
// file order.
func ParseRules(data []byte) ([]Rule, error) {
	// The rules are read one by one from the data, not copied out first: a file of
	// 100,000 rules is 10 MB.
	var (
		version, list bool
		versionErr    error
		ruleErr       error
		rules         []Rule
	)
	err := strictjson.Members(data, []string{"version", "rules"}, func(key string, dec *json.Decoder) error {
		if key == "version" {
			version = true
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				return err
			}
			if string(v) != strconv.Itoa(RulesFileVersion) {
				versionErr = fmt.Errorf("version %s not supported (want %d)", strictjson.Describe(v), RulesFileVersion)
			}
			return nil
		}
		list = true
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return fmt.Errorf("field \"rules\": want a list of rules ([] for none), got %s", strictjson.Kind(tok))
		}
		for i := 0; dec.More(); i++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return err
			}
			if ruleErr != nil {
				continue
			}
			var r Rule
			if err := r.UnmarshalJSON(raw); err != nil {
				ruleErr = &RuleError{Index: i, ID: peekID(raw), Err: err}
				continue
			}
			rules = append(rules, r)
		}
		_, err = dec.Token() // ']'
		return err
	})
	switch {
	case err != nil:
		return nil, fmt.Errorf("rules file: %w", err)
	case !version:
		return nil, fmt.Errorf("rules file: field \"version\" missing (want %d)", RulesFileVersion)
	case versionErr != nil:
		return nil, fmt.Errorf("rules file: %w", versionErr)
	case !list:
		return nil, fmt.Errorf("rules file: field \"rules\" missing (write \"rules\": [] for no rules)")
	case ruleErr != nil:
		return nil, ruleErr
	}
	if rules == nil {
		rules = []Rule{}
	}
	if err := checkIDs(rules); err != nil {
		return nil, err
	}
	return rules, nil
}

// checkIDs reports the first duplicate non-zero ID.
func checkIDs(rules []Rule) error {
	seen := make(map[RuleID]int, len(rules))
	for i, r := range rules {
		if r.ID == 0 {
			continue
		}
		if r.ID > MaxRuleID {
			return &RuleError{Index: i, ID: r.ID, Err: fmt.Errorf("field \"id\": %d above the largest ID %d", r.ID, MaxRuleID)}
		}
		if j, dup := seen[r.ID]; dup {
			return &RuleError{Index: i, ID: r.ID, Err: fmt.Errorf("field \"id\": %d already used by rule %d", r.ID, j)}
		}
		seen[r.ID] = i
	}
	return nil
}

// peekID returns the rule's "id" if it can be read, for error messages.
func peekID(raw []byte) RuleID {
	var p struct {
		ID RuleID `json:"id"`
	}
	if json.Unmarshal(raw, &p) != nil {
		return 0
	}
	return p.ID
}

// MarshalRules writes rules as a rules file, sorted by ID, one rule per line, in the
// form ParseRules reads.
func MarshalRules(rules []Rule) []byte {
	sorted := append([]Rule(nil), rules...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	var b bytes.Buffer
	fmt.Fprintf(&b, "{\"version\": %d, \"rules\": [", RulesFileVersion)
	for i, r := range sorted {
		line, err := r.MarshalJSON()
		if err != nil {
			// Rule.MarshalJSON only marshals strings and numbers; it cannot fail.
			panic(fmt.Sprintf("engine: marshalling rule %d: %v", r.ID, err))
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("\n  ")
		b.Write(line)
	}
	if len(sorted) > 0 {
		b.WriteByte('\n')
	}
	b.WriteString("]}\n")
	return b.Bytes()
}
