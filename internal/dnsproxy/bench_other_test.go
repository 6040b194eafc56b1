//go:build !linux

package dnsproxy

import (
	"net/netip"
	"testing"
)

// realIdentify: the daemon's attribution runs on Linux only.
func realIdentify(b *testing.B) func(server netip.AddrPort) identifyFunc { return nil }
