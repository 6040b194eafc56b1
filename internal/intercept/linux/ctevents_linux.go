package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ctnetlink multicast groups (NF_NETLINK_CONNTRACK_*) as bind(2) bits, and messages.
const (
	nfnlGroupCtUpdate  = 2
	nfnlGroupCtDestroy = 4
	ipctnlMsgCtNew     = 0
	ipctnlMsgCtGet     = 1
	ipctnlMsgCtDelete  = 2
)

// ctEvent is a conntrack update or destroy the kernel announced.
type ctEvent struct {
	ctInfo
	destroy bool
}

// openCtEvents subscribes to conntrack destroys, and with updates to conntrack
// updates, in the current network namespace. Updates come with each TCP state
// change, and the kernel builds each one while anybody listens to the group: a
// daemon that learns the end of its TCP flows from their sockets
// (Config.SocketEnds) leaves them off. Destroys carry the final counters when
// accounting is on. A socket filter keeps the events the accountant ignores from
// being queued at all; if it cannot be attached, logf says so and every event is
// read.
func openCtEvents(logf func(string, ...any), updates bool) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("open conntrack event socket: %w", err)
	}
	// Bursts of flows ending at once must not overflow it; if they do, the periodic
	// read of the table still finds what was missed.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	tv := unix.Timeval{Usec: 200_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set SO_RCVTIMEO on the conntrack event socket: %w", err)
	}
	// Most events are of no use to the accountant (every TCP state change of every
	// flow, flows latch did not allow): the kernel drops them before they are queued,
	// so they cost no read. Without the filter every event is read and sorted here.
	if err := attachCtEventFilter(fd); err != nil {
		logf("byte accounting: reading every conntrack event (%v)", err)
	}
	groups := uint32(nfnlGroupCtDestroy)
	if updates {
		groups |= nfnlGroupCtUpdate
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("subscribe to conntrack events: %w", err)
	}
	return fd, nil
}

// ctEventFilter is a classic BPF socket filter that passes only the conntrack events
// the accountant acts on: destroys, and updates to TCP state TIME_WAIT or CLOSE, of
// entries whose mark (masked by MarkMask) is MarkAllow or MarkRedecide. Messages
// other than ctnetlink new/delete (errors, overruns) pass. Attributes are found with
// the kernel's netlink helpers (SKF_AD_NLATTR, SKF_AD_NLATTR_NEST).
func ctEventFilter() []unix.SockFilter {
	// nlmsg_type is in host order; a BPF_H load reads network order.
	swap := func(typ uint16) uint32 {
		var b [2]byte
		binary.NativeEndian.PutUint16(b[:], typ)
		return uint32(binary.BigEndian.Uint16(b[:]))
	}
	const (
		adNLAttr     = 0xfffff000 + 12       // SKF_AD_OFF + SKF_AD_NLATTR
		adNLAttrNest = 0xfffff000 + 16       // SKF_AD_OFF + SKF_AD_NLATTR_NEST
		attrs        = unix.NLMSG_HDRLEN + 4 // after the nlmsghdr and nfgenmsg
	)
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: jt, Jf: jf, K: k}
	}
	// Jump offsets count the instructions skipped; labels: mark (17), accept (26),
	// drop (27).
	return []unix.SockFilter{
		/* 0 */ stmt(unix.BPF_LD|unix.BPF_H|unix.BPF_ABS, 4),
		/* 1 */ jeq(swap(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtDelete), 15, 0), // -> 17
		/* 2 */ jeq(swap(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtNew), 0, 23), // -> 26
		/* 3 */ stmt(unix.BPF_LDX|unix.BPF_W|unix.BPF_IMM, ctaProtoinfo),
		/* 4 */ stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_IMM, attrs),
		/* 5 */ stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, adNLAttr),
		/* 6 */ jeq(0, 20, 0), // -> 27
		/* 7 */ stmt(unix.BPF_LDX|unix.BPF_W|unix.BPF_IMM, ctaProtoinfoTCP),
		/* 8 */ stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, adNLAttrNest),
		/* 9 */ jeq(0, 17, 0), // -> 27
		/* 10 */ stmt(unix.BPF_LDX|unix.BPF_W|unix.BPF_IMM, ctaProtoinfoState),
		/* 11 */ stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, adNLAttrNest),
		/* 12 */ jeq(0, 14, 0), // -> 27
		/* 13 */ stmt(unix.BPF_MISC|unix.BPF_TAX, 0),
		/* 14 */ stmt(unix.BPF_LD|unix.BPF_B|unix.BPF_IND, 4),
		/* 15 */ jeq(ctTCPTimeWait, 1, 0), // -> 17
		/* 16 */ jeq(ctTCPClose, 0, 10), // -> 17 or 27
		/* 17: mark */ stmt(unix.BPF_LDX|unix.BPF_W|unix.BPF_IMM, ctaMark),
		/* 18 */ stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_IMM, attrs),
		/* 19 */ stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, adNLAttr),
		/* 20 */ jeq(0, 6, 0), // -> 27
		/* 21 */ stmt(unix.BPF_MISC|unix.BPF_TAX, 0),
		/* 22 */ stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_IND, 4),
		/* 23 */ stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, MarkMask),
		/* 24 */ jeq(MarkAllow, 1, 0), // -> 26
		/* 25 */ jeq(MarkRedecide, 0, 1), // -> 26 or 27
		/* 26: accept */ stmt(unix.BPF_RET|unix.BPF_K, 0xffffffff),
		/* 27: drop */ stmt(unix.BPF_RET|unix.BPF_K, 0),
	}
}

