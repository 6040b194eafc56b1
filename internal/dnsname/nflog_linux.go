package dnsname

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
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
	nfulaPayload      = 9
	nfgenmsgLen       = 4
	nlaTypeMask       = 0x3fff // drops NLA_F_NESTED and NLA_F_NET_BYTEORDER
	copyRange         = 0xffff
	defaultReadBuffer = 1 << 20
)

// NFLOGStats counts what ListenNFLOG saw. Read it with the methods of atomic.Uint64.
type NFLOGStats struct {
	Packets   atomic.Uint64 // packets received from the kernel
	Responses atomic.Uint64 // DNS responses parsed
	Malformed atomic.Uint64 // packets that were not a DNS response latch could read
	Overflows atomic.Uint64 // times the socket buffer overflowed (ENOBUFS): packets were lost
}

// ListenNFLOG reads copies of DNS responses that a netfilter NFLOG rule sends to
// group and records their answers in cache, until ctx is done (then it returns nil).
// NFLOG copies packets without holding them, so DNS is never delayed by latch. The
// rule is the caller's, in the namespace ListenNFLOG runs in, e.g.
//
//	iptables  -I INPUT -p udp --sport 53 -j NFLOG --nflog-group 4243
//	ip6tables -I INPUT -p udp --sport 53 -j NFLOG --nflog-group 4243
//
// Binding fails if another socket has bound group. Responses that do not parse are
// counted in stats (which may be nil) and skipped.
func ListenNFLOG(ctx context.Context, group uint16, cache *Cache) error {
	return ListenNFLOGStats(ctx, group, cache, nil)
}

// ListenNFLOGStats is ListenNFLOG with counters.
func ListenNFLOGStats(ctx context.Context, group uint16, cache *Cache, stats *NFLOGStats) error {
	if stats == nil {
		stats = new(NFLOGStats)
	}
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
				stats.Overflows.Add(1)
				continue
			}
			return fmt.Errorf("nflog group %d: receive: %w", group, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			stats.Malformed.Add(1)
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysULOG<<8|nfulnlMsgPacket {
				continue
			}
			stats.Packets.Add(1)
			payload, ok := payloadOf(m.Data)
			if !ok {
				stats.Malformed.Add(1)
				continue
			}
			resp, err := ParsePacket(payload)
			if err != nil {
				stats.Malformed.Add(1)
				continue
			}
			stats.Responses.Add(1)
			cache.AddResponse(resp)
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

// payloadOf returns the NFULA_PAYLOAD attribute of an NFULNL_MSG_PACKET message.
func payloadOf(data []byte) ([]byte, bool) {
	if len(data) < nfgenmsgLen {
		return nil, false
	}
	ad, err := netlink.NewAttributeDecoder(data[nfgenmsgLen:])
	if err != nil {
		return nil, false
	}
	for ad.Next() {
		if ad.Type()&nlaTypeMask == nfulaPayload {
			return ad.Bytes(), true
		}
	}
	return nil, false
}
