package fastpath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/cgroup2"

	"github.com/latchfw/latch/internal/engine"
)

// Actions stored in the map (ACT_* in fastpath.c).
const (
	actAllow  = 1
	actReject = 2
)

// Counters in the stats map (STAT_* in fastpath.c).
const (
	statHitAllow = iota
	statHitReject
	statMiss
	statStale
	statNoIdentity
	statRingLost
	statEndsLost
	statSimOpenDropped
	statMax
)

// Defaults for Config's zero fields.
const (
	DefaultMaxEntries = 65536
	DefaultTTL        = 10 * time.Minute
	DefaultRingBytes  = 1 << 20
	// DefaultEndsRingBytes is the size of the ring buffer of TCP socket ends: 1
	// MiB holds 10922 ends (96 bytes each with the ring's header), what a server
	// closing 50000 connections a second ends in a fifth of a second, while the
	// reader is woken every 341 ends (WAKEUP_BYTES).
	DefaultEndsRingBytes = 1 << 20
)

// Config configures Open.
type Config struct {
	// CgroupPath is the cgroup v2 directory the hooks attach to; "": the root of the
	// cgroup2 hierarchy (every process on the machine).
	CgroupPath string
	// EndsCgroupPath is the cgroup v2 directory the hooks that serve every process
	// attach to (the sock_ops program, which reports TCP socket ends, and the byte
	// counters); "": the root of the cgroup2 hierarchy. Tests and benchmarks set it
	// to keep latch's programs off other processes: the ends of the sockets of
	// processes outside it are then not reported (conntrack's destroy events end
	// the flows it tracks), and the socket pin's receive check serves its
	// sockets only.
	EndsCgroupPath string
	// MaxEntries bounds the map (LRU); 0: DefaultMaxEntries.
	MaxEntries int
	// TTL is the longest an entry hits; 0: DefaultTTL.
	TTL time.Duration
	// RingBytes is the size of the ring buffer of decisions (a power of two, a
	// multiple of the page size); 0: DefaultRingBytes.
	RingBytes int
	// EndsRingBytes is the size of the ring buffer of TCP socket ends, which has
	// its own so that a burst of ends never takes the decisions' room (a power of
	// two, a multiple of the page size); 0: DefaultEndsRingBytes.
	EndsRingBytes int
	// PinDir is a directory on a BPF file system (mounted there by Open if it is
	// not one yet) where Open pins the UDP match program (UDPMatch) for the
	// ruleset's xt_bpf match; "": no UDP fast path.
	PinDir string
	// KeepPin leaves the pin in place on Close, for a ruleset kept on exit that
	// still names it (iptables-legacy checks every rule's pinned program again at
	// each change of the table); the next Open replaces it.
	KeepPin bool
	// NoTCPEnds, if not "", leaves the report of TCP socket ends (Run's ended)
	// off, and says why (Stats.TCPEndsWhy): no byte accounting, or a daemon that
	// forwards, which keeps conntrack's update events (they end forwarded flows,
	// which have no local socket, and local ones alike).
	NoTCPEnds string
	// NoReceiveCheck, if not "", says why the socket pin's receive check
	// (latch_pin_ingress, see "The receive check" in doc.go) is not
	// attached (tests); Stats.SocketPinReceiveWhy reports it.
	NoReceiveCheck string

	// noSockops leaves the sock_ops program unattached, as a kernel that refuses
	// it does (tests).
	noSockops bool
	// noSimOpen leaves the ingress program unattached (no simultaneous open
	// guard), as a kernel that refuses it; for tests.
	noSimOpen bool
	// noNetnsCookie loads the sock_ops program as for a kernel whose sock_ops
	// programs cannot call bpf_get_netns_cookie (before 5.15; tests).
	noNetnsCookie bool
	// noEndBytes loads the programs as for a kernel without socket storage in
	// sock_ops and cgroup_skb programs: socket ends carry no counters (tests).
	noEndBytes bool
	// noLiveBytes loads the programs as for a kernel without the iterators
	// SocketCounts reads: no live counts of sockets (tests). noLiveMap: as for
	// one that refuses the iterator over the socket storage map, not the one
	// over TCP sockets.
	noLiveBytes, noLiveMap bool
	// noTaskBTF loads the programs as for a kernel that refuses
	// bpf_get_current_task_btf in them: identify reads the task's executable
	// with bpf_probe_read_kernel (tests).
	noTaskBTF bool
	// liveRefused has the kernel refuse the iterator program chosen (tests):
	// the object is loaded again without it.
	liveRefused bool
}

// noEndBytesKernel says why the kernel cannot count the bytes of a TCP socket
// for its end (struct fp_bytes in socket storage, added to by cgroup_skb
// programs, read by the sock_ops program), or "". force says it cannot (tests).
func noEndBytesKernel(force bool) string {
	if force {
		return "the kernel cannot count a socket's bytes in eBPF (test)"
	}
	for _, p := range []struct {
		what  string
		probe func() error
	}{
		{"socket storage maps (BPF_MAP_TYPE_SK_STORAGE)", func() error { return features.HaveMapType(ebpf.SkStorage) }},
		{"cgroup_skb programs", func() error { return features.HaveProgramType(ebpf.CGroupSKB) }},
		{"bpf_sk_fullsock in cgroup_skb programs", func() error { return features.HaveProgramHelper(ebpf.CGroupSKB, asm.FnSkFullsock) }},
		{"bpf_sk_storage_get in cgroup_skb programs", func() error { return features.HaveProgramHelper(ebpf.CGroupSKB, asm.FnSkStorageGet) }},
		{"bpf_sk_storage_get in sock_ops programs", func() error { return features.HaveProgramHelper(ebpf.SockOps, asm.FnSkStorageGet) }},
		{"bpf_sk_storage_delete in sock_ops programs", func() error { return features.HaveProgramHelper(ebpf.SockOps, asm.FnSkStorageDelete) }},
	} {
		if err := p.probe(); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return "the kernel has no " + p.what
			}
			return fmt.Sprintf("probe %s: %v", p.what, err)
		}
	}
	return ""
}

// taskBTF says whether every program type that identifies the current task's
// executable (the connect hooks, cgroup/sock_create and the UDP socket filter)
// may call bpf_get_current_task_btf: identify then reads the task's pointers
// with plain loads instead of a bpf_probe_read_kernel call each (task_btf in
// fastpath.c). Recent kernels offer it to every program type of a loader with
// CAP_PERFMON; elsewhere the programs keep the helper calls.
func taskBTF() bool {
	for _, t := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.CGroupSock, ebpf.SocketFilter} {
		if features.HaveProgramHelper(t, asm.FnGetCurrentTaskBtf) != nil {
			return false
		}
	}
	return true
}

// noNetnsCookieInSockops says why the sock_ops program cannot call
// bpf_get_netns_cookie (the kernel offers it to sock_ops programs from Linux
// 5.15), or "". force says it cannot (tests).
func noNetnsCookieInSockops(force bool) string {
	const why = "the kernel's sock_ops programs cannot read a socket's network namespace (bpf_get_netns_cookie, Linux 5.15)"
	if force {
		return why + " (test)"
	}
	if err := features.HaveProgramHelper(ebpf.SockOps, asm.FnGetNetnsCookie); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return why
		}
		return fmt.Sprintf("probe bpf_get_netns_cookie in sock_ops programs: %v", err)
	}
	return ""
}

// withoutNetnsCookie replaces the sock_ops program's calls of
// bpf_get_netns_cookie with a 0 (no namespace's cookie): its watch then turns the
// state callback on for no socket, and no socket end is reported. The program
// reports its decisions as before.
func withoutNetnsCookie(p *ebpf.ProgramSpec) error {
	if p == nil {
		return errors.New("the eBPF object has no program latch_fast_sockops")
	}
	n := 0
	for i, ins := range p.Instructions {
		if ins.IsBuiltinCall() && ins.Constant == int64(asm.FnGetNetnsCookie) {
			p.Instructions[i] = asm.Mov.Imm(asm.R0, 0).WithMetadata(ins.Metadata)
			n++
		}
	}
	if n == 0 {
		return errors.New("the sock_ops program calls no bpf_get_netns_cookie to take out")
	}
	return nil
}

// FastPath is the loaded and attached fast path.
type FastPath struct {
	cfg   Config
	objs  fastpathObjects
	links []link.Link
	ring  *ringbuf.Reader // decisions (events)
	// taskBTF: the programs read the task's executable through BTF pointers
	// (task_btf in fastpath.c).
	taskBTF bool
	// endsRing reads the TCP socket ends (ends); nil while they are off.
	endsRing *ringbuf.Reader
	// ringWait and endsWait read ring's and endsRing's records from the
	// mapped rings and wait for them in the Go runtime's poller (see
	// ringWait); nil: the ringbuf.Reader reads and waits itself.
	ringWait, endsWait *ringWait

	genMu sync.Mutex // serialises RulesChanged
	cur   atomic.Pointer[ruleState]

	stored, notStored atomic.Uint64
	events, badEvents atomic.Uint64
	ends              atomic.Uint64
	storeErrors       atomic.Uint64

	exesMu sync.Mutex
	exes   map[identity]string // executable identity → path, for history rows
	// exeWatch watches the executables decisions were stored for (see
	// exewatch_linux.go); nil: inotify failed, exeWatchWhy says why, and
	// nothing is stored.
	exeWatch    *exeWatch
	exeWatchWhy string
	exeWatchRun chan struct{} // closed when exeWatch.run returned
	// sbDevs: each mount's super block's device (mountinfo's major:minor),
	// by mount id, as /proc/self/mountinfo last gave them (sbDev); cleared at
	// each mount change.
	sbMu   sync.Mutex
	sbDevs map[uint64]uint64
	// mountWatch bumps the generation when a mount table changes (see
	// mountwatch_linux.go); nil: it could not, exeWatchWhy says why, and
	// nothing is stored.
	mountWatch *mountWatch

	udpPin     string       // where the UDP match program is pinned; "": none
	leasePin   string       // where the lease program is pinned; "": none
	sockPin    string       // where the socket pin program is pinned; "": none (see sockpin_linux.go)
	sockPinOn  atomic.Bool  // the ruleset runs the socket pin
	sockPinWhy atomic.Value // string: why not
	stashPin   string       // where the sender stash program is pinned; "": none (see sockpin_linux.go)
	stashOn    atomic.Bool  // the ruleset runs the sender stash
	stashWhy   atomic.Value // string: why not
	leaseOn    atomic.Bool  // the ruleset checks the lease before a fast SYN passes
	leaseWhy   atomic.Value // string: why not
	unmountPin bool         // Open mounted the BPF file system at cfg.PinDir
	udpOn      atomic.Bool  // the ruleset runs the UDP match: UDP allows are stored
	tcpOff     atomic.Bool  // the ruleset has no fast TCP rules (SetTCPRuleset): no TCP verdict is stored
	udpWhy     atomic.Value // string: why not
	// why the ruleset does not pass a TCP connect this fast path allowed by
	// its socket's mark (SetTCPRuleset); "" or unset: it does
	tcpRulesetWhy atomic.Value // string

	tcpLocalWhy string       // why TCP decisions come without the local port; "": they have it
	tcpEndsWhy  string       // why TCP socket ends are not reported; "": they are
	simOpenWhy  string       // why the ingress program is not attached (no simultaneous open guard); "": it is
	recv        receiveCheck // the socket pin's receive check
	// the cgroup the ingress program is attached to
	simOpenCgroup string
	// why TCP socket ends carry no counters of the socket's bytes; "": those of
	// active opens do
	tcpEndBytesWhy string
	// live byte counts of TCP sockets (SocketCounts)
	liveState

	// notrack (notrack_linux.go): why the TCP socket iterators cannot run ("":
	// they can), their links, and whether the ruleset keeps fast TCP flows out
	// of conntrack (SetNotrack) or why not.
	notrackWhy     string
	cookie         uint64 // the served network namespace's
	redecideIter   *link.Iter
	restoreIter    *link.Iter
	notrackOn      atomic.Bool
	notrackRuleWhy atomic.Value // string
	iterMu         sync.Mutex   // serialises the iterators' runs (keep, restore, iter_moved)
	swept          int          // sockets Open found with a gone daemon's MarkFastAllow (sweep)
	session        uint64       // iter_session of the last RedecideSockets
	kept           []fastpathFpTuple
	// SyncDecisions' waiters, answered by readDecisions; syncRunning says
	// whether it reads.
	syncMu      sync.Mutex
	syncs       []chan error
	syncRunning bool

	offers     chan offered
	stopWorker chan struct{}
	workerDone chan struct{}
}