// attachCtEventFilter attaches ctEventFilter to the conntrack event socket fd.
func attachCtEventFilter(fd int) error {
	f := ctEventFilter()
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		return fmt.Errorf("attach the event filter: %w", err)
	}
	return nil
}

// mmsgSlots reads up to len(msgs) datagrams with one recvmmsg(2), each into a
// slot of its own of size bytes.
type mmsgSlots struct {
	size int
	buf  []byte
	msgs []unix.Mmsghdr
	iovs []unix.Iovec
}

func newMmsgSlots(n, size int) *mmsgSlots {
	m := &mmsgSlots{size: size, buf: make([]byte, n*size), msgs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n)}
	for i := range m.msgs {
		m.iovs[i].Base = &m.buf[i*size]
		m.iovs[i].SetLen(size)
		m.msgs[i].Hdr.Iov = &m.iovs[i]
		m.msgs[i].Hdr.SetIovlen(1)
	}
	return m
}

// recv reads datagrams from fd into the slots (recvmmsg with flags) and returns
// how many.
//
// With MSG_DONTWAIT the call never blocks, and is made as a raw system call (the
// Go scheduler is not told): a goroutine entering a system call wakes the
// runtime's monitor thread (sysmon) from its deep sleep, which then polls every
// 20 µs again for at least a millisecond. The accountant drains its socket
// every eventDrain, most often finding it empty, after the daemon was idle.
func (m *mmsgSlots) recv(fd int, flags int) (int, unix.Errno) {
	for i := range m.msgs {
		m.msgs[i].Len = 0
		m.msgs[i].Hdr.Flags = 0
	}
	// Direct calls, each with its pointer converted in its argument list (the
	// rule that keeps the slots alive during the call).
	var n uintptr
	var errno unix.Errno
	if flags&unix.MSG_DONTWAIT != 0 {
		n, _, errno = unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m.msgs[0])), uintptr(len(m.msgs)), uintptr(flags), 0, 0)
	} else {
		n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m.msgs[0])), uintptr(len(m.msgs)), uintptr(flags), 0, 0)
	}
	return int(n), errno
}

// slot returns the datagram read into slot i, and whether it was cut to fit.
func (m *mmsgSlots) slot(i int) (b []byte, truncated bool) {
	return m.buf[i*m.size:][:min(int(m.msgs[i].Len), m.size)], m.msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0
}

// ctEventReader drains a conntrack event socket without blocking.
type ctEventReader struct {
	fd int
	// Up to ctEventSlots datagrams (each one event, as ctnetlink sends them) are
	// read with one recvmmsg(2): a connection makes two or three events, and a
	// system call for each cost more than the rest of their handling.
	slots *mmsgSlots
}

