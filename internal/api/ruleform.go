package api

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/lifetime"
)

// RuleForm is a rule as a person types it: the flags of `latch rules add`, as text.
// The command line and the web UI both turn it into a rule with Rule, so a mistake
// gets the same error text in both (e.g. `--remote: ...`).
type RuleForm struct {
	App       string `json:"app,omitempty"`
	User      string `json:"user,omitempty"`
	Dir       string `json:"dir,omitempty"`   // in, out or any (default any)
	Proto     string `json:"proto,omitempty"` // tcp, udp, icmp, icmpv6 or any (default any)
	Host      string `json:"host,omitempty"`
	Remote    string `json:"remote,omitempty"`
	Port      string `json:"port,omitempty"`
	LocalPort string `json:"local_port,omitempty"`
	Action    string `json:"action"`
	For       string `json:"for,omitempty"` // a duration or forever (default forever)
	Note      string `json:"note,omitempty"`
}

// Rule parses f into a validated rule; an expiry is counted from now. An empty field
// is left out (it matches anything). Errors name the flag of `latch rules add` that is
// wrong, e.g. `--port: ...`: the form and the command line share ParseRuleFields.
func (f RuleForm) Rule(now time.Time) (engine.Rule, error) {
	var fields engine.RuleFields
	for _, x := range []struct {
		v   string
		dst **string
	}{
		{f.App, &fields.App}, {f.User, &fields.User}, {f.Dir, &fields.Direction}, {f.Proto, &fields.Protocol},
		{f.Host, &fields.Host}, {f.Remote, &fields.Remote}, {f.Port, &fields.Port},
		{f.LocalPort, &fields.LocalPort}, {f.Action, &fields.Action}, {f.Note, &fields.Note},
	} {
		if x.v != "" {
			v := x.v
			*x.dst = &v
		}
	}
	forStr := f.For
	if forStr == "" {
		forStr = "forever"
	}
	return ParseRuleFields(fields, forStr, now)
}

// ParseRuleFields is `latch rules add`'s parser, shared by the web UI's rule form: the
// fields given (see engine.RuleFields.Parse, the parser of the API and rules files),
// and how long the rule holds (a duration or forever, counted from now). Errors name
// the flag that is wrong: "--remote: field \"remote\" ...".
func ParseRuleFields(f engine.RuleFields, forStr string, now time.Time) (engine.Rule, error) {
	if f.Action == nil {
		return engine.Rule{}, errors.New("--action is required: allow, deny, reject or drop")
	}
	d, err := engine.ParseFor(forStr)
	switch {
	case err != nil:
		return engine.Rule{}, fmt.Errorf("--for: %w", err)
	case d == 0:
		return engine.Rule{}, errors.New("--for once makes no rule; use a duration or forever")
	case d == engine.UntilExit:
		return engine.Rule{}, errors.New("--for until-exit is for answers ('latch answer ID allow --for until-exit'): a rule added here has no process")
	case d == engine.UntilReboot:
		boot, err := lifetime.BootID()
		if err != nil {
			return engine.Rule{}, err
		}
		f.BootID = &boot
	case d != engine.Forever:
		exp := now.Add(d).UTC().Format(time.RFC3339Nano)
		f.Expires = &exp
	}
	r, err := f.Parse()
	if err != nil {
		var fe *engine.FieldError
		if errors.As(err, &fe) {
			return engine.Rule{}, fmt.Errorf("--%s: %w", strings.ReplaceAll(fe.Field, "_", "-"), err)
		}
		return engine.Rule{}, err
	}
	return r, nil
}
