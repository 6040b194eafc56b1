package procattr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// Wire layout of linux/inet_diag.h and linux/sock_diag.h.
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	nlmsgHdrLen      = 16
	inetDiagReqLen   = 56 // struct inet_diag_req_v2
	inetDiagMsgLen   = 72 // struct inet_diag_msg
	sockIDOffset     = 8  // inet_diag_sockid inside inet_diag_req_v2
	msgSockIDOffset  = 4  // inet_diag_sockid inside inet_diag_msg
	msgUIDOffset     = 64 // idiag_uid inside inet_diag_msg
	msgInodeOffset   = 68 // idiag_inode inside inet_diag_msg
	sockIDIfOff      = 36 // idiag_if inside inet_diag_sockid
	sockIDCookieOff  = 40 // idiag_cookie inside inet_diag_sockid
	inetDiagNoCookie = ^uint32(0)
	tcpListen        = 10 // TCP_LISTEN
)

// socketInfo is what sock_diag says about one socket.
type socketInfo struct {
	Inode  uint32
	UID    uint32
	Cookie uint64
	State  uint8
	Local  netip.AddrPort // as the kernel reports it (may be unspecified for UDP)
	Remote netip.AddrPort
}

// diagConn is one NETLINK_SOCK_DIAG socket with its buffers; it serves one request at
// a time.
type diagConn struct {
	fd  int
	seq uint32
	req [nlmsgHdrLen + inetDiagReqLen]byte
	buf []byte
}

func openDiagConn() (*diagConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open NETLINK_SOCK_DIAG socket: %w", err)
	}
	// A reply to a lost request must never block a lookup for long.
	tv := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set SO_RCVTIMEO on sock_diag socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind sock_diag socket: %w", err)
	}
	// Connected to the kernel, the socket takes plain write and read: no address to
	// build or decode per lookup.
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect sock_diag socket: %w", err)
	}
	return &diagConn{fd: fd, buf: make([]byte, 32<<10)}, nil
}

func (c *diagConn) close() error { return unix.Close(c.fd) }

// sockDiag runs single-socket lookups over a fixed pool of netlink sockets.
type sockDiag struct {
	pool chan *diagConn
	all  []*diagConn
	seq  atomic.Uint32
}

func newSockDiag(n int) (*sockDiag, error) {
	d := &sockDiag{pool: make(chan *diagConn, n)}
	for range n {
		c, err := openDiagConn()
		if err != nil {
			d.close()
			return nil, err
		}
		d.all = append(d.all, c)
		d.pool <- c
	}
	return d, nil
}

func (d *sockDiag) close() {
	for _, c := range d.all {
		c.close()
	}
	d.all = nil
}

// lookup finds the socket of an outbound connection seen from this host: local is
// this host's end, remote the peer's.
//
// TCP: the kernel looks the exact 4-tuple up in the established hash, where a
// connecting (SYN_SENT) socket already is. If nothing is there it falls back to a
// listener on the local port, which is not the connection: the reply is checked
// against the whole 4-tuple.
//
// UDP: the kernel looks the socket up as it would for a packet arriving from remote
// to local (the sockid's src and dst are swapped for historical reasons), so an
// unconnected socket bound to 0.0.0.0 that sent with sendto is found, and a
// connected one is preferred to it, as for a reply.
//
// listener also accepts, for TCP, the socket listening on local (an inbound
// connection that is being held has no socket of its own yet).
//
// ifindex is the interface the packet leaves or arrives by, or 0. A socket bound to
// a device (SO_BINDTODEVICE) is found only with that device's index; other sockets
// are found either way.
func (d *sockDiag) lookup(proto engine.Protocol, local, remote netip.AddrPort, ifindex uint32, listener bool) (socketInfo, error) {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if !local.IsValid() || !remote.IsValid() {
		return socketInfo{}, fmt.Errorf("sock_diag: invalid address %v -> %v", local, remote)
	}
	if local.Addr().Is4() != remote.Addr().Is4() {
		return socketInfo{}, fmt.Errorf("sock_diag: local %v and remote %v are of different families", local, remote)
	}
	var ipproto uint8
	switch proto {
	case engine.TCP:
		ipproto = unix.IPPROTO_TCP
	case engine.UDP:
		ipproto = unix.IPPROTO_UDP
	default:
		return socketInfo{}, fmt.Errorf("sock_diag: protocol %v: %w", proto, ErrUnsupported)
	}

	c := <-d.pool
	defer func() { d.pool <- c }()

	if proto == engine.TCP {
		si, err := d.request(c, ipproto, local, remote, ifindex)
		if err != nil {
			return si, err
		}
		if listener && si.State == tcpListen && si.Local.Port() == local.Port() &&
			(si.Local.Addr().IsUnspecified() || si.Local.Addr() == local.Addr()) {
			return si, nil
		}
		if si.Local != local || si.Remote != remote {
			return socketInfo{}, fmt.Errorf("sock_diag tcp %v -> %v: only a socket %v -> %v matched: %w",
				local, remote, si.Local, si.Remote, ErrNoSocket)
		}
		return si, nil
	}
	// UDP: the request is a packet from remote to local.
	si, err := d.request(c, ipproto, remote, local, ifindex)
	if err != nil {
		return si, err
	}
	if !udpMatches(si, local, remote) {
		return socketInfo{}, fmt.Errorf("sock_diag udp %v -> %v: only a socket %v -> %v matched: %w",
			local, remote, si.Local, si.Remote, ErrNoSocket)
	}
	return si, nil
}

