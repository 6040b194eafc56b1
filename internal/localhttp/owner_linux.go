package localhttp

import (
	"net/netip"

	"github.com/latchfw/latch/internal/procattr"
)

func localPeerUID(local, remote netip.AddrPort) (uint32, error) {
	return procattr.TCPPeerUID(local, remote)
}
