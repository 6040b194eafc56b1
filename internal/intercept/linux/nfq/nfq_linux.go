package nfq

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Netlink constants from linux/netfilter/nfnetlink.h and nfnetlink_queue.h.
const (
	nfnlSubsysQueue = 3

	msgPacket  = 0
	msgVerdict = 1
	msgConfig  = 2

	cfgCmdBind   = 1
	cfgCmdUnbind = 2

	attrCfgCmd    = 1
	attrCfgParams = 2
	attrCfgMaxLen = 3
	attrCfgMask   = 4
	attrCfgFlags  = 5

	attrPacketHdr  = 1
	attrVerdictHdr = 2
	attrMark       = 3
	attrIfIndexIn  = 5
	attrIfIndexOut = 6
	attrPayload    = 10
	attrCapLen     = 13
	attrSkbInfo    = 14
	attrUID        = 16
	attrGID        = 17

	copyPacket = 2
)

// Flags of NFQA_CFG_FLAGS.
const (
	flagFailOpen = 1 << 0
	flagGSO      = 1 << 2
	flagUIDGID   = 1 << 3
)

// Verdict is a netfilter verdict for a queued packet.
type Verdict uint32

// Verdicts (linux/netfilter.h).
const (
	Drop   Verdict = 0 // NF_DROP
	Accept Verdict = 1 // NF_ACCEPT
	// Repeat runs the packet through the same hook again from its first rule, so a
	// ruleset can act on the mark set with the verdict.
	Repeat Verdict = 4 // NF_REPEAT
)

// String returns the netfilter name of v.
func (v Verdict) String() string {
	switch v {
	case Drop:
		return "NF_DROP"
	case Accept:
		return "NF_ACCEPT"
	case Repeat:
		return "NF_REPEAT"
	}
	return fmt.Sprintf("verdict(%d)", uint32(v))
}

// ErrQueueBusy is returned by Open when another socket has bound the queue already.
var ErrQueueBusy = errors.New("queue is bound by another process")

// Options configure a queue.
type Options struct {
	// CopyRange is how many bytes of each packet the kernel copies (0: 256, enough for
	// the IP and transport headers latch reads).
	CopyRange uint32
	// MaxLen is the most packets the kernel holds for this queue (0: 8192). Beyond it
	// the kernel drops new packets unless FailOpen is set.
	MaxLen uint32
	// FailOpen makes the kernel accept packets it cannot queue (queue full) instead of
	// dropping them. latch leaves it off: overflow fails closed.
	FailOpen bool
	// ReadBuffer is the socket receive buffer in bytes (0: 8 MiB), set with
	// SO_RCVBUFFORCE so that it can exceed net.core.rmem_max.
	ReadBuffer int
}

// Packet is one packet the kernel holds in the queue until SetVerdict.
type Packet struct {
	ID      uint32 // packet id for SetVerdict
	HWProto uint16 // ethertype (0x0800 IPv4, 0x86dd IPv6)
	Hook    uint8  // netfilter hook (1 LOCAL_IN, 3 LOCAL_OUT)
	Mark    uint32 // skb mark when the packet was queued
	HasUID  bool   // UID and GID are set: the packet belongs to a local socket
	UID     uint32
	GID     uint32
	InDev   uint32 // input interface index, 0 if none
	OutDev  uint32 // output interface index, 0 if none
	CapLen  uint32 // original length when Payload was truncated to the copy range, else 0
	SkbInfo uint32 // NFQA_SKB_INFO flags (GSO, checksum not ready)
	Payload []byte // the packet from its IP header, at most the copy range
	Time    time.Time
	// Err is set when the message could not be fully decoded but its packet id could:
	// the caller must still give the packet a verdict (latch drops it).
	Err error

	hasID bool
}

// Conn is a bound NFQUEUE queue. Read must be called from one goroutine; SetVerdict may
// be called from any goroutine at the same time.
type Conn struct {
	nl    *netlink.Conn
	queue uint16

	closeOnce sync.Once
	closeErr  error
}

