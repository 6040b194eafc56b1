package linux

import (
	"encoding/binary"
	"errors"
	"fmt"

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

// openCtEvents subscribes to conntrack updates and destroys in the current network
// namespace. Updates come with each TCP state change; destroys carry the final
// counters when accounting is on.
func openCtEvents() (int, error) {
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
	// Only what the accountant uses reaches the daemon (see ctEventFilter); without
	// the filter it reads and skips the rest.
	prog := ctEventFilter()
	unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: nfnlGroupCtUpdate | nfnlGroupCtDestroy}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("subscribe to conntrack events: %w", err)
	}
	return fd, nil
}

// ctEventFilter is a classic BPF socket filter for the conntrack event socket that
// passes what the accountant uses (Backend.account: a destroy, or an update to TCP
// state TIME_WAIT or CLOSE) and drops every other update in the kernel: a TCP
// connection changes state several times, and each change would otherwise cost the
// daemon a read. Connections the kernel fast path decides cost the daemon nothing
// else, so on a machine with few cores these reads were the larger part of its work
// per connection. An update whose TCP state cannot be found (no such attribute, a
// non-linear message) is dropped: the accountant learns that flow's end from its
// destroy, or its periodic read of the table.
func ctEventFilter() []unix.SockFilter {
	// Classic BPF loads 16-bit words in network order: nlmsg_type, in host order,
	// is compared as it reads.
	asRead := func(t uint16) uint32 {
		return uint32(binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, t)))
	}
	const (
		ldH      = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldW      = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		ldImm    = unix.BPF_LD | unix.BPF_IMM
		ldxImm   = unix.BPF_LDX | unix.BPF_IMM
		ldBInd   = unix.BPF_LD | unix.BPF_B | unix.BPF_IND
		tax      = unix.BPF_MISC | unix.BPF_TAX
		jeq      = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret      = unix.BPF_RET | unix.BPF_K
		adOff    = 0xfffff000            // SKF_AD_OFF
		adNlattr = adOff + 12            // SKF_AD_NLATTR: A = offset of attribute X at or after offset A, or 0
		adNest   = adOff + 16            // SKF_AD_NLATTR_NEST: A = offset of attribute X inside attribute A, or 0
		attrs    = unix.NLMSG_HDRLEN + 4 // after the netlink header and the nfgenmsg
	)
	del := asRead(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtDelete)
	upd := asRead(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtNew)
	return []unix.SockFilter{
		/* 0 */ {Code: ldH, K: 4}, // nlmsg_type
		/* 1 */ {Code: jeq, K: del, Jt: 16}, // a destroy: pass
		/* 2 */ {Code: jeq, K: upd, Jf: 14}, // not an update: drop
		/* 3 */ {Code: ldxImm, K: ctaProtoinfo},
		/* 4 */ {Code: ldImm, K: attrs},
		/* 5 */ {Code: ldW, K: adNlattr},
		/* 6 */ {Code: jeq, K: 0, Jt: 10},
		/* 7 */ {Code: ldxImm, K: ctaProtoinfoTCP},
		/* 8 */ {Code: ldW, K: adNest},
		/* 9 */ {Code: jeq, K: 0, Jt: 7},
		/* 10 */ {Code: ldxImm, K: ctaProtoinfoState},
		/* 11 */ {Code: ldW, K: adNest},
		/* 12 */ {Code: jeq, K: 0, Jt: 4},
		/* 13 */ {Code: tax},
		/* 14 */ {Code: ldBInd, K: 4}, // the state, after the attribute's header
		/* 15 */ {Code: jeq, K: ctTCPTimeWait, Jt: 2},
		/* 16 */ {Code: jeq, K: ctTCPClose, Jt: 1},
		/* 17 drop */ {Code: ret, K: 0},
		/* 18 pass */ {Code: ret, K: 0xffffffff},
	}
}

// ctEventReader drains a conntrack event socket without blocking.
type ctEventReader struct {
	fd  int
	buf []byte
}

// drain reads every event queued on the socket now and calls fn for those about
// TCP and UDP flows. It reports whether the socket overflowed (events were lost) and
// how many messages did not decode.
func (r *ctEventReader) drain(fn func(ctEvent)) (lost bool, bad int, err error) {
	if r.buf == nil {
		r.buf = make([]byte, 256<<10)
	}
	for range 100_000 { // bounded: at most this many datagrams per call
		n, _, err := unix.Recvfrom(r.fd, r.buf, unix.MSG_DONTWAIT)
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EWOULDBLOCK):
			return lost, bad, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			lost = true
			continue
		default:
			return lost, bad, fmt.Errorf("read conntrack events: %w", err)
		}
		for _, m := range splitNlmsgs(r.buf[:n]) {
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
	}
	return lost, bad, nil
}

type nlmsg struct {
	typ  uint16
	seq  uint32
	data []byte // after the netlink header
	err  int32  // NLMSG_ERROR: the (negative) errno
}

// splitNlmsgs cuts a datagram into netlink messages; a malformed tail is dropped.
func splitNlmsgs(b []byte) []nlmsg {
	var out []nlmsg
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
	buf []byte
}

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
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect the conntrack socket: %w", err)
	}
	return &ctGetter{fd: fd, buf: make([]byte, 16<<10)}, nil
}

func (g *ctGetter) close() { unix.Close(g.fd) }

// get returns the entry whose original tuple is k; an entry that is gone gives an
// error wrapping unix.ENOENT.
func (g *ctGetter) get(k flowKey) (ctInfo, error) {
	fam, srcType, dstType := uint8(unix.AF_INET), uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if k.src.Addr().Is6() {
		fam, srcType, dstType = unix.AF_INET6, ctaIPv6Src, ctaIPv6Dst
	}
	g.seq++
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtGet, 0)
	req.Seq = g.seq
	req.AddData(&nl.Nfgenmsg{NfgenFamily: fam, Version: nl.NFNETLINK_V0})
	orig := nl.NewRtAttr(unix.NLA_F_NESTED|ctaTupleOrig, nil)
	ip := orig.AddRtAttr(unix.NLA_F_NESTED|ctaTupleIP, nil)
	ip.AddRtAttr(int(srcType), k.src.Addr().AsSlice())
	ip.AddRtAttr(int(dstType), k.dst.Addr().AsSlice())
	proto := orig.AddRtAttr(unix.NLA_F_NESTED|ctaTupleProto, nil)
	proto.AddRtAttr(ctaProtoNum, []byte{k.proto})
	proto.AddRtAttr(ctaProtoSrcPort, nl.BEUint16Attr(k.src.Port()))
	proto.AddRtAttr(ctaProtoDstPort, nl.BEUint16Attr(k.dst.Port()))
	req.AddData(orig)
	if _, err := unix.Write(g.fd, req.Serialize()); err != nil {
		return ctInfo{}, fmt.Errorf("ask conntrack for %v: %w", k, err)
	}
	for range 4 { // a late reply to an earlier request that timed out is skipped
		n, err := unix.Read(g.fd, g.buf)
		if err != nil {
			return ctInfo{}, fmt.Errorf("read conntrack's answer for %v: %w", k, err)
		}
		for _, m := range splitNlmsgs(g.buf[:n]) {
			if m.seq != g.seq {
				continue
			}
			if m.typ == unix.NLMSG_ERROR {
				if m.err == 0 {
					continue
				}
				return ctInfo{}, fmt.Errorf("conntrack entry %v: %w", k, unix.Errno(-m.err))
			}
			return parseCtMsg(m.data)
		}
	}
	return ctInfo{}, fmt.Errorf("no answer from conntrack for %v", k)
}
