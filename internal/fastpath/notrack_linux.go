package fastpath

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// The iterator programs of notrack (see doc.go, "Notrack").
const (
	progRedecide = "latch_fast_redecide"
	progRestore  = "latch_fast_restore"
	progSweep    = "latch_fast_sweep"
)

// DefaultKeepEntries bounds the sockets a RedecideSockets call can leave alone
// (the keep map); beyond them every fast socket is moved, which costs one more
// decision each, never a wrong one.
const DefaultKeepEntries = 65536

// withoutIterators replaces the iterator programs of spec by programs that are
// never attached (a socket filter returning 0): for a kernel that refuses them
// (bpf_setsockopt in a TCP iterator needs Linux 5.15), the rest of the fast path
// loads all the same and notrack is off.
func withoutIterators(spec *ebpf.CollectionSpec) {
	for _, name := range []string{progRedecide, progRestore, progSweep} {
		spec.Programs[name] = &ebpf.ProgramSpec{
			Name: name, Type: ebpf.SocketFilter, License: "Dual MIT/GPL",
			Instructions: asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()},
		}
	}
}

// attachIterators attaches the TCP iterators; it returns why not, or "".
func (fp *FastPath) attachIterators() string {
	if fp.notrackWhy != "" {
		return fp.notrackWhy
	}
	if fp.tcpLocalWhy != "" {
		// No sock_ops program, so no TCP decision in the kernel: no fast socket.
		return "no sock_ops program: " + fp.tcpLocalWhy
	}
	var err error
	if fp.redecideIter, err = link.AttachIter(link.IterOptions{Program: fp.objs.LatchFastRedecide}); err != nil {
		return fmt.Sprintf("attach the TCP socket iterator %s: %v", progRedecide, err)
	}
	if fp.restoreIter, err = link.AttachIter(link.IterOptions{Program: fp.objs.LatchFastRestore}); err != nil {
		fp.redecideIter.Close()
		fp.redecideIter = nil
		return fmt.Sprintf("attach the TCP socket iterator %s: %v", progRestore, err)
	}
	return ""
}

// sweep moves the sockets a daemon gone before left with MarkFastAllow (their
// SYN was on its way when it died) to MarkFastRedecide, so that the ruleset
// this daemon installs, whose lease then holds, does not let their next SYN
// pass by that mark (see "The lease" in doc.go). It runs once, at Open, before
// the ruleset can name this daemon's lease. It returns how many it moved.
func (fp *FastPath) sweep() (int, error) {
	it, err := link.AttachIter(link.IterOptions{Program: fp.objs.LatchFastSweep})
	if err != nil {
		return 0, fmt.Errorf("fast path: attach the TCP socket iterator %s: %w", progSweep, err)
	}
	defer it.Close()
	fp.iterMu.Lock()
	defer fp.iterMu.Unlock()
	return fp.runIter(it)
}

// Notrack says why the fast path cannot move its TCP sockets' marks (the TCP
// iterators are not loaded or attached), or "" if it can: the ruleset may then
// keep the fast path's TCP flows out of conntrack (internal/intercept/linux).
func (fp *FastPath) Notrack() string { return fp.notrackWhy }

// SetNotrack tells the fast path whether the ruleset installed keeps its TCP
// flows out of conntrack: nil if it does, else why not (shown in Stats).
func (fp *FastPath) SetNotrack(err error) {
	if err != nil {
		fp.notrackOn.Store(false)
		fp.notrackRuleWhy.Store(err.Error())
		return
	}
	fp.notrackRuleWhy.Store("")
	fp.notrackOn.Store(fp.notrackWhy == "")
}

// tupleOf is the iterators' key of the TCP socket from local to remote.
func tupleOf(local, remote netip.AddrPort) (fastpathFpTuple, bool) {
	var t fastpathFpTuple
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	switch {
	case la.Is4() && ra.Is4():
		t.Family = 4
		a, b := la.As4(), ra.As4()
		copy(t.Local[:], a[:])
		copy(t.Remote[:], b[:])
	case la.Is6() && ra.Is6():
		t.Family = 6
		t.Local, t.Remote = la.As16(), ra.As16()
	default:
		return t, false
	}
	t.LocalPort, t.RemotePort = local.Port(), remote.Port()
	return t, true
}

// RedecideSockets gives every TCP socket of the daemon's network namespace whose
// mark (under the fast path's mask) is the fast path's allow (MarkFastAllow) or
// flow mark (MarkFastFlow, an established fast socket's) the mark
// MarkFastRedecide, keeping the mark's other bits, but the sockets whose
// (local, remote) keep lists: their next packet is then held and decided again
// (internal/intercept/linux). It returns how many sockets it moved. It runs in
// the kernel before it returns. keep beyond the keep map's room is dropped: those
// sockets are moved too.
func (fp *FastPath) RedecideSockets(keep [][2]netip.AddrPort) (int, error) {
	if fp.redecideIter == nil {
		return 0, fmt.Errorf("fast path: no TCP socket iterator: %s", fp.notrackWhy)
	}
	fp.iterMu.Lock()
	defer fp.iterMu.Unlock()
	// The last run's tuples go first (in one batch where the kernel has batch
	// operations, Linux 5.6): the map has room for this run's.
	if len(fp.kept) > 0 {
		if _, err := fp.objs.Keep.BatchDelete(fp.kept, nil); err != nil {
			for _, t := range fp.kept {
				fp.objs.Keep.Delete(&t)
			}
		}
	}
	fp.kept = fp.kept[:0]
	fp.session++
	if err := fp.objs.IterSession.Set(fp.session); err != nil {
		return 0, fmt.Errorf("fast path: set the iterator's session: %w", err)
	}
	for _, k := range keep {
		if len(fp.kept) >= DefaultKeepEntries {
			break
		}
		if t, ok := tupleOf(k[0], k[1]); ok {
			fp.kept = append(fp.kept, t)
		}
	}
	if len(fp.kept) > 0 {
		sessions := make([]uint64, len(fp.kept))
		for i := range sessions {
			sessions[i] = fp.session
		}
		if _, err := fp.objs.Keep.BatchUpdate(fp.kept, sessions, nil); err != nil {
			// One by one; a tuple that does not fit is not kept (its socket
			// is marked: one more decision, never a wrong one).
			n := 0
			for _, t := range fp.kept {
				if fp.objs.Keep.Put(&t, fp.session) == nil {
					fp.kept[n] = t
					n++
				}
			}
			fp.kept = fp.kept[:n]
		}
	}
	return fp.runIter(fp.redecideIter)
}

