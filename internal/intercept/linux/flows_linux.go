package linux

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// flowKey is a flow as conntrack sees it: its original-direction tuple. ICMP flows
// carry port 0. It holds its addresses as bytes, not as netip.Addr (which points
// at its zone): the tables keyed by it, the flow table and the accountant's, with
// an entry per connection, are hashed and compared as one run of plain memory
// and never scanned by the garbage collector. A zone is not kept (conntrack's
// tuples have none). Make one with newFlowKey; src and dst read it back.
type flowKey struct {
	srcIP, dstIP [16]byte // netip.Addr.As16
	sport, dport uint16
	proto        uint8
	// fam is the families of the two addresses, the source's in the low four
	// bits, the destination's in the high: 0 none (the zero netip.Addr), 4, 6.
	fam uint8
}

// newFlowKey is the flow key of protocol proto from src to dst.
func newFlowKey(proto uint8, src, dst netip.AddrPort) flowKey {
	k := flowKey{proto: proto, sport: src.Port(), dport: dst.Port()}
	var sf, df uint8
	k.srcIP, sf = packAddr(src.Addr())
	k.dstIP, df = packAddr(dst.Addr())
	k.fam = sf | df<<4
	return k
}

// packAddr is a's 16 bytes and its family (flowKey.fam): 0 if a is the zero Addr.
func packAddr(a netip.Addr) ([16]byte, uint8) {
	switch {
	case a.Is4():
		return a.As16(), 4
	case a.Is6():
		return a.As16(), 6
	}
	return [16]byte{}, 0
}