// udpMatches reports whether a UDP socket could have sent local -> remote: same
// local port, its bound address and peer either equal or wildcards.
func udpMatches(si socketInfo, local, remote netip.AddrPort) bool {
	if si.Local.Port() != local.Port() {
		return false
	}
	if a := si.Local.Addr(); !a.IsUnspecified() && a != local.Addr() {
		return false
	}
	if a := si.Remote.Addr(); !a.IsUnspecified() && si.Remote != remote {
		return false
	}
	return true
}

// request sends one SOCK_DIAG_BY_FAMILY get (not a dump) with the given sockid
// src/dst and interface and decodes the reply.
func (d *sockDiag) request(c *diagConn, ipproto uint8, src, dst netip.AddrPort, ifindex uint32) (socketInfo, error) {
	si, err := d.requestOnce(c, ipproto, src, dst, ifindex)
	if err == nil && si.Inode == 0 {
		// A TIME_WAIT or SYN_RECV mini-socket: no file, so no process owns it.
		return socketInfo{}, fmt.Errorf("sock_diag: %v -> %v is a mini-socket in state %d: %w", si.Local, si.Remote, si.State, ErrNoSocket)
	}
	return si, err
}

func (d *sockDiag) requestOnce(c *diagConn, ipproto uint8, src, dst netip.AddrPort, ifindex uint32) (socketInfo, error) {
	seq := d.seq.Add(1)
	b := c.req[:]
	clear(b)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], sockDiagByFamily)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], seq)
	r := b[nlmsgHdrLen:]
	if src.Addr().Is4() {
		r[0] = unix.AF_INET
	} else {
		r[0] = unix.AF_INET6
	}
	r[1] = ipproto
	ne.PutUint32(r[4:], ^uint32(0)) // idiag_states: all
	putSockID(r[sockIDOffset:], src, dst)
	ne.PutUint32(r[sockIDOffset+sockIDIfOff:], ifindex)
	ne.PutUint32(r[sockIDOffset+sockIDCookieOff:], inetDiagNoCookie)
	ne.PutUint32(r[sockIDOffset+sockIDCookieOff+4:], inetDiagNoCookie)

	// The kernel answers a request while it takes it: the reply is queued on the
	// socket when the write returns, so both calls are made without telling the
	// scheduler (two system calls on the path of every attribution), and only a
	// reply that is not there yet (none should be) is waited for.
	if _, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(c.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b))); errno != 0 {
		return socketInfo{}, fmt.Errorf("sock_diag: send request: %w", errno)
	}
	for {
		var n int
		var err error
		r, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(c.fd), uintptr(unsafe.Pointer(&c.buf[0])), uintptr(len(c.buf)),
			unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			n = int(r)
		case unix.EAGAIN:
			n, err = unix.Read(c.fd, c.buf)
		default:
			err = errno
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return socketInfo{}, fmt.Errorf("sock_diag: receive reply: %w", err)
		}
		si, done, err := parseDiagReply(c.buf[:n], seq)
		if done {
			return si, err
		}
		// A late reply to an earlier request that timed out: skip it.
	}
}

