package dnsname

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink_log constants (linux/netfilter/nfnetlink_log.h).
const (
	nfnlSubsysULOG  = 4
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulaCfgQThresh = 5

	nfulnlCfgCmdBind  = 1
	nfulnlCopyPacket  = 2
	nfulaPacketHdr    = 1
	nfulaPayload      = 9
	nfulaUID          = 11
	nfgenmsgLen       = 4
	nlaTypeMask       = 0x3fff // drops NLA_F_NESTED and NLA_F_NET_BYTEORDER
	copyRange         = 0xffff
	defaultReadBuffer = 1 << 20
)

// Netfilter hooks (linux/netfilter.h), as NFULA_PACKET_HDR names them.
const (
	hookLocalIn  = 1
	hookLocalOut = 3
)

// ListenNFLOG reads copies of the DNS queries this host sends and the responses it
// receives, which netfilter NFLOG rules send to group, and hands them to l (queries
// copied at the OUTPUT hook, responses at INPUT: the kernel says which), until ctx
// is done (then it returns nil). NFLOG copies packets without holding them, so DNS is
// never delayed by latch. The rules are the caller's, in the namespace ListenNFLOG
// runs in, for IPv4 and IPv6, e.g.
//
//	iptables -I OUTPUT -p udp --dport 53 -m conntrack --ctdir ORIGINAL -j NFLOG --nflog-group 4243
//	iptables -I INPUT -p udp --sport 53 -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j NFLOG --nflog-group 4243
//
// and the same for TCP (DNS over TCP, each segment: see Learner.Segment). One group carries both, so a query's copy is always read before its answer's.
// Binding fails if another socket has bound group. Copies lost to a full socket
// buffer are counted in l's Stats: a lost query only costs the name its answer
// carried.
func ListenNFLOG(ctx context.Context, group uint16, l *Learner) error {
	cache := l.cache
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("nflog group %d: netlink socket: %w", group, err)
	}
	defer conn.Close()
	// A burst of responses must not be lost to a small default buffer; failure to
	// enlarge it is not fatal.
	_ = conn.SetReadBuffer(defaultReadBuffer)
	_ = conn.SetOption(netlink.NoENOBUFS, false)

	if err := configure(conn, group, cmdAttr(nfulnlCfgCmdBind)); err != nil {
		return fmt.Errorf("nflog group %d: bind: %w (is another program using the group?)", group, err)
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, copyRange)
	mode[4] = nfulnlCopyPacket
	if err := configure(conn, group, netlink.Attribute{Type: nfulaCfgMode, Data: mode}); err != nil {
		return fmt.Errorf("nflog group %d: set copy-packet mode: %w", group, err)
	}
	// Deliver each packet at once instead of batching: a program connects right after
	// its answer arrives.
	if err := configure(conn, group, netlink.Attribute{Type: nfulaCfgQThresh, Data: binary.BigEndian.AppendUint32(nil, 1)}); err != nil {
		return fmt.Errorf("nflog group %d: set queue threshold: %w", group, err)
	}

	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("nflog group %d: %w", group, err)
	}
	f := newFeed(func() bool { return readable(raw) })
	cache.feed.Store(f)
	defer func() {
		cache.feed.CompareAndSwap(f, nil)
		f.closed.Store(true)
		f.batchDone() // wakes LookupWait callers at once
	}()

	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			conn.Close() // ends the read below
		case <-done:
		}
	}()
	// The socket is read here rather than with conn.Receive so that f.processing is set
	// before a message leaves the socket: LookupWait checks the socket, then the flag,
	// and so never finds neither while a response is on its way into the cache.
	buf := make([]byte, 1<<16)
	for {
		var n int
		var rerr error
		err := raw.Read(func(fd uintptr) bool {
			f.processing.Store(true)
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			if rerr == unix.EAGAIN || rerr == unix.EINTR {
				f.processing.Store(false)
				return false // wait until readable
			}
			return true
		})
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = rerr
		}
		if err != nil {
			f.processing.Store(false)
			if errors.Is(err, unix.ENOBUFS) {
				l.noteOverflow()
				continue
			}
			return fmt.Errorf("nflog group %d: receive: %w", group, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			l.ignore(IgnoredMalformed)
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysULOG<<8|nfulnlMsgPacket {
				continue
			}
			c, ok := copyOf(m.Data)
			switch {
			case !ok:
				l.ignore(IgnoredMalformed)
			case (c.hook == hookLocalOut || c.hook == hookLocalIn) && isTCP(c.payload):
				l.Segment(c.payload, c.uid, c.hook == hookLocalOut)
			case c.hook == hookLocalOut:
				l.Query(c.payload, c.uid)
			case c.hook == hookLocalIn:
				l.Response(c.payload)
			default: // not from latch's rules
				l.ignore(IgnoredMalformed)
			}
		}
		f.processing.Store(false)
		f.batchDone()
	}
}

// readable reports whether the socket has data waiting, without reading it.
func readable(raw syscall.RawConn) bool {
	ready := false
	raw.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 0)
		ready = err == nil && n > 0 && pfd[0].Revents&unix.POLLIN != 0
	})
	return ready
}

func cmdAttr(cmd uint8) netlink.Attribute {
	return netlink.Attribute{Type: nfulaCfgCmd, Data: []byte{cmd}}
}

// configure sends one NFULNL_MSG_CONFIG message for group and waits for the ack.
func configure(conn *netlink.Conn, group uint16, attr netlink.Attribute) error {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{attr})
	if err != nil {
		return err
	}
	data := make([]byte, nfgenmsgLen, nfgenmsgLen+len(attrs))
	data[0] = unix.AF_UNSPEC
	data[1] = 0 // NFNETLINK_V0
	binary.BigEndian.PutUint16(data[2:], group)
	data = append(data, attrs...)
	_, err = conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysULOG<<8 | nfulnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: data,
	})
	return err
}

// logCopy is what one NFULNL_MSG_PACKET message says about a packet.
type logCopy struct {
	payload []byte
	hook    int   // the netfilter hook that copied it; -1 if not said
	uid     int64 // the owner of the socket that sent it; -1 if not said
}

// copyOf reads an NFULNL_MSG_PACKET message: the packet (NFULA_PAYLOAD), the hook
// (NFULA_PACKET_HDR) and the sending socket's user (NFULA_UID, present for packets a
// local socket sent).
func copyOf(data []byte) (logCopy, bool) {
	c := logCopy{hook: -1, uid: -1}
	if len(data) < nfgenmsgLen {
		return c, false
	}
	ad, err := netlink.NewAttributeDecoder(data[nfgenmsgLen:])
	if err != nil {
		return c, false
	}
	found := false
	for ad.Next() {
		b := ad.Bytes()
		switch ad.Type() & nlaTypeMask {
		case nfulaPayload:
			c.payload, found = b, true
		case nfulaPacketHdr:
			if len(b) >= 3 {
				c.hook = int(b[2])
			}
		case nfulaUID:
			if len(b) == 4 {
				c.uid = int64(binary.BigEndian.Uint32(b))
			}
		}
	}
	return c, found && ad.Err() == nil
}