// ruleState is what a rule set allows the fast path to cache.
type ruleState struct {
	gen       uint64
	cacheable bool
	why       string                      // why nothing is cached, if !cacheable
	expires   map[engine.RuleID]time.Time // every rule in force; zero: never
}

// Ticket is the rule generation a decision is about to be made under; take it
// (Ticket) before asking the engine and give it to Remember with the verdict.
type Ticket struct{ st *ruleState }

// identity is an executable as the kernel program sees it.
type identity struct {
	ino, parentIno uint64
	dev, mntID     uint32
}

// Open loads the programs and maps and attaches the hooks. It fails (and leaves
// nothing loaded) without BPF, BTF, CO-RE support for the fields it reads, or
// privilege; the caller then runs without a fast path.
func Open(cfg Config) (fp *FastPath, err error) {
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxEntries < 0 {
		return nil, fmt.Errorf("fast path: MaxEntries %d is negative", cfg.MaxEntries)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("fast path: TTL %v is negative", cfg.TTL)
	}
	if cfg.RingBytes == 0 {
		cfg.RingBytes = DefaultRingBytes
	}
	if cfg.EndsRingBytes == 0 {
		cfg.EndsRingBytes = DefaultEndsRingBytes
	}
	cgroupPath := cfg.CgroupPath
	if cgroupPath == "" {
		if cgroupPath, err = cgroup2.Find(); err != nil {
			// `ip netns exec` and containers give the daemon a fresh /sys without
			// the cgroup2 mount, yet the hierarchy is the same: mount it privately
			// just for the attach (the links hold the cgroup).
			dir, merr := cgroup2.MountPrivate("latch-fastpath-cgroup2-")
			if merr != nil {
				return nil, fmt.Errorf("fast path: %w; mounting one failed: %v", err, merr)
			}
			defer cgroup2.Unmount(dir)
			cgroupPath = dir
			cfg.CgroupPath = "cgroup2 root"
		} else {
			cfg.CgroupPath = cgroupPath
		}
	}
	if e := cfg.EndsCgroupPath; e != "" {
		// The connect hooks leave their decisions to the sock_ops program: it must
		// run wherever they do.
		if rel, err := filepath.Rel(filepath.Clean(e), filepath.Clean(cgroupPath)); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("fast path: the cgroup %s is not within the cgroup of the socket end hooks %s", cgroupPath, e)
		}
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("fast path: raise RLIMIT_MEMLOCK: %w", err)
	}
	cookie, err := netnsCookie()
	if err != nil {
		return nil, fmt.Errorf("fast path: %w", err)
	}
	subCgroup := false // the hooks serve one cgroup, not every process
	var udpCgroup uint64
	if cfg.CgroupPath != "" && cfg.CgroupPath != "cgroup2 root" && cgroupPath == cfg.CgroupPath {
		// A cgroup of the caller's choosing: the UDP match serves it alone too
		// (its id is its directory's inode number).
		var st unix.Stat_t
		if err := unix.Stat(cgroupPath, &st); err != nil {
			return nil, fmt.Errorf("fast path: stat the cgroup %s: %w", cgroupPath, err)
		}
		if root, err := cgroup2.Find(); err != nil || !sameFile(root, cgroupPath) {
			subCgroup = true
			udpCgroup = st.Ino
		}
	}
	fp = &FastPath{cfg: cfg, exes: make(map[identity]string), offers: make(chan offered, 1024), cookie: cookie}
	// Before Linux 5.15 a sock_ops program cannot read the socket's network
	// namespace (bpf_get_netns_cookie), which the socket end reports need: the
	// program loads without them rather than the fast path not at all.
	noCookie := noNetnsCookieInSockops(cfg.noNetnsCookie)
	if noCookie != "" {
		fp.tcpEndsWhy = noCookie
	}
	// The counters of a socket's bytes for its end need socket storage in
	// sock_ops and cgroup_skb programs: without them (or if the kernel refuses
	// the programs that use them) ends carry none, and the byte accountant reads
	// conntrack for each as before.
	fp.tcpEndBytesWhy = noEndBytesKernel(cfg.noEndBytes)
	// The live counts of sockets (SocketCounts) read the counters through an
	// iterator over the socket storage map (Linux 5.9): without it (or if the
	// kernel refuses it) the object loads with a placeholder in its place.
	fp.liveVia, fp.liveWhy = liveKernel(cfg.noLiveBytes, cfg.noLiveMap)
	useTaskBTF := taskBTF() && !cfg.noTaskBTF
	// The ingress program's simultaneous open guard serves the sockets of this
	// namespace only where its kernel lets cgroup_skb programs read a packet's
	// namespace; elsewhere those of every namespace (see simultaneous_open).
	skbNetns := features.HaveProgramHelper(ebpf.CGroupSKB, asm.FnGetNetnsCookie) == nil
	// A fast socket closed with a reset keeps MarkFastFlow for it where the
	// sock_ops program may read the socket's shutdown flags (close_keep in
	// fastpath.c); elsewhere its mark is cleared first, as at every other end.
	closeKeep := features.HaveProgramHelper(ebpf.SockOps, asm.FnSkcToTcpSock) == nil &&
		features.HaveProgramHelper(ebpf.SockOps, asm.FnProbeReadKernel) == nil
	fp.taskBTF = useTaskBTF
	userNS, err := hostUserNS()
	if err != nil {
		return nil, err
	}
	load := func(bytes bool, live liveVia, iters bool) error {
		spec, err := loadFastpath()
		if err != nil {
			return fmt.Errorf("fast path: read the eBPF object: %w", err)
		}
		if err := spec.Variables["netns_cookie"].Set(cookie); err != nil {
			return fmt.Errorf("fast path: set the network namespace: %w", err)
		}
		// The user namespace attribution takes for the host's (review28):
		// identify gives no identity to a task in another.
		if err := spec.Variables["host_userns"].Set(userNS); err != nil {
			return fmt.Errorf("fast path: set the host's user namespace: %w", err)
		}
		if udpCgroup != 0 {
			if err := spec.Variables["udp_cgroup"].Set(udpCgroup); err != nil {
				return fmt.Errorf("fast path: set the cgroup: %w", err)
			}
		}
		// Without bytes_ok, the verifier never visits the code that counts a
		// socket's bytes (socks, the socket storage map, is the pending
		// decisions' too, and every kernel the fast path loads on has it).
		if bytes {
			if err := spec.Variables["bytes_ok"].Set(uint32(1)); err != nil {
				return fmt.Errorf("fast path: turn the socket counters on: %w", err)
			}
		}
		if skbNetns {
			if err := spec.Variables["skb_netns"].Set(uint32(1)); err != nil {
				return fmt.Errorf("fast path: read the namespace of a packet's socket: %w", err)
			}
		}
		if closeKeep {
			if err := spec.Variables["close_keep"].Set(uint32(1)); err != nil {
				return fmt.Errorf("fast path: keep the mark for a reset on close: %w", err)
			}
		}
		if useTaskBTF {
			if err := spec.Variables["task_btf"].Set(uint32(1)); err != nil {
				return fmt.Errorf("fast path: read the task through BTF: %w", err)
			}
		}
		spec.Maps["verdicts"].MaxEntries = uint32(cfg.MaxEntries)
		spec.Maps["events"].MaxEntries = uint32(cfg.RingBytes)
		spec.Maps["ends"].MaxEntries = uint32(cfg.EndsRingBytes)
		if err := withLive(spec, live); err != nil {
			return fmt.Errorf("fast path: %w", err)
		}
		if cfg.liveRefused && live != liveOff {
			// An iterator program the verifier refuses (R0 never set).
			name := map[liveVia]string{liveMap: liveMapProg, liveTCP: liveTCPProg}[live]
			spec.Programs[name].Instructions = asm.Instructions{asm.Return()}
		}
		if !iters {
			withoutIterators(spec)
		}
		if noCookie != "" {
			if err := withoutNetnsCookie(spec.Programs["latch_fast_sockops"]); err != nil {
				return fmt.Errorf("fast path: %w", err)
			}
		}
		if err := spec.LoadAndAssign(&fp.objs, nil); err != nil {
			return fmt.Errorf("fast path: load the eBPF programs: %w", err)
		}
		return nil
	}
	// The TCP socket iterators (notrack) need bpf_setsockopt in TCP iterators
	// (Linux 5.15): a kernel that refuses them loads the rest without them.
	loadIters := func(bytes bool, live liveVia) error {
		err := load(bytes, live, true)
		if err == nil {
			return nil
		}
		if err2 := load(bytes, live, false); err2 != nil {
			return err2
		}
		fp.notrackWhy = "the kernel refused the TCP socket iterators: " + err.Error()
		return nil
	}
	err = loadIters(fp.tcpEndBytesWhy == "", fp.liveVia)
	if err != nil && fp.liveVia != liveOff {
		// A kernel that refuses the live counts' iterator: without it.
		fp.liveVia, fp.liveWhy = liveOff, err.Error()
		err = loadIters(fp.tcpEndBytesWhy == "", liveOff)
	}
	if err != nil {
		if fp.tcpEndBytesWhy != "" {
			return nil, err
		}
		// A kernel that refuses the counting code: without it.
		fp.tcpEndBytesWhy = err.Error()
		if err := loadIters(false, liveOff); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			fp.Close()
			fp = nil
		}
	}()
	if err := fp.heartbeat(); err != nil {
		return fp, err
	}
	// Generation 1 before anything attaches: entries are never stored under 0.
	fp.cur.Store(&ruleState{gen: 1, why: "no rules seen yet"})
	if err := fp.objs.Generation.Put(uint32(0), uint64(1)); err != nil {
		return fp, fmt.Errorf("fast path: set the generation: %w", err)
	}
	if fp.ring, err = ringbuf.NewReader(fp.objs.Events); err != nil {
		return fp, fmt.Errorf("fast path: open the ring buffer: %w", err)
	}
	// Without the poller the reader waits in epoll_wait itself, as it always
	// could (slower: see ringWait).
	fp.ringWait, _ = newRingWait(fp.objs.Events)
	// The sock_ops program first: with it in place the connect hooks leave each
	// decision for it to send with the local address and port the kernel chooses
	// (which the byte accountant needs to find the flow in conntrack). Without it,
	// decisions are sent at once, without them.
	// Stats.TCPLocalWhy says why not.
	// The sock_ops program serves every process of the namespace (the root
	// cgroup) whichever cgroup the connect hooks serve: the end of every local
	// TCP socket is reported, so that byte accounting needs no conntrack update
	// events for any flow (see doc.go). Where the root cannot be had, it serves
	// the hooks' cgroup, and the ends are not reported.
	sockopsPath, rootWhy := cgroupPath, ""
	if cfg.EndsCgroupPath != "" {
		sockopsPath = cfg.EndsCgroupPath
	} else if subCgroup {
		var unmount func()
		if sockopsPath, unmount, err = rootCgroup(); err != nil {
			sockopsPath, rootWhy = cgroupPath, err.Error()
		} else {
			defer unmount()
		}
	}
	fp.tcpLocalWhy = fp.attachSockops(sockopsPath)
	if fp.tcpLocalWhy != "" && sockopsPath != cgroupPath {
		// Refused at the root: the hooks' cgroup at least.
		rootWhy = fp.tcpLocalWhy
		fp.tcpLocalWhy = fp.attachSockops(cgroupPath)
	}
	// The ingress program, where the sock_ops program is (every process's
	// sockets, or the hooks' cgroup's): it drops the peer's half of a
	// simultaneous open to a socket whose SYN is held, and counts the bytes in
	// of the sockets that have counters.
	ingressPath := cgroupPath
	if fp.tcpLocalWhy == "" && rootWhy == "" {
		ingressPath = sockopsPath
	}
	fp.simOpenWhy = fp.attachIngress(ingressPath)
	// The socket pin's receive check: at the root cgroup (every process's
	// sockets; the served namespace's only), wherever the hooks are; with
	// Config.EndsCgroupPath (tests, benchmarks) where the sock_ops program is.
	fp.recv.attach(fp.objs.LatchPinIngress, fp.objs.PinMoves, fp.objs.PinInStats, fp.objs.LocalBcast, cfg.NoReceiveCheck, cfg.EndsCgroupPath)
	switch {
	case fp.tcpLocalWhy != "":
		fp.tcpEndsWhy = "no sock_ops program: " + fp.tcpLocalWhy
	case fp.tcpEndsWhy != "":
		// The kernel's sock_ops programs cannot tell the namespace (above).
	case cfg.NoTCPEnds != "":
		fp.tcpEndsWhy = cfg.NoTCPEnds
	case rootWhy != "":
		// The sockets of the other processes would not report their end.
		fp.tcpEndsWhy = fmt.Sprintf("the sock_ops program serves the processes of cgroup %s only: %s", cfg.CgroupPath, rootWhy)
	default:
		if fp.endsRing, err = ringbuf.NewReader(fp.objs.Ends); err != nil {
			return fp, fmt.Errorf("fast path: open the ring buffer of socket ends: %w", err)
		}
		fp.endsWait, _ = newRingWait(fp.objs.Ends)
		if err := fp.objs.TcpEnds.Set(uint32(1)); err != nil {
			fp.tcpEndsWhy = fmt.Sprintf("turn the socket end reports on: %v", err)
		} else if fp.tcpEndBytesWhy == "" && fp.simOpenWhy != "" {
			fp.tcpEndBytesWhy = "no ingress program: " + fp.simOpenWhy
		} else if fp.tcpEndBytesWhy == "" {
			// Where the sock_ops program is (the root cgroup): every process's
			// sockets.
			fp.tcpEndBytesWhy = fp.attachEndBytes(sockopsPath)
		}
	}
	if fp.tcpEndsWhy != "" {
		fp.tcpEndBytesWhy = "no socket ends: " + fp.tcpEndsWhy
	}
	switch {
	case fp.tcpEndBytesWhy != "":
		fp.liveWhy = "no socket counters: " + fp.tcpEndBytesWhy
	case fp.liveWhy == "":
		fp.liveWhy = fp.attachLive()
	}
	if fp.liveWhy != "" {
		fp.liveVia = liveOff
	}
	for _, a := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{
		{fp.objs.LatchFastConnect4, ebpf.AttachCGroupInet4Connect},
		{fp.objs.LatchFastConnect6, ebpf.AttachCGroupInet6Connect},
		// Records each UDP socket's creator, for the UDP match (F1: the task
		// writing a datagram is not always the socket's owner).
		{fp.objs.LatchFastSockCreate, ebpf.AttachCGroupInetSockCreate},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: a.at, Program: a.prog})
		if err != nil {
			return fp, fmt.Errorf("fast path: attach to cgroup %s at %v: %w", cgroupPath, a.at, err)
		}
		fp.links = append(fp.links, l)
	}
	fp.notrackWhy = fp.attachIterators()
	if fp.notrackWhy == "" {
		n, err := fp.sweep()
		if err != nil {
			return fp, err
		}
		fp.swept = n
	}
	fp.notrackRuleWhy.Store("the ruleset does not keep fast TCP flows out of conntrack yet")
	fp.udpWhy.Store("the ruleset does not run the UDP match yet")
	fp.leaseWhy.Store("the ruleset does not check the lease yet")
	fp.sockPinWhy.Store("the ruleset does not run the socket pin yet")
	fp.stashWhy.Store("the ruleset does not run the sender stash yet")
	if cfg.PinDir == "" {
		fp.udpWhy.Store("no BPF file system to pin the UDP match in")
		fp.leaseWhy.Store("no BPF file system to pin the lease in")
		fp.sockPinWhy.Store("no BPF file system to pin the socket pin in")
		fp.stashWhy.Store("no BPF file system to pin the sender stash in")
	} else if err := fp.pin(cfg.PinDir); err != nil {
		// TCP is served all the same (without the lease); UDP goes
		// through the queue.
		fp.udpWhy.Store(err.Error())
		fp.leaseWhy.Store(err.Error())
		fp.sockPinWhy.Store(err.Error())
		fp.stashWhy.Store(err.Error())
	}
	// Before raiseLease: the lease's descriptor must stay the highest. Up to two
	// watches per executable: its file and its directory.
	// What both watches do where they cannot tell which entries a change
	// affects (a lost event, an unreadable mount table, an entry that could not
	// be deleted): every stored decision misses.
	bump := func() {
		if err := fp.ModeChanged(); err != nil {
			fp.storeErrors.Add(1)
		}
	}
	del := func(k *fastpathFpKey) error { return fp.objs.Verdicts.Delete(k) }
	if w, err := newExeWatch(min(maxExeWatches, 2*max(cfg.MaxEntries, 1)), 2*max(cfg.MaxEntries, 1), del); err != nil {
		fp.exeWatchWhy = err.Error()
	} else {
		fp.exeWatch, fp.exeWatchRun = w, make(chan struct{})
		go func() {
			defer close(fp.exeWatchRun)
			w.run(bump)
		}()
	}
	if ew := fp.exeWatch; ew == nil {
		// Nothing is stored anyway.
	} else if w, err := newMountWatch(func(pts []string) (bool, bool) {
		fp.sbMu.Lock()
		fp.sbDevs = nil
		fp.sbMu.Unlock()
		return ew.dropUnder(pts)
	}, bump); err != nil {
		fp.exeWatchWhy = err.Error()
	} else {
		fp.mountWatch = w
	}
	if err := fp.raiseLease(); err != nil {
		return fp, err
	}
	fp.stopWorker, fp.workerDone = make(chan struct{}), make(chan struct{})
	go fp.storeWorker()
	return fp, nil
}

