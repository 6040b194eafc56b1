package engine

import (
	"fmt"
	"strings"
)

// Identity fields of a rule beyond the executable: Cmdline, Parent, Unit, Container
// and AppID (see Rule). They are checked after the indexed candidate set, as plain
// filters, and a rule setting more of them wins over one setting fewer (StepIdentity).

// MaxParentDepth is how many ancestors of a process Request.Parents holds at most
// (parent first).
const MaxParentDepth = 8

// maxCmdlineGlob bounds a --cmdline pattern.
const maxCmdlineGlob = 4096

// identityCount is how many identity fields r sets (the StepIdentity key).
func (r *Rule) identityCount() int {
	n := 0
	for _, s := range []string{r.Cmdline, r.Parent, r.Unit, r.Container, r.AppID, r.SHA256} {
		if s != "" {
			n++
		}
	}
	return n
}

// hasIdentity reports whether r sets any identity field.
func (r *Rule) hasIdentity() bool {
	return r.Cmdline != "" || r.Parent != "" || r.Unit != "" || r.Container != "" || r.AppID != "" || r.SHA256 != ""
}

// validateIdentity checks the identity fields. A command line is what the process
// says about itself (its argv, which it may set to anything), so a rule may use it
// only to narrow a rule for a verified executable (App): it is never the only
// identity that lets a connection through. Likewise an app id comes from cgroup
// names a user's own processes may choose, so it needs a User.
func (r *Rule) validateIdentity() error {
	if r.SHA256 != "" {
		if a, err := compileApp(r.App); err != nil || a == nil || a.glob {
			return &FieldError{"sha256", r.SHA256, fmt.Errorf("needs an exact app path: a pin is the content of one file")}
		}
		if len(r.SHA256) != 64 || strings.Trim(r.SHA256, "0123456789abcdef") != "" {
			return &FieldError{"sha256", fmt.Sprintf("%q", r.SHA256), fmt.Errorf("want 64 lower-case hex digits")}
		}
	}
	if r.Cmdline != "" {
		if r.App == "" {
			return &FieldError{"cmdline", fmt.Sprintf("%q", r.Cmdline), fmt.Errorf("needs app: a command line is set by the process itself, so it may only narrow a rule for a verified executable (add --app)")}
		}
		if len(r.Cmdline) > maxCmdlineGlob || strings.ContainsRune(r.Cmdline, 0) {
			return &FieldError{"cmdline", fmt.Sprintf("%d bytes", len(r.Cmdline)), fmt.Errorf("want a glob of at most %d bytes without NUL", maxCmdlineGlob)}
		}
	}
	if r.Parent != "" {
		if err := validateApp(r.Parent); err != nil {
			return &FieldError{"parent", fmt.Sprintf("%q", r.Parent), err}
		}
	}
	if r.Unit != "" && !isUnitName(r.Unit) {
		return &FieldError{"unit", fmt.Sprintf("%q", r.Unit), fmt.Errorf("want a system unit name such as nginx.service (letters, digits, ':-_.@\\', ending in .service, .scope or .socket)")}
	}
	if r.Container != "" && (!isLabel(strings.Replace(r.Container, "@", "", 1), 200) || !validOwner(r.Container)) {
		return &FieldError{"container", fmt.Sprintf("%q", r.Container), fmt.Errorf("want a container id (at least 12 hex digits), a name, or RUNTIME:ID (RUNTIME@UID:ID for a user's own) as conns shows it")}
	}
	if r.AppID != "" {
		if !isLabel(r.AppID, 255) || strings.Contains(r.AppID, ":") {
			return &FieldError{"app_id", fmt.Sprintf("%q", r.AppID), fmt.Errorf("want an app id such as org.mozilla.firefox (letters, digits, '.', '_', '-')")}
		}
		if r.User == "" {
			return &FieldError{"app_id", fmt.Sprintf("%q", r.AppID), fmt.Errorf("needs user: an app id is read from cgroup names that the user's own programs may choose, so it only tells that user's programs apart (add --user)")}
		}
	}
	return nil
}

// isUnitName reports whether s is a plain systemd unit name latch reads from cgroups.
func isUnitName(s string) bool {
	if len(s) > 255 || !(strings.HasSuffix(s, ".service") || strings.HasSuffix(s, ".scope") || strings.HasSuffix(s, ".socket")) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(":-_.@\\", c) >= 0) {
			return false
		}
	}
	return !strings.HasPrefix(s, ".")
}

// isLabel reports whether s is 1 to max letters, digits, '.', '_', '-' or ':'.
func isLabel(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == ':') {
			return false
		}
	}
	return true
}

// identityMatches checks the identity fields of c against req.
func (c *compiledRule) identityMatches(req *Request) bool {
	if c.SHA256 != "" && c.SHA256 != req.ExeSHA256 {
		return false
	}
	if c.Cmdline != "" && (req.appExe() == "" || !cmdlineMatch(c.Cmdline, req.Cmdline)) {
		return false
	}
	if c.parent != nil && !parentMatches(c.parent, req.Parents) {
		return false
	}
	if c.Unit != "" && c.Unit != req.Unit {
		return false
	}
	if c.Container != "" && !containerMatches(c.Container, req.Container, req.ContainerName) {
		return false
	}
	if c.AppID != "" && c.AppID != req.AppID {
		return false
	}
	return true
}

