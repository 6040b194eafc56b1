package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// Live byte counts: an iterator over the socket storage map (latch_fast_live)
// writes the tuple and the counters of every socket whose packets the cgroup_skb
// programs count (Stats.TCPEndBytes), so that the byte accountant can report a
// long TCP flow's bytes while it lives without reading its conntrack entry (a
// flow the fast path keeps out of conntrack has none).

// The iterator programs in the object: over the socket storage map (socks),
// which visits the sockets that have a record only, and, for a kernel that
// refuses iterators over a map's elements, over the TCP sockets of the reader's
// network namespace, which looks each one's record up.
const (
	liveMapProg = "latch_fast_live"
	liveTCPProg = "latch_fast_live_tcp"
)

// liveVia says which iterator gives the live counts.
type liveVia int

const (
	liveOff liveVia = iota
	liveMap         // latch_fast_live
	liveTCP         // latch_fast_live_tcp
)

func (v liveVia) String() string {
	switch v {
	case liveMap:
		return "socket storage iterator"
	case liveTCP:
		return "TCP socket iterator"
	}
	return "none"
}

// liveKernel says which iterator the kernel lets a program run as (a trivial
// program of each kind, loaded and closed), and why not the other(s). force
// says the kernel has neither (tests); noMap that it refuses the map's (tests).
func liveKernel(force, noMap bool) (liveVia, string) {
	if force {
		return liveOff, "the kernel has no iterator over socket storage maps or TCP sockets (test)"
	}
	probe := func(target string) error {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "latch_probe", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: target, License: "Dual MIT/GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		})
		if err != nil {
			return err
		}
		return p.Close()
	}
	mapWhy := "refused (test)"
	if !noMap {
		err := probe("bpf_sk_storage_map")
		if err == nil {
			return liveMap, ""
		}
		mapWhy = err.Error()
	}
	if err := probe("tcp"); err != nil {
		return liveOff, fmt.Sprintf("the kernel refuses iterators over socket storage maps (%s) and TCP sockets (%v)", mapWhy, err)
	}
	return liveTCP, ""
}

// withoutProg puts a program that does nothing and that every kernel loads in
// the place of the program name (the object's programs are loaded together: one
// the kernel refuses would take the fast path down with it). It is never
// attached.
func withoutProg(spec *ebpf.CollectionSpec, name string) error {
	p := spec.Programs[name]
	if p == nil {
		return errors.New("the eBPF object has no program " + name)
	}
	spec.Programs[name] = &ebpf.ProgramSpec{
		Name:         p.Name,
		Type:         ebpf.SocketFilter,
		License:      p.License,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}
	return nil
}