// raiseLease moves the lease map's file descriptor above every descriptor
// open now, the hooks' links among them: a process that dies has its files
// released from the highest descriptor down, so the lease lapses before any
// hook goes (see "The lease" in doc.go).
func (fp *FastPath) raiseLease() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("fast path: list this process's file descriptors: %w", err)
	}
	top := 0
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > top {
			top = n
		}
	}
	fd, err := unix.FcntlInt(uintptr(fp.objs.Lease.FD()), unix.F_DUPFD_CLOEXEC, top+1)
	if err != nil {
		return fmt.Errorf("fast path: move the lease's descriptor above %d: %w", top, err)
	}
	m, err := ebpf.NewMapFromFD(fd)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("fast path: the lease's new descriptor: %w", err)
	}
	old := fp.objs.Lease
	fp.objs.Lease = m
	return old.Close()
}

// rootCgroup returns the root of the cgroup2 hierarchy, mounted privately if it
// is not mounted in this mount namespace (then unmount, to call once attached,
// unmounts it).
func rootCgroup() (path string, unmount func(), err error) {
	if path, err = cgroup2.Find(); err == nil {
		return path, func() {}, nil
	}
	dir, merr := cgroup2.MountPrivate("latch-fastpath-cgroup2-")
	if merr != nil {
		return "", nil, fmt.Errorf("find the root cgroup: %v; mounting one failed: %v", err, merr)
	}
	return dir, func() { cgroup2.Unmount(dir) }, nil
}

