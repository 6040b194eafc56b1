package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PinMove is a peer's packet of a pinned flow that the kernel delivered to
// another local socket than the one the flow is pinned to, which the socket
// pin's receive check dropped (see "The receive check" in doc.go).
type PinMove struct {
	// Protocol is the IP protocol (17 UDP, 136 UDP-Lite, 1 ICMP, 58 ICMPv6).
	Protocol uint8
	// Local and Remote are the flow's ends (for ICMP, Local's port is the
	// echo identifier and Remote's 0).
	Local, Remote netip.AddrPort
	// Cookie is the socket the kernel delivered the packet to; Pinned the
	// socket the flow is pinned to.
	Cookie, Pinned uint64
}

// receiveCheck is the socket pin's receive side: latch_pin_ingress attached
// to the root cgroup, and the ring of its reports.
type receiveCheck struct {
	link   link.Link
	ring   *ringbuf.Reader
	stats  *ebpf.Map
	cgroup string
	why    string
	// stopBcast ends keepBroadcasts' subscription (nil: none).
	stopBcast chan struct{}
}

// skbNetnsCookie reports whether the kernel lets cgroup_skb programs read a
// packet's network namespace (bpf_get_netns_cookie; 2025): the receive check
// then serves this namespace's sockets only, else every namespace's.
func skbNetnsCookie() bool {
	return features.HaveProgramHelper(ebpf.CGroupSKB, asm.FnGetNetnsCookie) == nil
}

// attach attaches prog (latch_pin_ingress, loaded with the pin's map) to the
// root cgroup and opens the ring of its reports; on failure it records why.
// off, if not "", says why not to (tests). cgroup, if not "", is where to
// attach it instead of the root (Config.EndsCgroupPath: tests and
// benchmarks keep it off the other processes' sockets).
func (rc *receiveCheck) attach(prog *ebpf.Program, moves, stats, bcast *ebpf.Map, off, cgroup string) {
	if off != "" {
		rc.why = off
		return
	}
	if prog == nil {
		rc.why = "not loaded"
		return
	}
	path := cgroup
	if path == "" {
		var unmount func()
		var err error
		if path, unmount, err = rootCgroup(); err != nil {
			rc.why = err.Error()
			return
		}
		defer unmount()
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: ebpf.AttachCGroupInetIngress, Program: prog})
	if err != nil {
		rc.why = fmt.Sprintf("attach the receive check to cgroup %s: %v", path, err)
		return
	}
	r, err := ringbuf.NewReader(moves)
	if err != nil {
		l.Close()
		rc.why = fmt.Sprintf("open the receive check's ring buffer: %v", err)
		return
	}
	rc.link, rc.ring, rc.stats, rc.cgroup = l, r, stats, path
	rc.keepBroadcasts(bcast)
}

// keepBroadcasts keeps the receive check's map local_bcast (see the C) equal
// to this namespace's IPv4 broadcast addresses, the local routing table's
// broadcast routes, until close: a datagram to one of them goes to every
// socket on its port and passes the check. Key 0 stays in it until the
// first listing, and is back while the subscription to route changes is
// lost: the check then passes an IPv4 datagram in any broadcast frame, as
// before review19 (a peer on the link could so reach a socket that joined a
// pinned flow's port). A subscription ends when its socket overflows
// (ENOBUFS: a burst of route changes, a routing daemon's, while the routes
// are listed again); keepBroadcasts then subscribes again and lists them
// anew, within resubscribeMax (review20: it ended for good, and key 0 stayed).
func (rc *receiveCheck) keepBroadcasts(m *ebpf.Map) {
	if m == nil {
		return
	}
	unknown := func() { m.Put(uint32(0), uint8(1)) }
	unknown()
	sync := func() bool {
		routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_BROADCAST}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
		if err != nil {
			return false
		}
		want := map[uint32]bool{}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if a, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok && a.Is4() && a != netip.IPv4Unspecified() {
				b := a.As4()
				want[binary.NativeEndian.Uint32(b[:])] = true
			}
		}
		// Stale ones first: a full map takes no new key.
		var k uint32
		var stale []uint32
		it := m.Iterate()
		var v uint8
		for it.Next(&k, &v) {
			if k != 0 && !want[k] {
				stale = append(stale, k)
			}
		}
		for _, k := range stale {
			m.Delete(k)
		}
		if it.Err() != nil {
			return false
		}
		for k := range want {
			if err := m.Put(k, uint8(1)); err != nil {
				return false
			}
		}
		return true
	}
	// subscribe subscribes to route changes and lists the broadcast routes
	// (after subscribing: a change between the two is not lost): the
	// updates and the channel that ends the subscription, or nil.
	subscribe := func() (chan netlink.RouteUpdate, chan struct{}) {
		updates := make(chan netlink.RouteUpdate, 256)
		done := make(chan struct{})
		if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{ReceiveBufferSize: 1 << 20}); err != nil {
			return nil, nil
		}
		if !sync() {
			close(done)
			for range updates {
			}
			return nil, nil
		}
		m.Delete(uint32(0))
		return updates, done
	}
	updates, done := subscribe()
	if updates == nil {
		return
	}
	stop := make(chan struct{})
	rc.stopBcast = stop
	go func() {
		for {
			if !keepSubscribed(updates, stop, sync, unknown) {
				close(done)
				for range updates {
				}
				unknown()
				return
			}
			// The subscription ended (its socket overflowed, or another
			// error): key 0 until subscribed again.
			unknown()
			close(done)
			for wait := resubscribeMin; ; wait = min(2*wait, resubscribeMax) {
				select {
				case <-stop:
					return
				case <-time.After(wait):
				}
				if updates, done = subscribe(); updates != nil {
					break
				}
			}
		}
	}()
}

