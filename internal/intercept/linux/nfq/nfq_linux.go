package nfq

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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

// Conn is a bound NFQUEUE queue. Each goroutine that reads needs its own Reader;
// SetVerdict may be called from any goroutine at the same time.
//
// The socket is a plain netlink socket connected to the kernel: a read is one
// recvmsg into the Reader's buffer, a verdict one write of a message built on the
// stack, with no allocation and no lock beyond a read lock against Close.
type Conn struct {
	f     *os.File // the socket, for the runtime poller (blocking reads, deadlines)
	raw   syscall.RawConn
	fd    int // f's descriptor; valid while life is read-locked and closed is false
	queue uint16
	seq   uint32 // of the last configuration request; Open's goroutine only

	life   sync.RWMutex
	closed atomic.Bool

	// pending holds packets that arrived while Open waited for the kernel's answer
	// to a configuration request; the first Read returns them.
	pendingMu  sync.Mutex
	pending    []Packet
	hasPending atomic.Bool
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
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nfqueue %d: open netlink socket: %w", num, err)
	}
	if err := setupSocket(fd, opts.ReadBuffer); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nfqueue %d: %w", num, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("nfqueue-%d", num))
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nfqueue %d: socket: %w", num, err)
	}
	c := &Conn{f: f, raw: raw, fd: fd, queue: num}
	if err := c.config(attrCfgCmd, []byte{cfgCmdBind, 0, 0, 0}); err != nil {
		c.closeSocket()
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

// setupSocket sizes the receive buffer, keeps ENOBUFS visible and binds and
// connects the socket to the kernel.
func setupSocket(fd, rcvbuf int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		// Without CAP_NET_ADMIN fall back to what rmem_max allows.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return fmt.Errorf("set receive buffer %d: %w", rcvbuf, err)
		}
	}
	// Keep ENOBUFS visible (NETLINK_NO_ENOBUFS off): an overflow must be counted.
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 0); err != nil {
		return fmt.Errorf("clear NETLINK_NO_ENOBUFS: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind netlink socket: %w", err)
	}
	// Connected to the kernel, the socket takes plain write and read.
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("connect netlink socket: %w", err)
	}
	return nil
}

func (c *Conn) flags(flags, mask uint32) error {
	b := appendAttr(nil, attrCfgFlags, flags)
	b = appendAttr(b, attrCfgMask, mask)
	return c.request(msgConfig, b)
}

func (c *Conn) config(attr uint16, value []byte) error {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(value)))
	b = binary.NativeEndian.AppendUint16(b, attr)
	b = append(b, value...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return c.request(msgConfig, b)
}

// request sends a message with NLM_F_ACK and waits up to 5s for the kernel's
// answer. Packets that arrive meanwhile are kept for the first Read. It must not
// run while a Reader reads.
func (c *Conn) request(msg uint8, attrs []byte) error {
	c.seq++
	seq := c.seq
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+4+len(attrs))
	putNlmsghdr(b, uint16(nfnlSubsysQueue<<8|uint16(msg)), unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, nlmsgHdrLen+4+len(attrs))
	b = append(b, c.nfgen()...)
	b = append(b, attrs...)
	if err := c.write(b); err != nil {
		return err
	}
	if err := c.f.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	defer c.f.SetReadDeadline(time.Time{})
	buf := make([]byte, 64<<10)
	for {
		n, err := c.recv(buf)
		if err != nil {
			return fmt.Errorf("wait for the kernel's answer: %w", err)
		}
		var answer error
		answered := false
		pkts, err := c.parse(buf[:n], nil, func(s uint32, errno unix.Errno) {
			if s == seq {
				answered = true
				if errno != 0 {
					answer = errno
				}
			}
		})
		for i := range pkts {
			pkts[i].Payload = bytes.Clone(pkts[i].Payload)
		}
		if len(pkts) > 0 {
			c.pendingMu.Lock()
			c.pending = append(c.pending, pkts...)
			c.hasPending.Store(true)
			c.pendingMu.Unlock()
		}
		if err != nil {
			return err
		}
		if answered {
			return answer
		}
	}
}

// write sends one message to the kernel.
func (c *Conn) write(b []byte) error {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed.Load() {
		return os.ErrClosed
	}
	for {
		_, err := unix.Write(c.fd, b)
		if err == unix.EINTR {
			continue
		}
		return err
	}
}

// nfgen returns the nfgenmsg header addressing this queue.
func (c *Conn) nfgen() []byte {
	return []byte{unix.AF_UNSPEC, 0 /* NFNETLINK_V0 */, byte(c.queue >> 8), byte(c.queue)}
}