// attachSockops attaches the sock_ops program to the cgroup at path and tells the
// connect hooks to leave their decisions to it. It returns why not, or "".
func (fp *FastPath) attachSockops(path string) string {
	if fp.cfg.noSockops {
		return "not attached (test)"
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: ebpf.AttachCGroupSockOps, Program: fp.objs.LatchFastSockops})
	if err != nil {
		return fmt.Sprintf("attach the sock_ops program to cgroup %s: %v", path, err)
	}
	if err := fp.objs.TcpLocal.Set(uint32(1)); err != nil {
		l.Close()
		return fmt.Sprintf("turn the sock_ops program on: %v", err)
	}
	fp.links = append(fp.links, l)
	return ""
}

// attachIngress attaches the cgroup_skb ingress program (which drops the peer's
// half of a simultaneous open to a socket in SYN_SENT, and counts the packets in
// of the sockets that have counters) to the cgroup at path. It returns why not,
// or "".
func (fp *FastPath) attachIngress(path string) string {
	if fp.cfg.noSimOpen {
		return "not attached (test)"
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: ebpf.AttachCGroupInetIngress, Program: fp.objs.LatchFastSkbIngress})
	if err != nil {
		return fmt.Sprintf("attach the ingress program to cgroup %s: %v", path, err)
	}
	fp.links = append(fp.links, l)
	fp.simOpenCgroup = path
	return ""
}

// attachEndBytes attaches the cgroup_skb egress program that counts the packets
// out of the sockets the sock_ops program gives counters, to the cgroup at path
// (the sock_ops program's, where the ingress program counts those in), and then
// has it give them. It returns why not, or "".
func (fp *FastPath) attachEndBytes(path string) string {
	var ls []link.Link
	for _, a := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{
		{fp.objs.LatchFastSkbEgress, ebpf.AttachCGroupInetEgress},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: a.at, Program: a.prog})
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Sprintf("attach the byte counters to cgroup %s at %v: %v", path, a.at, err)
		}
		ls = append(ls, l)
	}
	// Counted from now: only sockets that open after this get counters.
	if err := fp.objs.TcpBytes.Set(uint32(1)); err != nil {
		for _, l := range ls {
			l.Close()
		}
		return fmt.Sprintf("turn the byte counters on: %v", err)
	}
	fp.links = append(fp.links, ls...)
	return ""
}

// pin pins the UDP match program at dir/fast-udp-PID and the lease program at
// dir/fast-lease-PID, mounting a BPF file system on dir if it is not on one.
func (fp *FastPath) pin(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("fast path: make the pin directory's parent: %w", err)
	}
	if err := ownDir(dir); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("fast path: stat the pin directory %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", dir, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
			return fmt.Errorf("fast path: mount a BPF file system on %s: %w", dir, err)
		}
		fp.unmountPin = true
	}
	// A pin of this daemon's own: another daemon (one refused because this
	// state directory's daemon runs, or a ruleset kept on exit that names its
	// pin) keeps its own, which SetUDP removes once its process is gone.
	for _, p := range []struct {
		prefix, what string
		prog         *ebpf.Program
		path         *string
	}{
		{pinPrefixUDP, "the UDP match", fp.objs.LatchFastUdp, &fp.udpPin},
		{pinPrefixLease, "the lease", fp.objs.LatchFastLease, &fp.leasePin},
		{pinPrefixSock, "the socket pin", fp.objs.LatchFastPin, &fp.sockPin},
		{pinPrefixStash, "the sender stash", fp.objs.LatchSendStash, &fp.stashPin},
	} {
		path := filepath.Join(dir, fmt.Sprintf("%s%d", p.prefix, os.Getpid()))
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("fast path: remove the old pin %s: %w", path, err)
		}
		if err := p.prog.Pin(path); err != nil {
			return fmt.Errorf("fast path: pin %s at %s: %w", p.what, path, err)
		}
		*p.path = path
	}
	return nil
}

// ownDir makes dir (mode 0700) if it does not exist, and checks that it is a
// directory (not a symbolic link), owned by this process's user and closed to
// everyone else, as the pin directory must be.
func ownDir(dir string) error {
	if err := unix.Mkdir(dir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("fast path: make the pin directory %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("fast path: stat the pin directory %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("fast path: the pin directory %s is not a directory (a symbolic link?)", dir)
	}
	if st.Uid != uint32(os.Geteuid()) || st.Mode&0o077 != 0 {
		return fmt.Errorf("fast path: the pin directory %s has owner uid %d and mode %#o; want uid %d and mode 0700", dir, st.Uid, st.Mode&0o7777, os.Geteuid())
	}
	return nil
}

// systemBPFFS is where systemd mounts a BPF file system at boot.
var systemBPFFS = "/sys/fs/bpf"

// PinDir returns the directory a daemon with state directory stateDir pins its UDP
// match in: if a BPF file system is mounted at /sys/fs/bpf (systemd mounts one at
// boot), a directory of latch's there, latch-HASH (HASH: of the state directory's
// absolute path), which needs no mount (and so no CAP_SYS_ADMIN); otherwise
// stateDir/bpf, on which Open mounts a BPF file system.
func PinDir(stateDir string) string {
	var st unix.Statfs_t
	if unix.Statfs(systemBPFFS, &st) == nil && st.Type == unix.BPF_FS_MAGIC {
		abs, err := filepath.Abs(stateDir)
		if err != nil {
			abs = stateDir
		}
		h := fnv.New64a()
		h.Write([]byte(abs))
		return filepath.Join(systemBPFFS, fmt.Sprintf("latch-%016x", h.Sum64()))
	}
	return filepath.Join(stateDir, "bpf")
}

// pinPrefixUDP and pinPrefixLease start the names of a pinned UDP match and a
// pinned lease program, followed by their daemon's pid.
const (
	pinPrefixUDP   = "fast-udp-"
	pinPrefixLease = "fast-lease-"
)

// RemovePin removes what Open with Config.PinDir dir left pinned there (daemons
// that died, or kept their ruleset on exit) and unmounts the BPF file system on
// dir. Remove the rules that name the pins first: iptables-legacy checks the
// pinned program of every rule again at each change of the table. It reports
// whether there was a pin.
func RemovePin(dir string) (bool, error) {
	removed, err := removePins(dir, func(int) bool { return true })
	if removed {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC {
			// Not a mount point (a directory on the system's BPF file
			// system): nothing to unmount.
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	}
	if err == nil {
		os.Remove(dir) // if empty
	}
	return removed, err
}

// removePins removes the pins in dir of the daemons (by pid) that gone says are
// gone.
func removePins(dir string, gone func(pid int) bool) (bool, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("fast path: read the pin directory %s: %w", dir, err)
	}
	removed := false
	var errs []error
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), pinPrefixUDP)
		if !ok {
			rest, ok = strings.CutPrefix(e.Name(), pinPrefixLease)
		}
		if !ok {
			rest, ok = strings.CutPrefix(e.Name(), pinPrefixSock)
		}
		if !ok {
			rest, ok = strings.CutPrefix(e.Name(), pinPrefixStash)
		}
		pid, perr := strconv.Atoi(rest)
		if !ok || perr != nil || !gone(pid) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("fast path: remove the pinned program %s: %w", filepath.Join(dir, e.Name()), err))
			continue
		}
		removed = true
	}
	return removed, errors.Join(errs...)
}