const (
	ctEventSlots    = 64
	ctEventSlotSize = 8 << 10 // an event takes a few hundred bytes
)

// drain reads every event queued on the socket now and calls fn for those about
// TCP and UDP flows. It reports whether events were lost (the socket overflowed, or
// a datagram did not fit its slot) and how many messages did not decode.
func (r *ctEventReader) drain(fn func(ctEvent)) (lost bool, bad int, err error) {
	if r.slots == nil {
		r.slots = newMmsgSlots(ctEventSlots, ctEventSlotSize)
	}
	for range 100_000 / ctEventSlots { // bounded: at most about 100,000 datagrams per call
		n, errno := r.slots.recv(r.fd, unix.MSG_DONTWAIT)
		switch {
		case errno == 0:
		case errno == unix.EAGAIN || errno == unix.EWOULDBLOCK:
			return lost, bad, nil
		case errno == unix.EINTR:
			continue
		case errno == unix.ENOBUFS:
			lost = true
			continue
		default:
			return lost, bad, fmt.Errorf("read conntrack events: %w", errno)
		}
		for i := range n {
			b, truncated := r.slots.slot(i)
			if truncated {
				lost = true
				continue
			}
			bad += handleCtEvents(b, fn)
		}
		if n < ctEventSlots {
			// The queue is empty: a full batch is read again, a short one ends it
			// without another call that would only answer EAGAIN.
			return lost, bad, nil
		}
	}
	return lost, bad, nil
}

// handleCtEvents calls fn for the TCP and UDP conntrack events in one datagram and
// returns how many messages did not decode.
func handleCtEvents(b []byte, fn func(ctEvent)) (bad int) {
	for _, m := range splitNlmsgs(b) {
		typ := m.typ & 0xff
		if m.typ>>8 != unix.NFNL_SUBSYS_CTNETLINK || typ != ipctnlMsgCtNew && typ != ipctnlMsgCtDelete {
			continue
		}
		ci, err := parseCtMsg(m.data)
		if err != nil {
			bad++
			continue
		}
		if ci.key.proto != unix.IPPROTO_TCP && ci.key.proto != unix.IPPROTO_UDP {
			continue
		}
		fn(ctEvent{ctInfo: ci, destroy: typ == ipctnlMsgCtDelete})
	}
	return bad
}

type nlmsg struct {
	typ  uint16
	seq  uint32
	data []byte // after the netlink header
	err  int32  // NLMSG_ERROR: the (negative) errno
}

// splitNlmsgs cuts a datagram into netlink messages; a malformed tail is dropped.
func splitNlmsgs(b []byte) []nlmsg { return appendNlmsgs(nil, b) }

// appendNlmsgs appends the netlink messages of datagram b to out.
func appendNlmsgs(out []nlmsg, b []byte) []nlmsg {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			break
		}
		m := nlmsg{typ: binary.NativeEndian.Uint16(b[4:]), seq: binary.NativeEndian.Uint32(b[8:]), data: b[unix.NLMSG_HDRLEN:l]}
		if m.typ == unix.NLMSG_ERROR && len(m.data) >= 4 {
			m.err = int32(binary.NativeEndian.Uint32(m.data))
		}
		out = append(out, m)
		al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if al > len(b) {
			break
		}
		b = b[al:]
	}
	return out
}

// ctGetter asks conntrack for single entries over one netlink socket.
type ctGetter struct {
	fd  int
	seq uint32
	req []byte // a batch's requests
	// Up to getBatch answers (each one datagram) are read with one recvmmsg(2),
	// each into a slot of getSlotSize bytes.
	slots *mmsgSlots
	nl    []nlmsg
}

// getSlotSize is room for one answer: an entry takes well under a kilobyte, an
// error a hundred bytes.
const getSlotSize = 4 << 10

func openCtGetter() (*ctGetter, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open conntrack socket: %w", err)
	}
	tv := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set SO_RCVTIMEO on the conntrack socket: %w", err)
	}
	// Room for the answers to a batch of getBatch requests (each answer takes a
	// page or so of the buffer): one that does not fit is lost.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20); err != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	}
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect the conntrack socket: %w", err)
	}
	g := &ctGetter{fd: fd, slots: newMmsgSlots(getBatch, getSlotSize)}
	return g, nil
}

