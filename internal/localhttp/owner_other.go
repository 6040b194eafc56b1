//go:build !linux

package localhttp

import (
	"errors"
	"net/netip"
)

func localPeerUID(local, remote netip.AddrPort) (uint32, error) {
	return 0, errors.New("the owner of a local socket is known on Linux only")
}

func ownerUID(uid uint32) uint64 { return uint64(uid) }