// unpackAddr is packAddr's inverse (without a zone).
func unpackAddr(b [16]byte, fam uint8) netip.Addr {
	switch fam {
	case 4:
		return netip.AddrFrom4([4]byte(b[12:]))
	case 6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// src is the flow's source address and port.
func (k flowKey) src() netip.AddrPort {
	return netip.AddrPortFrom(unpackAddr(k.srcIP, k.fam&0xf), k.sport)
}

// dst is the flow's destination address and port.
func (k flowKey) dst() netip.AddrPort {
	return netip.AddrPortFrom(unpackAddr(k.dstIP, k.fam>>4), k.dport)
}

// srcIs reports whether the flow's source is a (as newFlowKey keeps it: without
// its zone).
func (k flowKey) srcIs(a netip.AddrPort) bool {
	b, fam := packAddr(a.Addr())
	return b == k.srcIP && fam == k.fam&0xf && a.Port() == k.sport
}

func keyOf(req *engine.Request) flowKey {
	if req.Direction == engine.Inbound {
		return newFlowKey(uint8(req.Protocol), req.Remote, req.Local)
	}
	return newFlowKey(uint8(req.Protocol), req.Local, req.Remote)
}

// String is k as "PROTO SRC -> DST" (protoName).
func (k flowKey) String() string {
	return protoName(k.proto) + " " + k.src().String() + " -> " + k.dst().String()
}

// ctTuple is k as the original tuple of a conntrack request, with its family.
func (k flowKey) ctTuple() (netlink.InetFamily, netlink.IPTuple) {
	src, dst := k.src(), k.dst()
	fam := netlink.InetFamily(unix.AF_INET)
	if src.Addr().Is6() {
		fam = unix.AF_INET6
	}
	return fam, netlink.IPTuple{Protocol: k.proto, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), SrcPort: src.Port(), DstPort: dst.Port()}
}

// reversed is k seen from its other end.
func (k flowKey) reversed() flowKey {
	return flowKey{srcIP: k.dstIP, dstIP: k.srcIP, sport: k.dport, dport: k.sport, proto: k.proto, fam: k.fam>>4 | k.fam<<4}
}

// replyKey is the other conntrack reading of an outbound request's flow: an outbound
// datagram that was held in the conntrack direction reply (the peer spoke first, see
// ruleSpec.holdReplies) belongs to an entry whose original tuple runs from the peer
// to this host. TCP and ICMP have none: their held packets open the flow.
func replyKey(req *engine.Request) (flowKey, bool) {
	if req.Direction != engine.Outbound || req.Protocol == engine.Protocol(unix.IPPROTO_TCP) ||
		req.Protocol == engine.Protocol(unix.IPPROTO_ICMP) || req.Protocol == engine.Protocol(unix.IPPROTO_ICMPV6) {
		return flowKey{}, false
	}
	return keyOf(req).reversed(), true
}

// localSentOriginal reports whether the conntrack entry with original tuple k
// counts what this host's end of req sent as its original direction (an outbound
// flow this host opened), rather than as its reply direction (an inbound flow, or
// an outbound one held in the reply direction): which counter is which.
func localSentOriginal(k flowKey, req *engine.Request) bool { return k.srcIs(req.Local) }

type flowEntry struct {
	req *engine.Request
	// id is req.ID, kept here: add compares it with a new request's without
	// reading the old request (long out of the CPU's caches in a busy table).
	id engine.RequestID
	// expires is when the entry expires, in nanoseconds since the table's
	// epoch (flowTable.since): a time.Time took 24 bytes and a pointer (its
	// location) in every entry of a table of tens of thousands.
	expires int64
	// prev is the request of the TCP flow this one replaced on the same tuple
	// (a new connection from the same port), whose conntrack entry's destroy
	// may still come (see accountant.event); nil if none.
	prev *engine.Request
	// untracked: a TCP flow the kernel's fast path allowed while the ruleset
	// kept its packets out of conntrack (TrackFlow with notrack on). No
	// conntrack entry, event or mark of it will ever come, so its socket's end
	// with the socket's counts is all that is left of it: the accountant then
	// forgets it (forgetEnded). Redecide has nothing to mark for it, and its
	// socket is gone from the sockets RedecideSockets walks.
	untracked bool
}

// flowTable remembers the requests of allowed flows so that Redecide can tell which
// conntrack entries a rule change affects. It is bounded in size and age.
type flowTable struct {
	mu  sync.Mutex
	m   map[flowKey]flowEntry
	max int
	ttl time.Duration
	// expiresFrom is at or before the earliest expiry of the flows in m: a full
	// table looks for expired flows only once it passed (their search walks the
	// whole table, and a flow allowed later expires later). As expires.
	expiresFrom int64
	epoch       time.Time
}

func newFlowTable(max int, ttl time.Duration) *flowTable {
	return &flowTable{m: make(map[flowKey]flowEntry), max: max, ttl: ttl, expiresFrom: math.MinInt64, epoch: time.Now()}
}

// since is now in nanoseconds since the table's epoch (on the monotonic clock
// when now has its reading, as time.Now's has).
func (t *flowTable) since(now time.Time) int64 { return int64(now.Sub(t.epoch)) }

// expiry is when a flow added at at (as since) expires: at plus the TTL, held
// at the ends of int64 (a TTL of math.MaxInt64, a caller's "never", would wrap
// to the past and expire every flow at once; time.Time.Add did not wrap).
func (t *flowTable) expiry(at int64) int64 {
	ttl := int64(t.ttl)
	switch {
	case ttl > 0 && at > math.MaxInt64-ttl:
		return math.MaxInt64
	case ttl < 0 && at < math.MinInt64-ttl:
		return math.MinInt64
	}
	return at + ttl
}

func (t *flowTable) add(req *engine.Request, now time.Time) { t.addFlow(req, now, false) }

// addFlow is add, the entry marked untracked (flowEntry.untracked) if untracked.
func (t *flowTable) addFlow(req *engine.Request, now time.Time, untracked bool) {
	t.addFlowKey(keyOf(req), req, now, untracked)
}

// addFlowKey is addFlow with req's key k (keyOf(req)) already made.
func (t *flowTable) addFlowKey(k flowKey, req *engine.Request, now time.Time, untracked bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at := t.since(now)
	if len(t.m) >= t.max && at > t.expiresFrom {
		next := t.expiry(at)
		for k, e := range t.m {
			if at > e.expires {
				delete(t.m, k)
			} else if e.expires < next {
				next = e.expires
			}
		}
		t.expiresFrom = next
	}
	if len(t.m) >= t.max {
		// Still full: forget arbitrary flows (map order is random). Their conntrack
		// entries keep MarkAllow; Redecide finds them by mark and tuple.
		for k := range t.m {
			if len(t.m) < t.max*7/8 {
				break
			}
			delete(t.m, k)
		}
	}
	e := flowEntry{req: req, id: req.ID, expires: t.expiry(at), untracked: untracked}
	if e.expires < t.expiresFrom {
		t.expiresFrom = e.expires
	}
	if old, ok := t.m[k]; ok && old.id != req.ID && k.proto == unix.IPPROTO_TCP {
		e.prev = old.req
	}
	t.m[k] = e
}

// getReplaced returns the request of the TCP flow remembered under k and the one
// it replaced on the same tuple (flowEntry.prev), each nil if none.
func (t *flowTable) getReplaced(k flowKey) (req, prev *engine.Request) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[k]
	return e.req, e.prev
}