// Open binds queue num and configures it for copying packets. If another process (or
// another socket) holds the queue it returns an error wrapping ErrQueueBusy.
func Open(num uint16, opts Options) (*Conn, error) {
	if opts.CopyRange == 0 {
		opts.CopyRange = 256
	}
	if opts.MaxLen == 0 {
		opts.MaxLen = 8192
	}
	if opts.ReadBuffer == 0 {
		opts.ReadBuffer = 8 << 20
	}
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("nfqueue %d: open netlink socket: %w", num, err)
	}
	c := &Conn{nl: nl, queue: num}
	if err := c.setReadBuffer(opts.ReadBuffer); err != nil {
		nl.Close()
		return nil, fmt.Errorf("nfqueue %d: %w", num, err)
	}
	// Keep ENOBUFS visible (NETLINK_NO_ENOBUFS off): an overflow must be counted.
	if err := nl.SetOption(netlink.NoENOBUFS, false); err != nil {
		nl.Close()
		return nil, fmt.Errorf("nfqueue %d: clear NETLINK_NO_ENOBUFS: %w", num, err)
	}
	if err := c.config(attrCfgCmd, []byte{cfgCmdBind, 0, 0, 0}); err != nil {
		nl.Close()
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("nfqueue %d: bind: %w (%v)", num, ErrQueueBusy, err)
		}
		return nil, fmt.Errorf("nfqueue %d: bind: %w", num, err)
	}
	params := make([]byte, 5)
	binary.BigEndian.PutUint32(params, opts.CopyRange)
	params[4] = copyPacket
	if err := c.config(attrCfgParams, params); err != nil {
		c.Close()
		return nil, fmt.Errorf("nfqueue %d: set copy mode: %w", num, err)
	}
	if err := c.config(attrCfgMaxLen, be32(opts.MaxLen)); err != nil {
		c.Close()
		return nil, fmt.Errorf("nfqueue %d: set queue length %d: %w", num, opts.MaxLen, err)
	}
	flags := uint32(flagUIDGID | flagGSO)
	mask := uint32(flagUIDGID | flagGSO | flagFailOpen)
	if opts.FailOpen {
		flags |= flagFailOpen
	}
	if err := c.flags(flags, mask); err != nil {
		c.Close()
		return nil, fmt.Errorf("nfqueue %d: set flags %#x: %w", num, flags, err)
	}
	return c, nil
}

func (c *Conn) setReadBuffer(n int) error {
	raw, err := c.nl.SyscallConn()
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return fmt.Errorf("socket control: %w", err)
	}
	if serr != nil {
		// Without CAP_NET_ADMIN fall back to what rmem_max allows.
		if err := c.nl.SetReadBuffer(n); err != nil {
			return fmt.Errorf("set receive buffer %d: %w", n, err)
		}
	}
	return nil
}

func (c *Conn) flags(flags, mask uint32) error {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(attrCfgFlags, be32(flags))
	ae.Bytes(attrCfgMask, be32(mask))
	b, err := ae.Encode()
	if err != nil {
		return err
	}
	return c.execute(msgConfig, b)
}

func (c *Conn) config(attr uint16, value []byte) error {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(attr, value)
	b, err := ae.Encode()
	if err != nil {
		return err
	}
	return c.execute(msgConfig, b)
}

func (c *Conn) execute(msg uint8, attrs []byte) error {
	_, err := c.nl.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysQueue<<8 | uint16(msg)),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(c.nfgen(), attrs...),
	})
	return err
}

// nfgen returns the nfgenmsg header addressing this queue.
func (c *Conn) nfgen() []byte {
	return []byte{unix.AF_UNSPEC, 0 /* NFNETLINK_V0 */, byte(c.queue >> 8), byte(c.queue)}
}

// SetVerdict sets the verdict for packet id. If setMark, the packet's mark becomes mark.
// It is safe to call from any goroutine and does not wait for the kernel's answer; a
// verdict the kernel refuses (for instance an unknown id) shows up as an error from Read.
func (c *Conn) SetVerdict(id uint32, v Verdict, mark uint32, setMark bool) error {
	// nfgenmsg (4) + verdict header attr (4+8) + mark attr (4+4)
	b := make([]byte, 4, 24)
	copy(b, c.nfgen())
	b = appendAttr(b, attrVerdictHdr, uint32(v), id)
	if setMark {
		b = appendAttr(b, attrMark, mark)
	}
	_, err := c.nl.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysQueue<<8 | msgVerdict),
			Flags: netlink.Request,
		},
		Data: b,
	})
	if err != nil {
		return fmt.Errorf("nfqueue %d: verdict %v for packet %d: %w", c.queue, v, id, err)
	}
	return nil
}