// processGone reports whether no process has the id pid.
func processGone(pid int) bool {
	return pid > 0 && errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

// UDPMatch returns the path of the pinned socket filter program the ruleset's
// xt_bpf match runs on the first datagram of a UDP flow (it matches when a rule
// allowed that program's datagrams to that destination before, under the rules in
// force); "" if there is none. Call SetUDP once the ruleset runs it or could not.
func (fp *FastPath) UDPMatch() string { return fp.udpPin }

// SetUDP says whether the ruleset runs the UDP match (err == nil) or why not. UDP
// allows are stored only while it does.
func (fp *FastPath) SetUDP(err error) {
	if fp.udpPin != "" || fp.leasePin != "" || fp.sockPin != "" || fp.stashPin != "" {
		// The ruleset no longer names the pins of daemons gone before: free
		// their programs and maps.
		removePins(fp.cfg.PinDir, func(pid int) bool { return pid != os.Getpid() && processGone(pid) })
	}
	if err != nil {
		fp.udpOn.Store(false)
		fp.udpWhy.Store(err.Error())
		return
	}
	fp.udpWhy.Store("")
	fp.udpOn.Store(true)
}

// Lease returns the path of the pinned socket filter program the ruleset's
// xt_bpf match runs on a SYN that would pass by its socket's MarkFastAllow: it
// matches while this FastPath is open in a live process (see "The lease" in
// doc.go); "" if there is none. Call SetLease once the ruleset runs it or could
// not.
func (fp *FastPath) Lease() string { return fp.leasePin }

// SetTCPRuleset says whether the ruleset passes a TCP connect the fast path
// allowed by its socket's mark (err == nil) or why not (the firewall could
// not load the matches that reset a fast socket's source-routed packets):
// then the queue decides every connect again.
func (fp *FastPath) SetTCPRuleset(err error) {
	if err != nil {
		fp.tcpRulesetWhy.Store(err.Error())
		fp.tcpOff.Store(true)
		// What was stored before misses from now on: a hit's SYN would be
		// decided by the queue again, and recorded twice.
		fp.genMu.Lock()
		defer fp.genMu.Unlock()
		st := *fp.cur.Load()
		st.gen++
		fp.publish(&st)
		return
	}
	fp.tcpRulesetWhy.Store("")
	fp.tcpOff.Store(false)
}

// SetLease says whether the ruleset checks the lease before a SYN passes by
// MarkFastAllow (err == nil) or why not.
func (fp *FastPath) SetLease(err error) {
	if err != nil {
		fp.leaseOn.Store(false)
		fp.leaseWhy.Store(err.Error())
		return
	}
	fp.leaseWhy.Store("")
	fp.leaseOn.Store(true)
}

// Close detaches the hooks and frees the maps. Connections are then decided through
// the queue again.
func (fp *FastPath) Close() error {
	if fp.stopWorker != nil {
		close(fp.stopWorker)
		<-fp.workerDone
		fp.stopWorker = nil
	}
	var errs []error
	// The mount watch first: it deletes entries through the executables'.
	if fp.mountWatch != nil {
		errs = append(errs, fp.mountWatch.close())
		fp.mountWatch = nil
	}
	if fp.exeWatch != nil {
		errs = append(errs, fp.exeWatch.close())
		<-fp.exeWatchRun
		fp.exeWatch = nil
	}
	pinned := fp.udpPin != "" || fp.leasePin != "" || fp.sockPin != "" || fp.stashPin != ""
	// The lease first, before the hooks go (see "The lease" in doc.go).
	if fp.objs.Lease != nil {
		errs = append(errs, fp.objs.Lease.Close())
	}
	for _, l := range fp.links {
		errs = append(errs, l.Close())
	}
	fp.links = nil
	errs = append(errs, fp.recv.close())
	for _, it := range []*link.Iter{fp.redecideIter, fp.restoreIter} {
		if it != nil {
			errs = append(errs, it.Close())
		}
	}
	fp.redecideIter, fp.restoreIter = nil, nil
	for _, w := range []*ringWait{fp.ringWait, fp.endsWait} {
		if w != nil {
			errs = append(errs, w.close())
		}
	}
	if fp.ring != nil {
		errs = append(errs, fp.ring.Close())
	}
	if fp.endsRing != nil {
		errs = append(errs, fp.endsRing.Close())
	}
	if fp.udpPin != "" && !fp.cfg.KeepPin {
		// Rules that still run the program (a ruleset kept on exit) hold it.
		if err := os.Remove(fp.udpPin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		fp.udpPin = ""
	}
	if fp.leasePin != "" && !fp.cfg.KeepPin {
		if err := os.Remove(fp.leasePin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		fp.leasePin = ""
	}
	if fp.sockPin != "" && !fp.cfg.KeepPin {
		if err := os.Remove(fp.sockPin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		fp.sockPin = ""
	}
	if fp.stashPin != "" && !fp.cfg.KeepPin {
		if err := os.Remove(fp.stashPin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		fp.stashPin = ""
	}
	if fp.unmountPin && !fp.cfg.KeepPin {
		unix.Unmount(fp.cfg.PinDir, unix.MNT_DETACH)
		fp.unmountPin = false
	}
	if pinned && !fp.cfg.KeepPin {
		os.Remove(fp.cfg.PinDir) // if empty (another daemon's pin stays)
	}
	errs = append(errs, fp.objs.Close())
	return errors.Join(errs...)
}

// RulesChanged tells the fast path that rules are now in force: every entry stored
// before misses from now on. Call it synchronously with every change of the rule
// set, after the engine uses the new rules and before the change is reported done
// (engine.OnInstall does both). A non-empty off says why nothing may be cached
// besides the rules (e.g. a blocklist in force, which can overrule a rule by a name).
func (fp *FastPath) RulesChanged(rules []engine.Rule, off ...string) error {
	fp.genMu.Lock()
	defer fp.genMu.Unlock()
	st := &ruleState{gen: fp.cur.Load().gen + 1, cacheable: true, expires: make(map[engine.RuleID]time.Time, len(rules))}
	for _, why := range off {
		if why != "" {
			st.cacheable, st.why = false, why
			break
		}
	}
	for _, r := range rules {
		st.expires[r.ID] = r.Expires
		if !st.cacheable {
			continue
		}
		switch {
		case r.Host != "":
			st.cacheable, st.why = false, fmt.Sprintf("rule %d has a host-name condition", r.ID)
		case r.LocalPort != (engine.PortRange{}):
			st.cacheable, st.why = false, fmt.Sprintf("rule %d has a local-port condition", r.ID)
		case r.Service != "":
			st.cacheable, st.why = false, fmt.Sprintf("rule %d has a service condition", r.ID)
		case r.Cmdline != "" || r.Parent != "" || r.Unit != "" || r.Container != "" || r.AppID != "" || r.SHA256 != "":
			// The kernel's key is the executable file, uid and destination: it cannot
			// tell two command lines, parents, units, containers or contents apart.
			st.cacheable, st.why = false, fmt.Sprintf("rule %d has an identity condition (cmdline, parent, unit, container, app id or pin)", r.ID)
		}
	}
	return fp.publish(st)
}

// ModeChanged tells the fast path that the mode changed (a mode decides before
// the rules or after them): every entry stored before misses from now on. It
// keeps the rules and the blocklist flag the last RulesChanged put in force: a
// mode hook that read them itself, outside the engine's rule lock, could publish
// an older rule set's cacheability under a newer generation than the rule
// change that replaced it (review28: cacheable with a host rule in force).
// Call it synchronously with every change of mode, and when the wall clock was
// stepped (entries' deadlines were computed from rule expiries against it).
func (fp *FastPath) ModeChanged() error {
	fp.genMu.Lock()
	defer fp.genMu.Unlock()
	st := *fp.cur.Load()
	st.gen++
	return fp.publish(&st)
}

// publish puts st in force, under genMu: the state first (a ticket of the new
// generation stores entries that miss until the map has it too), then the map,
// which makes every older entry miss.
func (fp *FastPath) publish(st *ruleState) error {
	fp.cur.Store(st)
	if err := fp.objs.Generation.Put(uint32(0), st.gen); err != nil {
		// The kernel must not keep hitting old entries: empty the map instead.
		var k fastpathFpKey
		for fp.objs.Verdicts.NextKey(nil, &k) == nil {
			if fp.objs.Verdicts.Delete(&k) != nil {
				break
			}
		}
		return fmt.Errorf("fast path: bump the rule generation to %d: %w", st.gen, err)
	}
	return nil
}

// Ticket returns the current rule generation, to be taken before a connection is
// decided and handed to Remember with the verdict.
func (fp *FastPath) Ticket() Ticket { return Ticket{fp.cur.Load()} }

// cacheable says whether the fast path may decide connections like req itself from
// verdict v given under st (see the package doc), and with which action.
func cacheable(st *ruleState, req *engine.Request, v engine.Verdict, udp, tcp bool) (uint32, bool) {
	if st == nil || !st.cacheable || v.Reason != engine.ReasonRule || v.RuleID == 0 ||
		req.Direction != engine.Outbound || req.Netns != "" ||
		// The fast path's history rows say verified (F2): only such decisions.
		req.Identity != engine.IdentityVerified ||
		req.PID <= 0 || req.UID < 0 || req.Exe == "" || !req.Remote.IsValid() {
		return 0, false
	}
	switch req.Protocol {
	case engine.TCP:
		// Only while the ruleset passes a SYN by its mark (SetTCPRuleset).
		if !tcp {
			return 0, false
		}
	case engine.UDP:
		// Allows only, and only while the ruleset runs the UDP match: a deny
		// is left to the queue (see the package doc).
		if udp && v.Action == engine.Allow {
			return actAllow, true
		}
		return 0, false
	default:
		return 0, false
	}
	switch v.Action {
	case engine.Allow:
		return actAllow, true
	case engine.Deny, engine.Reject:
		// For TCP both answer the SYN with a reset (MarkReject).
		return actReject, true
	}
	return 0, false
}

// offered is a verdict waiting for the store worker.
type offered struct {
	t   Ticket
	req engine.Request
	v   engine.Verdict
}

// Offer is Remember off the caller's goroutine: a verdict the fast path may cache
// is handed to a worker (the identity checks cost a few statx calls), so the queue's
// reader does not wait for them. A verdict that finds the worker's queue full is
// not stored (a later connection then misses once more). Never blocks.
func (fp *FastPath) Offer(t Ticket, req *engine.Request, v engine.Verdict) {
	if _, ok := cacheable(t.st, req, v, fp.udpOn.Load(), !fp.tcpOff.Load()); !ok {
		fp.notStored.Add(1)
		return
	}
	select {
	case fp.offers <- offered{t, *req, v}:
	default:
		fp.notStored.Add(1)
	}
}

// heartbeat tells the UDP match the daemon is alive (see alive in fastpath.c).
func (fp *FastPath) heartbeat() error {
	now, err := bootNow()
	if err != nil {
		return err
	}
	if err := fp.objs.Alive.Put(uint32(0), now); err != nil {
		return fmt.Errorf("fast path: write the heartbeat: %w", err)
	}
	return nil
}

// heartbeatEvery is how often the daemon tells the UDP match it is alive; the
// match stops 5 s (ALIVE_NS) after the last time.
const heartbeatEvery = time.Second

// storeWorker stores offered verdicts, and keeps the heartbeat, until Close.
func (fp *FastPath) storeWorker() {
	defer close(fp.workerDone)
	tick := time.NewTicker(heartbeatEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if err := fp.heartbeat(); err != nil {
				fp.storeErrors.Add(1)
			}
		case o := <-fp.offers:
			if _, err := fp.Remember(o.t, &o.req, o.v); err != nil {
				fp.storeErrors.Add(1)
			}
		case <-fp.stopWorker:
			return
		}
	}
}

// Remember stores the verdict the engine gave req under ticket t, if the fast path
// may decide such connections itself (see the package doc). It reports whether it
// did; a decision it may not cache is no error.
func (fp *FastPath) Remember(t Ticket, req *engine.Request, v engine.Verdict) (bool, error) {
	st := t.st
	act, ok := cacheable(st, req, v, fp.udpOn.Load(), !fp.tcpOff.Load())
	if !ok {
		fp.notStored.Add(1)
		return false, nil
	}
	ruleExpires, ok := st.expires[v.RuleID]
	if !ok {
		// A rule of a later set: this ticket's generation is stale anyway.
		fp.notStored.Add(1)
		return false, nil
	}
	// The executable is watched before its identity is checked, so that a rename
	// after the check is reported (see exewatch_linux.go); without a watch the
	// decision is not stored.
	if fp.exeWatch == nil || fp.mountWatch == nil || fp.mountWatch.dead.Load() {
		fp.notStored.Add(1)
		return false, nil
	}
	full := func() (bool, error) {
		// Every watch dropped, then every decision stored under one.
		fp.notStored.Add(1)
		fp.exeWatch.dropAll()
		if err := fp.ModeChanged(); err != nil {
			return false, err
		}
		return false, nil
	}
	w, err := fp.exeWatch.watch(req.Exe, uint32(req.UID))
	if fp.exeWatch.takeFailed() {
		if err := fp.ModeChanged(); err != nil {
			return false, err
		}
	}
	if errors.Is(err, errWatchesFull) {
		return full()
	}
	if errors.Is(err, errNotWalkable) {
		fp.notStored.Add(1)
		return false, nil
	}
	if err != nil {
		fp.notStored.Add(1)
		return false, err
	}
	id, err := exeIdentity(req.PID, req.Exe, req.ExeFile, fp.sbDev)
	if err != nil {
		fp.notStored.Add(1)
		return false, nil
	}
	now := time.Now()
	until := now.Add(fp.cfg.TTL)
	if !ruleExpires.IsZero() && ruleExpires.Before(until) {
		until = ruleExpires
	}
	if !until.After(now) {
		fp.notStored.Add(1)
		return false, nil
	}
	boot, err := bootNow()
	if err != nil {
		return false, err
	}
	key := makeKey(id, uint32(req.UID), req.Protocol, req.Remote)
	val := fastpathFpVerdict{Gen: st.gen, ExpiresNs: boot + uint64(until.Sub(now)), RuleId: uint64(v.RuleID), Action: act}
	fp.exesMu.Lock()
	if len(fp.exes) >= fp.cfg.MaxEntries {
		clear(fp.exes)
	}
	fp.exes[id] = req.Exe
	fp.exesMu.Unlock()
	// Indexed under the watches and stored, unless an event on them (or a mount
	// change) was handled since they were taken.
	ok, err = fp.exeWatch.commit(w, id, req.Exe, key, func() error { return fp.objs.Verdicts.Put(&key, &val) })
	if fp.exeWatch.takeFailed() {
		// Making room deleted entries, and one could not be: every entry misses.
		if err := fp.ModeChanged(); err != nil {
			return false, err
		}
	}
	if errors.Is(err, errWatchesFull) {
		return full()
	}
	if errors.Is(err, errNotWalkable) {
		fp.notStored.Add(1)
		return false, nil
	}
	if err != nil {
		fp.notStored.Add(1)
		return false, fmt.Errorf("fast path: store the verdict for %s -> %v: %w", req.Exe, req.Remote, err)
	}
	if !ok {
		fp.notStored.Add(1)
		return false, nil
	}
	fp.stored.Add(1)
	return true, nil
}

func makeKey(id identity, uid uint32, proto engine.Protocol, remote netip.AddrPort) fastpathFpKey {
	k := fastpathFpKey{Ino: id.ino, ParentIno: id.parentIno, Dev: id.dev, MntId: id.mntID, Uid: uid, Port: remote.Port(), Proto: uint8(proto)}
	a := remote.Addr()
	if a.Is4() || a.Is4In6() {
		k.Family = 4
		b := a.Unmap().As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = 6
		k.Addr = a.As16()
	}
	return k
}

// kernelDev encodes a device number as the kernel's dev_t (major << 20 | minor).
func kernelDev(major, minor uint32) uint32 { return major<<20 | minor }

// exeIdentity returns the identity of the executable process pid runs, provided it
// is the file at path (same device and inode), as the rule matched it. file is the
// executable as attribution found it while the process was being identified, if it
// says (Ino and Mnt set): then the process may have exited since (a short-lived
// program whose first connection the queue decided), and /proc is not read.
// sbDev gives a mount's super block's device (the kernel's key has it): a file
// whose device, as stat gives it, is another is refused (review33: an overlayfs
// over several file systems without xino, a btrfs subvolume; there the inode
// number is not unique under the super block's device, so the key the kernel
// makes cannot tell the file from another, and the device stat gives is never
// the kernel's: an entry stored with it could not hit).
func exeIdentity(pid int32, path string, file engine.FileID, sbDev func(mnt uint64) (uint64, bool)) (identity, error) {
	const mask = unix.STATX_INO | unix.STATX_MNT_ID
	var named, dir unix.Statx_t
	if file.Ino == 0 || file.Mnt == 0 {
		var run unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, "/proc/"+strconv.Itoa(int(pid))+"/exe", unix.AT_STATX_DONT_SYNC, mask, &run); err != nil {
			return identity{}, fmt.Errorf("stat the executable of pid %d: %w", pid, err)
		}
		if run.Mask&unix.STATX_MNT_ID == 0 {
			return identity{}, fmt.Errorf("stat the executable of pid %d: the kernel gives no mount id", pid)
		}
		file = engine.FileID{Dev: unix.Mkdev(run.Dev_major, run.Dev_minor), Ino: run.Ino, Mnt: run.Mnt_id}
	}
	// Review 39: path and its directory are walked by mountinfo.Open (no
	// symbolic link followed, no FUSE or network mount entered).
	if err := statxSafe(path, mask, &named); err != nil {
		return identity{}, err
	}
	// The mount ids differ when the process runs in another mount namespace (a
	// service with a private /tmp, `ip netns exec`); the key has the mount the
	// process executed its file through, which the kernel program reads too, so a
	// bind mount that shows the file at another path is another key.
	if file.Ino != named.Ino || file.Dev != unix.Mkdev(named.Dev_major, named.Dev_minor) {
		return identity{}, fmt.Errorf("pid %d runs another file than %s", pid, path)
	}
	// The same file (device and inode), so the same super block as the file
	// at path in the daemon's mount namespace, whose mount table has it.
	if named.Mask&unix.STATX_MNT_ID == 0 {
		return identity{}, fmt.Errorf("stat %s: the kernel gives no mount id", path)
	}
	sb, ok := sbDev(named.Mnt_id)
	if !ok {
		return identity{}, fmt.Errorf("%s: mount %d is not in /proc/self/mountinfo", path, named.Mnt_id)
	}
	if sb != file.Dev {
		return identity{}, fmt.Errorf("%s: its device %d:%d is not its file system's %d:%d (overlayfs over several file systems without xino, a btrfs subvolume): its inode number is not unique under the device the kernel's key has",
			path, unix.Major(file.Dev), unix.Minor(file.Dev), unix.Major(sb), unix.Minor(sb))
	}
	if err := statxSafe(filepath.Dir(path), unix.STATX_INO, &dir); err != nil {
		return identity{}, fmt.Errorf("the directory of %s: %w", path, err)
	}
	return identity{ino: file.Ino, parentIno: dir.Ino, dev: kernelDev(unix.Major(file.Dev), unix.Minor(file.Dev)), mntID: uint32(file.Mnt)}, nil
}

// sbDev returns the super block's device of mount mnt of the daemon's mount
// namespace (mountinfo's major:minor, the kernel's sb->s_dev), reading
// /proc/self/mountinfo when mnt is not known since the last mount change.
func (fp *FastPath) sbDev(mnt uint64) (uint64, bool) {
	fp.sbMu.Lock()
	defer fp.sbMu.Unlock()
	if d, ok := fp.sbDevs[mnt]; ok {
		return d, true
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, false
	}
	fp.sbDevs = parseSbDevs(b)
	d, ok := fp.sbDevs[mnt]
	return d, ok
}

// parseSbDevs reads mountinfo's mount ids and their major:minor.
func parseSbDevs(b []byte) map[uint64]uint64 {
	m := make(map[uint64]uint64)
	for line := range strings.Lines(string(b)) {
		fs := strings.Fields(line)
		if len(fs) < 3 {
			continue
		}
		id, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			continue
		}
		maj, mnr, ok := strings.Cut(fs[2], ":")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(maj, 10, 32)
		c, err2 := strconv.ParseUint(mnr, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		m[id] = unix.Mkdev(uint32(a), uint32(c))
	}
	return m
}

// bootNow reads CLOCK_BOOTTIME. As a raw system call (it never blocks): the
// decisions reader reads it after each wait that timed out, and a goroutine
// entering a system call the Go scheduler is told of wakes the runtime's
// monitor thread (sysmon) from its deep sleep, to poll every 20 µs again for at
// least a millisecond (unix.ClockGettime is such a call, not the vDSO's).
func bootNow() (uint64, error) {
	var ts unix.Timespec
	if _, _, errno := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, unix.CLOCK_BOOTTIME, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		return 0, fmt.Errorf("fast path: read CLOCK_BOOTTIME: %w", errno)
	}
	return uint64(ts.Nano()), nil
}

// readEvery is how long a fast-path decision waits at most in the ring buffer
// before Run reads it, while fewer than WAKEUP_BYTES (fastpath.c) wait.
const readEvery = 50 * time.Millisecond

// Run reads the fast path's records from its ring buffers until ctx is done or
// Close is called: it hands each decision to fn and, if ended is not nil, each TCP
// socket end (Stats.TCPEnds) to ended, both from Run's goroutine. Decisions and
// ends come through two ring buffers (a burst of ends must not crowd out
// decisions), read by two goroutines; an end is handed over only once every
// decision sent before the socket ended has been (a flow's decision before its
// end, as the byte accountant needs them). Once ctx is done the ring buffers are
// closed: Run is called once.
func (fp *FastPath) Run(ctx context.Context, fn func(Decision), ended func(End)) error {
	ctx, cancel := context.WithCancel(ctx)
	// A deadline cannot interrupt a read already waiting; closing the reader can.
	stop := context.AfterFunc(ctx, func() {
		// The waits first: they read the rings' positions.
		for _, w := range []*ringWait{fp.ringWait, fp.endsWait} {
			if w != nil {
				w.close()
			}
		}
		fp.ring.Close()
		if fp.endsRing != nil {
			fp.endsRing.Close()
		}
	})
	q := &endQueue{taken: make(chan struct{}, 1)}
	endsDone := make(chan error, 1)
	if fp.endsRing != nil {
		go func() {
			err := fp.readEnds(ctx, q, ended != nil)
			if err != nil {
				cancel() // Run stops too
			}
			endsDone <- err
		}()
	} else {
		endsDone <- nil
	}
	err := fp.readDecisions(ctx, q, fn, ended)
	stop()
	cancel()
	if endsErr := <-endsDone; err == nil {
		err = endsErr
	}
	return err
}

// endQueue holds the socket ends the ends reader (readEnds) read, until the
// decisions reader (readDecisions) hands them over. The decisions reader takes a
// few at a time (those a decision's time passed): a take moves a head, not the
// ends behind it (shifting the queue at each take copied it once per few
// connections).
type endQueue struct {
	mu    sync.Mutex
	ends  []rawEnd      // ends[head:] wait
	head  int           // the first end that waits
	n     atomic.Int64  // len(ends)-head, read without mu (readDecisions asks once per record)
	taken chan struct{} // a token each time readDecisions took ends
}

// rawEnd is a socket end and when it ended, on the boot clock (ns).
type rawEnd struct {
	e  End
	at uint64
}

func (q *endQueue) len() int { return int(q.n.Load()) }

// add queues ends.
func (q *endQueue) add(ends []rawEnd) {
	q.mu.Lock()
	if q.head > 0 && q.head >= len(q.ends)/2 {
		// Most of the slice was taken: move what waits to its start, once.
		k := copy(q.ends, q.ends[q.head:])
		q.ends, q.head = q.ends[:k], 0
	}
	q.ends = append(q.ends, ends...)
	q.n.Store(int64(len(q.ends) - q.head))
	q.mu.Unlock()
}

// take removes the first n ends from q, appending them to buf.
func (q *endQueue) take(n int, buf []rawEnd) []rawEnd {
	q.mu.Lock()
	buf = append(buf, q.ends[q.head:q.head+n]...)
	q.head += n
	if q.head == len(q.ends) {
		q.ends, q.head = q.ends[:0], 0
	}
	q.n.Store(int64(len(q.ends) - q.head))
	q.mu.Unlock()
	select {
	case q.taken <- struct{}{}:
	default:
	}
	return buf
}

// before returns how many ends at the head of q ended at or before ns (boot
// clock).
func (q *endQueue) before(ns uint64) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, r := range q.ends[q.head:] {
		if r.at > ns {
			break
		}
		n++
	}
	return n
}

// flushDecisions wakes readDecisions if it waits for the ring of decisions: it
// reads the ring at once (ringbuf.Reader.Flush).
func (fp *FastPath) flushDecisions() {
	if fp.ringWait != nil {
		fp.ringWait.flush()
		return
	}
	fp.ring.Flush()
}

// maxEndBatch bounds the socket ends readEnds hands over at once.
const maxEndBatch = 4096

// readDecisions reads the ring buffer of decisions (events) for Run, and hands
// over the socket ends readEnds queued in q, each after every decision sent before
// the socket ended (a socket's decision is sent at TCP_CONNECT_CB, before it can
// end): once the ring was seen empty after the end was queued, or once a decision
// taken at or after the end's time was read. A decision's time is taken before its
// record is reserved, and the ring holds records in the order they were reserved,
// so every decision sent before the end precedes that one. Under a steady stream
// of decisions the ring is seldom empty; the times keep the ends from waiting,
// and a short flow's end reaches the byte accountant (and its report the history
// row, still held) within milliseconds of its decision.
func (fp *FastPath) readDecisions(ctx context.Context, q *endQueue, fn func(Decision), ended func(End)) error {
	wallAtBoot, _, err := measureWallAtBoot()
	if err != nil {
		return err
	}
	// The wall clock drifts from the boot clock (NTP): the conversion is taken
	// again after a wait that ran out (readEvery), or every wallEvery records,
	// so that the times of records compare with time.Now() of the moment (a
	// queued flow's); it changes only when the clocks moved apart
	// (retakeWallAtBoot).
	records := 0
	// waited: a wait ran out since the clocks were read. They are read again
	// before the next time is converted (a decision's, or ends'), not at each
	// read that finds the ring empty again: an idle reader read them every
	// readEvery, eight tries of two system calls each on a VM.
	waited := false
	retake := func() {
		if waited || records >= wallEvery {
			wallAtBoot = retakeWallAtBoot(wallAtBoot)
			waited, records = false, 0
		}
	}
	var rec []byte // the record read last
	var ends []rawEnd
	var seen uint64 // the latest time of a decision read (boot clock)
	fp.syncStart()
	defer fp.syncStop()
	handOver := func(n int) {
		retake()
		ends = q.take(n, ends[:0])
		for _, r := range ends {
			r.e.Time = wallAtBoot.Add(time.Duration(r.at))
			ended(r.e)
		}
	}
	r := fp.reader(fp.ring, fp.ringWait)
	for {
		queued := 0
		if fp.endsRing != nil {
			queued = q.len()
		}
		// The programs wake the reader only once the ring holds WAKEUP_BYTES; below
		// that, decisions wait at most readEvery to be read. readEnds wakes it
		// (flushDecisions) when it queued ends. read does not wait: the wait
		// comes once the ring is seen empty, below.
		var err error
		if rec, err = r.read(rec); err != nil {
			if readerClosed(ctx, err) {
				return nil
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("fast path: read the ring buffer: %w", err)
			}
			// Empty: every record reserved before this was read and handed to fn.
			fp.syncDone()
			// The ring was empty after the queued ends were read.
			if queued > 0 {
				handOver(queued)
			}
			// Wait for the programs' wakeup, a flush or readEvery.
			switch err := r.wait(readEvery); {
			case err == nil:
			case errors.Is(err, os.ErrDeadlineExceeded):
				waited = true // the clocks are read again before the next record
			case readerClosed(ctx, err):
				return nil
			default:
				return fmt.Errorf("fast path: wait for the ring buffer: %w", err)
			}
			continue
		}
		records++
		retake()
		ev, err := decodeEvent(rec)
		if err != nil {
			fp.badEvents.Add(1)
			continue
		}
		fp.events.Add(1)
		fn(fp.decision(&ev, wallAtBoot))
		if ev.BootNs > seen {
			seen = ev.BootNs
		}
		if queued > 0 {
			if n := q.before(seen); n > 0 {
				handOver(n)
			}
		}
	}
}

// readEnds reads the ring buffer of socket ends (ends) for Run and, if queue,
// queues them in batches for readDecisions to hand over, waiting for each batch
// to be taken before it reads on (the ring buffer holds what comes meanwhile).
func (fp *FastPath) readEnds(ctx context.Context, q *endQueue, queue bool) error {
	var rec []byte // the record read last
	var batch []rawEnd
	// queueBatch hands the batch over and waits until it was taken; false: ctx
	// is done.
	queueBatch := func() bool {
		q.add(batch)
		batch = batch[:0]
		for q.len() > 0 {
			// Wake readDecisions: it takes the ends once its ring is empty.
			fp.flushDecisions()
			select {
			case <-q.taken:
			case <-ctx.Done():
				return false
			}
		}
		return true
	}
	r := fp.reader(fp.endsRing, fp.endsWait)
	for {
		// Woken, like readDecisions, once WAKEUP_BYTES wait, or after readEvery.
		var err error
		if rec, err = r.read(rec); err != nil {
			if readerClosed(ctx, err) {
				return nil
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("fast path: read the ring buffer of socket ends: %w", err)
			}
			// Empty: what was read goes now, then wait as readDecisions does.
			if len(batch) > 0 && !queueBatch() {
				return nil
			}
			if err := r.wait(readEvery); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				if readerClosed(ctx, err) {
					return nil
				}
				return fmt.Errorf("fast path: wait for the ring buffer of socket ends: %w", err)
			}
			continue
		}
		e, at, err := decodeEnd(rec)
		if err != nil {
			fp.badEvents.Add(1)
		} else {
			fp.ends.Add(1)
			if queue {
				batch = append(batch, rawEnd{e, at})
			}
		}
		if len(batch) >= maxEndBatch && !queueBatch() {
			return nil
		}
	}
}

