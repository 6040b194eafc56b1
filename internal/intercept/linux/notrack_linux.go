package linux

import (
	"errors"
	"net/netip"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
	"golang.org/x/sys/unix"
)

// Notrack reports whether the installed ruleset keeps the fast path's TCP flows
// out of conntrack: nil if it does, else why not (no Config.FastSockets, not
// installed yet, or the firewall refused the rules: no socket match, no raw
// table).
func (b *Backend) Notrack() error {
	if b.cfg.FastSockets == nil {
		return errors.New("no TCP socket iterators")
	}
	p := b.notrackErr.Load()
	if p == nil {
		return errors.New("the ruleset is not installed yet")
	}
	return *p
}

// notrackOn reports whether the installed ruleset notracks.
func (b *Backend) notrackOn() bool {
	p := b.notrackErr.Load()
	return b.cfg.FastSockets != nil && p != nil && *p == nil
}

// syncFastDecisions has every fast-path decision the kernel recorded so far
// registered in the flow table (TrackFlow) before Redecide takes the affected
// flows from it: a fast socket connected under the old rules (its decision
// recorded as its SYN left, before the rule change) is then in the table, under
// its request, and not taken for an older flow of the same 4-tuple that the
// change did not affect. It reports whether that worked.
func (b *Backend) syncFastDecisions() bool {
	if !b.notrackOn() {
		return false
	}
	if err := b.cfg.FastSockets.SyncDecisions(); err != nil {
		b.cfg.Logf("redecide: %v; every fast TCP socket is decided again", err)
		return false
	}
	return true
}

// redecideSockets marks the fast path's sockets for deciding again (Redecide),
// but, if synced (syncFastDecisions), those of the TCP flows the flow table still
// knows: Redecide took the affected ones from it, so what is left is known and
// unaffected. A fast socket whose decision the daemon has not read is not in
// the table: it is marked.
func (b *Backend) redecideSockets(synced bool) (int, error) {
	if !b.notrackOn() {
		return 0, nil
	}
	b.fastGroupsMu.Lock()
	// Verdicts given before this change no longer answer later packets.
	b.fastEpoch++
	clear(b.fastGroups)
	b.fastGroupsMu.Unlock()
	var keep [][2]netip.AddrPort
	if synced {
		keep = b.flows.tcpOutbound()
	}
	return b.cfg.FastSockets.RedecideSockets(keep)
}

// tcpOutbound lists the (local, remote) of the outbound TCP flows remembered.
func (t *flowTable) tcpOutbound() [][2]netip.AddrPort {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out [][2]netip.AddrPort
	for k, e := range t.m {
		if k.proto == unix.IPPROTO_TCP && e.req.Direction == engine.Outbound {
			out = append(out, [2]netip.AddrPort{k.src(), k.dst()})
		}
	}
	return out
}

// fastGroup is the packets of one fast socket marked MarkFastRedecide that wait
// for one decision: the first packet's (leader) is asked, the others (waiters)
// get its verdict, so that a flow decided again makes one history row and at
// most one question however many of its packets are queued meanwhile. Once
// decided, the group answers the flow's packets still queued (sent before the
// verdict moved the socket's mark back) for fastGroupLinger, while no rule
// changed since.
type fastGroup struct {
	epoch   uint64
	leader  *hold
	waiters []*hold
	decided bool
	verdict engine.Verdict
	at      time.Time
}

// fastGroupLinger is how long a decided group answers its flow's late packets.
const fastGroupLinger = 2 * time.Second

// maxFastGroups is how many groups stay before the decided ones past
// fastGroupLinger are swept.
const maxFastGroups = 1024

// dropFastGroup forgets the group h leads, whose verdict never came (its hold
// timed out): its waiters time out as it did, and the flow's next packet leads
// a new group.
func (b *Backend) dropFastGroup(h *hold) {
	b.fastGroupsMu.Lock()
	if h.group != nil && b.fastGroups[h.groupKey] == h.group && !h.group.decided {
		delete(b.fastGroups, h.groupKey)
	}
	b.fastGroupsMu.Unlock()
}

// joinFastGroup adds h, a packet of a fast socket being decided again with
// tuple k, to its flow's group. It returns true if h is not the first: h is then
// answered with the group's verdict (at once if it has one) and must not be
// decided itself.
func (b *Backend) joinFastGroup(h *hold, k flowKey) bool {
	b.fastGroupsMu.Lock()
	g := b.fastGroups[k]
	if g != nil && g.decided && time.Since(g.at) > fastGroupLinger {
		delete(b.fastGroups, k)
		g = nil
	}
	if g == nil {
		g = &fastGroup{epoch: b.fastEpoch, leader: h}
		b.fastGroups[k] = g
		h.group, h.groupKey = g, k
		b.fastGroupsMu.Unlock()
		return false
	}
	if !g.decided {
		g.waiters = append(g.waiters, h)
		b.fastGroupsMu.Unlock()
		return true
	}
	v := g.verdict
	b.fastGroupsMu.Unlock()
	b.answerWaiter(h, v)
	return true
}

// leadFastGroup is apply's part for a group's leader (nothing for another
// packet): on an allow it moves the
// socket back to MarkFastAllow first (before any of the flow's packets leaves:
// the later ones then pass in the kernel), then it answers the waiters with v.
// The group stays, decided, for the flow's late packets, unless a rule changed
// meanwhile.
func (b *Backend) leadFastGroup(h *hold, v engine.Verdict) {
	g := h.group // set by joinFastGroup in handle, before h was decided
	if g == nil {
		return
	}
	b.fastGroupsMu.Lock()
	// Under the lock, which redecideSockets takes to count a rule change
	// before it marks the sockets: an allow given the socket back before that
	// is seen by its iterator; after it (the epoch moved on since the packet
	// was queued: the verdict may be of the old rules) the socket keeps
	// MarkFastRedecide and its next packet is decided under the new rules.
	if v.Action == engine.Allow && g.epoch == b.fastEpoch {
		if _, err := b.cfg.FastSockets.AllowSocket(h.req.Local, h.req.Remote); err != nil {
			// The socket keeps MarkFastRedecide: its packets are decided again,
			// one by one, never passed unheld.
			b.cfg.Logf("fast path: give the socket %v -> %v its allow mark back: %v", h.req.Local, h.req.Remote, err)
		}
	}
	waiters := g.waiters
	g.waiters = nil
	g.decided, g.verdict, g.at = true, v, time.Now()
	if g.epoch != b.fastEpoch && b.fastGroups[h.groupKey] == g {
		delete(b.fastGroups, h.groupKey)
	}
	if len(b.fastGroups) > maxFastGroups {
		// Decided groups nobody asked for since (a rule change clears them all).
		for k, o := range b.fastGroups {
			if o.decided && time.Since(o.at) > fastGroupLinger {
				delete(b.fastGroups, k)
			}
		}
	}
	b.fastGroupsMu.Unlock()
	for _, w := range waiters {
		b.answerWaiter(w, v)
	}
}

// answerWaiter carries out v, the verdict of its group's leader, for w.
func (b *Backend) answerWaiter(w *hold, v engine.Verdict) {
	withMark := func(m uint32) uint32 { return w.mark&^MarkMask | m }
	switch v.Action {
	case engine.Allow:
		b.finish(w, nfq.Repeat, withMark(MarkAllow), true)
	case engine.Deny, engine.Reject:
		b.finish(w, nfq.Repeat, withMark(MarkReject), true)
	default:
		b.finish(w, nfq.Drop, 0, false)
	}
}
