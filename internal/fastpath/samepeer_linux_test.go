package fastpath

import (
	"net/netip"
	"os"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestHitToAddressTheKernelReplaced (review2): a connect to 0.0.0.0 goes to
// 127.0.0.1 (the route lookup replaces an unspecified destination by the
// socket's source, else loopback), so the SYN's destination is not the
// address the connect hook decided (user_ip4/user_ip6). same_peer, at
// TCP_CONNECT_CB, sees the replaced one: for an AF_INET socket in remote_ip4,
// and for an AF_INET6 socket connected to ::ffff:0.0.0.0 in remote_ip6 too
// (tcp_v4_connect's sk_daddr_set writes sk_v6_daddr as well, as the mapped
// 127.0.0.1). Both connects are hits and leave without a fast mark (the queue
// decides 127.0.0.1). On the program before e414b9d (no same_peer) both SYNs
// leave with MarkFastAllow (the sockets end with MarkFastFlow, 0x60000000),
// and the history records 0.0.0.0. Reachable only with a verdict stored for
// 0.0.0.0 (the queue never decides a packet to it: Remember is called here
// directly): a check that same_peer reads the destination the SYN goes to, on
// both socket families, not a hole the daemon opens.
func TestHitToAddressTheKernelReplaced(t *testing.T) {
	ownNetns(t)
	cg, cgfd := testCgroup(t)
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal {
		t.Skipf("no sock_ops program: %+v", s)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	server := listen(t, "tcp4", "127.0.0.1:0")
	any4 := netip.AddrPortFrom(netip.IPv4Unspecified(), server.Port())
	mapped := netip.AddrPortFrom(netip.AddrFrom16(any4.Addr().As16()), server.Port())
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	if ok, err := fp.Remember(fp.Ticket(), req(c, any4), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember allow %v: %v %v", any4, ok, err)
	}
	hits := fp.Stats().HitsAllow
	if got := c.connect(t, any4); got != "ok 0x0" {
		t.Errorf("AF_INET connect to %v (the SYN goes to %v): %q, want connected without a fast mark (0x60000000: its SYN left with MarkFastAllow)", any4, server, got)
	}
	if fp.Stats().HitsAllow != hits+1 {
		t.Fatalf("the AF_INET connect to %v was no hit (%+v): the test shows nothing", any4, fp.Stats())
	}
	if got := c.connect(t, mapped); got != "ok 0x0" {
		t.Errorf("AF_INET6 connect to %v (the SYN goes to %v): %q, want connected without a fast mark (0x60000000: its SYN left with MarkFastAllow)", mapped, server, got)
	}
	if fp.Stats().HitsAllow != hits+2 {
		t.Fatalf("the AF_INET6 connect to %v was no hit (%+v): the test shows nothing", mapped, fp.Stats())
	}
}