// parseDiagReply decodes the messages of one datagram. done is false when none of
// them answers seq.
func parseDiagReply(b []byte, seq uint32) (si socketInfo, done bool, err error) {
	ne := binary.NativeEndian
	for off := 0; len(b) >= nlmsgHdrLen; {
		l := ne.Uint32(b[0:])
		typ := ne.Uint16(b[4:])
		mseq := ne.Uint32(b[8:])
		if l < nlmsgHdrLen || int(l) > len(b) {
			return socketInfo{}, true, fmt.Errorf("sock_diag: reply message at offset %d: length %d, %d bytes left", off, l, len(b))
		}
		body := b[nlmsgHdrLen:l]
		next := min((int(l)+3)&^3, len(b))
		b = b[next:]
		off += next
		if mseq != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return socketInfo{}, true, fmt.Errorf("sock_diag: error reply of %d bytes", len(body))
			}
			errno := -int32(ne.Uint32(body))
			if errno == 0 {
				continue // an ack, not an answer
			}
			if unix.Errno(errno) == unix.ENOENT {
				return socketInfo{}, true, ErrNoSocket
			}
			return socketInfo{}, true, fmt.Errorf("sock_diag: kernel error: %w", unix.Errno(errno))
		case sockDiagByFamily:
			si, err := parseDiagMsg(body)
			return si, true, err
		}
	}
	return socketInfo{}, false, nil
}

// parseDiagMsg decodes a struct inet_diag_msg.
func parseDiagMsg(m []byte) (socketInfo, error) {
	if len(m) < inetDiagMsgLen {
		return socketInfo{}, fmt.Errorf("sock_diag: inet_diag_msg of %d bytes, want %d", len(m), inetDiagMsgLen)
	}
	ne := binary.NativeEndian
	id := m[msgSockIDOffset:]
	sport := binary.BigEndian.Uint16(id[0:])
	dport := binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	switch m[0] {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(id[4:8]))
		dst = netip.AddrFrom4([4]byte(id[20:24]))
	case unix.AF_INET6:
		src = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
		dst = netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	default:
		return socketInfo{}, fmt.Errorf("sock_diag: reply family %d at offset 0", m[0])
	}
	return socketInfo{
		State:  m[1],
		Local:  netip.AddrPortFrom(src, sport),
		Remote: netip.AddrPortFrom(dst, dport),
		Cookie: uint64(ne.Uint32(id[sockIDCookieOff:])) | uint64(ne.Uint32(id[sockIDCookieOff+4:]))<<32,
		UID:    ne.Uint32(m[msgUIDOffset:]),
		Inode:  ne.Uint32(m[msgInodeOffset:]),
	}, nil
}

// putSockID writes the addresses and ports of a struct inet_diag_sockid.
func putSockID(id []byte, src, dst netip.AddrPort) {
	binary.BigEndian.PutUint16(id[0:], src.Port())
	binary.BigEndian.PutUint16(id[2:], dst.Port())
	putAddr(id[4:20], src.Addr())
	putAddr(id[20:36], dst.Addr())
}

func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		a4 := a.As4()
		copy(b, a4[:])
		return
	}
	a16 := a.As16()
	copy(b, a16[:])
}

// dump lists every socket of one family and protocol (NLM_F_DUMP) and returns how
// many there were. It exists to measure what a dump costs against a single lookup.
func (d *sockDiag) dump(family, ipproto uint8) (int, error) {
	c := <-d.pool
	defer func() { d.pool <- c }()
	seq := d.seq.Add(1)
	b := dumpRequest(c.req[:], seq, family, ipproto)
	ne := binary.NativeEndian
	if err := unix.Sendto(c.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag dump: send: %w", err)
	}
	count := 0
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return count, fmt.Errorf("sock_diag dump: receive: %w", err)
		}
		m := c.buf[:n]
		for len(m) >= nlmsgHdrLen {
			l := ne.Uint32(m[0:])
			typ := ne.Uint16(m[4:])
			if l < nlmsgHdrLen || int(l) > len(m) {
				return count, errors.New("sock_diag dump: truncated message")
			}
			mseq := ne.Uint32(m[8:])
			m = m[min((int(l)+3)&^3, len(m)):]
			if mseq != seq {
				continue
			}
			switch typ {
			case unix.NLMSG_DONE:
				return count, nil
			case unix.NLMSG_ERROR:
				return count, errors.New("sock_diag dump: kernel error")
			case sockDiagByFamily:
				count++
			}
		}
	}
}

