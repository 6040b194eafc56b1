package linux

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFastTCPWithoutU32 (review4): 7f06bbf's reset of a fast socket's IPv4
// packets with options is an xt_u32 match; on a kernel without xt_u32
// (CONFIG_NETFILTER_XT_MATCH_U32 off) iptables-restore refuses the ruleset,
// and Start's fallbacks (without the lease, without notrack, without the UDP
// match) all keep it: the daemon does not start at all, so nothing is
// filtered, where before 7f06bbf it ran. The safe fallback exists already for
// the fast path's other optional matches: install without fastTCP (no rule
// passes a packet by a fast mark, so no reset is needed; the queue decides
// every SYN) and say why in the status. The missing module is simulated by an
// iptables-nft-restore in front of the real one that fails as the real one
// does when a ruleset has "-m u32" ("Couldn't load match `u32'"). Fails on the
// current code (the daemon exits: "linux backend: ... u32").
func TestFastTCPWithoutU32(t *testing.T) {
	needFirewall(t, FirewallIptablesNft)
	real := "/usr/sbin/iptables-nft-restore"
	if _, err := os.Stat(real); err != nil {
		t.Skipf("needs %s: %v", real, err)
	}
	dir := t.TempDir()
	script := "#!/bin/sh\nin=$(cat)\ncase \"$in\" in *'-m u32'*) echo \"iptables-nft-restore: Couldn't load match \\`u32':No such file or directory\" >&2; exit 2;; esac\nprintf '%s\\n' \"$in\" | exec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "iptables-nft-restore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	tp := newTopo(t)
	// Control: without fast TCP the ruleset has no u32 match and the
	// wrapper passes it to the real iptables-nft-restore.
	c := spawnDaemon(t, tp, "*=deny", "LATCH_TEST_FIREWALL="+FirewallIptablesNft, "PATH="+dir+":"+os.Getenv("PATH"))
	if _, ok := c.waitLine("ready", 20*time.Second); !ok {
		t.Fatalf("without fast TCP, through the wrapper, the daemon did not start: %s; stderr:\n%s", c.progress(), c.errors())
	}
	c.stop()
	d := spawnDaemon(t, tp, "*=deny", "LATCH_TEST_FIREWALL="+FirewallIptablesNft, "LATCH_TEST_FAST_TCP=1", "PATH="+dir+":"+os.Getenv("PATH"))
	defer d.stop()
	if _, ok := d.waitLine("ready", 20*time.Second); !ok {
		t.Fatalf("with fast TCP on a kernel without xt_u32 the daemon did not start (want: fast TCP off, the queue deciding every SYN): %s; stderr:\n%s", d.progress(), d.errors())
	}
	// It filters, with fast TCP off: a SYN from a socket marked
	// MarkFastAllow (which the fast TCP rules would pass) is held and
	// denied, like any.
	srv := listenTCP(t, tp, 9001)
	if err := dialMarked(tp, "9001", MarkFastAllow); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a socket marked MarkFastAllow without the fast TCP rules: err = %v, want ECONNREFUSED (held, denied)", err)
	}
	if l, ok := d.waitLine("held ", 3*time.Second); !ok || !strings.Contains(l, ":9001") {
		t.Errorf("the SYN marked MarkFastAllow was not held (got %q)", l)
	}
	if n := srv.accepted.Load(); n != 0 {
		t.Errorf("server accepted %d connections, want 0", n)
	}
	// And says why.
	if e := d.errors(); !strings.Contains(e, "xt_u32") || !strings.Contains(e, "every TCP connect goes through the queue") {
		t.Errorf("the daemon's log does not say why fast TCP is off:\n%s", e)
	}
}
