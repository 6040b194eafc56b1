package procattr

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// Resolver attributes connections to processes. It is safe for concurrent use.
type Resolver struct {
	diag   *sockDiag
	hooks  *cgroupHooks // nil: eBPF off or refused by the kernel
	procs  *procCache   // processes found to own sockets
	procfs *procScanner // nil: disabled
	users  userCache

	methodErrs map[string]error

	ebpfHits, procfsHits, noSocket, noProcess atomic.Uint64

	// life is held for reading by every Resolve and for writing by Close, so Close
	// never pulls a socket, map or handle from under a Resolve.
	life     sync.RWMutex
	closed   bool
	closeErr error
}

// NewResolver opens the sock_diag sockets and, unless disabled, attaches the eBPF
// cgroup hooks. A kernel that refuses the hooks (no cgroup BPF, not root) is no
// error: Resolve then uses procfs, and Methods and MethodErrors say so. It fails only
// if sock_diag, which every method needs, cannot be opened.
func NewResolver(opts Options) (*Resolver, error) {
	if opts.EBPFEntries <= 0 {
		opts.EBPFEntries = 65536
	}
	if opts.ProcfsRescanInterval <= 0 {
		opts.ProcfsRescanInterval = 50 * time.Millisecond
	}
	if opts.SockDiagSockets <= 0 {
		opts.SockDiagSockets = 2
	}
	diag, err := newSockDiag(opts.SockDiagSockets)
	if err != nil {
		return nil, fmt.Errorf("procattr: %w", err)
	}
	r := &Resolver{diag: diag, procs: newProcCache(1024), methodErrs: make(map[string]error)}
	if opts.DisableEBPF {
		r.methodErrs[MethodEBPF] = errors.New("disabled by options")
	} else if err := inInitialPIDNamespace(); err != nil {
		r.methodErrs[MethodEBPF] = err
	} else if h, err := attachCgroupHooks(opts.CgroupPath, opts.EBPFEntries); err != nil {
		r.methodErrs[MethodEBPF] = err
	} else {
		r.hooks = h
	}
	if opts.DisableProcfs {
		r.methodErrs[MethodProcfs] = errors.New("disabled by options")
	} else {
		r.procfs = newProcScanner(opts.ProcfsRescanInterval)
	}
	return r, nil
}

// Methods lists the attribution methods that are live, fastest first, e.g.
// ["ebpf-cgroup", "sock_diag", "procfs"].
func (r *Resolver) Methods() []string {
	var m []string
	if r.hooks != nil {
		m = append(m, MethodEBPF)
	}
	m = append(m, MethodSockDiag)
	if r.procfs != nil {
		m = append(m, MethodProcfs)
	}
	return m
}

// MethodErrors says why each method missing from Methods is off.
func (r *Resolver) MethodErrors() map[string]error {
	out := make(map[string]error, len(r.methodErrs))
	for k, v := range r.methodErrs {
		out[k] = v
	}
	return out
}

// ExeCheck says why the executable check is off, or "" when it is on. The
// check is the eBPF hooks' record, with each socket, of the executable the
// process ran when it connected, sent or bound (inode number, mount id, and
// whether execve opened it), against the one /proc/PID/exe names when the
// connection is attributed: without it a program that connects and then
// executes an allowed program (or has one named its executable) would pass for
// that program. With the hooks loaded but the check off (a kernel whose BTF
// lacks a field the hooks read, or whose verifier refuses the program that
// reads them), no connection the hooks attribute is verified. Without the
// hooks, connections are checked in /proc alone, which sees only the program
// that runs when it looks.
func (r *Resolver) ExeCheck() string {
	switch {
	case r.hooks == nil:
		why := "the eBPF hooks are off"
		if err := r.methodErrs[MethodEBPF]; err != nil {
			why += " (" + err.Error() + ")"
		}
		if r.procfs == nil {
			return why
		}
		return why + ": connections are checked in /proc alone, which sees only the program a process runs when it looks, not the one that connected"
	case !r.hooks.knowsExe:
		why := r.hooks.exeWhy
		if why == "" {
			why = "the hooks do not read the executable"
		}
		return why + ": no connection the eBPF hooks attribute is verified (rules naming a program do not match them)"
	}
	return ""
}