// eventSize is the size of struct fp_event.
const eventSize = 96

// decodeEvent reads one ring buffer record: a struct fp_event (field by field, at
// the offsets the C struct has: reflection cost more than the rest of a record's
// handling), with sane family, protocol and action.
func decodeEvent(b []byte) (fastpathFpEvent, error) {
	var ev fastpathFpEvent
	if len(b) < eventSize {
		return ev, fmt.Errorf("fast path event of %d bytes, want %d", len(b), eventSize)
	}
	ne := binary.NativeEndian
	ev.BootNs = ne.Uint64(b[0:])
	ev.RuleId = ne.Uint64(b[8:])
	k := &ev.Key
	k.Ino = ne.Uint64(b[16:])
	k.ParentIno = ne.Uint64(b[24:])
	k.Dev = ne.Uint32(b[32:])
	k.MntId = ne.Uint32(b[36:])
	k.Uid = ne.Uint32(b[40:])
	k.Port = ne.Uint16(b[44:])
	k.Family = b[46]
	k.Proto = b[47]
	copy(k.Addr[:], b[48:64])
	ev.Pid = ne.Uint32(b[64:])
	ev.Action = ne.Uint32(b[68:])
	copy(ev.Local[:], b[72:88])
	ev.LocalPort = ne.Uint16(b[88:])
	ev.Pad = ne.Uint16(b[90:])
	ev.Pad2 = ne.Uint32(b[92:])
	if ev.Key.Family != 4 && ev.Key.Family != 6 {
		return ev, fmt.Errorf("fast path event with address family %d", ev.Key.Family)
	}
	if ev.Key.Proto != uint8(engine.TCP) && ev.Key.Proto != uint8(engine.UDP) {
		return ev, fmt.Errorf("fast path event with protocol %d", ev.Key.Proto)
	}
	if ev.Action != actAllow && ev.Action != actReject {
		return ev, fmt.Errorf("fast path event with action %d", ev.Action)
	}
	return ev, nil
}

