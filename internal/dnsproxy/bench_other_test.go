//go:build !linux

package dnsproxy

import "testing"

// realIdentify: the daemon's attribution runs on Linux only.
func realIdentify(b *testing.B) identifyFunc { return nil }