// Stats returns the Resolve outcome counters.
func (r *Resolver) Stats() Stats {
	var full uint64
	if r.procfs != nil {
		full = r.procfs.fullScans.Load()
	}
	return Stats{
		EBPF:      r.ebpfHits.Load(),
		Procfs:    r.procfsHits.Load(),
		NoSocket:  r.noSocket.Load(),
		NoProcess: r.noProcess.Load(),
		FullScans: full,
	}
}

// Resolve returns the process that owns the local socket of a TCP or UDP connection
// from local to remote (local is this host's end). uid is the socket owner the
// packet carries (NFQUEUE's UID attribute, its 32 bits: 2^31 and above are negative),
// or -1 (no uid: any owner); a socket with another owner is
// not the one that sent the packet.
//
// When no process can be shown to own the socket, Resolve returns a Process with
// PID 0 and Exe "" (UID and User filled if the socket was found) and an error that
// wraps ErrNoSocket, ErrNoProcess or ErrUnsupported.
func (r *Resolver) Resolve(proto engine.Protocol, local, remote netip.AddrPort, uid int32) (Process, error) {
	return r.ResolveDev(proto, local, remote, uid, 0)
}

// ResolveDev is Resolve for a packet that leaves by interface ifindex (NFQUEUE's
// outdev attribute; 0 if unknown). Only with it can a socket bound to a device
// (SO_BINDTODEVICE, as VPN clients and `ping -I` use) be found.
func (r *Resolver) ResolveDev(proto engine.Protocol, local, remote netip.AddrPort, uid int32, ifindex int) (Process, error) {
	return r.resolve(proto, local, remote, uid, ifindex, false)
}

// ResolveSender is ResolveDev for a UDP datagram whose sending socket is known
// by its cookie (latch's sender stash records it as the datagram passes the
// ruleset, see internal/fastpath): when two sockets share the datagram's
// local port (SO_REUSEADDR, SO_REUSEPORT), the lookup by tuple finds the one
// the kernel would deliver an answer to, the last bound, which need not be
// the sender. With cookie != 0 it attributes the socket with that cookie
// among those bound to the local port (ErrNoSocket if it is gone); with
// cookie 0 (the sender is not known: no record, or two sockets sent
// datagrams alike) it attributes the socket the tuple finds only if no other
// socket could have sent the datagram (none other is bound to its local
// port, whatever address it is bound to or peer it is connected to: a
// socket sends from any local address with IP_PKTINFO and to any peer with
// sendto), else it returns ErrNoSocket: a
// datagram of a shared port is never credited to a socket that may not have
// sent it.
func (r *Resolver) ResolveSender(proto engine.Protocol, local, remote netip.AddrPort, uid int32, ifindex int, cookie uint64) (Process, error) {
	if proto != engine.UDP {
		return r.ResolveDev(proto, local, remote, uid, ifindex)
	}
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return unknown(), errors.New("procattr: Resolve on a closed Resolver")
	}
	if ifindex < 0 {
		return unknown(), fmt.Errorf("procattr: interface index %d: want 0 (unknown) or more", ifindex)
	}
	si, err := r.diag.lookup(proto, local, remote, uint32(ifindex), false)
	if err == nil && cookie != 0 && si.Cookie == cookie {
		// The sender is the socket the tuple finds: the common case, one
		// lookup as in ResolveDev.
		return r.resolveSocket(proto, local, remote, uid, si)
	}
	all, derr := r.diag.senders(local, remote)
	if derr != nil {
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: list the sockets on local port %d: %w", proto, local, remote, local.Port(), derr)
	}
	if cookie != 0 {
		for _, s := range all {
			if s.Cookie == cookie {
				return r.resolveSocket(proto, local, remote, uid, s)
			}
		}
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: the socket that sent it (cookie %d) is gone: %w", proto, local, remote, cookie, ErrNoSocket)
	}
	if len(all) > 1 {
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: %d sockets share local port %d and which one sent it is not known: %w",
			proto, local, remote, len(all), local.Port(), ErrNoSocket)
	}
	if err != nil {
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: %w", proto, local, remote, err)
	}
	if len(all) != 1 || all[0].Cookie != si.Cookie {
		// Bound or closed between the two looks: who sent it cannot be told.
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: the sockets on local port %d changed while they were looked up: %w", proto, local, remote, local.Port(), ErrNoSocket)
	}
	return r.resolveSocket(proto, local, remote, uid, si)
}

