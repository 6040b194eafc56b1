package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/strictjson"
	"github.com/latchfw/latch/internal/textesc"
)

// PortRange is an inclusive range of ports. The zero value matches any port.
// A single port N is {N, N}.
type PortRange struct {
	Lo, Hi uint16
}

// IsZero reports whether r is the zero range, which matches any port.
func (r PortRange) IsZero() bool { return r == PortRange{} }

// Contains reports whether port is in r. The zero range contains every port.
func (r PortRange) Contains(port uint16) bool {
	return r.IsZero() || (r.Lo <= port && port <= r.Hi)
}

// String returns "443", "1000-2000", or "any" for the zero range.
func (r PortRange) String() string {
	switch {
	case r.IsZero():
		return "any"
	case r.Lo == r.Hi:
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// validate checks that r is the zero range or a range of real ports with Lo <= Hi.
func (r PortRange) validate() error {
	if r.IsZero() {
		return nil
	}
	if r.Lo == 0 {
		return fmt.Errorf("%d-%d: port 0 is not a port (leave the field empty for any port)", r.Lo, r.Hi)
	}
	if r.Lo > r.Hi {
		return fmt.Errorf("%d-%d: low end above high end", r.Lo, r.Hi)
	}
	return nil
}

// width is the number of ports in r minus one; the zero range counts as all ports.
func (r PortRange) width() int {
	if r.IsZero() {
		return 1 << 16
	}
	return int(r.Hi) - int(r.Lo)
}

// MarshalText implements encoding.TextMarshaler ("443", "1000-2000"; "" for any).
func (r PortRange) MarshalText() ([]byte, error) {
	if r.IsZero() {
		return []byte{}, nil
	}
	return []byte(r.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler; see ParsePortRange.
func (r *PortRange) UnmarshalText(b []byte) error {
	v, err := ParsePortRange(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// UnmarshalJSON accepts the text form ("443", "1000-2000") or a bare JSON number (443).
func (r *PortRange) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		return r.UnmarshalText([]byte(s))
	}
	if string(b) == "null" {
		*r = PortRange{}
		return nil
	}
	return r.UnmarshalText(b)
}

// ParsePortRange parses "443" or "1000-2000". "any" is the zero range (any port), the
// same as leaving the field out. "", port 0 and ranges whose low end is above the high
// end are errors.
func ParsePortRange(s string) (PortRange, error) {
	if s == "any" {
		return PortRange{}, nil
	}
	if s == "" {
		return PortRange{}, fmt.Errorf("port range \"\": empty (leave the field out, or write any, for any port)")
	}
	lo, hi, isRange := strings.Cut(s, "-")
	parse := func(p string) (uint16, error) {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || p == "" || p[0] == '+' {
			return 0, fmt.Errorf("port range %q: %q is not a port number 1-65535", s, p)
		}
		if n == 0 {
			return 0, fmt.Errorf("port range %q: port 0 is not a port (leave it empty for any port)", s)
		}
		return uint16(n), nil
	}
	l, err := parse(lo)
	if err != nil {
		return PortRange{}, err
	}
	h := l
	if isRange {
		if h, err = parse(hi); err != nil {
			return PortRange{}, err
		}
	}
	if l > h {
		return PortRange{}, fmt.Errorf("port range %q: low end %d above high end %d", s, l, h)
	}
	return PortRange{l, h}, nil
}

// ParseRemote parses a remote address ("198.18.0.1", "2001:db8::1"; a single address
// becomes a /32 or /128) or a CIDR prefix ("198.18.0.0/15"). "any" is the zero prefix
// (any remote), the same as leaving the field out. "", host bits set in a prefix
// ("198.18.0.1/15": did you mean 198.18.0.0/15?), IPv4-mapped IPv6 forms and zones are
// errors: write IPv4 addresses as IPv4.
func ParseRemote(s string) (netip.Prefix, error) {
	if s == "any" {
		return netip.Prefix{}, nil
	}
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("remote \"\": empty (leave the field out, or write any, for any remote)")
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("remote %q: not an address or CIDR prefix: %v", s, err)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("remote %q: not an address or CIDR prefix: %v", s, err)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("remote %q: zones are not allowed", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err := checkRemote(p); err != nil {
		return netip.Prefix{}, fmt.Errorf("remote %q: %v", s, err)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("remote %q: host bits set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// checkRemote rejects prefixes that could never match a Request's (unmapped) address.
func checkRemote(p netip.Prefix) error {
	if p == (netip.Prefix{}) {
		return nil
	}
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix")
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("IPv4-mapped IPv6 prefix; write it as IPv4 (%s)", netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)))
	}
	return nil
}

// Rule is one user rule. Empty match fields match anything. It is the unit of the
// rules file, the API and `latch rules`. Its JSON form writes Remote as CIDR text and
// ports as "443" or "1000-2000"; see MarshalJSON.
type Rule struct {
	ID        RuleID       `json:"id"`
	App       string       `json:"app,omitempty"`     // executable path, exact or glob (path.Match syntax plus "**")
	User      string       `json:"user,omitempty"`    // account name or numeric uid
	Service   string       `json:"service,omitempty"` // Windows: a service hosted by the process (Request.Services), case-insensitive
	Host      string       `json:"host,omitempty"`    // remote hostname learned from DNS: exact, or "*.example.com" for its subdomains; see ParseHost
	Direction Direction    `json:"dir"`               // AnyDirection matches both
	Protocol  Protocol     `json:"proto"`             // AnyProtocol matches all
	Remote    netip.Prefix `json:"remote,omitzero"`   // address or CIDR; zero matches all
	Port      PortRange    `json:"port,omitzero"`     // remote port range
	LocalPort PortRange    `json:"local_port,omitzero"`
	Action    Action       `json:"action"`
	Expires   time.Time    `json:"expires,omitzero"` // zero: forever
	Created   time.Time    `json:"created,omitzero"`
	Note      string       `json:"note,omitempty"`
	// Source is where the rule comes from: empty for the user's own rules (changed
	// through the API, saved in the state directory), else the path of the managed
	// rule file it was loaded from (read-only; see Engine.SetManaged).
	Source string `json:"source,omitempty"`

	// Identity beyond the executable (see ident.go): each narrows the rule.
	Cmdline   string `json:"cmdline,omitempty"`   // glob over the arguments joined by spaces; needs App
	Parent    string `json:"parent,omitempty"`    // path or glob of any verified ancestor's executable
	Unit      string `json:"unit,omitempty"`      // systemd system unit, e.g. nginx.service
	Container string `json:"container,omitempty"` // container id (or 12+ digit prefix), name, or RUNTIME:ID; with App, App is the path in the container
	AppID     string `json:"app_id,omitempty"`    // flatpak/snap app id; needs User

	// Lifetimes besides Expires: the rule ends when process ExitPID exits (the
	// daemon watches it, see internal/lifetime), or with the boot BootID (a rule
	// whose BootID is not this boot's is dropped at start).
	ExitPID int32  `json:"exit_pid,omitempty"`
	BootID  string `json:"boot_id,omitempty"`

	// SHA256 pins the executable's content (lower-case hex): the rule matches only
	// while the file at App hashes to it (Request.ExeSHA256). Needs an exact App.
	SHA256 string `json:"sha256,omitempty"`
}

// FieldError says which field of a rule is wrong and why.
type FieldError struct {
	Field string // JSON name of the field, e.g. "port"
	Value string // the offending value as text
	Err   error
}

// Error returns e.g. `field "port" (2000-1000): low end above high end`.
func (e *FieldError) Error() string {
	return fmt.Sprintf("field %q (%s): %v", e.Field, e.Value, e.Err)
}

// Unwrap returns the underlying error.
func (e *FieldError) Unwrap() error { return e.Err }

// maxNoteLen bounds the free-text note, so that one rule cannot bloat the file.
const maxNoteLen = 1024

// Validate checks that r can be used: a real action, known direction, valid app
// pattern, ranges with Lo <= Hi, a usable remote prefix, times in years 1-9999. The
// error names the field and its value. Validate does not look at ID.
func (r Rule) Validate() error {
	switch r.Action {
	case Allow, Deny, Reject, Drop:
	case NoAction:
		return &FieldError{"action", r.Action.String(), fmt.Errorf("required: allow, deny, reject or drop")}
	default:
		return &FieldError{"action", r.Action.String(), fmt.Errorf("want allow, deny, reject or drop")}
	}
	switch r.Direction {
	case AnyDirection, Inbound, Outbound:
	default:
		return &FieldError{"dir", r.Direction.String(), fmt.Errorf("want in, out or any")}
	}
	if err := validateApp(r.App); err != nil {
		return &FieldError{"app", strconv.Quote(r.App), err}
	}
	if err := validateUser(r.User); err != nil {
		return &FieldError{"user", strconv.Quote(r.User), err}
	}
	if r.Service != strings.TrimSpace(r.Service) || strings.ContainsAny(r.Service, "\x00\n/\\") {
		return &FieldError{"service", strconv.Quote(r.Service), fmt.Errorf("want a service name without spaces around it, slashes or control characters")}
	}
	if r.Host != "" {
		if _, err := ParseHost(r.Host); err != nil {
			return &FieldError{"host", strconv.Quote(r.Host), err}
		}
	}
	if err := checkRemote(r.Remote); err != nil {
		return &FieldError{"remote", r.Remote.String(), err}
	}
	if r.Remote != (netip.Prefix{}) && r.Remote != r.Remote.Masked() {
		return &FieldError{"remote", r.Remote.String(), fmt.Errorf("host bits set; did you mean %s?", r.Remote.Masked())}
	}
	if err := r.Port.validate(); err != nil {
		return &FieldError{"port", r.Port.String(), err}
	}
	if err := r.LocalPort.validate(); err != nil {
		return &FieldError{"local_port", r.LocalPort.String(), err}
	}
	if err := validateTime(r.Expires); err != nil {
		return &FieldError{"expires", r.Expires.String(), err}
	}
	if err := validateTime(r.Created); err != nil {
		return &FieldError{"created", r.Created.String(), err}
	}
	if len(r.Note) > maxNoteLen {
		return &FieldError{"note", fmt.Sprintf("%d bytes", len(r.Note)), fmt.Errorf("longer than %d bytes", maxNoteLen)}
	}
	if r.ExitPID < 0 {
		return &FieldError{"exit_pid", fmt.Sprint(r.ExitPID), fmt.Errorf("want a process id")}
	}
	if r.BootID != "" && !isLabel(r.BootID, 64) {
		return &FieldError{"boot_id", strconv.Quote(r.BootID), fmt.Errorf("want a boot id such as /proc/sys/kernel/random/boot_id holds")}
	}
	return r.validateIdentity()
}

func validateUser(u string) error {
	if u != strings.TrimSpace(u) {
		return fmt.Errorf("leading or trailing space")
	}
	if strings.ContainsAny(u, "\x00\n") {
		return fmt.Errorf("control character")
	}
	if u != "" && (u[0] == '-' || u[0] == '+') {
		if _, err := strconv.ParseInt(u, 10, 64); err == nil {
			return fmt.Errorf("uid must be a number 0-4294967294")
		}
	}
	if looksNumeric(u) {
		if _, err := strconv.ParseUint(u, 10, 32); err != nil {
			return fmt.Errorf("uid must be a number 0-4294967294")
		}
	}
	return nil
}

// IsUID reports whether a rule's User is a numeric uid rather than an account name.
func IsUID(user string) bool { return looksNumeric(user) }

func looksNumeric(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func validateTime(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("year %d outside 1-9999", y)
	}
	return nil
}

// Expired reports whether r has an expiry at or before now.
func (r Rule) Expired(now time.Time) bool {
	return !r.Expires.IsZero() && !now.Before(r.Expires)
}

// Matches reports whether r matches req at time now. An expired rule matches nothing.
func (r Rule) Matches(req *Request, now time.Time) bool {
	if r.Expired(now) {
		return false
	}
	return r.matchesIgnoringExpiry(req)
}

func (r *Rule) matchesIgnoringExpiry(req *Request) bool {
	if r.Direction != AnyDirection && r.Direction != req.Direction {
		return false
	}
	if r.Protocol != AnyProtocol && r.Protocol != req.Protocol {
		return false
	}
	if !r.Port.Contains(req.Remote.Port()) || !r.LocalPort.Contains(req.Local.Port()) {
		return false
	}
	if r.Remote.IsValid() && !r.Remote.Contains(req.Remote.Addr().Unmap()) {
		return false
	}
	if r.User != "" && !userMatches(r.User, req) {
		return false
	}
	if r.Service != "" && !serviceMatches(r.Service, req) {
		return false
	}
	if r.Host != "" && !hostMatches(normalizeHost(r.Host), normalizeHost(req.Host)) {
		return false
	}
	if r.App != "" && !appMatches(r.App, appExeFor(r.Container, req)) {
		return false
	}
	if r.hasIdentity() {
		c := compiledRule{Rule: *r}
		c.parent, _ = compileApp(r.Parent)
		return c.identityMatches(req)
	}
	return true
}

// userMatches compares a rule's user (name or numeric uid) with a request's.
// Names with a domain part ("DOMAIN\name", Windows) compare case-insensitively.
func userMatches(user string, req *Request) bool {
	if looksNumeric(user) {
		if req.UID >= 0 && strconv.FormatInt(int64(req.UID), 10) == user {
			return true
		}
		return user == req.User
	}
	if req.User == "" {
		return false
	}
	if strings.ContainsRune(user, '\\') {
		return strings.EqualFold(user, req.User)
	}
	return user == req.User
}

// serviceMatches reports whether req's process hosts the named service.
func serviceMatches(service string, req *Request) bool {
	for _, s := range req.Services {
		if strings.EqualFold(s, service) {
			return true
		}
	}
	return false
}

// String returns the rule on one line, e.g.
// "#3 allow out tcp app=/usr/bin/curl remote=198.18.0.0/15 port=443 until 2026-11-21T15:00:00Z".
// Values from outside (app, service, user, host, note) are escaped (internal/textesc),
// so a rule is always one line that shows what it matches.
func (r Rule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s %s %s", r.ID, r.Action, r.Direction, r.Protocol)
	if r.App != "" {
		fmt.Fprintf(&b, " app=%s", quoteIfNeeded(r.App))
	}
	if r.Service != "" {
		fmt.Fprintf(&b, " service=%s", quoteIfNeeded(r.Service))
	}
	if r.User != "" {
		fmt.Fprintf(&b, " user=%s", quoteIfNeeded(r.User))
	}
	if r.Host != "" {
		fmt.Fprintf(&b, " host=%s", quoteIfNeeded(r.Host))
	}
	for _, f := range []struct{ k, v string }{{"cmdline", r.Cmdline}, {"parent", r.Parent}, {"unit", r.Unit},
		{"container", r.Container}, {"app_id", r.AppID}} {
		if f.v != "" {
			fmt.Fprintf(&b, " %s=%s", f.k, quoteIfNeeded(f.v))
		}
	}
	if r.Remote.IsValid() {
		fmt.Fprintf(&b, " remote=%s", r.Remote)
	}
	if !r.Port.IsZero() {
		fmt.Fprintf(&b, " port=%s", r.Port)
	}
	if !r.LocalPort.IsZero() {
		fmt.Fprintf(&b, " local_port=%s", r.LocalPort)
	}
	if !r.Expires.IsZero() {
		fmt.Fprintf(&b, " until %s", r.Expires.UTC().Format(time.RFC3339))
	}
	if r.ExitPID != 0 {
		fmt.Fprintf(&b, " until pid %d exits", r.ExitPID)
	}
	if r.BootID != "" {
		fmt.Fprintf(&b, " until reboot")
	}
	if r.SHA256 != "" {
		fmt.Fprintf(&b, " pinned sha256=%.12s…", r.SHA256)
	}
	if r.Note != "" {
		fmt.Fprintf(&b, " # %s", textesc.Quote(r.Note))
	}
	return b.String()
}

// quoteIfNeeded shows a field's value from outside (a path, a name) escaped by the one
// rule of internal/textesc, in double quotes when it holds a space, a double quote or
// a '#', so that a value cannot pass for more fields.
func quoteIfNeeded(s string) string {
	if strings.ContainsAny(s, " \"#") {
		return textesc.Quote(s)
	}
	return textesc.String(s)
}

// ruleJSON is the wire form of a Rule that MarshalJSON writes.
type ruleJSON struct {
	ID        RuleID          `json:"id"`
	App       string          `json:"app,omitempty"`
	User      string          `json:"user,omitempty"`
	Service   string          `json:"service,omitempty"`
	Host      string          `json:"host,omitempty"`
	Direction string          `json:"dir"`
	Protocol  string          `json:"proto"`
	Remote    string          `json:"remote,omitempty"`
	Port      json.RawMessage `json:"port,omitempty"`
	LocalPort json.RawMessage `json:"local_port,omitempty"`
	Action    string          `json:"action"`
	Expires   string          `json:"expires,omitempty"`
	Created   string          `json:"created,omitempty"`
	Note      string          `json:"note,omitempty"`
	Source    string          `json:"source,omitempty"`
	Cmdline   string          `json:"cmdline,omitempty"`
	Parent    string          `json:"parent,omitempty"`
	Unit      string          `json:"unit,omitempty"`
	Container string          `json:"container,omitempty"`
	AppID     string          `json:"app_id,omitempty"`
	ExitPID   int32           `json:"exit_pid,omitempty"`
	BootID    string          `json:"boot_id,omitempty"`
	SHA256    string          `json:"sha256,omitempty"`
}

// ruleKeys are the JSON names of a rule's fields, in the order errors are reported.
var ruleKeys = []string{"id", "action", "app", "user", "service", "host", "dir", "proto", "remote", "port",
	"local_port", "expires", "created", "note", "source", "cmdline", "parent", "unit", "container", "app_id", "exit_pid", "boot_id", "sha256"}

// MaxRuleID is the largest rule ID: 2^53-1, so that every ID is exact in JavaScript
// (the web UI) and the next ID never wraps around.
const MaxRuleID RuleID = 1<<53 - 1

// RuleFields is a rule in text, field by field, as a rules file, an API request or
// the command line's flags give it. A nil field is left out: it matches anything (or,
// for Action, is missing). Parse is the one parser for all of them, so that each says
// the same about the same mistake.
type RuleFields struct {
	ID                                           *string
	Action                                       *string
	App, User, Service, Host                     *string
	Direction, Protocol, Remote, Port, LocalPort *string
	Expires, Created, Note                       *string
	Source                                       *string // a managed rule's file (see Rule.Source)
	Cmdline, Parent, Unit, Container, AppID      *string
	ExitPID, BootID, SHA256                      *string
}

// Parse checks every field strictly and returns the rule: enums exactly as String
// writes them (no aliases, lower case), ports 1-65535, a remote without host bits, an
// absolute app path, a hostname (see ParseHost), RFC 3339 times, an ID from 1 to
// MaxRuleID, and an action. A field given but empty is an error (leave it out to
// match anything). "any" is accepted for dir, proto, remote, port and local_port and
// means the same as leaving the field out. The error is a *FieldError naming the
// field by its JSON name.
func (f *RuleFields) Parse() (Rule, error) {
	var out Rule
	var err error
	fe := func(field string, v *string, err error) error { return &FieldError{field, strconv.Quote(*v), err} }
	for _, x := range []struct {
		name string
		v    *string
	}{
		{"id", f.ID}, {"action", f.Action}, {"app", f.App}, {"user", f.User}, {"service", f.Service},
		{"host", f.Host}, {"dir", f.Direction}, {"proto", f.Protocol}, {"remote", f.Remote}, {"port", f.Port},
		{"local_port", f.LocalPort}, {"expires", f.Expires}, {"created", f.Created},
		{"cmdline", f.Cmdline}, {"parent", f.Parent}, {"unit", f.Unit}, {"container", f.Container}, {"app_id", f.AppID},
		{"exit_pid", f.ExitPID}, {"boot_id", f.BootID}, {"sha256", f.SHA256},
	} {
		if x.v != nil && *x.v == "" {
			if x.name == "action" {
				return Rule{}, fe(x.name, x.v, fmt.Errorf("required: allow, deny, reject or drop"))
			}
			return Rule{}, fe(x.name, x.v, fmt.Errorf("empty: leave the field out to match anything"))
		}
	}
	if f.ID != nil {
		id, perr := strconv.ParseUint(*f.ID, 10, 64)
		if perr != nil || RuleID(id) > MaxRuleID || (*f.ID)[0] == '+' || (len(*f.ID) > 1 && (*f.ID)[0] == '0') {
			return Rule{}, fe("id", f.ID, fmt.Errorf("want a whole number from 1 to %d (0: none yet)", MaxRuleID))
		}
		out.ID = RuleID(id)
	}
	if f.Action == nil {
		return Rule{}, &FieldError{"action", "missing", fmt.Errorf("required: allow, deny, reject or drop")}
	}
	if out.Action, err = ParseAction(*f.Action); err != nil {
		return Rule{}, fe("action", f.Action, err)
	}
	for _, x := range []struct {
		v   *string
		dst *string
	}{{f.App, &out.App}, {f.User, &out.User}, {f.Service, &out.Service}, {f.Note, &out.Note}, {f.Source, &out.Source},
		{f.Cmdline, &out.Cmdline}, {f.Parent, &out.Parent}, {f.Unit, &out.Unit}, {f.Container, &out.Container}, {f.AppID, &out.AppID}, {f.BootID, &out.BootID}, {f.SHA256, &out.SHA256}} {
		if x.v != nil {
			*x.dst = *x.v
		}
	}
	if f.ExitPID != nil {
		n, perr := strconv.ParseInt(*f.ExitPID, 10, 32)
		if perr != nil || n <= 0 || (*f.ExitPID)[0] == '+' {
			return Rule{}, fe("exit_pid", f.ExitPID, fmt.Errorf("want a process id"))
		}
		out.ExitPID = int32(n)
	}
	if f.Host != nil {
		if out.Host, err = ParseHost(*f.Host); err != nil {
			return Rule{}, fe("host", f.Host, err)
		}
	}
	if f.Direction != nil {
		if out.Direction, err = ParseDirection(*f.Direction); err != nil {
			return Rule{}, fe("dir", f.Direction, err)
		}
	}
	if f.Protocol != nil {
		if out.Protocol, err = ParseProtocol(*f.Protocol); err != nil {
			return Rule{}, fe("proto", f.Protocol, err)
		}
	}
	if f.Remote != nil {
		if out.Remote, err = ParseRemote(*f.Remote); err != nil {
			return Rule{}, fe("remote", f.Remote, err)
		}
	}
	if f.Port != nil {
		if out.Port, err = ParsePortRange(*f.Port); err != nil {
			return Rule{}, fe("port", f.Port, err)
		}
	}
	if f.LocalPort != nil {
		if out.LocalPort, err = ParsePortRange(*f.LocalPort); err != nil {
			return Rule{}, fe("local_port", f.LocalPort, err)
		}
	}
	if f.Expires != nil {
		if out.Expires, err = parseTime(*f.Expires); err != nil {
			return Rule{}, fe("expires", f.Expires, err)
		}
	}
	if f.Created != nil {
		if out.Created, err = parseTime(*f.Created); err != nil {
			return Rule{}, fe("created", f.Created, err)
		}
	}
	if err := out.Validate(); err != nil {
		return Rule{}, err
	}
	return out, nil
}

// MarshalJSON writes the rule with text enums ("out", "tcp", "allow"), Remote as CIDR
// text, ports as "443" or "1000-2000" and times in RFC 3339, UTC. Empty fields are
// left out.
func (r Rule) MarshalJSON() ([]byte, error) {
	w := ruleJSON{
		ID:        r.ID,
		App:       r.App,
		User:      r.User,
		Service:   r.Service,
		Host:      r.Host,
		Direction: r.Direction.String(),
		Protocol:  r.Protocol.String(),
		Action:    r.Action.String(),
		Note:      r.Note,
		Source:    r.Source,
		Cmdline:   r.Cmdline,
		Parent:    r.Parent,
		Unit:      r.Unit,
		Container: r.Container,
		AppID:     r.AppID,
		ExitPID:   r.ExitPID,
		BootID:    r.BootID,
		SHA256:    r.SHA256,
	}
	if r.Remote.IsValid() {
		w.Remote = r.Remote.String()
	}
	if !r.Port.IsZero() {
		w.Port = json.RawMessage(strconv.Quote(r.Port.String()))
	}
	if !r.LocalPort.IsZero() {
		w.LocalPort = json.RawMessage(strconv.Quote(r.LocalPort.String()))
	}
	if !r.Expires.IsZero() {
		w.Expires = r.Expires.UTC().Format(time.RFC3339Nano)
	}
	if !r.Created.IsZero() {
		w.Created = r.Created.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads the form MarshalJSON writes, strictly (see RuleFields.Parse):
// one object; keys known, spelt exactly and each given once; values strings (id a
// number; port and local_port a string or a number); null for no field. It also
// accepts a bare address for remote and writes host in normal form (see ParseHost).
func (r *Rule) UnmarshalJSON(b []byte) error {
	members, err := strictjson.Object(b, ruleKeys...)
	if err != nil {
		return err
	}
	var f RuleFields
	dst := map[string]**string{
		"id": &f.ID, "action": &f.Action, "app": &f.App, "user": &f.User, "service": &f.Service, "host": &f.Host,
		"dir": &f.Direction, "proto": &f.Protocol, "remote": &f.Remote, "port": &f.Port, "local_port": &f.LocalPort,
		"expires": &f.Expires, "created": &f.Created, "note": &f.Note, "source": &f.Source,
		"cmdline": &f.Cmdline, "parent": &f.Parent, "unit": &f.Unit, "container": &f.Container, "app_id": &f.AppID,
		"exit_pid": &f.ExitPID, "boot_id": &f.BootID, "sha256": &f.SHA256,
	}
	for _, k := range ruleKeys {
		raw, ok := members[k]
		if !ok {
			continue
		}
		if strictjson.IsNull(raw) {
			return &FieldError{k, "null", fmt.Errorf("null is not a value: leave the field out to match anything")}
		}
		var v string
		if k == "id" || k == "exit_pid" || ((k == "port" || k == "local_port") && raw[0] != '"') {
			// A number: its text, checked by the field's parser.
			if raw[0] == '"' || raw[0] == '{' || raw[0] == '[' || raw[0] == 't' || raw[0] == 'f' {
				return &FieldError{k, strictjson.Describe(raw), fmt.Errorf("want a number")}
			}
			v = string(raw)
		} else if v, err = strictjson.String(raw); err != nil {
			return &FieldError{k, strictjson.Describe(raw), err}
		}
		*dst[k] = &v
	}
	out, err := f.Parse()
	if err != nil {
		return err
	}
	*r = out
	return nil
}

// parseTime parses an RFC 3339 time and returns it in UTC ("" is the zero time).
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want an RFC 3339 time such as 2026-11-21T15:04:05Z")
	}
	t = t.UTC()
	if err := validateTime(t); err != nil {
		return time.Time{}, err
	}
	return t, nil
}

// Hostnames (Rule.Host).
const (
	maxHostLen  = 253
	maxLabelLen = 63
)

// ParseHost checks a rule's hostname and returns it in normal form: lower case,
// without a trailing dot. It is an exact name ("www.example.com") or a wildcard
// ("*.example.com") that matches every name below example.com at any depth
// ("a.example.com", "a.b.example.com") but not example.com itself: write a second rule
// for the apex. Labels are letters, digits, '-' and '_' (what DNS answers latch reads
// can hold). "" is no host (any). Addresses are errors: use Remote.
func ParseHost(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	h := strings.ToLower(strings.TrimSuffix(s, "."))
	if _, err := netip.ParseAddr(h); err == nil {
		return "", fmt.Errorf("an address, not a hostname (use remote)")
	}
	name, wild := strings.CutPrefix(h, "*.")
	if name == "" || h == "*" {
		return "", fmt.Errorf("want a hostname such as www.example.com or *.example.com")
	}
	if len(h) > maxHostLen {
		return "", fmt.Errorf("longer than %d characters", maxHostLen)
	}
	for i, label := range strings.Split(name, ".") {
		if label == "" {
			return "", fmt.Errorf("empty label")
		}
		if len(label) > maxLabelLen {
			return "", fmt.Errorf("label %d longer than %d characters", i+1, maxLabelLen)
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				if c == '*' && !wild && i == 0 {
					return "", fmt.Errorf("'*' only as a whole first label, as in *.example.com")
				}
				return "", fmt.Errorf("character %q in label %q: want letters, digits, '-' or '_' (and a leading \"*.\")", c, label)
			}
		}
	}
	return h, nil
}

// normalizeHost is a request's or a valid rule's hostname in normal form. It does not
// allocate for names already in it.
func normalizeHost(h string) string {
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// hostMatches reports whether the normalized host matches the normalized pattern. An
// unknown host ("") matches no pattern.
func hostMatches(pattern, host string) bool {
	if host == "" {
		return false
	}
	if suffix, wild := strings.CutPrefix(pattern, "*"); wild {
		return len(host) > len(suffix) && strings.HasSuffix(host, suffix)
	}
	return host == pattern
}

// hostSpecificity ranks a normalized Host for precedence: no host 0, a wildcard
// 1 + its number of labels (so *.a.example.com beats *.example.com), an exact name
// above every wildcard.
func hostSpecificity(h string) int {
	switch {
	case h == "":
		return 0
	case strings.HasPrefix(h, "*."):
		return 1 + strings.Count(h, ".")
	}
	return 1 << 10
}
