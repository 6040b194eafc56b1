package dnsproxy

import (
	"net/netip"
	"testing"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
)

// realIdentify attributes queries to a proxy at the address it is given as the
// daemon does (procattr: the record of the query's sending socket, else the socket's
// eBPF record found through sock_diag, else /proc), or is nil (and logged) where that
// cannot run.
func realIdentify(b *testing.B) func(server netip.AddrPort) identifyFunc {
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
	return func(server netip.AddrPort) identifyFunc {
		resolve := func(client, server netip.AddrPort, id uint16) (procattr.Process, error) {
			return res.ResolveDev(engine.UDP, client, server, -1, 0)
		}
		if q, err := res.WatchDNSQueries(server, ""); err != nil {
			b.Logf("no record of each query's socket: %v", err)
		} else {
			b.Cleanup(func() {
				st := q.Stats()
				b.Logf("queries attributed by their record %d, checked through the socket %d; ambiguous %d, no record %d",
					st.Fast, st.Slow, st.Ambiguous, st.Missing)
				q.Close()
			})
			resolve = q.Resolve
		}
		return func(proto engine.Protocol, client, server netip.AddrPort, id uint16) engine.Request {
			req := engine.Request{UID: -1}
			var p procattr.Process
			var err error
			if proto == engine.UDP {
				p, err = resolve(client, server, id)
			} else {
				p, err = res.ResolveDev(proto, client, server, -1, 0)
			}
			if err != nil || p.PID == 0 {
				return req
			}
			req.PID, req.Exe, req.UID, req.User = p.PID, p.Exe, p.UID, p.User
			req.Identity, req.Container = p.Identity, p.Container
			return req
		}
	}
}