// resolveSocket attributes si, the socket found for a connection, as resolve
// does: after the packet's uid check, to the process that owns it.
func (r *Resolver) resolveSocket(proto engine.Protocol, local, remote netip.AddrPort, uid int32, si socketInfo) (Process, error) {
	if uid != -1 && uint32(uid) != si.UID {
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: socket inode %d belongs to uid %d, packet to uid %d: %w",
			proto, local, remote, si.Inode, si.UID, uid, ErrNoSocket)
	}
	owner := Process{UID: int32(si.UID), User: r.users.name(si.UID)}
	p, err := r.attribute(si, owner)
	p.Cookie = si.Cookie
	if err != nil {
		return p, fmt.Errorf("procattr: %v %v -> %v: %w", proto, local, remote, err)
	}
	return p, nil
}

// ResolveInbound returns the process that will accept an inbound connection from
// remote to local (local is this host's end) that arrives by interface ifindex (0 if
// unknown): the owner of the TCP socket listening on local, or of the UDP socket
// bound there. A connection already accepted is found as in Resolve.
func (r *Resolver) ResolveInbound(proto engine.Protocol, local, remote netip.AddrPort, ifindex int) (Process, error) {
	return r.resolve(proto, local, remote, -1, ifindex, true)
}

func (r *Resolver) resolve(proto engine.Protocol, local, remote netip.AddrPort, uid int32, ifindex int, inbound bool) (Process, error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return unknown(), errors.New("procattr: Resolve on a closed Resolver")
	}
	if ifindex < 0 {
		return unknown(), fmt.Errorf("procattr: interface index %d: want 0 (unknown) or more", ifindex)
	}
	si, err := r.diag.lookup(proto, local, remote, uint32(ifindex), inbound)
	if err != nil {
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: %w", proto, local, remote, err)
	}
	return r.resolveSocket(proto, local, remote, uid, si)
}

// attribute finds the process that owns the socket si: by the eBPF record, else in
// /proc. It counts the outcome. On failure it returns owner and an error that wraps
// ErrNoProcess (or the reason every method failed).
func (r *Resolver) attribute(si socketInfo, owner Process) (Process, error) {
	var ebpfErr error
	if r.hooks != nil {
		p, err := r.viaEBPF(si, owner)
		if err == nil {
			r.ebpfHits.Add(1)
			return p, nil
		}
		ebpfErr = err
	}
	if r.procfs != nil {
		p, err := r.viaProcfs(si, owner, ebpfErr == nil)
		if err == nil {
			r.procfsHits.Add(1)
			if ebpfErr != nil && p.Identity != engine.IdentityUnverified {
				// The hooks see every socket made while they are attached, and name
				// the process that made this one: it is gone (or its record was
				// pushed out of the map, which any program can fill). A holder found
				// in /proc may have inherited the socket from it next to another
				// program that sends on it: holding is no proof of sending.
				p.Identity, p.Container = engine.IdentityUnverified, ""
				p.Exe = trimDeleted(p.Exe)
				p.IdentityNote = "no record of the process that made the socket (it has exited, or its record was evicted): a process holding it is not necessarily the one sending"
			}
			return p, nil
		}
		r.noProcess.Add(1)
		return owner, errors.Join(ebpfErr, err)
	}
	r.noProcess.Add(1)
	if ebpfErr == nil {
		ebpfErr = fmt.Errorf("socket inode %d: no live method maps sockets to processes: %w", si.Inode, ErrNoProcess)
	}
	return owner, ebpfErr
}