// How long keepBroadcasts waits before it subscribes again to route changes
// after the subscription ended, doubling up to resubscribeMax while it fails.
const (
	resubscribeMin = 50 * time.Millisecond
	resubscribeMax = time.Second
)

// keepSubscribed lists the broadcast routes again (sync; unknown if that
// failed) on each change of one, until stop is closed (false) or updates
// ends (true). Changes that came together are listed once.
func keepSubscribed(updates chan netlink.RouteUpdate, stop chan struct{}, sync func() bool, unknown func()) bool {
	for {
		select {
		case <-stop:
			return false
		case u, ok := <-updates:
			if !ok {
				return true
			}
			if u.Route.Type != unix.RTN_BROADCAST || u.Route.Table != unix.RT_TABLE_LOCAL {
				continue
			}
			// The changes already queued: one listing for them all.
			for more := true; more; {
				select {
				case _, ok := <-updates:
					if !ok {
						more = false
					}
				default:
					more = false
				}
			}
			if !sync() {
				unknown()
			}
		}
	}
}

// close detaches the program and closes the ring (ReadPinMoves returns).
func (rc *receiveCheck) close() error {
	var errs []error
	if rc.stopBcast != nil {
		close(rc.stopBcast)
		rc.stopBcast = nil
	}
	if rc.link != nil {
		errs = append(errs, rc.link.Close())
		rc.link = nil
	}
	if rc.ring != nil {
		errs = append(errs, rc.ring.Close())
	}
	return errors.Join(errs...)
}

// read calls fn with each report until the ring is closed.
func (rc *receiveCheck) read(fn func(PinMove)) error {
	if rc.ring == nil {
		return fmt.Errorf("no receive check: %s", rc.why)
	}
	for {
		rec, err := rc.ring.Read()
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read the receive check's ring buffer: %w", err)
		}
		if m, ok := parsePinMove(rec.RawSample); ok {
			fn(m)
		}
	}
}

// parsePinMove reads a struct fp_pin_move.
func parsePinMove(b []byte) (PinMove, bool) {
	if len(b) < 56 {
		return PinMove{}, false
	}
	var m PinMove
	fam, proto := b[0], b[1]
	m.Protocol = proto
	sport, dport := binary.BigEndian.Uint16(b[2:]), binary.BigEndian.Uint16(b[4:])
	var src, dst netip.Addr
	switch fam {
	case 4:
		src, dst = netip.AddrFrom4([4]byte(b[8:12])), netip.AddrFrom4([4]byte(b[24:28]))
	case 6:
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
	default:
		return PinMove{}, false
	}
	m.Local, m.Remote = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	m.Cookie = binary.NativeEndian.Uint64(b[40:])
	m.Pinned = binary.NativeEndian.Uint64(b[48:])
	return m, true
}

// stats fills the receive check's part of s.
func (rc *receiveCheck) fill(s *Stats) {
	if s.SocketPinReceive = rc.link != nil; !s.SocketPinReceive {
		s.SocketPinReceiveWhy = rc.why
		return
	}
	s.SocketPinReceiveCgroup = rc.cgroup
	for i, p := range []*uint64{&s.SocketPinReceiveDropped, &s.SocketPinReceiveClaimed, &s.SocketPinReceiveLost} {
		var per []uint64
		if err := rc.stats.Lookup(uint32(i), &per); err != nil {
			continue
		}
		for _, v := range per {
			*p += v
		}
	}
}

// ReadPinMoves calls fn with each peer's packet the socket pin's receive
// check dropped because the kernel delivered it to another socket than the
// one its flow is pinned to (at most once a second per flow),
// until Close. It returns at once with an error if the check is off.
func (fp *FastPath) ReadPinMoves(fn func(PinMove)) error { return fp.recv.read(fn) }

// ReadPinMoves is FastPath.ReadPinMoves for the socket pin loaded alone.
func (p *SocketPinOnly) ReadPinMoves(fn func(PinMove)) error { return p.recv.read(fn) }

// Stats returns the socket pin's receive check's part of Stats (the rest is
// the daemon's to fill).
func (p *SocketPinOnly) Stats() Stats {
	var s Stats
	p.recv.fill(&s)
	return s
}
