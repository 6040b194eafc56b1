package dnsproxy

import (
	"net/netip"
	"testing"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
)

// realIdentify attributes queries as the daemon does (procattr: the eBPF record, else
// sock_diag and /proc), or is nil (and logged) where that cannot run.
func realIdentify(b *testing.B) identifyFunc {
	res, err := procattr.NewResolver(procattr.Options{})
	if err != nil {
		b.Logf("no proxy+attribution arm: %v", err)
		return nil
	}
	b.Cleanup(func() {
		st := res.Stats()
		b.Logf("attributed by the eBPF record %d, by /proc %d; no socket %d, no process %d", st.EBPF, st.Procfs, st.NoSocket, st.NoProcess)
		res.Close()
	})
	b.Logf("attribution methods: %v", res.Methods())
	return func(proto engine.Protocol, client, server netip.AddrPort) engine.Request {
		req := engine.Request{UID: -1}
		p, err := res.ResolveDev(proto, client, server, -1, 0)
		if err != nil || p.PID == 0 {
			return req
		}
		req.PID, req.Exe, req.UID, req.User = p.PID, p.Exe, p.UID, p.User
		req.Identity, req.Container = p.Identity, p.Container
		return req
	}
}
