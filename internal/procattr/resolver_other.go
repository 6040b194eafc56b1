//go:build !linux

package procattr

import (
	"fmt"
	"net/netip"
	"runtime"

	"github.com/latchfw/latch/internal/engine"
)

// Resolver attributes connections to processes. On this platform it cannot: the
// Windows driver reports the process itself, with each connection.
type Resolver struct{}

// NewResolver returns an error that wraps ErrUnsupported.
func NewResolver(opts Options) (*Resolver, error) {
	return nil, fmt.Errorf("procattr on %s: %w", runtime.GOOS, ErrUnsupported)
}

// Resolve always returns an unknown Process and an error that wraps ErrUnsupported.
func (r *Resolver) Resolve(proto engine.Protocol, local, remote netip.AddrPort, uid int32) (Process, error) {
	return unknown(), fmt.Errorf("procattr on %s: %w", runtime.GOOS, ErrUnsupported)
}

// ResolveDev always returns an unknown Process and an error that wraps
// ErrUnsupported.
func (r *Resolver) ResolveDev(proto engine.Protocol, local, remote netip.AddrPort, uid int32, ifindex int) (Process, error) {
	return r.Resolve(proto, local, remote, uid)
}

// ResolveInbound always returns an unknown Process and an error that wraps
// ErrUnsupported.
func (r *Resolver) ResolveInbound(proto engine.Protocol, local, remote netip.AddrPort, ifindex int) (Process, error) {
	return r.Resolve(proto, local, remote, -1)
}

// Methods returns no method: none is live here.
func (r *Resolver) Methods() []string { return nil }

// MethodErrors says that every method is unsupported here.
func (r *Resolver) MethodErrors() map[string]error {
	err := fmt.Errorf("procattr on %s: %w", runtime.GOOS, ErrUnsupported)
	return map[string]error{MethodEBPF: err, MethodSockDiag: err, MethodProcfs: err}
}

// Stats returns zero counters.
func (r *Resolver) Stats() Stats { return Stats{} }

// Close does nothing.
func (r *Resolver) Close() error { return nil }