// endSize is the size of struct fp_end, endKind its first field and endBytes
// the flag that says its counters are set.
const (
	endSize  = 88
	endKind  = 0x656e6421
	endBytes = 1
)

// wallEvery is how many ring buffer records Run reads between two readings of
// the wall clock's offset from the boot clock.
const wallEvery = 4096

// clockTries bounds the readings measureWallAtBoot takes; one whose two boot
// clock readings are at most clockTight apart ends the tries.
const (
	clockTries = 8
	clockTight = 5 * time.Microsecond
)

// clockSlack is how far a new measurement of the wall clock at boot must be
// from the one in use for Run to take it (retakeWallAtBoot).
const clockSlack = time.Millisecond

// measureWallAtBoot returns the time (wall clock, with the monotonic reading
// of time.Now) at which the boot clock (CLOCK_BOOTTIME, the programs' record
// times) read zero, and the uncertainty of that (window: how far apart the
// boot clock readings around time.Now were). It reads the boot clock just
// before and just after time.Now, and takes the midpoint of the tightest of up
// to clockTries such readings: a goroutine preempted between the two clocks'
// readings (a loaded machine) would otherwise be off by as long as it waited,
// and every record time it converts with it too.
func measureWallAtBoot() (at time.Time, window time.Duration, err error) {
	window = -1
	for range clockTries {
		b1, err := bootNow()
		if err != nil {
			return time.Time{}, 0, err
		}
		now := time.Now()
		b2, err := bootNow()
		if err != nil {
			return time.Time{}, 0, err
		}
		if w := time.Duration(b2 - b1); window < 0 || w < window {
			window = w
			at = now.Add(-time.Duration(b1 + (b2-b1)/2))
		}
		if window <= clockTight {
			break
		}
	}
	return at, window, nil
}