const nlmsgHdrLen = 16

func putNlmsghdr(b []byte, typ, flags uint16, seq uint32, length int) {
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(length))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	ne.PutUint32(b[12:], 0)
}

// SetVerdict sets the verdict for packet id. If setMark, the packet's mark becomes mark.
// It is safe to call from any goroutine and does not wait for the kernel's answer; a
// verdict the kernel refuses (for instance an unknown id) shows up as an error from Read.
func (c *Conn) SetVerdict(id uint32, v Verdict, mark uint32, setMark bool) error {
	// nlmsghdr (16) + nfgenmsg (4) + verdict header attr (4+8) + mark attr (4+4)
	var msg [nlmsgHdrLen + 4 + 12 + 8]byte
	n := nlmsgHdrLen + 4 + 12
	if setMark {
		n += 8
	}
	putNlmsghdr(msg[:], nfnlSubsysQueue<<8|msgVerdict, unix.NLM_F_REQUEST, 0, n)
	msg[16], msg[17], msg[18], msg[19] = unix.AF_UNSPEC, 0, byte(c.queue>>8), byte(c.queue)
	putAttr(msg[20:], attrVerdictHdr, uint32(v), id)
	if setMark {
		putAttr(msg[32:], attrMark, mark)
	}
	if err := c.write(msg[:n]); err != nil {
		return fmt.Errorf("nfqueue %d: verdict %v for packet %d: %w", c.queue, v, id, err)
	}
	return nil
}