func appendAttr(b []byte, typ uint16, vals ...uint32) []byte {
	n := 4 + 4*len(vals)
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	for _, v := range vals {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

// Read blocks until the kernel sends packets and returns them. It returns an error
// wrapping unix.ENOBUFS when the socket overflowed (packets were lost to the reader
// and stay held in the kernel until the queue is unbound); the caller counts it and
// reads on. An error from the kernel about an earlier verdict wraps its errno.
// After SetReadDeadline or Close it returns the corresponding error.
func (c *Conn) Read() ([]Packet, error) {
	msgs, err := c.nl.Receive()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	pkts := make([]Packet, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(nfnlSubsysQueue<<8|msgPacket) {
			continue
		}
		p, err := parsePacket(m.Data)
		if err != nil {
			if !p.hasID {
				return pkts, fmt.Errorf("nfqueue %d: %w", c.queue, err)
			}
			p.Err = err
		}
		p.Time = now
		pkts = append(pkts, p)
	}
	return pkts, nil
}

// MalformedError is a packet message from the kernel that could not be decoded.
type MalformedError struct {
	Attr   string
	Offset int
	Reason string
}

func (e *MalformedError) Error() string {
	return fmt.Sprintf("malformed packet message: %s at offset %d: %s", e.Attr, e.Offset, e.Reason)
}

func parsePacket(b []byte) (Packet, error) {
	var p Packet
	if len(b) < 4 {
		return p, &MalformedError{"nfgenmsg", 0, fmt.Sprintf("%d bytes, want 4", len(b))}
	}
	for off := 4; off < len(b); {
		if off+4 > len(b) {
			return p, &MalformedError{"attribute header", off, "truncated"}
		}
		l := int(binary.NativeEndian.Uint16(b[off:]))
		typ := binary.NativeEndian.Uint16(b[off+2:]) & 0x3fff // strip NLA_F_NESTED/BYTEORDER
		if l < 4 || off+l > len(b) {
			return p, &MalformedError{"attribute length", off, fmt.Sprintf("%d does not fit %d bytes", l, len(b)-off)}
		}
		v := b[off+4 : off+l]
		u32 := func(name string) (uint32, error) {
			if len(v) != 4 {
				return 0, &MalformedError{name, off, fmt.Sprintf("%d bytes, want 4", len(v))}
			}
			return binary.BigEndian.Uint32(v), nil
		}
		var err error
		switch typ {
		case attrPacketHdr:
			if len(v) < 7 {
				return p, &MalformedError{"NFQA_PACKET_HDR", off, fmt.Sprintf("%d bytes, want 7", len(v))}
			}
			p.ID = binary.BigEndian.Uint32(v)
			p.HWProto = binary.BigEndian.Uint16(v[4:])
			p.Hook = v[6]
			p.hasID = true
		case attrMark:
			p.Mark, err = u32("NFQA_MARK")
		case attrIfIndexIn:
			p.InDev, err = u32("NFQA_IFINDEX_INDEV")
		case attrIfIndexOut:
			p.OutDev, err = u32("NFQA_IFINDEX_OUTDEV")
		case attrCapLen:
			p.CapLen, err = u32("NFQA_CAP_LEN")
		case attrSkbInfo:
			p.SkbInfo, err = u32("NFQA_SKB_INFO")
		case attrUID:
			p.UID, err = u32("NFQA_UID")
			p.HasUID = err == nil
		case attrGID:
			p.GID, err = u32("NFQA_GID")
		case attrPayload:
			p.Payload = v
		}
		if err != nil {
			return p, err
		}
		off += (l + 3) &^ 3
	}
	if !p.hasID {
		return p, &MalformedError{"NFQA_PACKET_HDR", 4, "missing"}
	}
	return p, nil
}

// SetReadDeadline makes a blocked Read return once t has passed.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nl.SetReadDeadline(t) }

// Close unbinds the queue and closes the socket. The kernel drops every packet still
// held in the queue (or, for a queue with --queue-bypass rules, nothing is held).
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		// Closing the socket unbinds the queue as well; the explicit unbind makes the
		// intent visible in traces and frees the queue even if a dup of the fd lingers.
		_ = c.config(attrCfgCmd, []byte{cfgCmdUnbind, 0, 0, 0})
		c.closeErr = c.nl.Close()
	})
	return c.closeErr
}

// IsOverflow reports whether err from Read means the socket buffer overflowed.
func IsOverflow(err error) bool { return errors.Is(err, unix.ENOBUFS) }

// IsClosed reports whether err from Read means the Conn was closed or its deadline hit.
func IsClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, unix.EBADF)
}

// AcceptAll binds queue num and accepts every packet until ctx is done: the cheapest
// possible queue reader, the floor against which latch's own cost is measured. It
// copies packets exactly as latch does. ready, if not nil, is called once the queue is
// bound. It returns nil when ctx ends it.
func AcceptAll(ctx context.Context, num uint16, ready func()) error {
	c, err := Open(num, Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if ready != nil {
		ready()
	}
	for {
		pkts, err := c.Read()
		for _, p := range pkts {
			if err := c.SetVerdict(p.ID, Accept, 0, false); err != nil {
				return err
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if IsClosed(err) {
				return err
			}
			// Overflow or a refused verdict: keep reading.
		}
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
