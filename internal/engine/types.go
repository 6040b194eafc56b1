package engine

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
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

// ParseDirection parses "in", "out" or "any" (also "inbound", "outbound", "").
func ParseDirection(s string) (Direction, error) {
	switch strings.ToLower(s) {
	case "out", "outbound":
		return Outbound, nil
	case "in", "inbound":
		return Inbound, nil
	case "any", "":
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

// ParseProtocol parses "tcp", "udp", "icmp", "icmpv6" or "any" (or ""), or an IP
// protocol number.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "any", "":
		return AnyProtocol, nil
	case "icmp":
		return ICMP, nil
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "icmpv6", "ipv6-icmp":
		return ICMPv6, nil
	}
	// Other IP protocols by number, so that String and ParseProtocol round-trip.
	if n, err := strconv.ParseUint(s, 10, 8); err == nil && len(s) <= 3 && s[0] != '+' {
		return Protocol(n), nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp, icmpv6, any or a number 0-255", s)
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

// ParseAction parses "allow", "deny", "reject" or "drop".
func ParseAction(s string) (Action, error) {
	switch strings.ToLower(s) {
	case "allow", "accept":
		return Allow, nil
	case "deny", "block":
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
	Host      string         `json:"host,omitempty"`     // hostname learned from DNS, if any
	Services  []string       `json:"services,omitempty"` // Windows: services hosted by svchost.exe
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
	ReasonLimit   Reason = "limit"   // too many questions open; the default applied at once
	ReasonExempt  Reason = "exempt"  // latch's own traffic or loopback
	ReasonError   Reason = "error"   // the backend could not describe the connection
	// ReasonFastPath: the kernel decided the connection from an earlier decision of
	// a rule (Verdict.RuleID), without asking the service (Linux eBPF fast path).
	ReasonFastPath Reason = "fast-path"
)

// Verdict is the answer to a Request.
type Verdict struct {
	Action Action `json:"verdict"`
	Reason Reason `json:"reason"`
	RuleID RuleID `json:"rule_id,omitempty"`
}
