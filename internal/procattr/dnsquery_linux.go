package procattr

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/cgroup2"
	"github.com/latchfw/latch/internal/engine"
)

// DNSQueries attributes the DNS queries sent over UDP to one local resolver (latch's
// dnsproxy) with one map lookup each, where Resolve makes a sock_diag request (two
// system calls) and a map lookup.
//
// A cgroup/skb egress program (bpf/dnsquery.c) sees every UDP datagram that a
// program in the cgroup sends to the resolver's address and port, as it leaves the
// sending socket (after netfilter's output hooks, before the resolver can read it).
// It copies the record the connect/sendmsg/bind hooks keep for that socket (its
// cookie's; see cgroupHooks) under the datagram's key: client address and port,
// server address and port, and the DNS id. Resolve looks the key up and deletes it in
// one bpf(2) call, so each record credits one datagram. A datagram the sender cut
// into segments (UDP_SEGMENT), which the program sees once but the resolver reads
// as one query a segment, is recorded once a segment, under each segment's id: a
// segment without a record of its own would take the record another socket left
// under its key.
//
// Why the key is exact: it is written when the datagram is sent, by the socket
// that sent it, so a program that binds the port after the sender closed its socket
// is not credited with the query (a sock_diag lookup made after the close would
// find its socket). Two sockets can send datagrams with one key only if they share
// the address and port (SO_REUSEADDR or SO_REUSEPORT) or one closed and the other
// took its port; if both datagrams are sent before the resolver reads the first, the
// program counts the second one in the record's others, and Resolve credits neither
// (ErrNoSocket) rather than guess: it puts the record back, marked, for the other.
// A record older than dnsQueryFresh when Resolve takes it does not name the process
// alone (the resolver stalled, or never read the datagram: its queue overflowed):
// the query is credited only to the socket the record names, if it is still there
// (sock_diag, same cookie), never to one that took its port since. The program takes a
// record more than 5 s old for one of a datagram that will never be read, and
// replaces it: a datagram read later still than that is credited as the next one
// sent with its key, if any.
//
// Resolve credits the process only when the record identifies it exactly (the
// process's start time and exec id, bound to a cached process as Resolve binds
// them, see procCache.identified); any other record is checked as Resolve checks
// it, through the socket (sock_diag), which must then be the very socket that sent
// the datagram (same cookie).
type DNSQueries struct {
	r      *Resolver
	server netip.AddrPort
	prog   *ebpf.Program
	sends  *ebpf.Map
	link   link.Link

	mu     sync.RWMutex
	closed bool

	fast, slow, ambiguous, missing atomic.Uint64
}

// dnsQueryFresh is how old a record may be when the resolver reads its datagram.
const dnsQueryFresh = 2 * time.Second

// dq_sender flags (see bpf/dnsquery.c).
const (
	dnsQueryRecord    = 1 // Rec is the socket's record
	dnsQueryAmbiguous = 2 // not to be credited
)

// dnsQuerySenderSize is the map value's size (struct dq_sender).
const dnsQuerySenderSize = 112

var (
	_ [dnsQuerySenderSize - unsafe.Sizeof(dnsqueryDqSender{})]byte
	_ [unsafe.Sizeof(dnsqueryDqSender{}) - dnsQuerySenderSize]byte
	_ [connRecordSize - unsafe.Sizeof(dnsqueryConnRecord{})]byte
)

// DNSQueryStats count how DNSQueries.Resolve attributed queries.
type DNSQueryStats struct {
	Fast      uint64 `json:"fast"`      // by the record alone
	Slow      uint64 `json:"slow"`      // the record checked through its socket
	Ambiguous uint64 `json:"ambiguous"` // two sockets sent the same key: credited to neither
	Missing   uint64 `json:"missing"`   // no fresh record: Resolve's way (a stale one: only its socket)
}

// WatchDNSQueries attaches the program that records the senders of UDP datagrams to
// server (the resolver's address and port) to cgroupPath ("": the cgroup2 mount,
// whose root covers every process). It needs the eBPF hooks with the process
// identity in their records (Methods lists MethodEBPF).
func (r *Resolver) WatchDNSQueries(server netip.AddrPort, cgroupPath string) (q *DNSQueries, err error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return nil, errors.New("procattr: WatchDNSQueries on a closed Resolver")
	}
	if r.hooks == nil || !r.hooks.identifies {
		return nil, errors.New("procattr: DNS query records need the eBPF hooks with process identities")
	}
	server = netip.AddrPortFrom(server.Addr().Unmap().WithZone(""), server.Port())
	if !server.IsValid() || server.Addr().IsUnspecified() || server.Port() == 0 {
		return nil, fmt.Errorf("procattr: DNS query records: server %v: want one address and port", server)
	}
	netns, err := r.diag.netnsCookie()
	if err != nil {
		return nil, fmt.Errorf("procattr: DNS query records: %w", err)
	}
	objs, err := loadDNSQueryObjects(server, netns, r.hooks.conns)
	if err != nil {
		return nil, err
	}
	q = &DNSQueries{r: r, server: server, prog: objs.LatchDnsquery, sends: objs.Senders}
	defer func() {
		if err != nil {
			q.prog.Close()
			q.sends.Close()
			q = nil
		}
	}()
	// One lookup-and-delete a query (Linux 5.14 for hash maps): without it a record
	// could credit a later datagram.
	var key dnsqueryDqKey
	var v dnsqueryDqSender
	if err := q.sends.LookupAndDelete(&key, &v); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("procattr: DNS query records: the kernel cannot look up and delete in a hash map: %w", err)
	}
	if cgroupPath == "" {
		var release func()
		if cgroupPath, release, err = cgroup2.Root("latch-cgroup2-"); err != nil {
			return nil, fmt.Errorf("procattr: DNS query records: %w", err)
		}
		defer release()
	}
	q.link, err = link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: ebpf.AttachCGroupInetEgress, Program: q.prog})
	if err != nil {
		return nil, fmt.Errorf("procattr: DNS query records: attach to cgroup %s: %w", cgroupPath, err)
	}
	return q, nil
}

