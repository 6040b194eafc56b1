package main

import (
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestRemoteOf: the remote column says when a name is another program's lookup and
// carries the encrypted DNS note, escaped like everything shown from outside.
func TestRemoteOf(t *testing.T) {
	for _, tc := range []struct {
		host, source, note, want string
	}{
		{"bank.test", engine.HostOwn, "", "bank.test (198.18.0.2):443"},
		{"bank.test", engine.HostShared, "", "bank.test (198.18.0.2):443 [name shared]"},
		{"", engine.HostNone, "", "198.18.0.2:443"},
		{"evil\x1b[2K.test", engine.HostShared, "", `evil\x1b[2K.test (198.18.0.2):443 [name shared]`},
		{"", engine.HostNone, "encrypted DNS: names after this are not visible (DNS over HTTPS, Test)",
			"198.18.0.2:443 [encrypted DNS: names after this are not visible (DNS over HTTPS, Test)]"},
	} {
		if got := remoteOf("198.18.0.2", 443, tc.host, tc.source, tc.note); got != tc.want {
			t.Errorf("remoteOf(%q, %q, %q) = %q, want %q", tc.host, tc.source, tc.note, got, tc.want)
		}
	}
}
