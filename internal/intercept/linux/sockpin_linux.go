package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/latchfw/latch/internal/engine"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// errSocketPin wraps install's error when the ruleset could not run the
// kernel fast path's socket pin (Config.FastSocketPin).
var errSocketPin = errors.New("the ruleset cannot pin allowed UDP and ICMP echo flows to their socket")

// noSocketPin says what a ruleset without the socket pin lets happen.
const noSocketPin = "an allowed UDP or ICMP echo flow passes from any socket while its conntrack entry lives (another program that binds the local port its socket freed sends on it unasked)"

// FastSocketPin reports whether the installed ruleset runs
// Config.FastSocketPin: nil if it does, else why not (none configured, not
// installed yet, or the firewall refused it).
func (b *Backend) FastSocketPin() error {
	if b.cfg.FastSocketPin == "" {
		return errors.New("no socket pin configured")
	}
	p := b.sockPinErr.Load()
	if p == nil {
		return errors.New("the ruleset is not installed yet")
	}
	return *p
}

// openPinMap opens the map of the socket pin program pinned at path (its
// only map: the pins, see latch_fast_pin in internal/fastpath).
func openPinMap(path string) (*ebpf.Map, error) {
	ids, err := pinnedProgramMaps(path, "socket pin", 1)
	if err != nil {
		return nil, err
	}
	m, err := ebpf.NewMapFromID(ids[0])
	if err != nil {
		return nil, fmt.Errorf("the socket pin program %s: open its map: %w", path, err)
	}
	if m.KeySize() != pinKeySize || m.ValueSize() != 8 {
		m.Close()
		return nil, fmt.Errorf("the socket pin program %s: its map has keys of %d bytes and values of %d, want %d and 8", path, m.KeySize(), m.ValueSize(), pinKeySize)
	}
	return m, nil
}

// pinnedProgramMaps returns the ids of the maps of the program pinned at
// path (what names it in errors), which must have want of them.
func pinnedProgramMaps(path, what string, want int) ([]ebpf.MapID, error) {
	prog, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		return nil, fmt.Errorf("open the %s program %s: %w", what, path, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("the %s program %s: %w", what, path, err)
	}
	ids, ok := info.MapIDs()
	if !ok || len(ids) != want {
		return nil, fmt.Errorf("the %s program %s: want %d map(s), have %d", what, path, want, len(ids))
	}
	return ids, nil
}

// pinKeySize is the size of struct fp_pin_key (internal/fastpath's C).
const pinKeySize = 40

// pinKey is struct fp_pin_key for a packet local sends to remote (ports in
// network order, IPv4 addresses in the first 4 bytes of 16).
func pinKey(proto uint8, local, remote netip.AddrPort) []byte {
	k := make([]byte, pinKeySize)
	l, r := local.Addr().Unmap(), remote.Addr().Unmap()
	k[0] = 6
	if l.Is4() {
		k[0] = 4
	}
	k[1] = proto
	binary.BigEndian.PutUint16(k[2:], local.Port())
	binary.BigEndian.PutUint16(k[4:], remote.Port())
	if l.Is4() {
		a, b := l.As4(), r.As4()
		copy(k[8:], a[:])
		copy(k[24:], b[:])
	} else {
		a, b := l.As16(), r.As16()
		copy(k[8:], a[:])
		copy(k[24:], b[:])
	}
	return k
}

// pinInbound records, before an allow verdict for req (an inbound UDP
// datagram), the socket that will receive it (cookie, from the Resolver's
// lookup) as the only one whose datagrams back to the peer the socket pin
// passes on the flow. Without it the pin's rule in LATCH-IN records a
// wildcard the first local socket to send on the reversed tuple claims:
// another program that shares the server's port (SO_REUSEADDR), or binds it
// once the server closed without answering, would claim it (review10). The
// rule does not replace a record already there.
func (b *Backend) pinInbound(req *engine.Request, cookie uint64) {
	m := b.pinMap.Load()
	if m == nil {
		return
	}
	k, ok := pinKeyOf(req)
	if !ok {
		return
	}
	v := make([]byte, 8)
	binary.NativeEndian.PutUint64(v, cookie)
	if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
		b.cfg.Logf("socket pin: record %v -> %v for socket cookie %d: %v", req.Local, req.Remote, cookie, err)
	}
}