// getBatch is how many requests getMany sends in one write.
const getBatch = 32

func (g *ctGetter) close() { unix.Close(g.fd) }

// getMany asks conntrack for the entries whose original tuples are keys, getBatch
// requests to a write: fn receives each key with its entry or error (wrapping
// unix.ENOENT for an entry that is gone), in the order the answers come. An error reading answers ends it: the keys not
// answered get that error.
func (g *ctGetter) getMany(keys []flowKey, fn func(flowKey, ctInfo, error)) {
	for len(keys) > 0 {
		batch := keys[:min(len(keys), getBatch)]
		keys = keys[len(batch):]
		first := g.seq + 1
		g.req = g.req[:0]
		for _, k := range batch {
			g.seq++
			g.req = appendGetRequest(g.req, k, g.seq)
		}
		if _, err := unix.Write(g.fd, g.req); err != nil {
			for _, k := range batch {
				fn(k, ctInfo{}, fmt.Errorf("ask conntrack for %v: %w", k, err))
			}
			continue
		}
		var answered [getBatch]bool
		left := len(batch)
		// Bounded: every answer is one message; stale ones of an earlier batch that
		// timed out are skipped.
		for tries := 0; left > 0 && tries < 4*getBatch; tries++ {
			n, err := g.recv()
			if err != nil {
				for i, k := range batch {
					if !answered[i] {
						fn(k, ctInfo{}, fmt.Errorf("read conntrack's answer for %v: %w", k, err))
					}
				}
				for _, k := range keys {
					fn(k, ctInfo{}, fmt.Errorf("conntrack entry %v not asked for: reading an earlier answer failed: %w", k, err))
				}
				return
			}
			g.nl = g.nl[:0]
			for i := range n {
				b, _ := g.slots.slot(i)
				g.nl = appendNlmsgs(g.nl, b)
			}
			for _, m := range g.nl {
				d := m.seq - first // wraps past the batch for stale answers
				if d >= uint32(len(batch)) || answered[d] || m.typ == unix.NLMSG_ERROR && m.err == 0 {
					continue
				}
				i := int(d)
				answered[i] = true
				left--
				if m.typ == unix.NLMSG_ERROR {
					fn(batch[i], ctInfo{}, fmt.Errorf("conntrack entry %v: %w", batch[i], unix.Errno(-m.err)))
					continue
				}
				ci, err := parseCtMsg(m.data)
				fn(batch[i], ci, err)
			}
		}
		for i, k := range batch {
			if !answered[i] {
				fn(k, ctInfo{}, fmt.Errorf("no answer from conntrack for %v", k))
			}
		}
	}
}

// recv waits (SO_RCVTIMEO) for an answer, and reads it with those already queued
// (up to getBatch) into their slots. It returns how many it read.
func (g *ctGetter) recv() (int, error) {
	for range 100 { // bounded: EINTR again and again
		n, errno := g.slots.recv(g.fd, unix.MSG_WAITFORONE)
		switch errno {
		case 0:
			return n, nil
		case unix.EINTR:
			continue
		}
		return 0, errno
	}
	return 0, unix.EINTR
}

