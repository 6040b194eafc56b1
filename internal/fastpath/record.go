package fastpath

import (
	"net/netip"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// Decision is one connection the fast path decided in the kernel.
type Decision struct {
	Time     time.Time
	PID      int32
	UID      int32
	Exe      string          // "" if the executable's path is no longer known
	Protocol engine.Protocol // TCP (a connect) or UDP (the first datagram of a flow)
	Remote   netip.AddrPort
	// Local is the flow's local address and port (the TCP socket's, as the kernel
	// chose them; a UDP flow's first datagram's source); invalid when not known
	// (a UDP decision without the datagram's source).
	Local  netip.AddrPort
	Action engine.Action // Allow, or Reject for a deny or reject rule
	RuleID engine.RuleID
}

// End is the end of a TCP socket of the served network namespace: it moved to
// TCP_CLOSE (a reset, both sides closed, a failed connect or a timeout). Local and
// Remote are its flow's original tuple as conntrack has it for an outbound
// connection (swapped for an accepted one); an IPv4-mapped IPv6 socket's are IPv4.
type End struct {
	Local, Remote netip.AddrPort
	// Time is when the socket ended (on the clock of Decision.Time): a 4-tuple
	// can be reused by a new connection before the old socket's end is read.
	// The two are converted from the kernel's boot clock alike, so an end's
	// Time is not before its socket's decision's (within the microseconds of
	// measuring the clocks' offset, unless the wall clock was set between).
	Time time.Time
	// Counted says whether the socket's packets were counted, from its SYN to
	// its end (a socket the kernel opened actively while Stats.TCPEndBytes):
	// then Bytes and Packets hold them, sent (Out) and received (In), bytes as
	// conntrack counts them (each packet's length from its IP header on).
	Counted bool
	Bytes   Counts
	Packets Counts
}

// Counts are a socket's counts of what it sent and received.
type Counts struct{ Out, In uint64 }
