package procattr

import (
	"net/netip"
	"sync"

	"github.com/latchfw/latch/internal/engine"
)

var peerDiag struct {
	once sync.Once
	d    *sockDiag
	err  error
}

// TCPPeerUID returns the uid owning the socket at the other end of a TCP connection
// this host accepted from itself (e.g. over loopback): local is the accepting end's
// address, remote the peer's. It fails (ErrNoSocket) for a peer on another host.
func TCPPeerUID(local, remote netip.AddrPort) (uint32, error) {
	peerDiag.once.Do(func() { peerDiag.d, peerDiag.err = newSockDiag(1) })
	if peerDiag.err != nil {
		return 0, peerDiag.err
	}
	// The peer's socket has the addresses the other way round.
	si, err := peerDiag.d.lookup(engine.TCP, remote, local, 0, false)
	if err != nil {
		return 0, err
	}
	return si.UID, nil
}