// AllowSocket gives the TCP socket from local to remote its fast mark again if
// it still has MarkFastRedecide (the queue allowed its flow again), so that its
// later packets pass without crossing to user space: MarkFastFlow, or
// MarkFastAllow if its SYN is still on its way (SYN_SENT; the sock_ops program
// moves it to MarkFastFlow once established), the mark's other bits kept. It
// reports whether it did.
func (fp *FastPath) AllowSocket(local, remote netip.AddrPort) (bool, error) {
	if fp.restoreIter == nil {
		return false, fmt.Errorf("fast path: no TCP socket iterator: %s", fp.notrackWhy)
	}
	t, ok := tupleOf(local, remote)
	if !ok {
		return false, fmt.Errorf("fast path: allow socket %s -> %s: mixed address families", local, remote)
	}
	fp.iterMu.Lock()
	defer fp.iterMu.Unlock()
	if err := fp.objs.Restore.Put(uint32(0), &t); err != nil {
		return false, fmt.Errorf("fast path: allow socket %s -> %s: %w", local, remote, err)
	}
	n, err := fp.runIter(fp.restoreIter)
	return n > 0, err
}

// runIter runs it over every TCP socket of the daemon's network namespace (the
// kernel walks those of the namespace of the thread that opens it, which must
// be the one the fast path serves) and returns how many sockets it moved.
func (fp *FastPath) runIter(it *link.Iter) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if c, err := netnsCookie(); err != nil {
		return 0, fmt.Errorf("fast path: socket iterator: %w", err)
	} else if c != fp.cookie {
		return 0, errors.New("fast path: socket iterator: this thread is in another network namespace than the fast path's")
	}
	if err := fp.objs.IterMoved.Set(uint64(0)); err != nil {
		return 0, fmt.Errorf("fast path: socket iterator: %w", err)
	}
	rd, err := it.Open()
	if err != nil {
		return 0, fmt.Errorf("fast path: run the TCP socket iterator: %w", err)
	}
	_, err = io.Copy(io.Discard, rd)
	rd.Close()
	if err != nil {
		return 0, fmt.Errorf("fast path: run the TCP socket iterator: %w", err)
	}
	var n uint64
	if err := fp.objs.IterMoved.Get(&n); err != nil {
		return 0, fmt.Errorf("fast path: socket iterator: %w", err)
	}
	return int(n), nil
}

// syncTimeout bounds how long SyncDecisions waits for Run's reader.
const syncTimeout = 2 * time.Second

// SyncDecisions returns once Run has handed its callback every decision the
// kernel recorded before the call (the ring buffer is read at once rather than
// at its next period). An error (Run is not reading, or did not within
// syncTimeout) means some may not have been handed over.
func (fp *FastPath) SyncDecisions() error {
	ch := make(chan error, 1)
	fp.syncMu.Lock()
	if !fp.syncRunning {
		fp.syncMu.Unlock()
		return errors.New("fast path: decisions are not being read (Run)")
	}
	fp.syncs = append(fp.syncs, ch)
	fp.syncMu.Unlock()
	fp.flushDecisions()
	t := time.NewTimer(syncTimeout)
	defer t.Stop()
	select {
	case err := <-ch:
		return err
	case <-t.C:
		return fmt.Errorf("fast path: the decisions were not read within %v", syncTimeout)
	}
}

func (fp *FastPath) syncStart() {
	fp.syncMu.Lock()
	fp.syncRunning = true
	fp.syncMu.Unlock()
}

// syncStop answers the waiters with an error: Run stopped reading.
func (fp *FastPath) syncStop() {
	fp.syncMu.Lock()
	fp.syncRunning = false
	for _, ch := range fp.syncs {
		ch <- errors.New("fast path: Run stopped reading the decisions")
	}
	fp.syncs = nil
	fp.syncMu.Unlock()
}

// ringAvailable reports whether the decisions' ring holds a record (or, with
// ringWait, was closed: the reader ends then).
func (fp *FastPath) ringAvailable() bool {
	if fp.ringWait != nil {
		return fp.ringWait.available()
	}
	return fp.ring.AvailableBytes() != 0
}

// syncDone is called by the reader each time it found the ring empty: if it
// still is, the waiters registered before have every decision; otherwise the
// reader is woken to read on at once.
func (fp *FastPath) syncDone() {
	fp.syncMu.Lock()
	defer fp.syncMu.Unlock()
	if len(fp.syncs) == 0 {
		return
	}
	if fp.ringAvailable() {
		fp.flushDecisions()
		return
	}
	for _, ch := range fp.syncs {
		ch <- nil
	}
	fp.syncs = nil
}
