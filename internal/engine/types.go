package engine

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Direction says who opened a connection.
type Direction uint8

// Directions. The zero value means "any" in a rule and is invalid in a Request.
const (
	AnyDirection Direction = iota
	Outbound
	Inbound
)

// String returns "out", "in" or "any".
func (d Direction) String() string {
	switch d {
	case Outbound:
		return "out"
	case Inbound:
		return "in"
	case AnyDirection:
		return "any"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// MarshalText implements encoding.TextMarshaler.
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParseDirection.
func (d *Direction) UnmarshalText(b []byte) error {
	v, err := ParseDirection(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ParseDirection parses "in", "out" or "any", exactly so (lower case): a rule's
// fields take no aliases, so that what a file or a request says is what it means.
func ParseDirection(s string) (Direction, error) {
	switch s {
	case "out":
		return Outbound, nil
	case "in":
		return Inbound, nil
	case "any":
		return AnyDirection, nil
	}
	return 0, fmt.Errorf("direction %q: want in, out or any", s)
}

// Protocol is an IP protocol number. The zero value means "any" in a rule.
type Protocol uint8

// Protocols latch holds connections for.
const (
	AnyProtocol Protocol = 0
	ICMP        Protocol = 1
	TCP         Protocol = 6
	UDP         Protocol = 17
	ICMPv6      Protocol = 58
)

// String returns "tcp", "udp", "icmp", "icmpv6", "any" or the number.
func (p Protocol) String() string {
	switch p {
	case AnyProtocol:
		return "any"
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMPv6:
		return "icmpv6"
	}
	return fmt.Sprintf("%d", uint8(p))
}

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParseProtocol.
func (p *Protocol) UnmarshalText(b []byte) error {
	v, err := ParseProtocol(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParseProtocol parses "tcp", "udp", "icmp", "icmpv6" or "any" (lower case), or an IP
// protocol number 1-255 in decimal without leading zeros (what String writes for
// protocols without a name; "6" is tcp). "0" is refused: it is not "any".
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "any":
		return AnyProtocol, nil
	case "icmp":
		return ICMP, nil
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "icmpv6":
		return ICMPv6, nil
	case "0":
		return 0, fmt.Errorf("protocol %q: 0 is not a protocol (write any to match every protocol)", s)
	}
	// Other IP protocols by number, so that String and ParseProtocol round-trip.
	if n, err := strconv.ParseUint(s, 10, 8); err == nil && s[0] != '0' && s[0] != '+' {
		return Protocol(n), nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp, icmpv6, any or a number 1-255", s)
}

// Action is what happens to a held connection.
type Action uint8

// Actions. Deny makes the connection fail fast without telling the peer anything:
// a held TCP SYN is answered locally with a reset (the program sees "connection
// refused" at once, DESIGN invariant 4), other protocols are dropped. Reject also
// answers UDP and ICMP with an ICMP unreachable. Drop discards silently: a TCP
// client waits until its own timeout (stealth, for rules that ask for it).
const (
	NoAction Action = iota
	Allow
	Deny
	Reject
	Drop
)

// String returns "allow", "deny", "reject" or "none".
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Reject:
		return "reject"
	case Drop:
		return "drop"
	case NoAction:
		return "none"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// MarshalText implements encoding.TextMarshaler.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParseAction.
func (a *Action) UnmarshalText(b []byte) error {
	v, err := ParseAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// ParseAction parses "allow", "deny", "reject" or "drop", exactly so (lower case, no
// aliases such as "accept").
func ParseAction(s string) (Action, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	case "reject":
		return Reject, nil
	case "drop":
		return Drop, nil
	}
	return 0, fmt.Errorf("action %q: want allow, deny, reject or drop", s)
}

// RequestID identifies one held connection for as long as it is held. Backends assign
// it; it is unique within one daemon run.
type RequestID uint64

// Request is the platform-neutral description of a held connection.
// Unknown fields keep their zero value, except UID which is -1 when unknown.
type Request struct {
	ID        RequestID      `json:"id"`
	Time      time.Time      `json:"time"`
	Direction Direction      `json:"direction"`
	Protocol  Protocol       `json:"proto"`
	Local     netip.AddrPort `json:"-"`
	Remote    netip.AddrPort `json:"-"`
	PID       int32          `json:"pid"`            // 0: unknown
	Exe       string         `json:"exe"`            // "": unknown
	UID       int32          `json:"uid"`            // -1: unknown
	User      string         `json:"user,omitempty"` // account name, "" if unknown
	Cmdline   string         `json:"cmdline,omitempty"`
	Host      string         `json:"host,omitempty"` // hostname learned from DNS, if any
	// HostSource says whose DNS answer gave Host: HostOwn (this program resolved the
	// address itself), HostShared (another program did: the machine-wide fallback),
	// HostNone (no name). "" means the backend does not tell, and Host counts as own.
	HostSource string `json:"host_source,omitempty"`
	// Note is what the backend wants the person to know about the connection, e.g.
	// that it goes to an encrypted DNS service (NoteEncryptedDNS...).
	Note     string   `json:"note,omitempty"`
	Services []string `json:"services,omitempty"` // Windows: services hosted by svchost.exe
	// Netns names the network namespace of the socket that sent a forwarded
	// connection (Linux, latch daemon --forward): a container's, say. "" for the
	// host's own connections.
	Netns string `json:"netns,omitempty"`
	// Identity says whether Exe is the host's name for the file the process runs.
	// Only IdentityVerified lets app rules (exact paths and globs) match; the zero
	// value (IdentityUnknown, "") does not.
	Identity Identity `json:"identity"`
	// Container names the container the process runs in, as "RUNTIME:ID" (e.g.
	// "docker:3f4e…"), when Identity is IdentityContainer.
	Container string `json:"container,omitempty"`
	// ContainerName is the name the container's runtime (docker, podman) gives it,
	// read from the runtime's own state ("" if none): for a system container from
	// root's files, for a user's own ("RUNTIME@UID:ID") from that user's files, so
	// their claim. Untrusted text: escape it for display.
	ContainerName string `json:"container_name,omitempty"`
	// IdentityNote says, when Identity is not IdentityVerified, why not (e.g. "the
	// executable was deleted or replaced since the process started").
	IdentityNote string `json:"identity_note,omitempty"`
	// Unit is the systemd system unit the process runs in ("nginx.service"), read
	// from its cgroup under system.slice (which only root creates); "" if none.
	Unit string `json:"unit,omitempty"`
	// AppID is the flatpak or snap app id ("org.mozilla.firefox") read from the
	// process's cgroup name, a label the user's own processes can choose.
	AppID string `json:"app_id,omitempty"`
	// Parents are the executables of the process's ancestors, parent first, at most
	// MaxParentDepth: each verified like Exe, "" for one that is not.
	Parents []string `json:"parents,omitempty"`
	// ExeFile is the file the process executes as the kernel named it when the
	// process was identified (zero if the backend does not tell): a cache of
	// decisions keyed by the file can then be filled after the process exited.
	ExeFile FileID `json:"-"`
	// ExeSHA256 is the SHA-256 (lower-case hex) of the file the process executes,
	// "" while latch is hashing it (a pinned rule then does not match).
	ExeSHA256 string `json:"exe_sha256,omitempty"`
	// ExeHashNote says why ExeSHA256 is "" for good (the file is too large to
	// hash: a pinned rule never matches it); "" while latch is hashing it.
	ExeHashNote string `json:"exe_hash_note,omitempty"`

	// matchShared is Config.HostRulesMatchShared of the engine deciding the request,
	// set by readyRequest (Decide, RuleFor, Explain).
	matchShared bool
}

// FileID names a file as the kernel does: its device (dev_t as stat(2) gives it),
// inode, and the id of the mount it was reached through (Linux; 0 if unknown).
type FileID struct{ Dev, Ino, Mnt uint64 }

// Identity is how far a Request's Exe can be trusted to name the program. It is
// written as text: "verified", "unverified", "container", or "" (unknown).
type Identity uint8

// Identities. A backend sets IdentityVerified only when Exe, looked up in the host's
// file system, is the very file the process executes: then no mount namespace,
// chroot, pivot_root, deleted or replaced file or memfd can make a program carry
// another program's path. Every other value keeps app rules from matching: only
// rules without an app (user, address, port, ...) decide.
const (
	// IdentityUnknown: no process was found, or the entry was recorded before latch
	// checked identities.
	IdentityUnknown Identity = iota
	// IdentityVerified: Exe names, on the host, the file the process executes.
	IdentityVerified
	// IdentityUnverified: the process runs something that is not the host's file at
	// Exe (another mount namespace's file, a deleted or replaced file, a memfd).
	IdentityUnverified
	// IdentityContainer: like IdentityUnverified, for a process in another mount
	// namespace whose cgroup names a container runtime: Exe is the container's
	// path, and Container says which container.
	IdentityContainer
)

// String returns "verified", "unverified", "container" or "" (unknown).
func (i Identity) String() string {
	switch i {
	case IdentityUnknown:
		return ""
	case IdentityVerified:
		return "verified"
	case IdentityUnverified:
		return "unverified"
	case IdentityContainer:
		return "container"
	}
	return fmt.Sprintf("identity(%d)", uint8(i))
}

// MarshalText implements encoding.TextMarshaler.
func (i Identity) MarshalText() ([]byte, error) { return []byte(i.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParseIdentity.
func (i *Identity) UnmarshalText(b []byte) error {
	v, err := ParseIdentity(string(b))
	if err != nil {
		return err
	}
	*i = v
	return nil
}

// ParseIdentity parses what Identity.String returns.
func ParseIdentity(s string) (Identity, error) {
	for _, i := range []Identity{IdentityUnknown, IdentityVerified, IdentityUnverified, IdentityContainer} {
		if s == i.String() {
			return i, nil
		}
	}
	return 0, fmt.Errorf("identity %q: want verified, unverified, container or empty", s)
}

// Values of Request.HostSource.
const (
	HostOwn    = "own"    // the program itself resolved the address to Host
	HostShared = "shared" // another program did (machine-wide map); host rules skip it unless Config.HostRulesMatchShared
	HostNone   = "none"   // no name is known for the address
)

// ruleHost is the hostname host rules match: Host, unless another program resolved
// it and the engine does not let shared names match.
func (r *Request) ruleHost() string {
	if r.HostSource == HostShared && !r.matchShared {
		return ""
	}
	return normalizeHost(r.Host)
}

// appExe is the executable app rules match: Exe if it is verified, else "" (which
// no app rule matches).
func (r *Request) appExe() string {
	if r.Identity != IdentityVerified {
		return ""
	}
	return r.Exe
}

// containerExe is Exe for a container's program (IdentityContainer, Container set):
// its path inside the container, which only app rules that also name a container
// match (see appExeFor); else "".
func (r *Request) containerExe() string {
	if r.Identity != IdentityContainer || r.Container == "" {
		return ""
	}
	return r.Exe
}

// ruleExe is the executable the matcher looks app rules up by: appExe, or for a
// container's program its path in the container (containerExe).
func (r *Request) ruleExe() string {
	if r.Identity == IdentityVerified {
		return r.Exe
	}
	return r.containerExe()
}

// appExeFor is the executable the app of a rule naming container matches in req: a
// rule that names a container matches a container's program by its path inside the
// container (and identityMatches checks the container); any other app rule matches a
// verified program only (appExe).
func appExeFor(container string, req *Request) string {
	if container != "" && req.Identity == IdentityContainer {
		return req.containerExe()
	}
	return req.appExe()
}

// RuleID identifies a rule. IDs are assigned by the engine, never reused within a
// rule set, and start at 1; 0 means "no rule".
type RuleID uint64

// Reason says why a verdict was given.
type Reason string

// Reasons recorded in history and shown by `latch conns`.
const (
	ReasonRule    Reason = "rule"    // a rule matched; Verdict.RuleID says which
	ReasonPrompt  Reason = "prompt"  // a person answered
	ReasonDefault Reason = "default" // no rule, and no UI was there to ask (or asking is off)
	ReasonTimeout Reason = "timeout" // a question went unanswered until the prompt timeout
	// ReasonQuestionCap: the program, its user or the machine had its maximum of
	// questions open (see Config.MaxPromptsPerApp), so the default applied at once,
	// unasked; or an open question was closed early to make room for a program or user
	// holding fewer (Stats.QuestionCaps counts both).
	ReasonQuestionCap Reason = "question-cap"
	ReasonExempt      Reason = "exempt" // latch's own traffic or loopback
	ReasonError       Reason = "error"  // the backend could not describe the connection
	// ReasonFastPath: the kernel decided the connection from an earlier decision of
	// a rule (Verdict.RuleID), without asking the service (Linux eBPF fast path).
	ReasonFastPath Reason = "fast-path"
	// ReasonMode: the mode decided (see Mode): learn and silent-allow allowed, or
	// silent-deny and block-all denied, a connection without asking.
	ReasonMode Reason = "mode"
	// ReasonList: a blocklist (latch lists) names the hostname or address.
	ReasonList Reason = "list"
)

// Verdict is the answer to a Request.
type Verdict struct {
	Action Action `json:"verdict"`
	Reason Reason `json:"reason"`
	RuleID RuleID `json:"rule_id,omitempty"`
	// Mode is the mode in force when the verdict was given (history's mode column).
	Mode Mode `json:"mode"`
}
