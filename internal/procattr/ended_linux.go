package procattr

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// closedStates are the TCP states of a socket its process has closed (include/net/
// tcp_states.h): FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, LAST_ACK, CLOSING.
var closedStates = map[uint8]bool{4: true, 5: true, 6: true, 7: true, 9: true, 11: true}

// ResolveEnded is ResolveDev (without an interface) for a packet read some time after
// it was sent, such as a copy of a DNS query: by then a short TCP connection may have
// ended, leaving only a socket no process holds (closing, or its TIME_WAIT
// mini-socket) but which keeps the socket's cookie. For such a socket the eBPF record of that cookie names
// the process that connected it (checked as for a live socket: the process at that
// pid started before the record, or is the very process and image the record
// carries), if it still runs; the owner's uid is the one the record saw (uid, if
// not negative, must be it). Without the eBPF method, or for UDP (a closed UDP
// socket leaves nothing), it fails as ResolveDev does.
func (r *Resolver) ResolveEnded(proto engine.Protocol, local, remote netip.AddrPort, uid int32) (Process, error) {
	p, err := r.resolve(proto, local, remote, uid, 0, false)
	if err == nil || proto != engine.TCP || r.hooks == nil {
		return p, err
	}
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return p, err
	}
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if !local.IsValid() || !remote.IsValid() || local.Addr().Is4() != remote.Addr().Is4() {
		return p, err
	}
	c := <-r.diag.pool
	si, terr := r.diag.requestOnce(c, unix.IPPROTO_TCP, local, remote, 0)
	r.diag.pool <- c
	if terr != nil || si.Inode != 0 || !closedStates[si.State] || si.Local != local || si.Remote != remote || si.Cookie == 0 {
		return p, err
	}
	rec, ok := r.hooks.lookup(si.Cookie)
	if !ok {
		return p, err
	}
	recUID := int32(uint32(rec.UIDGid))
	if uid != -1 && uid != recUID {
		return unknown(), fmt.Errorf("procattr: tcp %v -> %v (closed): the record's uid %d is not the packet's %d: %w", local, remote, recUID, uid, ErrNoSocket)
	}
	owner := Process{UID: recUID, User: r.users.name(uint32(recUID))}
	ep, eerr := r.viaEBPF(si, owner)
	if eerr != nil {
		return unknown(), fmt.Errorf("procattr: tcp %v -> %v (closed): %w", local, remote, eerr)
	}
	r.ebpfHits.Add(1)
	return ep, nil
}