// pinnedElsewhere reports whether the socket pin holds req's flow (an
// inbound UDP datagram's, tuple as read for it) for a socket other than
// cookie, the one that receives it (review26): that socket did not send on
// the flow, and what it gets is an inbound datagram to it.
func (b *Backend) pinnedElsewhere(req *engine.Request, cookie uint64) bool {
	m := b.pinMap.Load()
	if m == nil || cookie == 0 || req.Protocol != engine.UDP {
		return false
	}
	k, ok := pinKeyOf(req)
	if !ok {
		return false
	}
	v := make([]byte, 8)
	if err := m.Lookup(k, v); err != nil {
		return false
	}
	c := binary.NativeEndian.Uint64(v)
	return c != 0 && c != ^uint64(0) && c != cookie
}

// pinKeyOf is pinKey for req's flow (local sends to remote); false if its
// addresses are of two families, which the pin keys no flow by.
func pinKeyOf(req *engine.Request) ([]byte, bool) {
	if req.Local.Addr().Unmap().Is4() != req.Remote.Addr().Unmap().Is4() {
		return nil, false
	}
	return pinKey(uint8(req.Protocol), req.Local, req.Remote), true
}

// PinMoved is told (from the socket pin's receive check, see "The receive
// check" in internal/fastpath) that the kernel delivered a peer's packet of
// the pinned flow local <-> remote (protocol proto) to socket cookie, not to
// the socket the flow is pinned to, and that the check dropped it: a socket
// that joined the flow's local port after the flow was decided
// (SO_REUSEADDR, SO_REUSEPORT), took over a closed socket's port, or that a
// reuseport program steers the flow to. The flow was never decided for that
// socket's program. A UDP flow the peer opened (Config.Inbound) is decided
// again: its conntrack entry gets MarkRedecide, so that LATCH-IN holds the
// peer's next datagram, which is attributed to socket cookie (ResolveSender)
// and, if allowed, pinned to it (a flow the daemon's table forgot is found
// by its conntrack entry). Without Config.Inbound a UDP flow the peer opened
// loses its pin instead (what a peer sends is nobody's to decide then; a
// server restarted on its port would never get a peer that keeps sending):
// its next answer is held and decided for its socket. A flow this host
// opened stays its sender's (an answer the kernel gives another socket on
// the port is dropped), as do UDP-Lite and echo flows, which are not
// attributed.
func (b *Backend) PinMoved(proto uint8, local, remote netip.AddrPort, cookie uint64) {
	b.receiverMoves.Add(1)
	if proto != unix.IPPROTO_UDP || cookie == 0 {
		return
	}
	local, remote = netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if local.Addr().Is4() != remote.Addr().Is4() {
		return
	}
	k := newFlowKey(proto, remote, local)
	fam := netlink.InetFamily(unix.AF_INET)
	if local.Addr().Is6() {
		fam = unix.AF_INET6
	}
	t := netlink.IPTuple{Protocol: proto, SrcIP: remote.Addr().AsSlice(), DstIP: local.Addr().AsSlice(), SrcPort: remote.Port(), DstPort: local.Port()}
	if !b.cfg.Inbound {
		// Nothing decides what a peer sends first: a flow it opened
		// (pinned by this host's answer, decided as outbound) is not the
		// pinned socket's to receive alone (another program may bind any
		// port and receive any peer's new flow), and a program that took
		// over the port (a server restarted) would get none of a peer
		// that keeps sending for ever. Its pin goes: the check passes the
		// flow, and the pin in LATCH-OUT holds the next answer, from
		// whichever socket, for a decision. A flow this host opened stays
		// its sender's.
		if ci, err := getConntrack(fam, t); err == nil && ci.key == k {
			if m := b.pinMap.Load(); m != nil {
				if err := m.Delete(pinKey(proto, local, remote)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					b.cfg.Logf("socket pin: forget %v -> %v: %v", local, remote, err)
				}
			}
		}
		return
	}
	b.flows.mu.Lock()
	e, ok := b.flows.m[k]
	b.flows.mu.Unlock()
	if ok && e.req.Direction != engine.Inbound {
		return
	}
	// The conntrack entry, read also for a flow the table remembers
	// (review21: its entry was re-marked unread; one another flow took
	// since, a forged flow's MarkLoopbackForged, became MarkRedecide). A
	// forgotten flow (a full table, its TTL): the entry says whether the
	// peer opened the flow and latch allowed it. A remembered one being
	// decided again (MarkRedecide) is still the flow.
	ci, err := getConntrack(fam, t)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			b.cfg.Logf("socket pin: read the conntrack entry of %v -> %v: %v", remote, local, err)
		}
		return
	}
	if m := ci.mark & MarkMask; ci.key != k || m != MarkAllow && (!ok || m != MarkRedecide) {
		return
	}
	b.receiversMu.Lock()
	if b.receivers == nil {
		b.receivers = make(map[flowKey]uint64)
	}
	if len(b.receivers) >= maxReceivers {
		// Flows whose peer never spoke again: one forgotten is decided
		// for the socket the lookup finds, as any inbound datagram.
		for k := range b.receivers {
			delete(b.receivers, k)
			break
		}
	}
	b.receivers[k] = cookie
	b.receiversMu.Unlock()
	// Only the bit MarkRedecide has and MarkAllow has not is set, none
	// cleared (ctnetlink's update has no compare): whatever the entry
	// became since the read, MarkAllow becomes MarkRedecide, MarkRedecide
	// and MarkLoopbackForged stay, and 0 (a new entry on the tuple)
	// becomes 0x20000000, which no rule passes a flow by that 0 does not.
	const redecideBit = MarkRedecide &^ MarkAllow
	if err := setConntrackMark(fam, t, redecideBit, redecideBit); err != nil && !errors.Is(err, unix.ENOENT) {
		b.cfg.Logf("socket pin: decide %v -> %v again for the socket it reached (cookie %d): %v", remote, local, cookie, err)
	}
}