// viaEBPF attributes the socket to the process the hooks recorded for its cookie.
// A record that carries the process's identity (start time and exec id) and matches
// a cached process bound to it names that process at the cost of a map lookup.
// Otherwise: the record names the process that connected or sent at a known time;
// the process now at that pid is the same one if it started before then (two live
// processes never share a pid). A process too young to tell by its start time must
// hold the socket.
func (r *Resolver) viaEBPF(si socketInfo, owner Process) (Process, error) {
	rec, ok := r.hooks.lookup(si.Cookie)
	if !ok {
		return unknown(), fmt.Errorf("socket cookie %d: no eBPF record (connected before the hooks were attached?): %w", si.Cookie, ErrNoProcess)
	}
	pid := rec.tgid()
	// The executable named, not executed (review28's neighbour): whatever
	// /proc shows, not verified, and not bound to the record's identity.
	named := rec.exeNotExecuted(r.hooks.knowsExe)
	if !r.hooks.knowsExe {
		// The hooks do not read the executable (see ExeCheck): the program that
		// made the socket cannot be told from the one the process runs now (it
		// may have executed the allowed program since): not verified either
		// (review 32: it was, as the process /proc shows).
		named = "the program that made this connection is not known: the eBPF hooks do not record the executable (" + r.hooks.exeWhy + ")"
	}
	if e, ok := r.procs.identified(pid, rec.StartNs, rec.ExecID); ok && named == "" {
		p := owner
		e.process(&p)
		p.Method = MethodEBPF
		return p, nil
	}
	e, ok := r.procs.live(pid)
	if !ok {
		var err error
		if e, err = r.procs.load(pid); err != nil {
			return unknown(), fmt.Errorf("eBPF record pid %d: %w: %w", pid, err, ErrNoProcess)
		}
	}
	tick := uint64(time.Second) / clockTicks()
	if (e.startTicks+1)*tick > rec.BootNs && !r.procs.holdsSocket(e, si.Inode) {
		return unknown(), fmt.Errorf("pid %d may have started after the eBPF record and holds no socket inode %d: %w", pid, si.Inode, ErrNoProcess)
	}
	if named != "" {
		p := owner
		e.process(&p)
		p.Method = MethodEBPF
		p.Identity, p.Container = engine.IdentityUnverified, ""
		p.Exe = trimDeleted(p.Exe)
		p.IdentityNote = named
		return p, nil
	}
	if r.hooks.knowsExe && (rec.ExeIno == 0 || rec.ExeIno != e.file.ino || rec.ExeMnt != e.exeMnt) {
		// The process runs another file than the one it ran when it made the
		// socket (it executed another program, or a CLONE_VM child in a user
		// namespace of its own renamed its executable with prctl(PR_SET_MM)):
		// /proc describes the image it runs now, not the one that connected, so
		// the connection's program is not verified (and the entry is not bound to
		// this record's identity).
		//
		// The file is the inode number and the id of the mount it was reached
		// through, both as the hooks read them and as statx shows /proc/PID/exe:
		// the inode number alone matched a file with the allowed program's number
		// on another file system (a tmpfs whose numbers the attacker walks up to,
		// a FUSE file system it serves; review32). The mount id is the unique
		// one where the kernel has it (uniqueMountIDs, Linux 6.8+): the old one
		// goes to the next mount made once its mount is gone, and a bind mount
		// of the allowed program took the freed id of the file system the
		// program connected from (review33); on older kernels that remains.
		// The device is not compared: btrfs (per subvolume) and overlayfs
		// report another one to stat than the super block's s_dev the hooks
		// could read. An ExeIno of 0 is a record
		// whose executable the hooks could not read (a task without an mm, a file
		// system that numbers its inodes 0): it does not verify. A mount id of 0
		// is the kernel's internal mounts' (a memfd's, on both sides; the checks
		// below tell it), or, in the cache alone, a kernel whose statx does not
		// tell it, which the record's non-zero id then does not match. The exec
		// id the record carries cannot be checked here: /proc does not show
		// self_exec_id.
		p := owner
		e.process(&p)
		p.Method = MethodEBPF
		p.Identity, p.Container = engine.IdentityUnverified, ""
		p.IdentityNote = "the process executed another program after it made this connection"
		return p, nil
	}
	// e's process made the record: its identity lets the next record of this
	// process skip the checks above.
	r.procs.bind(e, rec.StartNs, rec.ExecID)
	p := owner
	e.process(&p)
	p.Method = MethodEBPF
	return p, nil
}

