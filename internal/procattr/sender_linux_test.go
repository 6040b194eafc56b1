package procattr

import (
	"errors"
	"net/netip"
	"strconv"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestResolveSenderSharedPort: two programs' UDP sockets share a local port
// (SO_REUSEADDR). The lookup by tuple (Resolve) finds one of them, the last
// bound, whichever sent; ResolveSender attributes the socket whose cookie it
// is given (each program's, in turn), and with no cookie (the sender stash
// has no record, or an ambiguous one) attributes no program while both are
// bound, and the one left once the other closed its socket.
func TestResolveSenderSharedPort(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			port := freeUDPPort(t, ns)
			remote := netip.MustParseAddrPort("127.0.0.1:9")
			local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
			first := startClient(t, ns, "udp-sendto", remote, bindPortEnv+"="+strconv.Itoa(port))
			last := startClient(t, ns, "udp-sendto", remote, bindPortEnv+"="+strconv.Itoa(port))
			socks, err := r.diag.senders(local, remote)
			if err != nil {
				t.Fatal(err)
			}
			if len(socks) != 2 {
				t.Fatalf("senders(%v, %v) = %d sockets, want 2", local, remote, len(socks))
			}
			// The lookup by tuple names one program for both.
			byTuple, err := r.Resolve(engine.UDP, local, remote, -1)
			if err != nil {
				t.Fatal(err)
			}
			got := map[int32]bool{}
			for _, s := range socks {
				p, err := r.ResolveSender(engine.UDP, local, remote, -1, 0, s.Cookie)
				if err != nil {
					t.Fatalf("ResolveSender(cookie %d): %v", s.Cookie, err)
				}
				if p.Cookie != s.Cookie {
					t.Errorf("ResolveSender(cookie %d) gave socket cookie %d", s.Cookie, p.Cookie)
				}
				got[p.PID] = true
			}
			if !got[first.pid()] || !got[last.pid()] {
				t.Fatalf("ResolveSender by each socket's cookie named pids %v, want %d and %d (the lookup by tuple names %d for both)",
					got, first.pid(), last.pid(), byTuple.PID)
			}
			// A sender the stash cannot tell: nobody, not the last bound.
			if p, err := r.ResolveSender(engine.UDP, local, remote, -1, 0, 0); !errors.Is(err, ErrNoSocket) || p.PID != 0 {
				t.Fatalf("ResolveSender(no cookie) on a shared port = pid %d, %v; want pid 0 and ErrNoSocket", p.PID, err)
			}
			// A cookie no socket on the port has (its socket closed): nobody.
			if p, err := r.ResolveSender(engine.UDP, local, remote, -1, 0, 1<<62); !errors.Is(err, ErrNoSocket) || p.PID != 0 {
				t.Fatalf("ResolveSender(a gone socket's cookie) = pid %d, %v; want pid 0 and ErrNoSocket", p.PID, err)
			}
			// The packet's uid is checked against the sender's socket.
			if p, err := r.ResolveSender(engine.UDP, local, remote, 12345, 0, socks[0].Cookie); !errors.Is(err, ErrNoSocket) || p.PID != 0 {
				t.Fatalf("ResolveSender(uid 12345) = pid %d, %v; want pid 0 and ErrNoSocket", p.PID, err)
			}
			// One socket left: no cookie needed, as without the stash.
			last.closeSocket(t)
			p, err := r.ResolveSender(engine.UDP, local, remote, -1, 0, 0)
			wantProcess(t, p, err, first.pid(), m.wantMethod)
		})
	}
}
