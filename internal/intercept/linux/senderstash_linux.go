package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
)

// errSenderStash wraps install's error when the ruleset could not run the
// kernel fast path's sender stash (Config.FastSenderStash).
var errSenderStash = errors.New("the ruleset cannot record the socket of each queued UDP datagram")

// noSenderStash says what a ruleset without the sender stash lets happen.
const noSenderStash = "a UDP datagram from a port two sockets share is attributed to the socket a lookup of its tuple finds (the last bound), which may be another program's"

// SenderResolver is what a Resolver also does when the ruleset runs the
// sender stash (Config.FastSenderStash); *procattr.Resolver implements it.
type SenderResolver interface {
	// ResolveSender is ResolveDev for a UDP datagram whose sending socket
	// the stash recorded: cookie is that socket's cookie, or 0 if the stash
	// has none for the datagram or more than one socket sent its key. With
	// a cookie it attributes that socket (or nothing, if it is gone); with
	// 0 it attributes nothing where more than one socket is bound to the
	// datagram's local port.
	ResolveSender(proto engine.Protocol, local, remote netip.AddrPort, uid int32, ifindex int, cookie uint64) (procattr.Process, error)
}

// FastSenderStash reports whether the installed ruleset runs
// Config.FastSenderStash and the daemon reads its map: nil if so, else why
// not.
func (b *Backend) FastSenderStash() error {
	if b.cfg.FastSenderStash == "" {
		return errors.New("no sender stash configured")
	}
	p := b.stashErr.Load()
	if p == nil {
		return errors.New("the ruleset is not installed yet")
	}
	return *p
}

// stashKeySize is the size of struct fp_stash_key (internal/fastpath's C),
// and stashData the most payload bytes it keeps.
const (
	stashKeySize = 76
	stashData    = 32
)

// stashMaps are the sender stash's maps (latch_send_stash in
// internal/fastpath): sent, each queued datagram's sender by its key; ports,
// the one socket that sent through the stash from each local port, or
// stashPortShared.
type stashMaps struct {
	sent, ports *ebpf.Map
}

// stashPortShared in the stash's ports map: more than one socket sent
// through the stash from that local port (STASH_PORT_SHARED).
const stashPortShared = ^uint64(0)

// Close closes both maps.
func (s *stashMaps) Close() {
	s.sent.Close()
	s.ports.Close()
}

// openStashMap opens the maps of the sender stash program pinned at path
// (sender_stash and stash_ports, see latch_send_stash in internal/fastpath).
func openStashMap(path string) (*stashMaps, error) {
	ids, err := pinnedProgramMaps(path, "sender stash", 2)
	if err != nil {
		return nil, err
	}
	var s stashMaps
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			s.closeSome()
			return nil, fmt.Errorf("the sender stash program %s: open its map %d: %w", path, id, err)
		}
		mi, err := m.Info()
		if err != nil {
			m.Close()
			s.closeSome()
			return nil, fmt.Errorf("the sender stash program %s: its map %d: %w", path, id, err)
		}
		switch {
		case mi.Name == "sender_stash" && m.KeySize() == stashKeySize && m.ValueSize() == 8 && s.sent == nil:
			s.sent = m
		case mi.Name == "stash_ports" && m.KeySize() == 4 && m.ValueSize() == 8 && s.ports == nil:
			s.ports = m
		default:
			m.Close()
			s.closeSome()
			return nil, fmt.Errorf("the sender stash program %s: its map %d is %q with keys of %d bytes and values of %d, want sender_stash (%d and 8) and stash_ports (4 and 8)",
				path, id, mi.Name, m.KeySize(), m.ValueSize(), stashKeySize)
		}
	}
	return &s, nil
}

// closeSome closes the maps opened so far.
func (s *stashMaps) closeSome() {
	for _, m := range []*ebpf.Map{s.sent, s.ports} {
		if m != nil {
			m.Close()
		}
	}
}

