package api

import (
	"errors"
	"fmt"
	"time"

	"github.com/latchfw/latch/internal/engine"
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

// Rule parses f into a validated rule; an expiry is counted from now. Errors name the
// flag of `latch rules add` that is wrong, e.g. `--port: ...`.
func (f RuleForm) Rule(now time.Time) (engine.Rule, error) {
	var r engine.Rule
	var err error
	errFlag := func(flag string, err error) error { return fmt.Errorf("--%s: %w", flag, err) }
	if f.Action == "" {
		return r, errors.New("--action is required: allow, deny, reject or drop")
	}
	if r.Action, err = engine.ParseAction(f.Action); err != nil {
		return r, errFlag("action", err)
	}
	if r.Direction, err = engine.ParseDirection(f.Dir); err != nil {
		return r, errFlag("dir", err)
	}
	if r.Protocol, err = engine.ParseProtocol(f.Proto); err != nil {
		return r, errFlag("proto", err)
	}
	if r.Host, err = engine.ParseHost(f.Host); err != nil {
		return r, errFlag("host", err)
	}
	if f.Remote != "" {
		if r.Remote, err = engine.ParseRemote(f.Remote); err != nil {
			return r, errFlag("remote", err)
		}
	}
	if f.Port != "" {
		if r.Port, err = engine.ParsePortRange(f.Port); err != nil {
			return r, errFlag("port", err)
		}
	}
	if f.LocalPort != "" {
		if r.LocalPort, err = engine.ParsePortRange(f.LocalPort); err != nil {
			return r, errFlag("local-port", err)
		}
	}
	forStr := f.For
	if forStr == "" {
		forStr = "forever"
	}
	d, err := engine.ParseFor(forStr)
	switch {
	case err != nil:
		return r, errFlag("for", err)
	case d == 0:
		return r, errors.New("--for once makes no rule; use a duration or forever")
	case d != engine.Forever:
		r.Expires = now.Add(d).UTC()
	}
	r.App, r.User, r.Note = f.App, f.User, f.Note
	if err := r.Validate(); err != nil {
		return r, err
	}
	return r, nil
}
