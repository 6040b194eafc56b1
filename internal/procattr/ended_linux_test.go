package procattr

import (
	"errors"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestResolveEndedClosedTCP: a client that connected and closed its socket (as a DNS
// over TCP client does before latch reads the copy of its query) is still found by
// ResolveEnded through the eBPF record of the closed socket's cookie, while Resolve
// finds no socket; without the eBPF method it stays unknown.
func TestResolveEndedClosedTCP(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := listenIn(t, ns, "127.0.0.1:0")
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			c := startClient(t, ns, "tcp", remote)
			// The client connects as it starts, within a clock tick: only a process
			// already shown to own a socket is known by its record alone once it holds
			// none (see viaEBPF), as a program that resolved before is.
			p, err := r.Resolve(engine.TCP, c.Local, remote, -1)
			wantProcess(t, p, err, c.pid(), m.wantMethod)
			c.closeSocket(t)
			p, err = r.Resolve(engine.TCP, c.Local, remote, -1)
			wantUnknown(t, p, err, ErrNoSocket)
			p, err = r.ResolveEnded(engine.TCP, c.Local, remote, -1)
			if m.opts.DisableEBPF || len(r.Methods()) == 0 || r.Methods()[0] != MethodEBPF {
				if err == nil || p.PID != 0 {
					t.Errorf("without eBPF: %+v %v, want unknown", p, err)
				}
				return
			}
			wantProcess(t, p, err, c.pid(), MethodEBPF)
			if p.UID != 0 {
				t.Errorf("uid %d, want 0 (the record's)", p.UID)
			}
			// Another uid than the record's is refused.
			if _, err := r.ResolveEnded(engine.TCP, c.Local, remote, 4242); !errors.Is(err, ErrNoSocket) {
				t.Errorf("wrong uid: %v", err)
			}
		})
	}
}