// parentMatches reports whether any verified ancestor matches p. Parents holds ""
// for an ancestor whose executable is not verified: nothing matches it.
func parentMatches(p *appPattern, parents []string) bool {
	for _, exe := range parents {
		if exe != "" && p.match(exe) {
			return true
		}
	}
	return false
}

// containerMatches compares a rule's container with a request's "RUNTIME:ID" (or
// "RUNTIME:NAME" for lxc and machined) and the name its runtime gives it (name, ""
// if none): the whole label, the ID or name after the runtime (alone or after
// "RUNTIME:"), a prefix of at least 12 characters of a 64-digit ID (docker's short
// ID), or the runtime's name alone or after "RUNTIME:". A name is matched as the
// runtime names the container now: a new container given the name of a removed one
// matches the same rules. A rule that reads as an id (12 to 64 hex digits) matches
// ids only: docker and podman accept such names, and a rule by id (as `--scope
// container` writes it) never follows a name.
// A request's "RUNTIME@UID:ID" is a container in user UID's own cgroup tree, named by
// that user's programs: only a rule naming "RUNTIME@UID:" with its ID (or 12+ digit
// prefix) or its name matches it, never a rule for a system container of the same ID
// or name.
func containerMatches(rule, req, name string) bool {
	if req == "" {
		return false
	}
	if rule == req {
		return true
	}
	rt, id, ok := strings.Cut(req, ":")
	if !ok {
		return false
	}
	if rrt, rid, ok := strings.Cut(rule, ":"); ok {
		if rrt != rt {
			return false
		}
		rule = rid
	} else if strings.Contains(rt, "@") {
		return false
	}
	if idLike(rule) {
		name = ""
	}
	if rule == id || name != "" && rule == name {
		return true
	}
	return len(id) == 64 && len(rule) >= 12 && len(rule) < 64 && strings.HasPrefix(id, rule)
}

// idLike reports whether s reads as a container id or its short form: 12 to 64
// lower-case hex digits.
func idLike(s string) bool {
	if len(s) < 12 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// containerMatchedByName reports whether a rule's container matches a request's
// container by the runtime's name only, not by its label or id.
func containerMatchedByName(rule, req, name string) bool {
	return name != "" && containerMatches(rule, req, name) && !containerMatches(rule, req, "")
}

// ContainerNameNote says that a rule naming container matched a container by the
// name its runtime gives it now (see containerMatches).
func ContainerNameNote(container string) string {
	return "container " + container + " matched by the name the container's runtime gives it now, not by its id: a new container given this name (after the old one is removed) matches this rule too"
}

// validOwner reports whether a rule's container has at most one '@', and if so in
// "RUNTIME@UID:ID" form (UID digits).
func validOwner(c string) bool {
	rt, _, hasID := strings.Cut(c, ":")
	owner, uid, ok := strings.Cut(rt, "@")
	if !ok {
		return !strings.Contains(c, "@")
	}
	if !hasID || owner == "" || uid == "" || len(uid) > 10 {
		return false
	}
	for i := 0; i < len(uid); i++ {
		if uid[i] < '0' || uid[i] > '9' {
			return false
		}
	}
	return true
}

// cmdlineMatch matches s against a glob where '*' is any run of bytes (spaces and
// slashes included), '?' any one byte and '\' makes the next byte literal. It runs in
// O(len(pattern) * len(s)) at worst (one backtrack point).
func cmdlineMatch(pattern, s string) bool {
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		if p < len(pattern) {
			switch c := pattern[p]; c {
			case '*':
				starP, starI = p, i
				p++
				continue
			case '?':
				p++
				i++
				continue
			case '\\':
				if p+1 < len(pattern) && pattern[p+1] == s[i] {
					p += 2
					i++
					continue
				}
			default:
				if c == s[i] {
					p++
					i++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starI++
		p, i = starP+1, starI
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// pinNote says why no pinned rule for req's executable matched, for the question: the
// file changed since it was pinned, latch is still hashing it or will not hash it
// (Request.ExeHashNote); "" if no pinned
// rule names the executable.
func (m *matcher) pinNote(req *Request) string {
	exe := req.appExe()
	if exe == "" {
		return ""
	}
	for _, c := range m.pinned {
		if c.SHA256 == "" || c.app == nil || c.app.glob || !c.app.match(exe) || c.SHA256 == req.ExeSHA256 {
			continue
		}
		if req.ExeSHA256 == "" && req.ExeHashNote != "" {
			return "latch does not hash the program at " + exe + " (" + req.ExeHashNote + "): its pinned rule cannot match it"
		}
		if req.ExeSHA256 == "" {
			return "latch is still hashing the program at " + exe + " (it has a pinned rule): asking meanwhile"
		}
		return "the program at " + exe + " changed since you allowed it"
	}
	return ""
}

// systemPath reports whether exe lies where the system's package manager installs
// programs; answers pin the other programs' content (Rule.SHA256).
func systemPath(exe string) bool {
	for _, p := range []string{"/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/"} {
		if strings.HasPrefix(exe, p) {
			return true
		}
	}
	return false
}
