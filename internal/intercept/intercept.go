// Package intercept defines what a kernel backend does for latch: hold each new
// connection, describe it as an engine.Request, and carry out the engine's Verdict.
// Implementations live in subpackages (linux, windows).
package intercept

import (
	"context"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// Decider answers held connections. Decide must not block: it calls verdict exactly
// once, possibly later and from another goroutine (for instance when a person answers a
// prompt). A backend's read loop calls Decide and moves on.
type Decider interface {
	Decide(req *engine.Request, verdict func(engine.Verdict))
}

// DeciderFunc adapts a function to Decider.
type DeciderFunc func(req *engine.Request, verdict func(engine.Verdict))

// Decide calls f.
func (f DeciderFunc) Decide(req *engine.Request, verdict func(engine.Verdict)) { f(req, verdict) }

// Backend holds new connections in the kernel until a Decider answers.
type Backend interface {
	// Name says which mechanism is in use, e.g. "nfqueue/iptables-nft".
	Name() string
	// Run installs the interception, hands every held connection to d, and returns
	// when ctx is done, after removing everything it installed (unless fail-closed
	// asks to leave a drop rule in place). It returns an error if it cannot start.
	Run(ctx context.Context, d Decider) error
	// Redecide forgets earlier verdicts for flows whose request matches affected, so
	// their next packets are held and decided again. nil means every flow. Only
	// flows latch allowed are decided again (a denied flow's packets got nowhere),
	// so affected need be right only for requests the old rules allowed
	// (engine.AffectedAllowed). It returns how many flows were affected.
	Redecide(affected func(*engine.Request) bool) (int, error)
	// Stats returns counters for `latch status`.
	Stats() Stats
}

// Stats are a backend's counters since it started.
type Stats struct {
	Backend  string `json:"backend"`
	Held     uint64 `json:"held"`    // connections handed to the Decider
	Allowed  uint64 `json:"allowed"` // verdicts carried out, by action
	Denied   uint64 `json:"denied"`
	Rejected uint64 `json:"rejected"`
	// KernelDropped counts packets the kernel dropped before latch could hold them:
	// a new connection's packet that met a full queue, or that the kernel could not
	// deliver to latch's reader. None of them got through; their senders retry or
	// fail. Linux: queue_dropped + queue_user_dropped of the kernel's queue.
	KernelDropped uint64 `json:"kernel_dropped"`
	// Overflows counts the times latch's reader found the kernel had dropped
	// deliveries (ENOBUFS) and read on (Linux); the driver's cap_exceeded (Windows).
	Overflows uint64            `json:"overflows"`
	Errors    uint64            `json:"errors"` // malformed kernel messages, failed verdicts
	Extra     map[string]uint64 `json:"extra,omitempty"`
}

// Traffic is what one allowed flow has moved so far, as a backend that counts bytes
// reports it: totals since the flow began, from this host's side (BytesOut: sent by
// the local program; BytesIn: received by it), counting IP headers.
type Traffic struct {
	Request  *engine.Request // the flow's request, as decided
	BytesIn  uint64
	BytesOut uint64
	// DeltaIn and DeltaOut are the bytes since the flow's previous report (all of
	// them in its first).
	DeltaIn  uint64
	DeltaOut uint64
	// Ended: the flow is over (TCP closed, or its conntrack entry gone); no report
	// follows for it.
	Ended bool
	Time  time.Time // when the counters were read
}