// putAttr writes a netlink attribute of big-endian u32 values at the start of b.
func putAttr(b []byte, typ uint16, vals ...uint32) {
	binary.NativeEndian.PutUint16(b, uint16(4+4*len(vals)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	for i, v := range vals {
		binary.BigEndian.PutUint32(b[4+4*i:], v)
	}
}

func appendAttr(b []byte, typ uint16, vals ...uint32) []byte {
	n := len(b)
	b = append(b, make([]byte, 4+4*len(vals))...)
	putAttr(b[n:], typ, vals...)
	return b
}

// Reader reads packets from a Conn into its own buffer. It is for one goroutine;
// several Readers may read one Conn at the same time.
type Reader struct {
	c    *Conn
	buf  []byte
	pkts []Packet

	// read is the poller callback, made once so that a read allocates nothing.
	read    func(fd uintptr) bool
	n       int
	readErr error
}

// NewReader returns a Reader of c with a buffer of 64 KiB, which holds any message
// for a copy range up to 60 KiB.
func (c *Conn) NewReader() *Reader {
	r := &Reader{c: c, buf: make([]byte, 64<<10)}
	r.read = func(fd uintptr) bool {
		for {
			r.n, r.readErr = unix.Read(int(fd), r.buf)
			if r.readErr != unix.EINTR {
				break
			}
		}
		return r.readErr != unix.EAGAIN
	}
	return r
}

// Read blocks until the kernel sends packets and returns them. They, their Payload
// included, are valid until the next Read on r. It returns an error wrapping
// unix.ENOBUFS when the socket overflowed (packets were lost to the reader and stay
// held in the kernel until the queue is unbound); the caller counts it and reads on.
// An error from the kernel about an earlier verdict wraps its errno, and comes with
// the packets read with it. After SetReadDeadline or Close it returns the
// corresponding error (see IsClosed).
func (r *Reader) Read() ([]Packet, error) {
	c := r.c
	if c.hasPending.Load() {
		c.pendingMu.Lock()
		pkts := c.pending
		c.pending = nil
		c.hasPending.Store(false)
		c.pendingMu.Unlock()
		if len(pkts) > 0 {
			return pkts, nil
		}
	}
	n, err := c.recvWith(r)
	if err != nil {
		return nil, err
	}
	var kernelErr error
	pkts, err := c.parse(r.buf[:n], r.pkts[:0], func(_ uint32, errno unix.Errno) {
		if errno != 0 && kernelErr == nil {
			kernelErr = &KernelError{Queue: c.queue, Errno: errno}
		}
	})
	r.pkts = pkts
	if err == nil {
		err = kernelErr
	}
	return pkts, err
}

// recvWith reads one datagram with r's callback.
func (c *Conn) recvWith(r *Reader) (int, error) {
	if err := c.raw.Read(r.read); err != nil {
		return 0, c.readError(err)
	}
	if r.readErr != nil {
		return 0, fmt.Errorf("nfqueue %d: receive: %w", c.queue, r.readErr)
	}
	if r.n >= len(r.buf) {
		return 0, fmt.Errorf("nfqueue %d: receive: message of %d bytes or more fills the buffer", c.queue, r.n)
	}
	return r.n, nil
}

// recv reads one datagram into buf; for Open's requests.
func (c *Conn) recv(buf []byte) (int, error) {
	r := &Reader{c: c, buf: buf}
	r.read = func(fd uintptr) bool {
		r.n, r.readErr = unix.Read(int(fd), r.buf)
		return r.readErr != unix.EAGAIN && r.readErr != unix.EINTR
	}
	return c.recvWith(r)
}

func (c *Conn) readError(err error) error {
	if c.closed.Load() {
		return fmt.Errorf("nfqueue %d: receive: %w", c.queue, os.ErrClosed)
	}
	return fmt.Errorf("nfqueue %d: receive: %w", c.queue, err)
}

// parse decodes the netlink messages of one datagram: packets are appended to pkts,
// acknowledgements and errors (NLMSG_ERROR) go to onAck with their sequence number.
// A packet message that cannot be decoded past its id is returned with Err set; one
// without an id, or a broken netlink header, ends parsing with an error.
func (c *Conn) parse(b []byte, pkts []Packet, onAck func(seq uint32, errno unix.Errno)) ([]Packet, error) {
	now := time.Now()
	ne := binary.NativeEndian
	for off := 0; len(b)-off >= nlmsgHdrLen; {
		l := int(ne.Uint32(b[off:]))
		typ := ne.Uint16(b[off+4:])
		seq := ne.Uint32(b[off+8:])
		if l < nlmsgHdrLen || l > len(b)-off {
			return pkts, fmt.Errorf("nfqueue %d: netlink message at offset %d: length %d, %d bytes left", c.queue, off, l, len(b)-off)
		}
		body := b[off+nlmsgHdrLen : off+l]
		off += (l + 3) &^ 3
		switch typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return pkts, fmt.Errorf("nfqueue %d: netlink error message of %d bytes", c.queue, len(body))
			}
			onAck(seq, unix.Errno(-int32(ne.Uint32(body))))
		case nfnlSubsysQueue<<8 | msgPacket:
			p, err := parsePacket(body)
			if err != nil {
				if !p.hasID {
					return pkts, fmt.Errorf("nfqueue %d: %w", c.queue, err)
				}
				p.Err = err
			}
			p.Time = now
			pkts = append(pkts, p)
		}
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
func (c *Conn) SetReadDeadline(t time.Time) error { return c.f.SetReadDeadline(t) }

// Close unbinds the queue and closes the socket. The kernel drops every packet still
// held in the queue (or, for a queue with --queue-bypass rules, nothing is held).
// Reads in progress return an error for which IsClosed is true.
func (c *Conn) Close() error {
	if c.closed.Load() {
		return nil
	}
	// Closing the socket unbinds the queue as well; the explicit unbind makes the
	// intent visible in traces and frees the queue even if a dup of the fd lingers.
	// Its answer is not awaited: a Reader may be reading.
	var msg [nlmsgHdrLen + 4 + 8]byte
	putNlmsghdr(msg[:], nfnlSubsysQueue<<8|msgConfig, unix.NLM_F_REQUEST, 0, len(msg))
	msg[16], msg[17], msg[18], msg[19] = unix.AF_UNSPEC, 0, byte(c.queue>>8), byte(c.queue)
	binary.NativeEndian.PutUint16(msg[20:], 8)
	binary.NativeEndian.PutUint16(msg[22:], attrCfgCmd)
	msg[24] = cfgCmdUnbind
	_ = c.write(msg[:])
	return c.closeSocket()
}

// closeSocket closes the socket once no write is in progress.
func (c *Conn) closeSocket() error {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed.Swap(true) {
		return nil
	}
	return c.f.Close()
}

// KernelError is the kernel's error reply to a message we sent, most often a verdict
// for a packet it no longer holds (ENOENT: the packet was dropped when its interface
// went away). It says nothing about the socket itself, which goes on working.
type KernelError struct {
	Queue uint16
	Errno unix.Errno
}

func (e *KernelError) Error() string {
	return fmt.Sprintf("nfqueue %d: kernel: %v", e.Queue, e.Errno)
}

// Unwrap returns the errno, so errors.Is(err, unix.ENOENT) works.
func (e *KernelError) Unwrap() error { return e.Errno }

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
	r := c.NewReader()
	for {
		pkts, err := r.Read()
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
