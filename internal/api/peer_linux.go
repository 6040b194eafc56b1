package api

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

type peerKey struct{}

// peer is who is at the other end of an API connection, from SO_PEERCRED.
type peer struct {
	uid, gid, pid int
	groups        []int // supplementary groups, from /proc/PID/status; nil if unknown
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
	cerr := raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		p.err = fmt.Errorf("latch API: permission denied: reading peer credentials: %v", err)
	} else {
		p.uid, p.gid, p.pid = int(cred.Uid), int(cred.Gid), int(cred.Pid)
		if p.uid != 0 {
			p.groups = procGroups(p.pid)
		}
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// procGroups reads the supplementary groups of process pid from /proc/PID/status (the
// "Groups:" line); nil if it cannot be read.
func procGroups(pid int) []int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		groups := []int{}
		for _, g := range strings.Fields(rest) {
			if n, err := strconv.Atoi(g); err == nil {
				groups = append(groups, n)
			}
		}
		return groups
	}
	return nil
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
	return fmt.Errorf("latch API: permission denied: uid %d is not root and not in group %s (%d)", p.uid, g.Name, g.GID)
}