// getEnd returns the request of the allowed flow k (as get, nil if none) and
// whether its entry is untracked (flowEntry.untracked): what a socket's end
// asks of the table.
func (t *flowTable) getEnd(k flowKey) (*engine.Request, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.lookup(k); ok {
		return e.req, e.untracked
	}
	return nil, false
}

// forgetEnded removes the untracked flow remembered under k if its request is
// id (not a newer connection's on the same tuple), once its socket's end ended
// it: the table then holds the flows that may still go on, a few hundred on a
// host that opens thousands of short connections a second, instead of tens of
// thousands that ended (each add and lookup missed the CPU's caches, and the
// ended requests made most of the daemon's live heap).
func (t *flowTable) forgetEnded(k flowKey, id engine.RequestID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.m[k]; ok && e.untracked && e.id == id {
		delete(t.m, k)
	}
}

// forget removes the flow remembered under k, if any.
func (t *flowTable) forget(k flowKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, k)
}

// take removes and returns the flows whose request matches: their conntrack
// keys (the reversed tuple too where replyKey has one) and requests.
func (t *flowTable) take(match func(*engine.Request) bool, now time.Time) map[flowKey]*engine.Request {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make(map[flowKey]*engine.Request)
	at := t.since(now)
	for k, e := range t.m {
		if at > e.expires {
			delete(t.m, k)
			continue
		}
		if match(e.req) {
			keys[k] = e.req
			if rk, ok := replyKey(e.req); ok {
				// Conntrack holds one entry for both readings of a tuple, so the
				// reversed one is this flow if it exists.
				keys[rk] = e.req
			}
			delete(t.m, k)
		}
	}
	return keys
}

func (t *flowTable) has(k flowKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.lookup(k)
	return ok
}

// lookup finds the flow whose conntrack entry has original tuple k: remembered
// under k, or an outbound request held in the reply direction, remembered under
// the reversed tuple (see replyKey). t.mu must be held.
func (t *flowTable) lookup(k flowKey) (flowEntry, bool) {
	if e, ok := t.m[k]; ok {
		return e, true
	}
	if e, ok := t.m[k.reversed()]; ok {
		if rk, ok := replyKey(e.req); ok && rk == k {
			return e, true
		}
	}
	return flowEntry{}, false
}

func (t *flowTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// ctFilter matches conntrack entries latch allowed (conntrack mark MarkAllow) that a
// rule change may affect: those whose original tuple is in keys, and, since the flow
// table is bounded in size and age while conntrack keeps a quiet TCP flow for days,
// those the table has forgotten if affected matches them with only their tuple known.
// With nil keys and nil affected it matches every entry latch allowed.
type ctFilter struct {
	keys       map[flowKey]*engine.Request
	remembered func(flowKey) bool // the table still knows the flow (and found it unaffected)
	affected   func(*engine.Request) bool
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// ctKey is flow as the ruleset saw it and the flow table keeps it (keyOf of
// the request it was decided as): from the original tuple's source to the
// reply tuple's source. latch's chains run after destination NAT (nat
// prerouting and output) and before source NAT (postrouting), so that is
// where the opener's packets went, not the original tuple's destination: a
// flow DNAT forwards (a published container port, a service address, a
// REDIRECT) is known by its target there. Keyed by the original tuple, no
// such flow matched the table's keys, and as a forgotten flow it was asked
// about the address and port before DNAT, which rules about the target do
// not name: a rule change never decided it again (review18). Without NAT
// the two are the same.
func ctKey(flow *netlink.ConntrackFlow) flowKey {
	t, r := flow.Forward, flow.Reverse
	dstIP, dport := r.SrcIP, r.SrcPort
	if len(dstIP) == 0 {
		dstIP, dport = t.DstIP, t.DstPort
	}
	switch t.Protocol {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		return newFlowKey(t.Protocol, netip.AddrPortFrom(addrOf(t.SrcIP), t.SrcPort), netip.AddrPortFrom(addrOf(dstIP), dport))
	}
	return newFlowKey(t.Protocol, netip.AddrPortFrom(addrOf(t.SrcIP), 0), netip.AddrPortFrom(addrOf(dstIP), 0))
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f ctFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Mark&MarkMask != MarkAllow {
		return false
	}
	if f.keys == nil && f.affected == nil {
		return true
	}
	k := ctKey(flow)
	if _, ok := f.keys[k]; ok {
		return true
	}
	if f.affected == nil || (f.remembered != nil && f.remembered(k)) {
		return false
	}
	// Forgotten: whether this host opened the flow is not known either, so both
	// readings are asked; unknown program and user match anything (engine.Affected).
	out := engine.Request{Direction: engine.Outbound, Protocol: engine.Protocol(k.proto), Local: k.src(), Remote: k.dst(), UID: -1}
	in := engine.Request{Direction: engine.Inbound, Protocol: engine.Protocol(k.proto), Local: k.dst(), Remote: k.src(), UID: -1}
	return f.affected(&out) || f.affected(&in)
}

// ctaMarkMask is CTA_MARK_MASK (linux/netfilter/nfnetlink_conntrack.h): with it, a
// mark update changes only the mask's bits.
const ctaMarkMask = 21

// markRedecide sets the conntrack mark of the matching entries to MarkRedecide, so
// that the ruleset holds their next packet from the side that opened them, and
// returns how many it marked. ICMP entries are deleted instead (their tuples carry
// an echo id the flow table does not keep; echo flows are reopened by this host's
// next request anyway).
func markRedecide(f ctFilter) (int, error) {
	var total int
	var errs []error
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list conntrack entries (family %d): %w", fam, err))
			continue
		}
		icmp := false
		for _, flow := range flows {
			if !f.MatchConntrackFlow(flow) {
				continue
			}
			t := flow.Forward
			if t.Protocol != unix.IPPROTO_TCP && t.Protocol != unix.IPPROTO_UDP {
				icmp = true
				continue
			}
			switch err := setConntrackMark(fam, t, MarkRedecide, MarkMask); {
			case err == nil:
				total++
			case errors.Is(err, unix.ENOENT):
				// Gone since the listing: its next packet is held as a new flow.
			default:
				errs = append(errs, fmt.Errorf("mark conntrack entry %s %v:%d -> %v:%d: %w", protoName(t.Protocol), t.SrcIP, t.SrcPort, t.DstIP, t.DstPort, err))
			}
		}
		if icmp {
			n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, icmpFilter{f})
			total += int(n)
			if err != nil {
				errs = append(errs, fmt.Errorf("delete ICMP conntrack entries (family %d): %w", fam, err))
			}
		}
	}
	return total, errors.Join(errs...)
}

