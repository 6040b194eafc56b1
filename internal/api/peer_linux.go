package api

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

type peerKey struct{}

// peer is who is at the other end of an API connection, from SO_PEERCRED.
type peer struct {
	uid, pid int
	err      error
}

// connContext records the connection's peer credentials, read once per connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	p := peer{uid: -1}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		p.err = fmt.Errorf("latch API: permission denied: not a unix socket connection")
		return context.WithValue(ctx, peerKey{}, p)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		p.err = err
		return context.WithValue(ctx, peerKey{}, p)
	}
	var cred *unix.Ucred
	cerr := raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		p.err = fmt.Errorf("latch API: permission denied: reading peer credentials: %v", err)
	} else {
		p.uid, p.pid = int(cred.Uid), int(cred.Pid)
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// peerAllowed admits root only.
func peerAllowed(ctx context.Context) error {
	p, ok := ctx.Value(peerKey{}).(peer)
	if !ok {
		return fmt.Errorf("latch API: permission denied: unknown peer")
	}
	if p.err != nil {
		return p.err
	}
	if p.uid != 0 {
		return fmt.Errorf("latch API: permission denied: uid %d is not root", p.uid)
	}
	return nil
}
