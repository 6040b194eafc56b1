package procattr

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestExeCheckOffNotVerified (review 32): when the kernel refuses the hooks'
// program that reads the executable (here an injected load failure; a
// kernel whose BTF lacks file.f_flags or mount.mnt_id is alike), the hooks
// still load, without that read. The records then cannot tell the program
// that connected from the one the process runs when the queue looks: a
// forger that connects and then executes the allowed program was verified
// as it (TestIdentityOfConnectionMadeBeforeExec with the check on says
// unverified). Now no connection the hooks attribute is verified, and the
// Resolver says why the check is off (ExeCheck, which `latch status` shows).
func TestExeCheckOffNotVerified(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	forger := otherExe(t)

	on := newResolverIn(t, ns, Options{DisableProcfs: true})
	if why := on.ExeCheck(); why != "" || !on.hooks.knowsExe {
		t.Fatalf("the executable check is off on this kernel (CI needs it): %s", why)
	}

	exeLoadErr = errors.New("injected: verifier refused the executable's read")
	r := newResolverIn(t, ns, Options{DisableProcfs: true})
	exeLoadErr = nil
	if !r.hooks.identifies || r.hooks.knowsExe {
		t.Fatalf("with the executable's read refused: hooks identify %v, read the executable %v; want true, false", r.hooks.identifies, r.hooks.knowsExe)
	}
	why := r.ExeCheck()
	t.Logf("ExeCheck: %s", why)
	for _, want := range []string{"injected: verifier refused the executable's read", "no connection the eBPF hooks attribute is verified"} {
		if !strings.Contains(why, want) {
			t.Errorf("ExeCheck() = %q; want it to say %q", why, want)
		}
	}

	// The forger connects under the allowed program's path (a bind mount of
	// its own file), then executes the allowed program, keeping the socket.
	c := startClientVia(t, ns, inMountNS(fmt.Sprintf("mount --bind %s %s", forger, clientExe)), "tcp", remote)
	fmt.Fprintln(c.stdin, "umount-exec")
	if line := c.readLine(t); line != "HOLDING" {
		t.Fatalf("client after exec: %q", line)
	}
	p := resolveIdentity(t, r, c, remote)
	if p.Method != MethodEBPF {
		t.Fatalf("attributed by %s; want %s", p.Method, MethodEBPF)
	}
	wantIdentity(t, p, clientExe, engine.IdentityUnverified, "do not record the executable")
	// The Resolver with the check tells it from the record.
	wantIdentity(t, resolveIdentity(t, on, c, remote), clientExe, engine.IdentityUnverified, "after it made this connection")

	// A connection the real program makes is not verified either without the
	// check (nothing tells it from the forger's), twice (no cached identity
	// verifies it on the second look); with the check it is.
	c2 := startClient(t, ns, "tcp", remote)
	for range 2 {
		wantIdentity(t, resolveIdentity(t, r, c2, remote), clientExe, engine.IdentityUnverified, "do not record the executable")
	}
	wantIdentity(t, resolveIdentity(t, on, c2, remote), clientExe, engine.IdentityVerified, "")
}

// TestExeCheckStatusWithoutHooks: without the eBPF hooks the Resolver says
// the executable check is off and why (connections checked in /proc alone).
func TestExeCheckStatusWithoutHooks(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{DisableEBPF: true})
	why := r.ExeCheck()
	for _, want := range []string{"eBPF hooks are off", "disabled by options", "/proc alone"} {
		if !strings.Contains(why, want) {
			t.Errorf("ExeCheck() without hooks = %q; want it to say %q", why, want)
		}
	}
}
