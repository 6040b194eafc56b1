package engine

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Scope says what a rule created from an answer matches besides the executable (and
// the request's direction and protocol, which it always matches).
type Scope uint8

// Scopes, from widest to narrowest. The zero value is ScopeApp.
const (
	ScopeApp         Scope = iota // the executable, to any remote address and port
	ScopeAppHost                  // the executable, to this remote host (any port): its hostname if known, else its address
	ScopeAppPort                  // the executable, to this remote port (any address)
	ScopeAppHostPort              // the executable, to this remote host and port
	ScopeAppUnit                  // the executable in this systemd unit
	ScopeUnit                     // any program of this systemd unit
	ScopeContainer                // any program of this container
	ScopeAppID                    // any program of this flatpak/snap app id (and user)
)

var identityScopes = map[Scope]string{ScopeAppUnit: "app+unit", ScopeUnit: "unit", ScopeContainer: "container", ScopeAppID: "app-id"}

// String returns "app", "app+host", "app+port" or "app+host+port".
func (s Scope) String() string {
	switch s {
	case ScopeApp:
		return "app"
	case ScopeAppHost:
		return "app+host"
	case ScopeAppPort:
		return "app+port"
	case ScopeAppHostPort:
		return "app+host+port"
	}
	if n, ok := identityScopes[s]; ok {
		return n
	}
	return fmt.Sprintf("scope(%d)", uint8(s))
}

func (s Scope) host() bool { return s == ScopeAppHost || s == ScopeAppHostPort }
func (s Scope) port() bool { return s == ScopeAppPort || s == ScopeAppHostPort }

// MarshalText implements encoding.TextMarshaler.
func (s Scope) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParseScope.
func (s *Scope) UnmarshalText(b []byte) error {
	v, err := ParseScope(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParseScope parses "app", "app+host", "app+port" or "app+host+port", lower case (the
// parts after "app" may come in either order).
func ParseScope(s string) (Scope, error) {
	switch s {
	case "app":
		return ScopeApp, nil
	case "app+host":
		return ScopeAppHost, nil
	case "app+port":
		return ScopeAppPort, nil
	case "app+host+port", "app+port+host":
		return ScopeAppHostPort, nil
	}
	for sc, n := range identityScopes {
		if s == n {
			return sc, nil
		}
	}
	return 0, fmt.Errorf("scope %q: want app, app+host, app+port, app+host+port, app+unit, unit, container or app-id", s)
}

// Forever, as Answer.For, makes a rule that never expires.
const Forever time.Duration = -1

// Lifetimes besides durations, as Answer.For: UntilExit makes a rule that ends when
// the process that raised the question exits (Rule.ExitPID; the daemon watches it),
// UntilReboot one that ends with this boot of the machine (Rule.BootID).
const (
	UntilExit   time.Duration = -2
	UntilReboot time.Duration = -3
)

// Answer is a person's decision on a Prompt.
type Answer struct {
	Action Action
	For    time.Duration // 0: once (no rule); Forever: rule without expiry; else rule expiring after
	Scope  Scope         // what the created rule matches besides the app (also direction, proto)
}

// ParseFor parses how long an answer holds: "once" (0), "forever" (Forever), a Go
// duration ("90m", "1h30m") or days ("1d", "7d", "1d12h"). Zero and negative
// durations are errors; say "once" instead. "" is an error too: callers that default
// to once say so themselves.
func ParseFor(s string) (time.Duration, error) {
	switch s {
	case "once":
		return 0, nil
	case "forever":
		return Forever, nil
	case "until-exit":
		return UntilExit, nil
	case "until-reboot":
		return UntilReboot, nil
	}
	rest := s
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseUint(s[:i], 10, 16)
		if err != nil {
			return 0, fmt.Errorf("for %q: want once, forever, a duration such as 90m or a number of days such as 7d", s)
		}
		days, rest = time.Duration(n)*24*time.Hour, s[i+1:]
	}
	var d time.Duration
	if rest != "" {
		var err error
		if d, err = time.ParseDuration(rest); err != nil || d < 0 {
			return 0, fmt.Errorf("for %q: want once, forever, a duration such as 90m or a number of days such as 7d", s)
		}
	}
	if d+days <= 0 {
		return 0, fmt.Errorf("for %q: not a positive duration (use once)", s)
	}
	return d + days, nil
}

// formatFor is the inverse of ParseFor.
func formatFor(d time.Duration) string {
	switch {
	case d == 0:
		return "once"
	case d == Forever:
		return "forever"
	case d == UntilExit:
		return "until-exit"
	case d == UntilReboot:
		return "until-reboot"
	}
	return d.String()
}

type answerJSON struct {
	Action Action `json:"action"`
	For    string `json:"for,omitempty"`
	Scope  Scope  `json:"scope"`
}

// MarshalJSON writes {"action":"allow","for":"once"|"forever"|"1h0m0s","scope":"app"}.
func (a Answer) MarshalJSON() ([]byte, error) {
	return json.Marshal(answerJSON{a.Action, formatFor(a.For), a.Scope})
}

// UnmarshalJSON reads the form MarshalJSON writes; "for" takes anything ParseFor does.
func (a *Answer) UnmarshalJSON(b []byte) error {
	var w answerJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	var d time.Duration // left out: once
	if w.For != "" {
		var err error
		if d, err = ParseFor(w.For); err != nil {
			return err
		}
	}
	*a = Answer{Action: w.Action, For: d, Scope: w.Scope}
	return nil
}

func (a Answer) validate() error {
	switch a.Action {
	case Allow, Deny, Reject, Drop:
	default:
		return fmt.Errorf("answer action %s: want allow, deny, reject or drop", a.Action)
	}
	if a.For < 0 && a.For != Forever && a.For != UntilExit && a.For != UntilReboot {
		return fmt.Errorf("answer for %v: negative duration (use once, forever or a positive duration)", a.For)
	}
	if a.Scope > ScopeAppID {
		return fmt.Errorf("answer %v: want app, app+host, app+port, app+host+port, app+unit, unit, container or app-id", a.Scope)
	}
	return nil
}

// ruleFromAnswer builds the rule an answer to a prompt raised by req creates.
func ruleFromAnswer(id PromptID, req *Request, a Answer, now time.Time) (Rule, error) {
	if r, ok, err := identityRuleFromAnswer(id, req, a, now); ok || err != nil {
		return r, err
	}
	if req.Exe == "" {
		return Rule{}, fmt.Errorf("prompt %d: the executable is unknown, so %q cannot be remembered as a rule; answer once instead", id, a.Scope)
	}
	// A rule for the path of a program whose identity is not verified would not
	// match it again, and would match the host's program of that name, which is not
	// the one the person was asked about (a forger could get the real program
	// allowed, or blocked, that way).
	if req.Identity != IdentityVerified {
		what := "is not verified"
		if req.Identity == IdentityContainer {
			what = "is a container's (" + req.Container + ")"
		}
		return Rule{}, fmt.Errorf("prompt %d: the program %q %s, so no rule for its path can be remembered (it would apply to the host's %q, not to this program); answer once, or add a rule without --app", id, req.Exe, what, req.Exe)
	}
	r := Rule{
		App:       escapeGlob(req.Exe),
		Direction: req.Direction,
		Protocol:  req.Protocol,
		Action:    a.Action,
		Created:   now,
		Note:      fmt.Sprintf("answer to prompt %d", id),
	}
	// A known hostname is what the person saw and what stays true when DNS hands out
	// another address; the address is the fallback.
	// A name another program resolved is not one host rules match (unless the engine
	// lets them): the rule then remembers the address.
	host, hostErr := ParseHost(req.ruleHost())
	if a.Scope.host() && host != "" && hostErr == nil && !strings.HasPrefix(host, "*") {
		r.Host = host
	} else if a.Scope.host() {
		addr := req.Remote.Addr().Unmap()
		if !addr.IsValid() {
			return Rule{}, fmt.Errorf("prompt %d: the remote address is unknown, so scope %q cannot be remembered; answer once or use scope app", id, a.Scope)
		}
		r.Remote = netip.PrefixFrom(addr.WithZone(""), addr.BitLen())
	}
	// Port-less protocols (ICMP) have no remote port; the rule then matches any.
	if p := req.Remote.Port(); a.Scope.port() && p != 0 {
		r.Port = PortRange{p, p}
	}
	if err := setLifetime(id, &r, req, a); err != nil {
		return Rule{}, err
	}
	// Programs outside the system's package paths are pinned: the rule holds while
	// the file is the one the person was asked about.
	if req.ExeSHA256 != "" && !systemPath(req.Exe) && r.App == req.Exe {
		r.SHA256 = req.ExeSHA256
	}
	if a.Scope == ScopeAppUnit {
		if req.Unit == "" {
			return Rule{}, fmt.Errorf("prompt %d: the program runs in no systemd system unit, so scope app+unit cannot be remembered; use scope app", id)
		}
		r.Unit = req.Unit
	}
	if a.For > 0 {
		r.Expires = now.Add(a.For).Round(0) // a wall-clock time (review29: no monotonic reading)
	}
	return r, nil
}

// identityRuleFromAnswer builds the rule of the scopes that name no executable
// (unit, container, app-id); ok is false for the other scopes.
func identityRuleFromAnswer(id PromptID, req *Request, a Answer, now time.Time) (r Rule, ok bool, err error) {
	r = Rule{Direction: req.Direction, Protocol: req.Protocol, Action: a.Action, Created: now,
		Note: fmt.Sprintf("answer to prompt %d", id)}
	missing := func(what string) (Rule, bool, error) {
		return Rule{}, true, fmt.Errorf("prompt %d: the program has no %s, so scope %s cannot be remembered; use another scope", id, what, a.Scope)
	}
	switch a.Scope {
	case ScopeUnit:
		if req.Unit == "" {
			return missing("systemd system unit")
		}
		r.Unit = req.Unit
	case ScopeContainer:
		if req.Container == "" {
			return missing("container")
		}
		r.Container = req.Container
	case ScopeAppID:
		if req.AppID == "" || req.UID < 0 {
			return missing("app id (or its user is unknown)")
		}
		r.AppID, r.User = req.AppID, fmt.Sprint(req.UID)
	default:
		return Rule{}, false, nil
	}
	if a.For > 0 {
		r.Expires = now.Add(a.For).Round(0) // a wall-clock time (review29: no monotonic reading)
	}
	if err := setLifetime(id, &r, req, a); err != nil {
		return Rule{}, true, err
	}
	return r, true, nil
}

// setLifetime sets ExitPID for an answer until-exit. (BootID, for until-reboot, is
// set by Answer, which knows the boot.)
func setLifetime(id PromptID, r *Rule, req *Request, a Answer) error {
	if a.For == UntilExit {
		if req.PID <= 0 {
			return fmt.Errorf("prompt %d: the process is unknown, so the rule cannot end when it exits; answer once or for a time", id)
		}
		r.ExitPID = req.PID
	}
	return nil
}

// escapeGlob turns a path into an App pattern that matches exactly that path, even if
// the path holds glob characters.
func escapeGlob(p string) string {
	windows := isWindowsPath(p)
	if !hasMeta(p, windows) {
		return p
	}
	var b strings.Builder
	for _, c := range p {
		switch {
		case windows && (c == '*' || c == '?' || c == '['):
			b.WriteString("[" + string(c) + "]")
		case !windows && (c == '*' || c == '?' || c == '[' || c == '\\'):
			b.WriteByte('\\')
			b.WriteRune(c)
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}
