package fastpath

import (
	"math/bits"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// TestHitRewrittenByLaterConnectHook (review1): the connect hook decides the
// address in the connect's context (user_ip4, user_port), but cgroup
// connect4 programs run one after the other, the hooks' cgroup's first and
// then its ancestors' (and at one cgroup in the order attached), and any of
// them may rewrite the address: a service mesh's or Kubernetes' socket load
// balancing (Cilium, Calico eBPF) turns a service address into a backend's
// this way. Here a program of the hooks' cgroup's parent sends a connect to
// an allowed address (no listener) to another port, which no verdict covers:
// the hook's hit rides the SYN there, which leaves with MarkFastAllow (the
// socket has MarkFastFlow once established), and the history records the
// allowed address. The queue would have decided the packet's destination.
// Fails on the current code: send_pending could compare the socket's remote
// address and port at TCP_CONNECT_CB (ctx->remote_ip4/6, remote_port) with
// the decision's key and give no mark (a miss) when they differ.
func TestHitRewrittenByLaterConnectHook(t *testing.T) {
	ownNetns(t)
	parent, _ := testCgroup(t)
	cg := filepath.Join(parent, "hooks")
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 100 && os.Remove(cg) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	cgfd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgfd)
	fp := openTest(t, cg, Config{})
	if s := fp.Stats(); !s.TCPLocal {
		t.Skipf("no sock_ops program: %+v", s)
	}
	if err := fp.RulesChanged([]engine.Rule{{ID: 1, Action: engine.Allow}}); err != nil {
		t.Fatal(err)
	}
	backend := listen(t, "tcp4", "127.0.0.1:0")
	// The allowed address: a port nothing listens on (taken, then freed).
	tmp := listen(t, "tcp4", "127.0.0.1:0")
	allowed := netip.AddrPortFrom(tmp.Addr(), tmp.Port()+1)
	if allowed.Port() == backend.Port() {
		allowed = netip.AddrPortFrom(tmp.Addr(), tmp.Port()+2)
	}
	exe, _ := os.Executable()
	c := startClient(t, exe, cgfd)
	if ok, err := fp.Remember(fp.Ticket(), req(c, allowed), ruleVerdict(engine.Allow, 1)); !ok || err != nil {
		t.Fatalf("Remember allow: %v %v", ok, err)
	}
	// Before the rewrite: a hit, refused (nothing listens there).
	if got := c.connect(t, allowed); got != "err 111 0x0" {
		t.Fatalf("a hit to %v with nothing listening: %q", allowed, got)
	}
	// The other program: user_port allowed -> backend (network order in the
	// low 16 bits of the u32).
	const userPort = 24 // offsetof(struct bpf_sock_addr, user_port)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.CGroupSockAddr,
		AttachType: ebpf.AttachCGroupInet4Connect,
		License:    "MIT",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, userPort, asm.Word),
			asm.JNE.Imm(asm.R2, int32(bits.ReverseBytes16(allowed.Port())), "out"),
			asm.Mov.Imm(asm.R2, int32(bits.ReverseBytes16(backend.Port()))),
			asm.StoreMem(asm.R1, userPort, asm.R2, asm.Word),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Skipf("load the rewriting program: %v", err)
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: parent, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		t.Skipf("attach the rewriting program to %s: %v", parent, err)
	}
	defer l.Close()
	got := c.connect(t, allowed)
	if got == "err 111 0x0" {
		t.Fatalf("the rewriting program did not run after the hook (connect %q)", got)
	}
	if got != "ok 0x0" {
		t.Errorf("a connect decided for %v that the next program sent to %v (no verdict): %q; want it connected without a fast mark (0x60000000: its SYN left with MarkFastAllow)", allowed, backend, got)
	}
}