// takeReceiver returns (and forgets) the socket PinMoved recorded for req's
// flow (an inbound UDP datagram), 0 if none.
func (b *Backend) takeReceiver(req *engine.Request) uint64 {
	if req.Direction != engine.Inbound || req.Protocol != engine.UDP {
		return 0
	}
	k := keyOf(req)
	b.receiversMu.Lock()
	defer b.receiversMu.Unlock()
	c := b.receivers[k]
	delete(b.receivers, k)
	return c
}

// maxReceivers bounds Backend.receivers (the receive check reports a flow
// at most once a second).
const maxReceivers = 4096

// ReceiverMoves counts the reports of the socket pin's receive check
// (PinMoved calls).
func (b *Backend) ReceiverMoves() uint64 { return b.receiverMoves.Load() }

// getConntrack reads the conntrack entry one of whose tuples is t (TCP or
// UDP).
func getConntrack(fam netlink.InetFamily, t netlink.IPTuple) (ctInfo, error) {
	orig, err := ctOrigTuple(fam, t)
	if err != nil {
		return ctInfo{}, err
	}
	// With NLM_F_ACK: the entry comes flagged NLM_F_MULTI, and the ACK
	// ends the reply.
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_GET, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(fam), Version: nl.NFNETLINK_V0})
	req.AddData(orig)
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return ctInfo{}, err
	}
	if len(msgs) != 1 {
		return ctInfo{}, fmt.Errorf("conntrack get: %d messages, want 1", len(msgs))
	}
	return parseCtMsg(msgs[0])
}