// dumpRequest fills b with a SOCK_DIAG_BY_FAMILY dump request (NLM_F_DUMP, every
// state) for family and ipproto, and returns it.
func dumpRequest(b []byte, seq uint32, family, ipproto uint8) []byte {
	clear(b)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], sockDiagByFamily)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(b[8:], seq)
	r := b[nlmsgHdrLen:]
	r[0] = family
	r[1] = ipproto
	ne.PutUint32(r[4:], ^uint32(0))
	return b
}

// portSockets lists the UDP sockets of one family bound to local port port
// (a dump the kernel filters by the port, NLM_F_DUMP with idiag_sport set):
// the sockets that may send from that port. It exists because a UDP lookup
// by tuple finds one socket only (the one the kernel would deliver an answer
// to), and checks a cookie only against that one.
func (d *sockDiag) portSockets(family uint8, port uint16) ([]socketInfo, error) {
	c := <-d.pool
	defer func() { d.pool <- c }()
	seq := d.seq.Add(1)
	b := dumpRequest(c.req[:], seq, family, unix.IPPROTO_UDP)
	ne := binary.NativeEndian
	r := b[nlmsgHdrLen:]
	binary.BigEndian.PutUint16(r[sockIDOffset:], port)
	ne.PutUint32(r[sockIDOffset+sockIDCookieOff:], inetDiagNoCookie)
	ne.PutUint32(r[sockIDOffset+sockIDCookieOff+4:], inetDiagNoCookie)
	if _, err := unix.Write(c.fd, b); err != nil {
		return nil, fmt.Errorf("sock_diag dump of udp port %d: send: %w", port, err)
	}
	var out []socketInfo
	for {
		n, err := unix.Read(c.fd, c.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag dump of udp port %d: receive: %w", port, err)
		}
		m := c.buf[:n]
		for len(m) >= nlmsgHdrLen {
			l := ne.Uint32(m[0:])
			typ := ne.Uint16(m[4:])
			if l < nlmsgHdrLen || int(l) > len(m) {
				return nil, fmt.Errorf("sock_diag dump of udp port %d: truncated message", port)
			}
			mseq := ne.Uint32(m[8:])
			body := m[nlmsgHdrLen:l]
			m = m[min((int(l)+3)&^3, len(m)):]
			if mseq != seq {
				continue // a late reply to an earlier request
			}
			switch typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(body) >= 4 {
					if e := -int32(ne.Uint32(body)); e != 0 {
						return nil, fmt.Errorf("sock_diag dump of udp port %d: kernel error: %w", port, unix.Errno(e))
					}
				}
				return nil, fmt.Errorf("sock_diag dump of udp port %d: kernel error", port)
			case sockDiagByFamily:
				si, err := parseDiagMsg(body)
				if err != nil {
					return nil, err
				}
				if si.Local.Port() == port {
					out = append(out, si)
				}
			}
		}
	}
}

// senders lists the UDP sockets that may have sent a datagram from local to
// remote: every one bound to local's port, whatever address it is bound to
// or peer it is connected to (review14): a socket bound to another local
// address sends from any of this host's with IP_PKTINFO (IPV6_PKTINFO), and
// a connected one sends anywhere with sendto, so neither is ruled out by its
// addresses. For IPv4, IPv6 sockets too (one not IPV6_V6ONLY sends IPv4 from
// its port; a V6ONLY one is listed as well, which only makes the list
// longer). remote is not looked at.
func (d *sockDiag) senders(local, remote netip.AddrPort) ([]socketInfo, error) {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	fams := []uint8{unix.AF_INET6}
	if local.Addr().Is4() {
		fams = []uint8{unix.AF_INET, unix.AF_INET6}
	}
	var out []socketInfo
	for _, f := range fams {
		sis, err := d.portSockets(f, local.Port())
		if err != nil {
			return nil, err
		}
		out = append(out, sis...)
	}
	return out, nil
}