// viaProcfs attributes the socket to a process whose fd table holds it, checked
// through the same process handle its description is read from. With checkShared,
// an identity other than unverified holds only if every process holding the socket
// has it (see sharedWithOthers); the caller that will not trust the identity anyway
// spares that scan of /proc.
func (r *Resolver) viaProcfs(si socketInfo, owner Process, checkShared bool) (Process, error) {
	for range 2 { // a stale cached fd costs one more, uncached, try
		ref, err := r.procfs.find(si.Inode)
		if err != nil {
			return unknown(), err
		}
		if e, err := r.procs.get(ref.pid); err == nil && r.procs.fdPointsAt(e, int(ref.fd), si.Inode) {
			p := owner
			e.process(&p)
			p.Method = MethodProcfs
			if checkShared && p.Identity != engine.IdentityUnverified {
				if why := r.sharedWithOthers(e, si.Inode); why != "" {
					p.Identity, p.Container = engine.IdentityUnverified, ""
					p.Exe = trimDeleted(p.Exe)
					p.IdentityNote = why
				}
			}
			return p, nil
		}
		r.procfs.forget(si.Inode, ref)
	}
	return unknown(), fmt.Errorf("socket inode %d changed hands while it was looked up: %w", si.Inode, ErrNoProcess)
}

// sharedWithOthers checks every other process that holds the socket inode (a
// socket is inherited across fork and exec, and passed over unix sockets): any of
// them may be the one sending, so e's identity holds only if all of them run the
// same file as e with the same identity. It returns why not, or "".
func (r *Resolver) sharedWithOthers(e *procEntry, inode uint32) string {
	pids, err := r.procfs.holders(inode)
	if err != nil {
		return fmt.Sprintf("the other processes holding the socket cannot be listed: %v", err)
	}
	for _, pid := range pids {
		if pid == e.dir.pid {
			continue
		}
		o, err := r.procs.get(pid)
		if err != nil {
			return fmt.Sprintf("the socket is also held by pid %d, which cannot be read: %v", pid, err)
		}
		if o.file != e.file || o.ident != e.ident || o.exe != e.exe {
			return fmt.Sprintf("the socket is held by processes that run different programs (pid %d runs %s, pid %d runs %s)",
				e.dir.pid, trimDeleted(e.exe), pid, trimDeleted(o.exe))
		}
	}
	return ""
}

// Close detaches the eBPF hooks and closes the sock_diag sockets, after the Resolve
// calls in progress have returned. Later Resolve calls return an error.
func (r *Resolver) Close() error {
	r.life.Lock()
	defer r.life.Unlock()
	if r.closed {
		return r.closeErr
	}
	r.closed = true
	if r.hooks != nil {
		r.closeErr = r.hooks.close()
	}
	r.procs.close()
	r.diag.close()
	return r.closeErr
}

// initialPIDNamespace is the inode of the initial pid namespace (PROC_PID_INIT_INO).
const initialPIDNamespace = "pid:[4026531836]"

// inInitialPIDNamespace checks that pids the hooks record (which are the initial
// namespace's) mean the same processes in this process's /proc.
func inInitialPIDNamespace() error {
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return fmt.Errorf("read pid namespace: %w", err)
	}
	if ns != initialPIDNamespace {
		return fmt.Errorf("running in pid namespace %s, not the initial one: eBPF pids would name other processes", ns)
	}
	return nil
}