// stashKey returns struct fp_stash_key for the IP packet pkt (as the queue
// hands it, possibly cut short after its first bytes) and true, or false if
// pkt is not a whole UDP datagram right after its IP header (another
// protocol, an IPv4 fragment, IPv6 extension headers) or is too short to
// tell: the key latch_send_stash computes from the same bytes. The payload
// bytes counted are what the IP header's length says follow the UDP header
// (up to stashData), not what the copy holds, so a GSO packet, whose UDP
// length and checksum the kernel finishes later, has the same key on both
// sides.
func stashKey(pkt []byte) ([]byte, bool) {
	if len(pkt) < 1 {
		return nil, false
	}
	k := make([]byte, stashKeySize)
	var l4, tot int
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 || pkt[9] != 17 || pkt[6]&0x3f != 0 || pkt[7] != 0 {
			return nil, false
		}
		l4 = int(pkt[0]&0xf) * 4
		if l4 < 20 {
			return nil, false
		}
		tot = int(binary.BigEndian.Uint16(pkt[2:]))
		k[0] = 4
		copy(k[6:8], pkt[4:6])
		copy(k[8:12], pkt[12:16])
		copy(k[24:28], pkt[16:20])
	case 6:
		if len(pkt) < 40 || pkt[6] != 17 {
			return nil, false
		}
		l4 = 40
		tot = 40 + int(binary.BigEndian.Uint16(pkt[4:]))
		k[0] = 6
		copy(k[8:24], pkt[8:24])
		copy(k[24:40], pkt[24:40])
	default:
		return nil, false
	}
	k[1] = 17
	if len(pkt) < l4+4 {
		return nil, false
	}
	copy(k[2:6], pkt[l4:l4+4])
	off := l4 + 8
	if tot < off {
		return nil, false
	}
	n := min(tot-off, stashData)
	if len(pkt) < off+n {
		return nil, false
	}
	binary.NativeEndian.PutUint32(k[40:], uint32(n))
	copy(k[44:44+n], pkt[off:off+n])
	return k, true
}

// takeSender returns the cookie of the socket the sender stash recorded for
// the queued UDP datagram pkt, and deletes the record (a later datagram with
// the same key is another's to record). Without a record of one socket (none:
// an earlier identical datagram took it, or the LRU forgot it; or an
// ambiguous one) it returns the one socket that ever sent through the stash
// from the datagram's local port, and none = true if more than one did (or
// the stash has no sender of the port): then no socket is to be credited,
// not even the only one bound to the port now (the sender may have shared it
// and closed its socket since, review12). A datagram with no key (UDP not
// right after its IP header: an IPv6 routing header, which any program may
// set where the ruleset lacks xt_ipv6header to drop it; an IPv4 fragment)
// is none too: the stash kept no record of it and did not mark its port
// shared, so the port's one sender or the one socket bound now may not be
// the one that sent it (review13). byPort: cookie is the port's one sender,
// not the datagram's own record; attribute credits it only if it is also the
// one socket that could have sent the datagram now (a datagram that reached
// the queue without passing the stash, by a way not known yet, is then
// credited to no program while its sender's socket is open).
func (b *Backend) takeSender(s *stashMaps, pkt []byte) (cookie uint64, byPort, none bool) {
	k, ok := stashKey(pkt)
	if !ok {
		return 0, false, true
	}
	v := make([]byte, 8)
	if err := s.sent.LookupAndDelete(k, v); err == nil {
		if c := binary.NativeEndian.Uint64(v); c != 0 {
			return c, false, false
		}
	}
	port := uint32(binary.BigEndian.Uint16(k[2:4]))
	if err := s.ports.Lookup(port, v); err != nil {
		return 0, false, true
	}
	if c := binary.NativeEndian.Uint64(v); c != 0 && c != stashPortShared {
		return c, true, false
	}
	return 0, false, true
}
