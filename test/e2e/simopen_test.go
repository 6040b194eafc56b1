//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// TestFastPathHeldSimultaneousOpen: without --inbound, a connect latch holds
// (no rule: asked, then denied after --prompt-timeout) must not be connected by
// the host it goes to, which sends its own SYNs to the socket's local port (a
// simultaneous open: Linux's SYN_SENT answers a SYN with a SYN-ACK, which the
// ruleset passes, and the peer's ACK would complete a connection no verdict
// allowed). The daemon's kernel fast path drops the peer's SYN to the socket in
// SYN_SENT and counts it (simultaneous_open_dropped, and the line `fast path
// simultaneous open` of latch status).
func TestFastPathHeldSimultaneousOpen(t *testing.T) {
	n := NewNet(t)
	servePush(t, n, 8331)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	var st struct {
		FastPath struct {
			Guard    bool   `json:"simultaneous_open_guard"`
			GuardWhy string `json:"simultaneous_open_guard_why"`
			Dropped  uint64 `json:"simultaneous_open_dropped"`
		} `json:"fast_path"`
	}
	status := func() {
		t.Helper()
		if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
	}
	status()
	if !st.FastPath.Guard {
		t.Fatalf("no simultaneous open guard: %s", st.FastPath.GuardWhy)
	}
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8331", "--action", "allow")
	tk := startTalk(t, n, cgfd)
	c := tk.open(t, n, 8331)
	// The peer connects from its port 8333 to the socket's port 8332 every
	// 200 ms (a SYN each time); the socket, bound to 8332, connects to the
	// peer's 8333, which no rule allows: held, then denied.
	peer := n.Start(n.Server, helperBin, "simopen-peer", fmt.Sprintf("%s:8333", n.ServerIP), fmt.Sprintf("%s:8332", n.ClientIP))
	r := tk.say(t, fmt.Sprintf("simopen %d 8332 %s:8333", c, n.ServerIP))
	if r.Outcome == "connected" {
		t.Errorf("a held connect was connected by its peer's simultaneous open: %+v (peer: %s)", r, peer.Output())
	}
	status()
	if st.FastPath.Dropped == 0 {
		t.Errorf("simultaneous_open_dropped 0: the peer's SYN never reached the held socket (talk: %+v, peer: %s)", r, peer.Output())
	}
	if text := d.MustCLI(t, "status"); !strings.Contains(text, "fast path simultaneous open") || !regexp.MustCompile(`fast path simultaneous open: +on: .*\([1-9]\d* dropped;`).MatchString(text) {
		t.Errorf("latch status does not show the simultaneous open guard:\n%s", text)
	}
}