// loadDNSQueryObjects loads the program for server in the network namespace with
// cookie netns, reading the socket records in conns.
func loadDNSQueryObjects(server netip.AddrPort, netns uint64, conns *ebpf.Map) (dnsqueryObjects, error) {
	var objs dnsqueryObjects
	spec, err := loadDnsquery()
	if err != nil {
		return objs, fmt.Errorf("procattr: DNS query records: %w", err)
	}
	var is4 uint8
	if server.Addr().Is4() {
		is4 = 1
	}
	for name, v := range map[string]any{dnsqueryVarNetnsCookie: netns, dnsqueryVarServerAddr: server.Addr().As16(),
		dnsqueryVarServerPort: server.Port(), dnsqueryVarServerIs4: is4} {
		if err := spec.Variables[name].Set(v); err != nil {
			return objs, fmt.Errorf("procattr: DNS query records: set %s: %w", name, err)
		}
	}
	spec.Maps[dnsqueryMapConns].MaxEntries = conns.MaxEntries()
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{dnsqueryMapConns: conns},
	}); err != nil {
		return objs, fmt.Errorf("procattr: DNS query records: load: %w", err)
	}
	return objs, nil
}

// Server is the address and port whose queries q records.
func (q *DNSQueries) Server() netip.AddrPort { return q.server }

// Stats returns the counters.
func (q *DNSQueries) Stats() DNSQueryStats {
	return DNSQueryStats{Fast: q.fast.Load(), Slow: q.slow.Load(), Ambiguous: q.ambiguous.Load(), Missing: q.missing.Load()}
}

// Close detaches the program and frees its map, after the Resolve calls in progress.
func (q *DNSQueries) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	return errors.Join(q.link.Close(), q.prog.Close(), q.sends.Close())
}

// Resolve returns the process that sent the DNS query with this id over UDP from
// client to server (the resolver's address). It is meant to be called once per
// datagram the resolver read: the record is consumed. Without a record (the query
// came before the program was attached, or the server is not q's) it is
// Resolver.Resolve; with one too old to use alone, it credits only the socket the
// record names, if that is still at the address. A socket found before its process
// is asked for once more after NoProcessRetry. Errors are as Resolve's.
func (q *DNSQueries) Resolve(client, server netip.AddrPort, id uint16) (Process, error) {
	norm := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
	}
	client, server = norm(client), norm(server)
	q.mu.RLock()
	v, ok, fresh := dnsSender{}, false, false
	if !q.closed && server == q.server && client.IsValid() && client.Addr().Is4() == server.Addr().Is4() {
		key := dnsqueryDqKey{Client: client.Addr().As16(), Server: server.Addr().As16(),
			ClientPort: client.Port(), ServerPort: server.Port(), Id: id}
		if v, ok, fresh = q.take(&key); ok && fresh && v.Others != 0 {
			// The other datagrams are not to be credited either: the record goes
			// back for them, marked.
			back := v
			back.Others--
			back.Flags |= dnsQueryAmbiguous
			q.sends.Update(&key, &back, ebpf.UpdateAny)
		}
	}
	q.mu.RUnlock()
	if !ok {
		q.missing.Add(1)
		return retryNoProcess(func() (Process, error) { return q.r.Resolve(engine.UDP, client, server, -1) })
	}
	byCookie := func() (Process, error) { return q.r.resolveCookie(engine.UDP, client, server, v.Cookie) }
	if !fresh {
		// Too old to name the process alone, but it still names the socket that
		// sent a datagram with this key: only that socket, if it is still there, is
		// credited (the socket at the address now may have taken the port since).
		q.missing.Add(1)
		if v.Others != 0 || v.Flags&dnsQueryAmbiguous != 0 {
			return unknown(), fmt.Errorf("procattr: udp %v -> %v id %d: several sockets sent a query with this address, port and id before it was read: %w",
				client, server, id, ErrNoSocket)
		}
		return retryNoProcess(byCookie)
	}
	if v.Others != 0 || v.Flags&dnsQueryAmbiguous != 0 {
		q.ambiguous.Add(1)
		return unknown(), fmt.Errorf("procattr: udp %v -> %v id %d: several sockets sent a query with this address, port and id before it was read: %w",
			client, server, id, ErrNoSocket)
	}
	if p, ok := q.r.identifiedSender(v); ok {
		q.fast.Add(1)
		return p, nil
	}
	q.slow.Add(1)
	return retryNoProcess(byCookie)
}