// icmpFilter is f for entries that are neither TCP nor UDP.
type icmpFilter struct{ f ctFilter }

func (i icmpFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	p := flow.Forward.Protocol
	return p != unix.IPPROTO_TCP && p != unix.IPPROTO_UDP && i.f.MatchConntrackFlow(flow)
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return fmt.Sprintf("proto %d", p)
}

// setConntrackMark changes the bits of mask in the mark of the conntrack entry whose
// original tuple is t (TCP or UDP) to mark, and nothing else in it. An entry that
// no longer exists gives an error wrapping unix.ENOENT.
func setConntrackMark(fam netlink.InetFamily, t netlink.IPTuple, mark, mask uint32) error {
	orig, err := ctOrigTuple(fam, t)
	if err != nil {
		return err
	}
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_NEW, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(fam), Version: nl.NFNETLINK_V0})
	req.AddData(orig)
	// Without NLM_F_CREATE this changes an existing entry only; of it, only the mark.
	req.AddData(nl.NewRtAttr(nl.CTA_MARK, nl.BEUint32Attr(mark)))
	req.AddData(nl.NewRtAttr(ctaMarkMask, nl.BEUint32Attr(mask)))
	_, err = req.Execute(unix.NETLINK_NETFILTER, 0)
	return err
}

// ctOrigTuple is the CTA_TUPLE_ORIG attribute naming the conntrack entry whose
// original tuple is t (TCP or UDP), for a request of family fam.
func ctOrigTuple(fam netlink.InetFamily, t netlink.IPTuple) (*nl.RtAttr, error) {
	srcType, dstType, src, dst := uint16(nl.CTA_IP_V4_SRC), uint16(nl.CTA_IP_V4_DST), t.SrcIP.To4(), t.DstIP.To4()
	if fam == unix.AF_INET6 {
		srcType, dstType, src, dst = nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST, t.SrcIP.To16(), t.DstIP.To16()
	}
	if src == nil || dst == nil {
		return nil, fmt.Errorf("addresses %v -> %v are not of family %d", t.SrcIP, t.DstIP, fam)
	}
	orig := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	ip.AddRtAttr(int(srcType), src)
	ip.AddRtAttr(int(dstType), dst)
	proto := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{t.Protocol})
	proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(t.SrcPort))
	proto.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(t.DstPort))
	return orig, nil
}
