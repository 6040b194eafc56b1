//go:build !linux

package fastpath

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// ErrUnsupported is Open's error where there is no eBPF fast path.
var ErrUnsupported = errors.New("fast path: only on Linux")

// Config configures Open.
type Config struct {
	CgroupPath     string
	EndsCgroupPath string
	MaxEntries     int
	TTL            time.Duration
	RingBytes      int
	EndsRingBytes  int
	PinDir         string
	KeepPin        bool
	NoTCPEnds      string
}

// FastPath is the kernel fast path; there is none on this system.
type FastPath struct{}

// Ticket is the rule generation a decision is made under.
type Ticket struct{}

// Open fails with ErrUnsupported.
func Open(Config) (*FastPath, error) { return nil, ErrUnsupported }

// Close does nothing.
func (*FastPath) Close() error { return nil }

// RulesChanged does nothing.
func (*FastPath) RulesChanged([]engine.Rule, ...string) error { return nil }

// ModeChanged does nothing.
func (*FastPath) ModeChanged() error { return nil }

// Ticket returns the zero Ticket.
func (*FastPath) Ticket() Ticket { return Ticket{} }

// Remember stores nothing.
func (*FastPath) Remember(Ticket, *engine.Request, engine.Verdict) (bool, error) { return false, nil }

// Offer stores nothing.
func (*FastPath) Offer(Ticket, *engine.Request, engine.Verdict) {}

// Run returns at once.
func (*FastPath) Run(context.Context, func(Decision), func(End)) error { return nil }

// RemovePin does nothing.
func RemovePin(string) (bool, error) { return false, nil }

// UDPMatch returns "".
func (*FastPath) UDPMatch() string { return "" }

// SetUDP does nothing.
func (*FastPath) SetUDP(error) {}

// Lease returns "": there is no lease program.
func (*FastPath) Lease() string { return "" }

// SetLease does nothing.
func (*FastPath) SetLease(error) {}

// SocketPin returns "": there is no socket pin program.
func (*FastPath) SocketPin() string { return "" }

// SetSocketPin does nothing.
func (*FastPath) SetSocketPin(error) {}

// SenderStash returns "": there is no sender stash program.
func (*FastPath) SenderStash() string { return "" }

// SetSenderStash does nothing.
func (*FastPath) SetSenderStash(error) {}

// ErrNoLiveBytes is SocketCounts' error where there are no live counts of sockets.
var ErrNoLiveBytes = errors.New("fast path: no live counts of TCP sockets")

// SocketCounts returns ErrNoLiveBytes.
func (*FastPath) SocketCounts(func(local, remote netip.AddrPort, bytes Counts)) error {
	return ErrNoLiveBytes
}

// Stats returns the zero Stats.
func (*FastPath) Stats() Stats { return Stats{} }