// NoProcessRetry is how long DNSQueries.Resolve waits before it asks once more
// when it found the socket but no method named its process yet (without the eBPF
// hooks, /proc is rescanned at most every 50 ms). The program waits for its answer
// meanwhile. The second attempt still credits only the socket the record names.
const NoProcessRetry = 60 * time.Millisecond

func retryNoProcess(resolve func() (Process, error)) (Process, error) {
	p, err := resolve()
	if errors.Is(err, ErrNoProcess) {
		time.Sleep(NoProcessRetry)
		p, err = resolve()
	}
	return p, err
}

// dnsSender is the map value.
type dnsSender = dnsqueryDqSender

// monoNow is CLOCK_MONOTONIC, the clock of the records' sent_ns (bpf_ktime_get_ns),
// without a system call: the clock read once, then advanced by the monotonic reading
// of Go's clock (the same kernel clock, read through the vDSO).
func monoNow() uint64 { return monoBase + uint64(time.Since(monoBaseTime)) }

var monoBase, monoBaseTime = func() (uint64, time.Time) {
	var ts unix.Timespec
	t := time.Now()
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano()), t
}()

// mapKeyValueAttr is the BPF_MAP_LOOKUP_AND_DELETE_ELEM layout of union bpf_attr.
type mapKeyValueAttr = mapLookupAttr

// take looks up key and deletes it, in one bpf(2) call made directly (as
// cgroupHooks.lookup). It reports whether there was a record, and whether it is
// fresh.
func (q *DNSQueries) take(key *dnsqueryDqKey) (v dnsSender, ok, fresh bool) {
	attr := mapKeyValueAttr{mapFD: uint32(q.sends.FD()), key: unsafe.Pointer(key), value: unsafe.Pointer(&v)}
	_, _, errno := unix.RawSyscall(unix.SYS_BPF, unix.BPF_MAP_LOOKUP_AND_DELETE_ELEM, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return dnsSender{}, false, false
	}
	// (A record a little ahead of monoNow is fresh: the two read the clock apart.)
	now := monoNow()
	fresh = v.SentNs <= now+uint64(time.Millisecond) && (v.SentNs >= now || now-v.SentNs <= uint64(dnsQueryFresh))
	return v, true, fresh
}

// identifiedSender is the process the record v names, if the record identifies it
// exactly and a cached process is bound to that identity (viaEBPF's first way).
func (r *Resolver) identifiedSender(v dnsSender) (Process, bool) {
	if v.Flags&dnsQueryRecord == 0 {
		return Process{}, false
	}
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return Process{}, false
	}
	rec := (*connRecord)(unsafe.Pointer(&v.Rec))
	if r.hooks == nil || !r.hooks.knowsExe || rec.exeNotExecuted(true) != "" {
		// Resolve's way, which calls it unverified.
		return Process{}, false
	}
	e, ok := r.procs.identified(rec.tgid(), rec.StartNs, rec.ExecID)
	if !ok {
		return Process{}, false
	}
	p := Process{UID: int32(v.Uid), User: r.users.name(v.Uid)}
	e.process(&p)
	p.Method = MethodEBPF
	r.ebpfHits.Add(1)
	return p, true
}

// resolveCookie is Resolve for a socket that must be the one with this cookie.
func (r *Resolver) resolveCookie(proto engine.Protocol, local, remote netip.AddrPort, cookie uint64) (Process, error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return unknown(), errors.New("procattr: Resolve on a closed Resolver")
	}
	si, err := r.diag.lookup(proto, local, remote, 0, false)
	if err != nil {
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: %w", proto, local, remote, err)
	}
	if si.Cookie != cookie {
		r.noSocket.Add(1)
		return unknown(), fmt.Errorf("procattr: %v %v -> %v: the socket that sent the query (cookie %d) is gone; socket cookie %d has its address now: %w",
			proto, local, remote, cookie, si.Cookie, ErrNoSocket)
	}
	p, err := r.attribute(si, Process{UID: int32(si.UID), User: r.users.name(si.UID)})
	if err != nil {
		return p, fmt.Errorf("procattr: %v %v -> %v: %w", proto, local, remote, err)
	}
	return p, nil
}

// netnsCookie is the cookie of the network namespace whose sockets d finds (that of
// its netlink sockets).
func (d *sockDiag) netnsCookie() (uint64, error) {
	c := <-d.pool
	defer func() { d.pool <- c }()
	var cookie uint64
	l := uint32(8)
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(c.fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE,
		uintptr(unsafe.Pointer(&cookie)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE (Linux 5.14+): %w", e)
	}
	return cookie, nil
}