// appendGetRequest appends to b a ctnetlink request, sequence number seq, for the
// entry whose original tuple is k, written in place (building it through the
// netlink library's attribute tree cost a sixth of a read; TestAppendGetRequest
// compares the two).
func appendGetRequest(b []byte, k flowKey, seq uint32) []byte {
	ne := binary.NativeEndian
	fam, srcType, dstType, alen := uint8(unix.AF_INET), uint16(ctaIPv4Src), uint16(ctaIPv4Dst), 4
	if k.src().Addr().Is6() {
		fam, srcType, dstType, alen = unix.AF_INET6, ctaIPv6Src, ctaIPv6Dst, 16
	}
	ipLen := 4 + 2*(4+alen)
	protoLen := 4 + 3*8 // three attributes of 1 or 2 bytes, each padded to 8
	origLen := 4 + ipLen + protoLen
	total := unix.NLMSG_HDRLEN + 4 + origLen
	start := len(b)
	b = ne.AppendUint32(b, uint32(total))
	b = ne.AppendUint16(b, unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtGet)
	b = ne.AppendUint16(b, unix.NLM_F_REQUEST)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0) // port id: the kernel's
	b = append(b, fam, unix.NFNETLINK_V0, 0, 0)
	attr := func(typ uint16, l int) {
		b = ne.AppendUint16(b, uint16(l))
		b = ne.AppendUint16(b, typ)
	}
	attr(unix.NLA_F_NESTED|ctaTupleOrig, origLen)
	attr(unix.NLA_F_NESTED|ctaTupleIP, ipLen)
	attr(srcType, 4+alen)
	if alen == 4 {
		a := k.src().Addr().As4()
		b = append(b, a[:]...)
	} else {
		a := k.src().Addr().As16()
		b = append(b, a[:]...)
	}
	attr(dstType, 4+alen)
	if alen == 4 {
		a := k.dst().Addr().As4()
		b = append(b, a[:]...)
	} else {
		a := k.dst().Addr().As16()
		b = append(b, a[:]...)
	}
	attr(unix.NLA_F_NESTED|ctaTupleProto, protoLen)
	attr(ctaProtoNum, 5)
	b = append(b, k.proto, 0, 0, 0)
	attr(ctaProtoSrcPort, 6)
	b = binary.BigEndian.AppendUint16(b, k.src().Port())
	b = append(b, 0, 0)
	attr(ctaProtoDstPort, 6)
	b = binary.BigEndian.AppendUint16(b, k.dst().Port())
	b = append(b, 0, 0)
	if len(b)-start != total {
		panic(fmt.Sprintf("conntrack get request of %d bytes, want %d", len(b)-start, total))
	}
	return b
}

// ctDumpMark and ctDumpMarkMask select the entries the accountant reads: the bit
// MarkAllow and MarkRedecide share under MarkMask (the accountant checks the exact
// value). Entries of flows latch did not allow are not copied out of the kernel,
// but for MarkLoopbackForged's, which has the bit too (the accountant skips
// them): with CTA_MARK and CTA_MARK_MASK, a dump lists only entries whose mark,
// masked, equals the mark.
const (
	ctDumpMark     = MarkAllow & MarkRedecide
	ctDumpMarkMask = ctDumpMark
)

// dumpCt lists the conntrack entries (both address families) whose mark, masked
// by mask, is mark, calling fn for each, over a netlink socket of its own. Entries
// that do not decode are counted in bad and skipped.
func dumpCt(mark, mask uint32, fn func(ctInfo)) (bad int, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("open conntrack socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 5}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("set SO_RCVTIMEO on the conntrack socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("connect the conntrack socket: %w", err)
	}
	const seq = 1
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtGet, unix.NLM_F_DUMP)
	req.Seq = seq
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(ctaMark, nl.BEUint32Attr(mark)))
	req.AddData(nl.NewRtAttr(ctaMarkMask, nl.BEUint32Attr(mask)))
	if _, err := unix.Write(fd, req.Serialize()); err != nil {
		return 0, fmt.Errorf("ask conntrack for its table: %w", err)
	}
	buf := make([]byte, 64<<10)
	// Bounded: a dump of the largest table conntrack allows ends well before.
	for range 10_000_000 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return bad, fmt.Errorf("read conntrack's table: %w", err)
		}
		for _, m := range splitNlmsgs(buf[:n]) {
			if m.seq != seq {
				continue
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				return bad, nil
			case unix.NLMSG_ERROR:
				if m.err == 0 {
					continue
				}
				return bad, fmt.Errorf("conntrack table dump: %w", unix.Errno(-m.err))
			}
			if m.typ>>8 != unix.NFNL_SUBSYS_CTNETLINK || m.typ&0xff != ipctnlMsgCtNew {
				continue
			}
			ci, err := parseCtMsg(m.data)
			if err != nil {
				bad++
				continue
			}
			fn(ci)
		}
	}
	return bad, errors.New("conntrack table dump did not end")
}
