package engine

import (
	"net/netip"
	"time"
)

// PortRange is an inclusive range of ports. The zero value matches any port.
// A single port N is {N, N}.
type PortRange struct {
	Lo, Hi uint16
}

// Rule is one user rule. Empty match fields match anything. It is the unit of the
// rules file, the API and `latch rules`.
type Rule struct {
	ID        RuleID       `json:"id"`
	App       string       `json:"app,omitempty"`   // executable path, exact or glob (path.Match syntax plus "**")
	User      string       `json:"user,omitempty"`  // account name or numeric uid
	Direction Direction    `json:"dir"`             // AnyDirection matches both
	Protocol  Protocol     `json:"proto"`           // AnyProtocol matches all
	Remote    netip.Prefix `json:"remote,omitzero"` // address or CIDR; zero matches all
	Port      PortRange    `json:"port,omitzero"`   // remote port range
	LocalPort PortRange    `json:"local_port,omitzero"`
	Action    Action       `json:"action"`
	Expires   time.Time    `json:"expires,omitzero"` // zero: forever
	Created   time.Time    `json:"created,omitzero"`
	Note      string       `json:"note,omitempty"`
}
