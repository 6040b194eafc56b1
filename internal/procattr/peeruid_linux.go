package procattr

import (
	"net/netip"
	"sync"

	"github.com/latchfw/latch/internal/engine"
)

// peerDiag is TCPPeerUID's netlink socket, opened at the first lookup (again after
// a failed open: descriptors may have run short).
var peerDiag struct {
	mu sync.Mutex
	d  *sockDiag
}

// TCPPeerUID returns the uid owning the socket at the other end of a TCP connection
// this host accepted from itself (e.g. over loopback): local is the accepting end's
// address, remote the peer's. It fails (ErrNoSocket) for a peer on another host.
func TCPPeerUID(local, remote netip.AddrPort) (uint32, error) {
	peerDiag.mu.Lock()
	d := peerDiag.d
	if d == nil {
		var err error
		if d, err = newSockDiag(1); err != nil {
			peerDiag.mu.Unlock()
			return 0, err
		}
		peerDiag.d = d
	}
	peerDiag.mu.Unlock()
	// The peer's socket has the addresses the other way round.
	si, err := d.lookup(engine.TCP, remote, local, 0, false)
	if err != nil {
		return 0, err
	}
	return si.UID, nil
}
