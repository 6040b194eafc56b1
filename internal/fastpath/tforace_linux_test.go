package fastpath

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestDeferredConnectRuleChange: a TCP_FASTOPEN_CONNECT socket is decided by the
// connect hook at connect(2), but its SYN leaves only at the first write. If the
// rules change in between (a deny rule added: RulesChanged bumps the generation,
// Redecide finds no conntrack entry since no SYN went out yet), the SYN must not
// leave with MarkFastAllow, which latch's ruleset accepts without a question
// ("a SYN the kernel fast path allowed ... on a flow nothing decided yet"), and
// no decision of the old rule may be recorded for it.
func TestDeferredConnectRuleChange(t *testing.T) {
	testDeferredConnectRuleChange(t, "tfo")
}

// TestDeferredConnectRuleChangeNoStorage: the same, for a socket whose option
// memory its program used up beforehand (TCP MD5 keys), so that the connect hook
// cannot give it its storage and the decision cannot wait there.
func TestDeferredConnectRuleChangeNoStorage(t *testing.T) {
	testDeferredConnectRuleChange(t, "tfomd5")
}

func testDeferredConnectRuleChange(t *testing.T, how string) {
	cg, cgfd := testCgroup(t)
	ns := enterTestNetns(t)
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_fastopen", []byte("5"), 0); err != nil {
		t.Fatalf("net.ipv4.tcp_fastopen in %s: %v", ns, err)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skipf("needs nft: %v", err)
	}
	// Counts the SYNs that leave with the fast path's allow mark.
	script := "add table inet fptest\n" +
		"add chain inet fptest out { type filter hook output priority 0; policy accept; }\n" +
		"add rule inet fptest out tcp flags & (fin|syn|rst|ack) == syn meta mark & 0x70000000 == 0x30000000 counter\n"
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	fastSYNs := func() int {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "fptest", "out").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v: %s", err, out)
		}
		m := regexp.MustCompile(`counter packets (\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no counter in %s", out)
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}

	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal {
		t.Fatalf("no sock_ops program: %+v", s)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	server := listen(t, "tcp4", "127.0.0.1:0")
	if ok, err := fp.Remember(fp.Ticket(), req(c, server), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember %v: %v %v", server, ok, err)
	}
	decisions := runDecisions(t, fp)
	r := c.say(t, how+" "+server.String())
	t.Logf("deferred connect: %s", r)
	if !strings.HasPrefix(r, "ok ") {
		t.Fatalf("deferred connect to %v: %q", server, r)
	}
	// A hit; the mark waits for the SYN (TCP_CONNECT_CB).
	if s := fp.Stats(); how == "tfo" && (r != "ok 0x0" || s.HitsAllow != 1) {
		t.Fatalf("deferred connect to %v: %q, %d hits; want a hit, no mark before the SYN", server, r, s.HitsAllow)
	}
	// The rules change: rule 1 is gone, a deny rule takes its place.
	if err := fp.RulesChanged([]engine.Rule{{ID: 2, Action: engine.Deny}}); err != nil {
		t.Fatal(err)
	}
	if r := c.say(t, "send"); !strings.HasPrefix(r, "ok ") {
		t.Fatalf("first write of the deferred connect: %q", r)
	}
	if n := fastSYNs(); n != 0 {
		t.Errorf("%d SYN(s) left with MarkFastAllow after the rule change that removed the allow (latch's ruleset passes them unasked)", n)
	}
	select {
	case d := <-decisions:
		t.Errorf("decision recorded under the old rules for a SYN sent after the change: %+v", d)
	case <-time.After(300 * time.Millisecond):
	}
}