// withLive leaves in spec the iterator program v needs, and placeholders for
// the others.
func withLive(spec *ebpf.CollectionSpec, v liveVia) error {
	for _, p := range []struct {
		name string
		via  liveVia
	}{{liveMapProg, liveMap}, {liveTCPProg, liveTCP}} {
		if p.via != v {
			if err := withoutProg(spec, p.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// attachLive makes the iterator whose instances SocketCounts reads. It returns
// why not, or "".
func (fp *FastPath) attachLive() string {
	opts := link.IterOptions{Program: fp.objs.LatchFastLive, Map: fp.objs.Socks}
	if fp.liveVia == liveTCP {
		opts = link.IterOptions{Program: fp.objs.LatchFastLiveTcp}
	}
	it, err := link.AttachIter(opts)
	if err != nil {
		return fmt.Sprintf("make the %v: %v", fp.liveVia, err)
	}
	fp.liveIter = it
	fp.links = append(fp.links, it)
	return ""
}

// ErrNoLiveBytes is SocketCounts' error when the kernel gives no live counts of
// sockets (Stats.TCPLiveBytesWhy says why).
var ErrNoLiveBytes = errors.New("fast path: no live counts of TCP sockets")

// SocketCounts calls fn for every TCP socket of the served network namespace
// whose packets the kernel counts (one opened actively while
// Stats.TCPEndBytes, from its SYN until it ends: End carries its totals then),
// with its local and remote address and port (an IPv4-mapped IPv6 socket's are
// IPv4, as its conntrack entry's) and the bytes it sent (Out) and received (In)
// so far, each packet's length from its IP header on (what conntrack counts).
// Each call reads the kernel's sockets afresh (an iterator over their storage).
//
// Without the iterator (Stats.TCPLiveBytes false) it returns ErrNoLiveBytes.
// Records that do not decode are skipped and reported in the error, after the
// others were given to fn: the caller then knows not every socket was listed.
func (fp *FastPath) SocketCounts(fn func(local, remote netip.AddrPort, bytes Counts)) error {
	if fp.liveIter == nil {
		return fmt.Errorf("%w: %s", ErrNoLiveBytes, fp.liveWhy)
	}
	fp.liveMu.Lock()
	defer fp.liveMu.Unlock()
	r, err := fp.liveIter.Open()
	if err != nil {
		return fmt.Errorf("fast path: open the iterator over the socket counters: %w", err)
	}
	fp.liveBuf.Reset()
	_, err = fp.liveBuf.ReadFrom(r)
	r.Close()
	if err != nil {
		return fmt.Errorf("fast path: read the socket counters: %w", err)
	}
	return decodeLives(fp.liveBuf.Bytes(), fn)
}

// liveState is what FastPath keeps for SocketCounts.
type liveState struct {
	liveWhy  string     // why there are no live counts; "": there are
	liveVia  liveVia    // the iterator that gives them
	liveIter *link.Iter // nil: none
	liveMu   sync.Mutex
	liveBuf  bytes.Buffer // reused from one read to the next
}

// liveSize is the size of struct fp_live, liveKind its first field.
const (
	liveSize = 80
	liveKind = 0x6c697621
)

// decodeLives decodes the records b holds, one after the other, calling fn for
// each good one; it returns an error that says how many did not decode (and the
// first one's fault), or that b ends in part of a record.
func decodeLives(b []byte, fn func(local, remote netip.AddrPort, bytes Counts)) error {
	var bad int
	var first error
	n := len(b) / liveSize
	for i := range n {
		local, remote, c, err := decodeLive(b[i*liveSize : (i+1)*liveSize])
		if err != nil {
			if bad == 0 {
				first = fmt.Errorf("record %d: %w", i, err)
			}
			bad++
			continue
		}
		fn(local, remote, c)
	}
	var errs []error
	if bad > 0 {
		errs = append(errs, fmt.Errorf("fast path: %d of %d socket counter records did not decode (%w)", bad, n, first))
	}
	if rest := len(b) % liveSize; rest != 0 {
		errs = append(errs, fmt.Errorf("fast path: the socket counters end in %d bytes of a record of %d", rest, liveSize))
	}
	return errors.Join(errs...)
}

// decodeLive reads one struct fp_live: a known family, both ports set, and
// counts a packet's minimal length can make.
func decodeLive(b []byte) (local, remote netip.AddrPort, c Counts, err error) {
	if len(b) != liveSize {
		return local, remote, c, fmt.Errorf("socket counter record of %d bytes, want %d", len(b), liveSize)
	}
	ne := binary.NativeEndian
	if k := ne.Uint32(b[0:]); k != liveKind {
		return local, remote, c, fmt.Errorf("socket counter record with kind %#x, want %#x", k, liveKind)
	}
	if local, remote, err = decodeSockTuple(b, "socket counter record"); err != nil {
		return local, remote, c, err
	}
	c = Counts{Out: ne.Uint64(b[48:]), In: ne.Uint64(b[56:])}
	po, pi := ne.Uint64(b[64:]), ne.Uint64(b[72:])
	// A packet is at least an IPv4 header long (as decodeEnd); the multiplication
	// must not wrap.
	const maxPackets = 1 << 58
	if po > maxPackets || pi > maxPackets || c.Out < 20*po || c.In < 20*pi {
		return local, remote, Counts{}, fmt.Errorf("socket counter record with %d bytes in %d packets out and %d bytes in %d packets in", c.Out, po, c.In, pi)
	}
	return local, remote, c, nil
}