// retakeWallAtBoot measures the wall clock at boot again and returns it if it
// moved from cur by more than clockSlack beyond the measurement's uncertainty,
// on the wall clock (set, or NTP's corrections adding up) or the monotonic
// one (a suspend); otherwise, or if it cannot read the clocks, cur. Between
// two changes every record's time is converted with the same offset, so the
// times keep the order of the records' boot clock times: a socket's end is
// not before its decision (the byte accountant takes an end from before its
// flow's request for an older socket's and leaves the flow running). With a
// new measurement for each read that waited, the error of each (tens of
// microseconds to milliseconds when the reader was preempted between the
// clocks) put ends before their decisions.
func retakeWallAtBoot(cur time.Time) time.Time {
	at, window, err := measureWallAtBoot()
	if err != nil {
		return cur
	}
	limit := clockSlack + window
	wall := at.Round(0).Sub(cur.Round(0)) // Round(0): the wall clocks
	mono := at.Sub(cur)
	if wall > limit || wall < -limit || mono > limit || mono < -limit {
		return at
	}
	return cur
}

// decodeSockTuple decodes the socket's tuple that a socket end (fp_end) and a
// socket counter record (fp_live) both carry at the same place: family at 4,
// local and remote address at 8 and 24, their ports at 40 and 42 (what names
// the record in an error).
func decodeSockTuple(b []byte, what string) (local, remote netip.AddrPort, err error) {
	ne := binary.NativeEndian
	lp, rp := ne.Uint16(b[40:]), ne.Uint16(b[42:])
	if lp == 0 || rp == 0 {
		return local, remote, fmt.Errorf("%s with port %d to port %d", what, lp, rp)
	}
	var l, r netip.Addr
	switch b[4] {
	case 4:
		l, r = netip.AddrFrom4([4]byte(b[8:12])), netip.AddrFrom4([4]byte(b[24:28]))
	case 6:
		l, r = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
	default:
		return local, remote, fmt.Errorf("%s with address family %d", what, b[4])
	}
	return netip.AddrPortFrom(l, lp), netip.AddrPortFrom(r, rp), nil
}

// decodeEnd reads a struct fp_end record: a TCP socket's end, with a known
// family and both ports set, and when it ended (boot clock, ns).
func decodeEnd(b []byte) (End, uint64, error) {
	if len(b) != endSize {
		return End{}, 0, fmt.Errorf("fast path socket end of %d bytes, want %d", len(b), endSize)
	}
	ne := binary.NativeEndian
	if k := ne.Uint32(b[0:]); k != endKind {
		return End{}, 0, fmt.Errorf("fast path record of %d bytes with kind %#x, want %#x", len(b), k, endKind)
	}
	local, remote, err := decodeSockTuple(b, "fast path socket end")
	if err != nil {
		return End{}, 0, err
	}
	e := End{Local: local, Remote: remote}
	switch f := ne.Uint32(b[44:]); f {
	case 0:
	case endBytes:
		e.Counted = true
		e.Bytes = Counts{Out: ne.Uint64(b[56:]), In: ne.Uint64(b[64:])}
		e.Packets = Counts{Out: ne.Uint64(b[72:]), In: ne.Uint64(b[80:])}
		// A packet is at least an IPv4 header long. (A socket may have sent
		// none: a SYN the ruleset rejected in its output chain, before the
		// counting program, was answered with a reset.)
		// The multiplication must not wrap.
		const maxPackets = 1 << 58
		if e.Packets.Out > maxPackets || e.Packets.In > maxPackets || e.Bytes.Out < 20*e.Packets.Out || e.Bytes.In < 20*e.Packets.In {
			return End{}, 0, fmt.Errorf("fast path socket end with %d bytes in %d packets out and %d bytes in %d packets in", e.Bytes.Out, e.Packets.Out, e.Bytes.In, e.Packets.In)
		}
	default:
		return End{}, 0, fmt.Errorf("fast path socket end with flags %#x", f)
	}
	return e, ne.Uint64(b[48:]), nil
}

func (fp *FastPath) decision(ev *fastpathFpEvent, wallAtBoot time.Time) Decision {
	k := ev.Key
	var addr, local netip.Addr
	if k.Family == 4 {
		addr = netip.AddrFrom4([4]byte(k.Addr[:4]))
		local = netip.AddrFrom4([4]byte(ev.Local[:4]))
	} else {
		addr = netip.AddrFrom16(k.Addr)
		local = netip.AddrFrom16(ev.Local)
	}
	fp.exesMu.Lock()
	exe := fp.exes[identity{ino: k.Ino, parentIno: k.ParentIno, dev: k.Dev, mntID: k.MntId}]
	fp.exesMu.Unlock()
	d := Decision{
		Time: wallAtBoot.Add(time.Duration(ev.BootNs)), PID: int32(ev.Pid), UID: int32(k.Uid), Exe: exe,
		Protocol: engine.Protocol(k.Proto), Remote: netip.AddrPortFrom(addr, k.Port), Action: engine.Allow, RuleID: engine.RuleID(ev.RuleId),
	}
	if ev.Action == actReject {
		d.Action = engine.Reject
	}
	if ev.LocalPort != 0 {
		d.Local = netip.AddrPortFrom(local, ev.LocalPort)
	}
	return d
}

// Stats returns the counters; Entries walks the map.
func (fp *FastPath) Stats() Stats {
	st := fp.cur.Load()
	s := Stats{
		Stored: fp.stored.Load(), NotStored: fp.notStored.Load(), Events: fp.events.Load(), BadEvents: fp.badEvents.Load(), StoreErrors: fp.storeErrors.Load(),
		MaxEntries: fp.cfg.MaxEntries, Generation: st.gen, Cacheable: st.cacheable, Why: st.why, Cgroup: fp.cfg.CgroupPath,
		UDP: fp.udpOn.Load(), UDPMatch: fp.udpPin,
		TCPLocal: fp.tcpLocalWhy == "", TCPLocalWhy: fp.tcpLocalWhy,
		TCPEnds: fp.tcpEndsWhy == "", TCPEndsWhy: fp.tcpEndsWhy, Ends: fp.ends.Load(),
		TCPEndBytes: fp.tcpEndBytesWhy == "", TCPEndBytesWhy: fp.tcpEndBytesWhy,
		SimultaneousOpenGuard: fp.simOpenWhy == "", SimultaneousOpenGuardWhy: fp.simOpenWhy, SimultaneousOpenGuardCgroup: fp.simOpenCgroup,
		TCPLiveBytes: fp.liveWhy == "", TCPLiveBytesWhy: fp.liveWhy,
	}
	if fp.exeWatchWhy != "" && s.Cacheable {
		s.Cacheable, s.Why = false, fp.exeWatchWhy
	} else if fp.mountWatch != nil && fp.mountWatch.dead.Load() && s.Cacheable {
		s.Cacheable, s.Why = false, "fast path: the mount tables' watch failed"
	}
	if s.TCPLiveBytes {
		s.TCPLiveBytesVia = fp.liveVia.String()
	}
	if !s.UDP {
		s.UDPWhy, _ = fp.udpWhy.Load().(string)
	}
	s.LeaseSwept, s.LeaseSweepWhy = fp.swept, fp.notrackWhy // the sweep is a notrack iterator
	if s.Lease = fp.leaseOn.Load(); s.Lease {
		s.LeaseMatch = fp.leasePin
	} else {
		s.LeaseWhy, _ = fp.leaseWhy.Load().(string)
	}
	s.TCPRulesetWhy, _ = fp.tcpRulesetWhy.Load().(string)
	fp.sockPinStats(&s)
	fp.recv.fill(&s)
	fp.stashStats(&s)
	s.TCPNotrack = fp.notrackOn.Load()
	if !s.TCPNotrack {
		s.TCPNotrackWhy = fp.notrackWhy
		if s.TCPNotrackWhy == "" {
			s.TCPNotrackWhy, _ = fp.notrackRuleWhy.Load().(string)
		}
	}
	for i := uint32(0); i < statMax; i++ {
		var per []uint64
		if err := fp.objs.Stats.Lookup(i, &per); err != nil {
			continue
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		switch i {
		case statHitAllow:
			s.HitsAllow = sum
		case statHitReject:
			s.HitsReject = sum
		case statMiss:
			s.Misses = sum
		case statStale:
			s.Stale = sum
		case statNoIdentity:
			s.NoIdentity = sum
		case statRingLost:
			s.RingLost = sum
		case statEndsLost:
			s.EndsLost = sum
		case statSimOpenDropped:
			s.SimultaneousOpenDropped = sum
		}
	}
	var k fastpathFpKey
	it := fp.objs.Verdicts.Iterate()
	var v fastpathFpVerdict
	for it.Next(&k, &v) {
		s.Entries++
	}
	return s
}

// sameFile reports whether a and b name the same file.
func sameFile(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// netnsCookie returns the cookie of the caller's network namespace.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket for SO_NETNS_COOKIE: %w", err)
	}
	defer unix.Close(fd)
	var c uint64
	l := uint32(8)
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE, uintptr(unsafe.Pointer(&c)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE (Linux 5.14+): %w", e)
	}
	return c, nil
}

// hostUserNS is the inode number of the user namespace latch's attribution
// takes for the host's (internal/procattr's hostUserNS): process 1's, or where
// its link cannot be read the daemon's own. The kernel hooks decide only tasks
// in it (host_userns in fastpath.c, review28).
func hostUserNS() (uint32, error) {
	var st unix.Stat_t
	err := unix.Stat("/proc/1/ns/user", &st)
	if err != nil {
		if err = unix.Stat("/proc/self/ns/user", &st); err != nil {
			return 0, fmt.Errorf("fast path: stat /proc/self/ns/user: %w", err)
		}
	}
	return uint32(st.Ino), nil
}
