package windows

import (
	"net/netip"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/proto"
)

// History of the driver's cache hits. A connection the driver's verdict cache decides
// never reaches the service as a CONNECT_REQUEST; the driver records it (tuple, pid,
// action and the rule tag of the cached verdict) in a bounded ring and delivers the
// records in HIT_BATCH messages. The rule tag is the engine.RuleID the service put in
// the VERDICT it cached (wireVerdict): exact, with no map to keep on this side. A
// record the driver could not deliver is counted in its hits_lost counter, which
// `latch status` shows.

// HitRecorder receives each connection the driver's cache decided, as a request and
// the verdict (engine.ReasonFastPath, with the rule's id) to record in the history.
type HitRecorder func(req *engine.Request, v engine.Verdict)

// RecordHits sets where the driver's cache hits go (nil: they are counted only).
// Call it before Run.
func (b *Backend) RecordHits(f HitRecorder) {
	if f == nil {
		b.hitRecorder.Store(nil)
		return
	}
	b.hitRecorder.Store(&f)
}

// handleHits turns a HIT_BATCH into history records.
func (b *Backend) handleHits(m *proto.HitBatch) {
	b.hits.Add(uint64(len(m.Hits)))
	p := b.hitRecorder.Load()
	if p == nil {
		return
	}
	for i := range m.Hits {
		req, v := b.desc.hit(&m.Hits[i], engine.RequestID(b.nextID.Add(1)))
		(*p)(req, v)
	}
}

// hit builds the request and verdict a driver cache hit stands for. The record has no
// path: the cached verdict's key included the process id and path (the service asks
// for scope 1, process id + remote address and port), so the program is the one
// Windows names for the pid (cached by identity for a few seconds).
func (d *describer) hit(h *proto.Hit, id engine.RequestID) (*engine.Request, engine.Verdict) {
	req := &engine.Request{
		ID:       id,
		Protocol: engine.Protocol(h.Protocol),
		Local:    netip.AddrPortFrom(h.Local.Addr().Unmap(), h.Local.Port()),
		Remote:   netip.AddrPortFrom(h.Remote.Addr().Unmap(), h.Remote.Port()),
		UID:      -1,
	}
	if h.Timestamp != 0 {
		req.Time = h.Time()
	} else {
		req.Time = d.now().UTC()
	}
	switch h.Direction {
	case proto.Outbound:
		req.Direction = engine.Outbound
	case proto.Inbound:
		req.Direction = engine.Inbound
	}
	if h.ProcessID > 0 && h.ProcessID <= 0x7fffffff {
		req.PID = int32(h.ProcessID)
		ident := d.identity(uint32(req.PID))
		req.Exe, req.User = ident.image, ident.user
		if req.PID == 4 && req.Exe == "" {
			req.Exe = "System"
		}
	}
	v := engine.Verdict{Action: engine.Deny, Reason: engine.ReasonFastPath, RuleID: engine.RuleID(h.RuleTag)}
	if h.Action == proto.ActionPermit {
		v.Action = engine.Allow
	}
	return req, v
}
