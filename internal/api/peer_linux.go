package api

import (
	"context"
	"fmt"
	"net"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

type peerKey struct{}

// peer is who is at the other end of an API connection, from SO_PEERCRED.
type peer struct {
	uid, gid, pid int
	groups        []int // supplementary groups at connect, from SO_PEERGROUPS; nil if unknown
	groupsErr     error // why groups is nil
	err           error
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
	var groups []int
	var gerr error
	cerr := raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil && cred.Uid != 0 {
			groups, gerr = peerGroups(int(fd))
		}
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		p.err = fmt.Errorf("latch API: permission denied: reading peer credentials: %v", err)
	} else {
		p.uid, p.gid, p.pid = int(cred.Uid), int(cred.Gid), int(cred.Pid)
		// Without the groups only the peer's own gid can make it a member.
		p.groups, p.groupsErr = groups, gerr
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// peerGroups reads the supplementary groups the peer of socket fd had when it
// connected (SO_PEERGROUPS, kept by the kernel with the connection), never those of
// whatever process has its pid now. The kernel says ERANGE with the size it needs
// when the buffer is short; the buffer grows to that size.
func peerGroups(fd int) ([]int, error) {
	buf := make([]byte, 64*4)
	for range 8 {
		n := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case errno == unix.ERANGE && int(n) > len(buf):
			buf = make([]byte, n)
			continue
		case errno != 0:
			return nil, fmt.Errorf("getsockopt SO_PEERGROUPS: %w", errno)
		case n%4 != 0 || int(n) > len(buf):
			return nil, fmt.Errorf("getsockopt SO_PEERGROUPS: %d bytes, not a list of 4-byte group ids", n)
		}
		groups := make([]int, 0, n/4)
		for i := 0; i+4 <= int(n); i += 4 {
			groups = append(groups, int(*(*uint32)(unsafe.Pointer(&buf[i]))))
		}
		return groups, nil
	}
	return nil, fmt.Errorf("getsockopt SO_PEERGROUPS: the group list kept growing")
}

// peerAllowed admits root, and members of group g (by their group or a supplementary
// group) when g is set.
func peerAllowed(ctx context.Context, g *Group) error {
	p, ok := ctx.Value(peerKey{}).(peer)
	if !ok {
		return fmt.Errorf("latch API: permission denied: unknown peer")
	}
	if p.err != nil {
		return p.err
	}
	if p.uid == 0 {
		return nil
	}
	if g == nil {
		return fmt.Errorf("latch API: permission denied: uid %d is not root", p.uid)
	}
	if p.gid == g.GID || slices.Contains(p.groups, g.GID) {
		return nil
	}
	if p.groupsErr != nil {
		return fmt.Errorf("latch API: permission denied: uid %d is not root and its group is not %s (%d); its supplementary groups are unknown: %v",
			p.uid, g.Name, g.GID, p.groupsErr)
	}
	return fmt.Errorf("latch API: permission denied: uid %d is not root and not in group %s (%d)", p.uid, g.Name, g.GID)
}
