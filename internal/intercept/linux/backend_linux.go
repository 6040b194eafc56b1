package linux

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
	"github.com/latchfw/latch/internal/intercept/linux/packet"
	"github.com/latchfw/latch/internal/procattr"
	"golang.org/x/sys/unix"
)

// ErrAnotherDaemon is wrapped by Run's error when another latch daemon already holds
// the queue or the ruleset in this network namespace.
var ErrAnotherDaemon = errors.New("another latch daemon is running in this network namespace")

// Netfilter hook numbers as reported in NFQA_PACKET_HDR.
const (
	hookLocalIn  = 1
	hookForward  = 2
	hookLocalOut = 3
)

const (
	maxReaders     = 4   // readers at most: one, and spares while others are stuck
	maxReadErrors  = 100 // consecutive unexplained read errors before Run gives up
	verdictRetries = 3   // further tries of a verdict whose write failed; the last is a drop
	// spareReaderAfter is how long a reader may be stuck in one packet (attribution
	// scanning /proc, say) before a spare reader takes over the queue.
	spareReaderAfter = 2 * time.Millisecond
)

// Backend holds new connections in an NFQUEUE queue. It implements intercept.Backend.
type Backend struct {
	cfg Config
	fw  firewall

	running atomic.Bool
	q       atomic.Pointer[nfq.Conn]
	closing atomic.Bool

	nextID atomic.Uint64

	holdsMu sync.Mutex
	holds   map[uint32]*hold

	flows *flowTable
	// redecided remembers the requests of the flows Redecide took from flows,
	// for a while: the program that opened one, when its socket is gone by the
	// time the flow's next packet is held (see openerOf).
	redecided *flowTable
	// redecidedUntil is when (UnixNano) the last flow put in redecided expires:
	// until then a flow allowed anew replaces what redecided knows of its tuple.
	redecidedUntil atomic.Int64
	// Flows TrackFlow registered and TCP socket ends SocketEnded reported, for
	// the accountant.
	tracked handover[flowKey]
	ends    handover[socketEnd]
	// acctKick tells the accountant that flows or ends wait (see kickAccountant).
	acctKick chan struct{}
	// acctKicked says a kick was sent and the accountant has not yet drained
	// for it: the calls until then send none (one wake-up of the accountant per
	// burst, not one per flow or end).
	acctKicked atomic.Bool

	// receivers: inbound UDP flows the socket pin's receive check saw the
	// kernel deliver to another socket (flowKey -> that socket's cookie),
	// decided again for it (see PinMoved); receiverMoves counts them.
	receiversMu   sync.Mutex
	receivers     map[flowKey]uint64
	receiverMoves atomic.Uint64

	fastUDPErr atomic.Pointer[error]     // the last install's error about Config.FastUDPMatch
	leaseErr   atomic.Pointer[error]     // the last install's error about Config.FastLease
	sockPinErr atomic.Pointer[error]     // the last install's error about Config.FastSocketPin
	pinMap     atomic.Pointer[ebpf.Map]  // the socket pin's map (Config.Inbound), see pinInbound
	stashErr   atomic.Pointer[error]     // the last install's error about Config.FastSenderStash
	stashMap   atomic.Pointer[stashMaps] // the sender stash's maps while the ruleset runs it, see takeSender
	notrackErr atomic.Pointer[error]     // the last install's error about notrack (Config.FastSockets)
	fastTCPErr atomic.Pointer[error]     // the last install's error about the fast path's TCP rules (Config.FastTCP)

	// The fast sockets being decided again (MarkFastRedecide), by flow: see
	// fastGroup. fastEpoch counts the rule changes (redecideSockets).
	fastGroupsMu sync.Mutex
	fastGroups   map[flowKey]*fastGroup
	fastEpoch    uint64

	held, allowed, denied, rejected, dropped   atomic.Uint64
	overflows, errs, malformed, verdictErrors  atomic.Uint64
	holdTimeouts, attributionFailed, duplicate atomic.Uint64
	attributedOpener                           atomic.Uint64 // held packets credited to their flow's opener (openerOf)
	trafficReports                             atomic.Uint64 // Traffic reports handed to Config.OnTraffic
	trafficEventsLost                          atomic.Uint64 // conntrack event socket overflows
	socketEnds, socketEndsLost                 atomic.Uint64 // SocketEnded calls taken, and dropped (the accountant's queue was full)
	ctGets                                     atomic.Uint64 // conntrack entries the accountant read one by one (a flow's end)
	trafficFromSockets                         atomic.Uint64 // Traffic reports made from the sockets' live counts (Config.SocketCounts)
	ctUpdates                                  atomic.Bool   // the accountant listens to conntrack's update events
	latencySum, latencyMax, latencyN           atomic.Uint64
	dns                                        *dnsname.Learner // nil without Config.Hostnames
	dnsSenders                                 *dnsSenders      // with dns and a Resolver: who sent the queued DNS queries

	// lastQueue is the kernel's view of the queue, read by Stats while running and
	// once more when Run stops.
	lastQueue atomic.Pointer[queueStatus]
}

var _ intercept.Backend = (*Backend)(nil)

// hold is one packet waiting for its verdict.
type hold struct {
	id    uint32
	mark  uint32
	proto uint8
	req   *engine.Request
	since time.Time
	done  atomic.Bool
	// group is the fastGroup this packet leads (its verdict answers the
	// group's other packets), under groupKey; nil if none.
	group    *fastGroup
	groupKey flowKey
	// cookie is, for an inbound packet, the cookie of the local socket that
	// will receive it (the Resolver's lookup); 0: unknown.
	cookie uint64
	// replyIn: the packet is the peer's on a flow this host opened, held
	// in LATCH-IN after a rule change (MarkRedecideReply) and decided as
	// the flow (direction outbound); cookie is the receiving socket's.
	replyIn bool
	// dnsQuery is, for a DNS query the queue holds, the query and its sender
	// (dnsSenders), recorded again when the verdict is given; nil if none.
	dnsQuery *heldQuery
}

// heldQuery is a held DNS query and the program that sent it (Exe "": not found;
// UID: the packet's).
type heldQuery struct {
	q    *dnsname.Query
	prog dnsname.Program
}

// New checks cfg, fills in defaults and detects the firewall mechanism. It changes
// nothing in the kernel; Run does.
func New(cfg Config) (*Backend, error) {
	if cfg.QueueNum == 0 {
		cfg.QueueNum = DefaultQueue
	}
	if cfg.HoldTimeout == 0 {
		cfg.HoldTimeout = 5 * time.Minute
	}
	if cfg.HoldTimeout < 0 {
		return nil, fmt.Errorf("linux backend: HoldTimeout %v is negative", cfg.HoldTimeout)
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = 65536
	}
	if cfg.MaxFlows < 0 {
		return nil, fmt.Errorf("linux backend: MaxFlows %d is negative", cfg.MaxFlows)
	}
	if cfg.FlowTTL == 0 {
		cfg.FlowTTL = 24 * time.Hour
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	fw, err := detectFirewall(cfg.Firewall, cfg.QueueNum)
	if err != nil {
		return nil, fmt.Errorf("linux backend: %w", err)
	}
	b := &Backend{
		cfg:        cfg,
		fw:         fw,
		holds:      make(map[uint32]*hold),
		fastGroups: make(map[flowKey]*fastGroup),
		flows:      newFlowTable(cfg.MaxFlows, cfg.FlowTTL),
		redecided:  newFlowTable(cfg.MaxFlows, redecidedTTL),
		acctKick:   make(chan struct{}, 1),
	}
	if cfg.Hostnames != nil {
		b.dns = dnsname.NewLearner(cfg.Hostnames)
		if cfg.Resolver != nil {
			b.dnsSenders = newDNSSenders(4096, dnsname.AnswerWindow)
			// Each query is credited to the program whose socket sent it, so that its
			// answer labels that program's connections (names "own") and others' only
			// as the machine-wide fallback ("shared").
			b.dns.SetAttributor(func(tcp bool, q dnsname.Query, uid int64) dnsname.Program {
				proto := engine.UDP
				if tcp {
					proto = engine.TCP
				}
				return b.queryProgram(proto, q, uid)
			})
		}
	}
	return b, nil
}

// DNSStats returns what the hostname learner counted, or nil without
// Config.Hostnames.
func (b *Backend) DNSStats() *dnsname.Stats {
	if b.dns == nil {
		return nil
	}
	s := b.dns.Stats()
	return &s
}

// safePinPath reports whether p can go into a ruleset as it is.
func safePinPath(p string) bool {
	if p == "" || len(p) >= xtBPFPathMax {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._/+-", c)) {
			return false
		}
	}
	return true
}

// FastUDP reports whether the installed ruleset runs Config.FastUDPMatch: nil if it
// does, else why not (none configured, not installed yet, or the firewall refused
// it).
func (b *Backend) FastUDP() error {
	if b.cfg.FastUDPMatch == "" {
		return errors.New("no UDP match configured")
	}
	p := b.fastUDPErr.Load()
	if p == nil {
		return errors.New("the ruleset is not installed yet")
	}
	return *p
}

// FastLease reports whether the installed ruleset checks Config.FastLease
// before a SYN passes by MarkFastAllow or the UDP match runs: nil if it does,
// else why not (none configured, not installed yet, or the firewall refused
// it).
func (b *Backend) FastLease() error {
	if b.cfg.FastLease == "" {
		return errors.New("no lease program configured")
	}
	p := b.leaseErr.Load()
	if p == nil {
		return errors.New("the ruleset is not installed yet")
	}
	return *p
}

// FastTCP reports whether the installed ruleset passes a TCP connect the
// kernel fast path allowed by its socket's mark (Config.FastTCP or
// Config.FastSockets): nil if it does, else why not (none configured, not
// installed yet, or the firewall could not load the matches that reset a fast
// socket's source-routed packets: then the queue decides every connect).
func (b *Backend) FastTCP() error {
	if !b.cfg.FastTCP && b.cfg.FastSockets == nil {
		return errors.New("no fast TCP configured")
	}
	p := b.fastTCPErr.Load()
	if p == nil {
		return errors.New("the ruleset is not installed yet")
	}
	return *p
}

// errOptMatch wraps install's error when the firewall cannot load the matches
// that find a source route (xt_u32, xt_ipv6header): see optionsRules.
var errOptMatch = errors.New("the firewall cannot match IPv4 options or IPv6 routing headers (no xt_u32 or xt_ipv6header)")

// Name says which mechanism is in use, e.g. "nfqueue/iptables-nft".
func (b *Backend) Name() string { return "nfqueue/" + b.fw.name() }

// Queue returns the NFQUEUE queue number in use.
func (b *Backend) Queue() uint16 { return b.cfg.QueueNum }

// Run binds the queue, installs the ruleset, hands every held connection to d, and on
// ctx done removes the ruleset and answers what is still held (accept if FailOpen,
// else drop). It refuses to start, with an error wrapping ErrAnotherDaemon, when
// another daemon holds the queue or latch's chains with a live queue.
func (b *Backend) Run(ctx context.Context, d intercept.Decider) (err error) {
	if d == nil {
		return errors.New("linux backend: Run with a nil Decider")
	}
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("linux backend: already running")
	}
	defer b.running.Store(false)
	b.closing.Store(false)

	if err := b.checkAlone(); err != nil {
		return err
	}
	q, err := nfq.Open(b.cfg.QueueNum, nfq.Options{ReadBuffer: b.cfg.ReadBuffer})
	if err != nil {
		if errors.Is(err, nfq.ErrQueueBusy) {
			return fmt.Errorf("%w (queue %d is bound): %v", ErrAnotherDaemon, b.cfg.QueueNum, err)
		}
		return fmt.Errorf("linux backend: %w", err)
	}
	b.q.Store(q)
	spec := ruleSpec{queue: b.cfg.QueueNum, inbound: b.cfg.Inbound, failOpen: b.cfg.FailOpen, exemptLoopback: b.cfg.ExemptLoopback, forward: b.cfg.Forward, fastUDP: b.cfg.FastUDPMatch,
		fastTCP: b.cfg.FastTCP || b.cfg.FastSockets != nil}
	if b.cfg.Hostnames != nil {
		spec.dnsLogGroup = b.cfg.DNSLogGroup
		if spec.dnsLogGroup == 0 {
			spec.dnsLogGroup = DefaultDNSLogGroup
		}
	}
	// Byte accounting listens to conntrack events before the first connection it
	// allows can exist: an entry made while nobody listens never reports any.
	evfd := -1
	if b.cfg.OnTraffic != nil {
		var err error
		updates := !b.cfg.SocketEnds || b.cfg.Forward
		b.ctUpdates.Store(updates)
		if evfd, err = openCtEvents(b.cfg.Logf, updates); err != nil {
			b.cfg.Logf("byte accounting: %v", err)
			evfd = -1
		}
	}
	if spec.fastUDP != "" && !safePinPath(spec.fastUDP) {
		// It goes into iptables-restore's input unquoted.
		perr := fmt.Errorf("%w: its pinned path %q has characters other than letters, digits and ._/+-", errFastUDP, spec.fastUDP)
		b.fastUDPErr.Store(&perr)
		b.cfg.Logf("%v; UDP flows go through the queue", perr)
		spec.fastUDP = ""
	}
	spec.notrack = b.cfg.FastSockets != nil
	spec.sockPin = b.cfg.FastSocketPin
	if spec.sockPin != "" && !safePinPath(spec.sockPin) {
		perr := fmt.Errorf("%w: its pinned path %q has characters other than letters, digits and ._/+-", errSocketPin, spec.sockPin)
		b.sockPinErr.Store(&perr)
		b.cfg.Logf("%v; %s", perr, noSocketPin)
		spec.sockPin = ""
	}
	spec.stash = b.cfg.FastSenderStash
	if spec.stash != "" && !safePinPath(spec.stash) {
		perr := fmt.Errorf("%w: its pinned path %q has characters other than letters, digits and ._/+-", errSenderStash, spec.stash)
		b.stashErr.Store(&perr)
		b.cfg.Logf("%v; %s", perr, noSenderStash)
		spec.stash = ""
	}
	if spec.fastTCP || spec.fastUDP != "" {
		spec.lease = b.cfg.FastLease
	}
	if spec.lease != "" && !safePinPath(spec.lease) {
		perr := fmt.Errorf("%w: its pinned path %q has characters other than letters, digits and ._/+-", errFastLease, spec.lease)
		b.leaseErr.Store(&perr)
		b.cfg.Logf("%v; fast SYNs pass without it", perr)
		spec.lease = ""
	}
	// Without the lease (no xt_bpf) the fast path's SYNs pass by their mark
	// alone, as before it: noLease says why, and installs what works.
	noLease := func(why error) {
		b.leaseErr.Store(&why)
		b.cfg.Logf("%v; fast SYNs pass without it (a socket whose SYN is on its way when the daemon dies may connect again anywhere after)", why)
		spec.lease = ""
	}
	// Without xt_u32 or xt_ipv6header (iptables) the ruleset cannot tell a
	// source-routed TCP packet (see optionsRules): installed without the
	// fast path's TCP rules and notrack (no packet passes by a fast mark; the
	// queue decides every connect) and dropping every INVALID TCP packet of
	// LATCH-OUT, never without filtering. Tried first when the whole ruleset
	// fails, and kept only if the option matches do not load (asked apart:
	// iptables-nft does not always name the match the kernel refused), so
	// that another missing match does not turn fast TCP off; tried last after
	// the other fallbacks, for a kernel missing more than one.
	noOptMatch := func() {
		// Asked without installing them: a failed install removes the
		// ruleset, and nothing would be filtered until the next.
		if spec.noOptMatch || b.fw.optMatches() == nil {
			return // the option matches load: the fault is elsewhere
		}
		safe := spec
		safe.fastTCP, safe.notrack, safe.noOptMatch = false, false, true
		if safe.fastUDP == "" {
			safe.lease = ""
		}
		if b.fw.install(safe) != nil {
			return
		}
		why := fmt.Errorf("%w: %v", errOptMatch, err)
		if spec.fastTCP {
			b.fastTCPErr.Store(&why)
			b.cfg.Logf("%v; every TCP connect goes through the queue, and INVALID TCP is dropped", why)
		} else {
			b.cfg.Logf("%v; INVALID TCP is dropped", why)
		}
		if spec.notrack {
			b.notrackErr.Store(&why)
		}
		spec = safe
		err = nil
	}
	err = b.fw.install(spec)
	if err != nil && spec.stash != "" {
		// The sender stash alone at fault? Else keep it.
		without := spec
		without.stash = ""
		if b.fw.install(without) == nil {
			perr := fmt.Errorf("%w: %v", errSenderStash, err)
			b.stashErr.Store(&perr)
			b.cfg.Logf("%v; %s", perr, noSenderStash)
			spec.stash = ""
			err = nil
		}
	}
	if err != nil && spec.sockPin != "" {
		// The socket pin alone at fault? (No xt_bpf, or native nftables,
		// which cannot name a pinned program.) Else keep it.
		// (The sender stash, another xt_bpf match, goes with it.)
		without := spec
		without.sockPin, without.stash = "", ""
		if b.fw.install(without) == nil {
			perr := fmt.Errorf("%w: %v", errSocketPin, err)
			b.sockPinErr.Store(&perr)
			b.cfg.Logf("%v; %s", perr, noSocketPin)
			spec.sockPin = ""
			if spec.stash != "" {
				serr := fmt.Errorf("%w: %v", errSenderStash, err)
				b.stashErr.Store(&serr)
				b.cfg.Logf("%v; %s", serr, noSenderStash)
				spec.stash = ""
			}
			err = nil
		}
	}
	if err != nil {
		noOptMatch()
	}
	if err != nil && spec.lease != "" {
		// The lease alone at fault? (iptables-restore does not say which
		// match it refused.) Else keep it and try the other fallbacks.
		without := spec
		without.lease = ""
		if b.fw.install(without) == nil {
			noLease(err)
			err = nil
		}
	}
	if spec.notrack {
		if err != nil {
			// Without notrack's rules (no socket match, no raw table) the
			// fast path's TCP flows go through conntrack as before.
			b.notrackErr.Store(&err)
			b.cfg.Logf("%v; the fast path's TCP flows go through conntrack", err)
			spec.notrack = false
			err = b.fw.install(spec)
		} else {
			var none error
			b.notrackErr.Store(&none)
		}
	}
	if err != nil && spec.fastUDP != "" {
		// Without the fast path's UDP match (no xt_bpf, say) UDP goes through
		// the queue as before: say why, and install what works.
		b.fastUDPErr.Store(&err)
		b.cfg.Logf("%v; UDP flows go through the queue", err)
		if !errors.Is(err, errFastUDP) {
			spec.fastUDP = ""
			err = b.fw.install(spec)
		} else {
			err = nil
		}
	} else if spec.fastUDP != "" {
		var none error
		b.fastUDPErr.Store(&none)
	}
	if err != nil && spec.lease != "" {
		noLease(err)
		err = b.fw.install(spec)
	}
	if err != nil {
		noOptMatch()
	}
	if err == nil && spec.lease != "" {
		var none error
		b.leaseErr.Store(&none)
	}
	if err == nil && spec.sockPin != "" {
		var none error
		b.sockPinErr.Store(&none)
		{
			// Also without Config.Inbound: PinMoved forgets a peer-opened
			// flow's pin.
			if m, perr := openPinMap(spec.sockPin); perr != nil {
				// The pin's rule in LATCH-IN then records its wildcard
				// alone (any local socket that answers first claims it).
				b.cfg.Logf("socket pin: %v; an inbound UDP flow's pin is claimed by the first local socket that answers, not the one its allow was for", perr)
			} else {
				b.pinMap.Store(m)
				defer func() { b.pinMap.Store(nil); m.Close() }()
			}
		}
	}
	if err == nil && spec.stash != "" {
		if m, serr := openStashMap(spec.stash); serr != nil {
			// The ruleset records senders nobody reads: attribute by the
			// tuple, as without it.
			serr = fmt.Errorf("%w: %w", errSenderStash, serr)
			b.stashErr.Store(&serr)
			b.cfg.Logf("%v; %s", serr, noSenderStash)
		} else {
			var none error
			b.stashErr.Store(&none)
			b.stashMap.Store(m)
			defer func() { b.stashMap.Store(nil); m.Close() }()
		}
	}
	if err == nil && spec.fastTCP {
		var none error
		b.fastTCPErr.Store(&none)
	}
	if err != nil {
		if evfd >= 0 {
			unix.Close(evfd)
		}
		b.q.Store(nil)
		q.Close()
		return fmt.Errorf("linux backend: %w", err)
	}

	var wg sync.WaitGroup
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	wg.Go(func() { b.sweep(sweepCtx) })
	if spec.dnsLogGroup != 0 {
		wg.Go(func() {
			// Names are a label, not a decision input the kernel waits for: if the
			// log cannot be read, connections go on being decided without them.
			if err := dnsname.ListenNFLOG(sweepCtx, spec.dnsLogGroup, b.dns); err != nil && sweepCtx.Err() == nil {
				b.cfg.Logf("hostnames from DNS are off: %v", err)
			}
		})
	}
	restoreAcct := func() {}
	if b.cfg.OnTraffic != nil {
		if restore, err := enableAccounting(); err != nil {
			b.cfg.Logf("bytes per program are off: %v", err)
			if evfd >= 0 {
				unix.Close(evfd)
			}
		} else {
			restoreAcct = restore
			wg.Go(func() { b.account(sweepCtx, evfd) })
		}
	}
	if b.cfg.Ready != nil {
		b.cfg.Ready()
	}

	// One reader handles what it reads, attribution included: the common case costs
	// no hand-off between goroutines. A reader stuck in one packet for longer than
	// spareReaderAfter (a slow attribution) starts a spare reader, so the queue never
	// stalls behind it; spares leave once nobody is stuck.
	rs := &readers{b: b, ctx: ctx, q: q, d: d}
	rs.start()
	readErr := rs.wait()

	// Shutdown: stop queueing first, then answer what is still held. A backend that
	// fails while fail-closed leaves its ruleset in place, as a crash would: with no
	// reader the queue drops new connections until a daemon starts again or
	// `latch cleanup` removes it.
	b.closing.Store(true)
	var rmErr error
	if readErr != nil && ctx.Err() == nil && !b.cfg.FailOpen {
		b.cfg.Logf("fail-closed: leaving the ruleset in place after: %v", readErr)
	} else if b.cfg.KeepRulesOnExit && !b.cfg.FailOpen {
		b.cfg.Logf("fail-closed: leaving the ruleset in place (keep rules on exit): new connections are dropped until a daemon starts again or 'latch cleanup'")
	} else {
		rmErr = b.fw.remove()
	}
	stopSweep()
	wg.Wait()
	restoreAcct()
	b.releaseAll()
	b.readQueueStatus()
	b.q.Store(nil)
	q.Close()
	if rmErr != nil {
		rmErr = fmt.Errorf("linux backend: remove ruleset: %w", rmErr)
	}
	return errors.Join(readErr, rmErr)
}

// checkAlone refuses to start next to a live daemon. A dead one's ruleset is left for
// install to replace.
func (b *Backend) checkAlone() error {
	bound, err := boundQueues()
	if err != nil {
		return fmt.Errorf("linux backend: read bound queues: %w", err)
	}
	if st, ok := bound[b.cfg.QueueNum]; ok {
		return fmt.Errorf("%w (queue %d is bound by netlink port %d)", ErrAnotherDaemon, st.Queue, st.PortID)
	}
	exists, queues, err := b.fw.leftover()
	if err != nil {
		return fmt.Errorf("linux backend: look for an earlier ruleset: %w", err)
	}
	if !exists {
		return nil
	}
	for _, q := range queues {
		if st, ok := bound[q]; ok {
			return fmt.Errorf("%w (its %s rules send to queue %d, bound by netlink port %d)", ErrAnotherDaemon, b.fw.name(), q, st.PortID)
		}
	}
	// install replaces it in one transaction, so a fail-closed ruleset keeps holding
	// until the new one is in place.
	b.cfg.Logf("replacing the ruleset a stopped latch daemon left behind (queues %v)", queues)
	return nil
}

// readers are the goroutines reading the queue: one, plus spares while a reader is
// stuck in a packet.
type readers struct {
	b   *Backend
	ctx context.Context
	q   *nfq.Conn
	d   intercept.Decider

	stuck atomic.Int32 // readers inside a packet for longer than spareReaderAfter
	wg    sync.WaitGroup

	mu       sync.Mutex
	running  int
	stopping bool
	errs     []error
}

// start starts a reader unless maxReaders run or the readers are stopping.
func (rs *readers) start() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.stopping || rs.running >= maxReaders {
		return
	}
	rs.running++
	spare := rs.running > 1
	rs.wg.Go(func() {
		err := rs.b.read(rs, spare)
		rs.mu.Lock()
		rs.running--
		if err != nil {
			rs.errs = append(rs.errs, err)
		}
		if !spare {
			// The first reader stops only for good: no more spares (the wait group
			// must not grow once it may be at zero), and the others stop too.
			rs.stopping = true
			rs.q.SetReadDeadline(time.Unix(1, 0))
		} else if err != nil {
			rs.q.SetReadDeadline(time.Unix(1, 0))
		}
		rs.mu.Unlock()
	})
}

// wait returns once every reader has stopped, with their errors.
func (rs *readers) wait() error {
	rs.wg.Wait()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return errors.Join(rs.errs...)
}

// read is a queue reader. It never waits for a decision. A spare returns once no
// reader is stuck.
func (b *Backend) read(rs *readers, spare bool) error {
	ctx, q, d := rs.ctx, rs.q, rs.d
	stop := context.AfterFunc(ctx, func() { q.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	w := newStuckWatch(rs)
	defer w.stop()
	r := q.NewReader()
	failures := 0
	for {
		pkts, err := r.Read()
		for i := range pkts {
			w.begin()
			b.handle(&pkts[i], d)
			w.end()
		}
		switch {
		case err == nil:
			failures = 0
		case ctx.Err() != nil:
			return nil
		case nfq.IsOverflow(err):
			// Our socket buffer overflowed: the kernel dropped the packets it could not
			// deliver (fail-closed; counted in queue_user_dropped). Keep reading.
			b.overflows.Add(1)
		case nfq.IsClosed(err):
			return fmt.Errorf("linux backend: queue closed: %w", err)
		case errors.As(err, new(*nfq.KernelError)):
			// A reply to one of our verdicts, typically for a packet the kernel
			// already dropped (its interface went down): not a broken socket, so it
			// never counts toward giving up.
			b.errs.Add(1)
			b.verdictErrors.Add(1)
		default:
			// The kernel refused a verdict, or sent a message we could not decode.
			b.errs.Add(1)
			b.verdictErrors.Add(1)
			failures++
			if failures > maxReadErrors {
				return fmt.Errorf("linux backend: %d read errors in a row, last: %w", failures, err)
			}
		}
		if spare && rs.stuck.Load() == 0 {
			return nil
		}
	}
}

// stuckWatch notices a reader stuck in one packet for spareReaderAfter and starts
// a spare reader. A packet costs it a clock read and two atomic stores: its timer is
// armed by the first packet after a quiet spell and, while packets keep coming,
// re-arms itself once per period instead of once per packet (re-arming a timer may
// wake the runtime's poller thread).
type stuckWatch struct {
	rs    *readers
	epoch time.Time
	timer *time.Timer

	busySince atomic.Int64 // ns after epoch the current packet began; 0: none
	packets   atomic.Uint64
	armed     atomic.Bool
	stuck     atomic.Bool // counted in rs.stuck

	seen uint64 // packets at the last firing; the timer's goroutine only
}

func newStuckWatch(rs *readers) *stuckWatch {
	w := &stuckWatch{rs: rs, epoch: time.Now()}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

func (w *stuckWatch) begin() {
	w.busySince.Store(max(int64(time.Since(w.epoch)), 1))
	w.packets.Add(1)
	if !w.armed.Load() && w.armed.CompareAndSwap(false, true) {
		w.timer.Reset(spareReaderAfter)
	}
}

func (w *stuckWatch) end() {
	w.busySince.Store(0)
	if w.stuck.CompareAndSwap(true, false) {
		w.rs.stuck.Add(-1)
	}
}

func (w *stuckWatch) fire() {
	if since := w.busySince.Load(); since != 0 && time.Since(w.epoch)-time.Duration(since) >= spareReaderAfter {
		// One spare per stuck reader; a spare that gets stuck in turn starts another.
		if w.stuck.CompareAndSwap(false, true) {
			w.rs.stuck.Add(1)
			w.rs.start()
		}
	}
	n := w.packets.Load()
	if n != w.seen || w.busySince.Load() != 0 {
		w.seen = n
		w.timer.Reset(spareReaderAfter)
		return
	}
	// Quiet: disarm. A packet that began meanwhile saw the timer armed and left it
	// alone, so look once more.
	w.armed.Store(false)
	if w.packets.Load() != n && w.armed.CompareAndSwap(false, true) {
		w.timer.Reset(spareReaderAfter)
	}
}

func (w *stuckWatch) stop() {
	w.timer.Stop()
	w.end()
}

// handle turns one queued packet into a Request and hands it on.
func (b *Backend) handle(p *nfq.Packet, d intercept.Decider) {
	h := &hold{id: p.ID, mark: p.Mark, since: p.Time}
	if p.Err != nil {
		b.malformedPacket(h, p.Err)
		return
	}
	pp, err := packet.Parse(p.Payload)
	if err != nil {
		b.malformedPacket(h, err)
		return
	}
	if pp.SourceRoute && p.Hook != hookLocalIn {
		// Its destination is a waypoint: a rule for it would decide where
		// the packet does not end (review5: a datagram routed via an allowed
		// host to one nobody decided). Refused, as a malformed one is.
		b.malformedPacket(h, fmt.Errorf("a source route (%v is a waypoint, not where it goes): refused", pp.Dst))
		return
	}
	h.proto = pp.Protocol
	req := &engine.Request{
		ID:       engine.RequestID(b.nextID.Add(1)),
		Time:     p.Time,
		Protocol: engine.Protocol(pp.Protocol),
		UID:      -1,
	}
	src, dst := netip.AddrPortFrom(pp.Src, pp.SrcPort), netip.AddrPortFrom(pp.Dst, pp.DstPort)
	if pp.Protocol == packet.ProtoICMP || pp.Protocol == packet.ProtoICMPv6 {
		src, dst = netip.AddrPortFrom(pp.Src, 0), netip.AddrPortFrom(pp.Dst, 0)
	}
	if p.Hook == hookLocalIn {
		req.Direction, req.Local, req.Remote = engine.Inbound, dst, src
	} else if p.Hook == hookForward && h.mark&MarkMask == MarkRedecideReply {
		// The side of a forwarded flow that did not open it, held after a
		// rule change (see MarkRedecideReply): decided as the flow, the
		// request its opener's packet makes, so the tuple reads reversed
		// (and the opener is attributed, as for its own packets).
		req.Direction, req.Local, req.Remote = engine.Outbound, dst, src
	} else {
		req.Direction, req.Local, req.Remote = engine.Outbound, src, dst
	}
	if p.HasUID {
		req.UID = int32(p.UID)
	}
	h.req = req
	b.holdsMu.Lock()
	b.holds[h.id] = h
	b.holdsMu.Unlock()
	if pp.Protocol == packet.ProtoTCP && h.mark&MarkMask == MarkFastRedecide && req.Direction == engine.Outbound &&
		p.Hook != hookForward && b.notrackOn() && b.joinFastGroup(h, keyOf(req)) {
		// Another packet of this fast socket is being decided again: this one
		// gets its verdict (see fastGroup).
		return
	}
	if p.Hook == hookForward {
		// Forwarded: the sender is a socket in another namespace (or machine); the
		// packet carries no uid of this host's.
		req.UID = -1
		if fr, ok := b.cfg.Resolver.(ForwardResolver); ok && (pp.Protocol == packet.ProtoTCP || pp.Protocol == packet.ProtoUDP) {
			b.attributeForwarded(fr, req)
		}
	} else if b.cfg.Resolver != nil && (pp.Protocol == packet.ProtoTCP || pp.Protocol == packet.ProtoUDP) {
		// The interface lets procattr find sockets bound to a device (SO_BINDTODEVICE),
		// which a lookup without it never matches.
		ifindex := p.OutDev
		if req.Direction == engine.Inbound {
			ifindex = p.InDev
		}
		var sender *stashSender
		if m := b.stashMap.Load(); m != nil && req.Direction == engine.Outbound && pp.Protocol == packet.ProtoUDP {
			// The socket that sent it, as the ruleset recorded it just
			// before the queue (0: unknown or ambiguous).
			c, byPort, none := b.takeSender(m, p.Payload)
			sender = &stashSender{cookie: c, byPort: byPort, none: none}
		}
		h.cookie = b.attribute(req, int(ifindex), sender)
		if b.dnsSenders != nil && req.Direction == engine.Outbound && req.Protocol == engine.UDP && req.Remote.Port() == 53 {
			// Recorded while held, and again when the verdict is given (finish),
			// before it lets the query out, so before its answer can come back and
			// the program close its socket. A query whose sender was not found is
			// recorded too, as sent by nobody, under the packet's uid: the queue held
			// it, so its copy is not credited to whichever socket holds the port later.
			if q, err := dnsname.ParseQueryPacket(p.Payload); err == nil {
				prog := programOf(req)
				h.dnsQuery = &heldQuery{q: q, prog: prog}
				b.dnsSenders.put(q, prog, time.Now())
			}
		}
	}
	if p.Hook == hookLocalIn && h.mark&MarkMask == MarkRedecideReply && b.cfg.Inbound {
		// The peer's side of a flow this host opened, which a rule change
		// marked for deciding again (see MarkRedecideReply): decided as that
		// flow, the local program's outbound request (local and remote as
		// read above for the packet that arrives), for the program of the
		// socket that receives it (found above as for any inbound packet:
		// the socket the kernel delivers it to), so that an allow comes from
		// the rules for the flow the program opened (review16).
		if !b.pinnedElsewhere(req, h.cookie) {
			req.Direction = engine.Outbound
			h.replyIn = true
		}
	}
	if req.Direction == engine.Outbound && p.Hook == hookLocalOut && h.mark&MarkMask == MarkRedecideReply && b.cfg.Inbound {
		// This host's side of a flow the peer opened, which a rule change
		// marked for deciding again (see MarkRedecideReply): decided as that
		// inbound flow, for the program of the socket that sent it (found
		// above as for any datagram this host sends), so that an allow (which
		// marks the whole flow MarkAllow) comes from the rules for the flow
		// the peer opened, not from the program's outbound rules.
		req.Direction = engine.Inbound
	}
	if req.PID == 0 && !p.HasUID && pp.Protocol == packet.ProtoTCP && pp.TCPFlags&tcpFlagSYN == 0 {
		b.openerOf(req, tcpHasPayload(p, &pp))
	} else if req.PID == 0 && h.replyIn && pp.Protocol == packet.ProtoUDP && h.cookie == 0 {
		// A peer's datagram on a flow this host opened that no local
		// socket receives (the program closed it): no program gets it, and
		// it is decided as the flow of the program it was allowed for, not
		// as a question about an unknown program. Not when a socket was
		// found whose program attribution failed (cookie set): that socket
		// would receive it.
		b.openerOf(req, true)
	}
	if b.cfg.Hostnames != nil {
		// After attribution, which gives the copy of the DNS answer the program just
		// got time to arrive; LookupForWait waits only while such a copy is in flight.
		name, own, ok := b.cfg.Hostnames.LookupForWait(programOf(req), req.Remote.Addr(), 2*time.Millisecond)
		switch {
		case !ok:
			req.HostSource = engine.HostNone
		case own:
			req.Host, req.HostSource = name, engine.HostOwn
		default:
			req.Host, req.HostSource = name, engine.HostShared
		}
	}
	b.decide(d, h)
}

func (b *Backend) malformedPacket(h *hold, err error) {
	b.errs.Add(1)
	b.malformed.Add(1)
	b.cfg.Logf("dropping packet %d: %v", h.id, err)
	b.holdsMu.Lock()
	b.holds[h.id] = h
	b.holdsMu.Unlock()
	b.finish(h, nfq.Drop, 0, false)
}

// attribute fills in the process that owns req's local socket: for an outbound
// connection the socket that sent the packet, for an inbound one the socket that will
// accept it (the packet carries no uid then: no local socket sent it).
// ifindex is the interface the packet leaves (outbound) or arrived (inbound) by.
// sender, if not nil, is what the sender stash knows of the datagram's
// socket (see takeSender). It returns the socket's cookie (0: none found).
func (b *Backend) attribute(req *engine.Request, ifindex int, sender *stashSender) uint64 {
	unknown := procattr.Process{UID: -1}
	var p procattr.Process
	var err error
	sr, isSR := b.cfg.Resolver.(SenderResolver)
	if c := b.takeReceiver(req); c != 0 && isSR {
		// The socket the kernel delivers the flow's datagrams to now,
		// which the receive check reported (see PinMoved).
		p, err = sr.ResolveSender(req.Protocol, req.Local, req.Remote, req.UID, ifindex, c)
	} else if req.Direction == engine.Inbound {
		p, err = b.cfg.Resolver.ResolveInbound(req.Protocol, req.Local, req.Remote, ifindex)
	} else if sender != nil && sender.none {
		// The stash knows the datagram's port had more than one sender (or could not key it):
		// which one sent it cannot be told, and none is credited.
		p, err = unknown, errors.New("the sender stash cannot tell which socket sent it (its port had more than one sender, or the stash could not key it)")
	} else if sender != nil && sender.byPort && isSR {
		// The port's one sender, not the datagram's own record: only if it
		// is also the one socket that could have sent the datagram now.
		p, err = sr.ResolveSender(req.Protocol, req.Local, req.Remote, req.UID, ifindex, 0)
		if p.Cookie != sender.cookie {
			p, err = unknown, fmt.Errorf("the one socket on local port %d (cookie %d) is not the one that sent through the sender stash from it (cookie %d)", req.Local.Port(), p.Cookie, sender.cookie)
		}
	} else if sender != nil && isSR {
		p, err = sr.ResolveSender(req.Protocol, req.Local, req.Remote, req.UID, ifindex, sender.cookie)
	} else {
		p, err = b.cfg.Resolver.ResolveDev(req.Protocol, req.Local, req.Remote, req.UID, ifindex)
	}
	if err != nil || p.PID == 0 {
		b.attributionFailed.Add(1)
	}
	req.PID, req.Exe, req.User, req.Cmdline = p.PID, p.Exe, p.User, p.Cmdline
	req.Identity, req.Container, req.IdentityNote = p.Identity, p.Container, p.IdentityNote
	req.ContainerName = p.ContainerName
	req.Unit, req.AppID, req.Parents = p.Unit, p.AppID, p.Parents
	req.ExeSHA256, req.ExeHashNote, req.ExeFile = p.ExeSHA256, p.ExeHashNote, p.ExeFile
	if req.UID < 0 && p.PID != 0 && p.UID >= 0 {
		req.UID = p.UID
	}
	return p.Cookie
}

// tcpFlagSYN is the SYN bit of a TCP header's flags.
const tcpFlagSYN = 0x02

// openerOf credits a held TCP packet (not a SYN) no program's socket was found
// for to the program its flow was allowed for, if a rule change took that flow
// from the flow table to decide it again (Redecide; the request is kept in
// b.redecided): the flow's socket has no owner any more (the program closed it,
// and the kernel still sends its last data, FIN or ACK, or answers the peer's)
// or none at all (TIME_WAIT), and the packet is still that program's flow, to
// be decided by the new rules for it. Without this it was a request of no
// program: a question about an unknown program for a connection already closed
// (answering a question "allow, forever" did that to the very connection
// answered, if it closed quickly), or a rule about "any program" deciding it.
// A SYN is never credited: it opens a new flow, and its socket, in SYN_SENT,
// is always found; nor a packet the queue gives a uid, which comes from a
// socket that still has a file (an orphan, a TIME_WAIT socket and the
// kernel's own have none). And the packet must be of the very conntrack
// entry the rule change marked (zone 0, mark MarkRedecide), which one GET
// tells: a segment written without a handshake on the tuple (a raw socket,
// which a container's root may have) is picked up by conntrack as a new
// entry, not confirmed yet while it is held, and was credited to the earlier
// flow's program and decided by its rules (review22). A flow behind NAT (its
// original tuple is not the one decided) is not found that way and is not
// credited. Nor a segment with data when the entry is in TIME_WAIT or CLOSE
// (hasPayload): a socket there sends none, and a raw socket that saw the
// flow's sequence numbers could write one into the entry (review24). The
// packet's uid is the opener's. With Config.Inbound, the peer's UDP datagram
// on a flow this host opened, held after the change (MarkRedecideReply in
// LATCH-IN), is credited the same way when no local socket receives it (the
// program closed it; the kernel would answer port unreachable): no program
// gets it, and a rule change made it a question about an unknown program.
func (b *Backend) openerOf(req *engine.Request, hasPayload bool) {
	k, t := keyOf(req), b.redecided
	t.mu.Lock()
	e, ok := t.lookup(k)
	ok = ok && t.since(time.Now()) <= e.expires
	t.mu.Unlock()
	if !ok {
		return
	}
	old := e.req
	if old.Direction != req.Direction || old.Protocol != req.Protocol || old.PID == 0 {
		return
	}
	ci, err := getConntrack(k.ctTuple())
	if err != nil || ci.key != k || ci.mark&MarkMask != MarkRedecide ||
		hasPayload && ci.hasState && (ci.tcpState == ctTCPTimeWait || ci.tcpState == ctTCPClose) {
		return
	}
	b.attributedOpener.Add(1)
	req.PID, req.Exe, req.User, req.Cmdline, req.Netns = old.PID, old.Exe, old.User, old.Cmdline, old.Netns
	req.Identity, req.Container, req.IdentityNote = old.Identity, old.Container, old.IdentityNote
	req.ContainerName = old.ContainerName
	req.Unit, req.AppID, req.Parents = old.Unit, old.AppID, old.Parents
	req.ExeSHA256, req.ExeHashNote, req.ExeFile = old.ExeSHA256, old.ExeHashNote, old.ExeFile
	req.UID = old.UID
}

// tcpHasPayload reports whether the TCP segment p (parsed as pp) carries data:
// its length (before the queue's copy range cut it) beyond the TCP header.
func tcpHasPayload(p *nfq.Packet, pp *packet.Packet) bool {
	n := len(p.Payload)
	if p.CapLen > 0 {
		n = int(p.CapLen)
	}
	if pp.L4Offset+13 > len(p.Payload) {
		return true // not readable: counted as data, never credited in TIME_WAIT
	}
	return n > pp.L4Offset+int(p.Payload[pp.L4Offset+12]>>4)*4
}

// rememberFlow puts the allowed flow req in the flow table (untracked: see
// flowEntry). A flow of the same tuple a rule change took before (redecided)
// is forgotten there: req is the tuple's flow now, and its packets are never
// to be credited to the earlier one's program (see openerOf).
func (b *Backend) rememberFlow(req *engine.Request, now time.Time, untracked bool) {
	b.rememberFlowKey(keyOf(req), req, now, untracked)
}

// rememberFlowKey is rememberFlow with req's key k (keyOf(req)) already made.
func (b *Backend) rememberFlowKey(k flowKey, req *engine.Request, now time.Time, untracked bool) {
	b.flows.addFlowKey(k, req, now, untracked)
	if now.UnixNano() < b.redecidedUntil.Load() {
		b.redecided.forget(k)
	}
}

// redecidedTTL is how long Backend.redecided keeps a flow Redecide took: longer
// than a closed TCP socket sends (FIN_WAIT and TIME_WAIT, 60 s each; an
// orphan's retransmissions of what was left unsent).
const redecidedTTL = 3 * time.Minute

// stashSender is what the sender stash knows of a queued UDP datagram's
// socket (takeSender's results): cookie, its own record's socket (0: none),
// or with byPort the one socket that sent through the stash from its local
// port; none: no socket is to be credited.
type stashSender struct {
	cookie       uint64
	byPort, none bool
}

// programOf is whose own names a connection's host is looked up in: the program
// attribution found, or none (Exe "", UID the request's: a held DNS query's record
// is in its sender's share, not root's).
func programOf(req *engine.Request) dnsname.Program {
	if req.PID == 0 || req.Exe == "" {
		return dnsname.Program{UID: req.UID}
	}
	return dnsname.Program{Exe: req.Exe, Identity: uint8(req.Identity), Container: req.Container, UID: req.UID}
}

// endedResolver is a Resolver that also finds the program of a TCP connection that
// ended since (procattr.Resolver.ResolveEnded).
type endedResolver interface {
	ResolveEnded(proto engine.Protocol, local, remote netip.AddrPort, uid int32) (procattr.Process, error)
}

// queryProgram finds the program that sent a DNS query from client to server, as
// attribute does for a held connection; the zero Program if none is found. A query
// the queue held is credited to the sender attribute found for it then (dnsSenders),
// never to whichever socket holds its port when the copy is read: the sender may
// have closed its socket and another program bound the port since, or share the
// port with another socket (SO_REUSEPORT), which a lookup by tuple may find instead
// (review 38). A record counts from the query's verdict, however long it was held;
// a query held whose sender was not found, or whose record is past its window but
// still in the table, is credited to nobody (review 42). While the table is dropping
// records of the copy's user (full; a user's subordinate uids are that user's), a UDP
// query not found in it is credited to nobody: it may be one held whose record was
// dropped (review 40). A copy found in no record is credited to the socket a lookup
// finds only for its own uid (any uid below 2^32-1, those >= 2^31 too); a copy that
// names no user is credited to nobody (review 45).
func (b *Backend) queryProgram(proto engine.Protocol, q dnsname.Query, uid int64) dnsname.Program {
	if proto == engine.UDP && b.dnsSenders != nil {
		prog, ok, held := b.dnsSenders.lookup(q, time.Now())
		if ok {
			if (uid >= 0 && uid != uidOf(prog.UID)) || !prog.Known() {
				return dnsname.Program{} // the copy's sender is not the one the queue saw, or was not found
			}
			return prog
		}
		if held {
			// The queue held it, but its record is past its window: its sender
			// is not known now, and the port's holder may not be it.
			return dnsname.Program{}
		}
		if b.dnsSenders.lostFor(uid, time.Now()) {
			// The queue may have held this very query and its record been
			// dropped (a full table): the port's holder now may not be its sender.
			return dnsname.Program{}
		}
	}
	if uid < 0 || uid >= noUID {
		// The copy names no user (its socket had closed, or it was not sent
		// from a local socket): a lookup for any uid would credit whichever
		// user's socket holds the port now (review 45).
		return dnsname.Program{}
	}
	client, server := q.Client, q.Server
	// The resolver takes a uid as int32, -1 for any: a uid >= 2^31 is looked up
	// for any uid and the socket found must be its (review 45).
	want := int32(-1)
	if uid <= 1<<31-1 {
		want = int32(uid)
	}
	var p procattr.Process
	var err error
	if re, ok := b.cfg.Resolver.(endedResolver); ok {
		// The copy is read a little after the query was sent: a short TCP connection
		// may be in TIME_WAIT by then.
		p, err = re.ResolveEnded(proto, client, server, want)
	} else {
		p, err = b.cfg.Resolver.ResolveDev(proto, client, server, want, 0)
	}
	if err != nil || p.PID == 0 || (want == -1 && uidOf(p.UID) != uid) {
		return dnsname.Program{}
	}
	req := engine.Request{Direction: engine.Outbound, Protocol: proto, Local: client, Remote: server,
		UID: int32(uint32(uid)), PID: p.PID, Exe: p.Exe, Identity: p.Identity, Container: p.Container}
	return programOf(&req)
}

// attributeForwarded fills in the process and namespace that sent a forwarded
// connection.
func (b *Backend) attributeForwarded(fr ForwardResolver, req *engine.Request) {
	p, ns, err := fr.ResolveForwarded(req.Protocol, req.Local, req.Remote)
	if err != nil || p.PID == 0 {
		b.attributionFailed.Add(1)
	}
	req.PID, req.Exe, req.User, req.Cmdline, req.Netns = p.PID, p.Exe, p.User, p.Cmdline, ns.Name
	req.Identity, req.Container, req.IdentityNote = p.Identity, p.Container, p.IdentityNote
	req.ContainerName = p.ContainerName
	// The rest of the identity too, as for a local socket: --unit, --parent,
	// --app-id and pinned rules apply to forwarded connections alike.
	req.Unit, req.AppID, req.Parents = p.Unit, p.AppID, p.Parents
	req.ExeSHA256, req.ExeHashNote, req.ExeFile = p.ExeSHA256, p.ExeHashNote, p.ExeFile
	if p.PID != 0 && p.UID >= 0 {
		req.UID = p.UID
	}
}

func (b *Backend) decide(d intercept.Decider, h *hold) {
	b.held.Add(1)
	d.Decide(h.req, func(v engine.Verdict) { b.apply(h, v) })
}

// apply carries out v for h. It runs on whatever goroutine the Decider answers from.
func (b *Backend) apply(h *hold, v engine.Verdict) {
	withMark := func(m uint32) uint32 { return h.mark&^MarkMask | m }
	if b.cfg.FastSockets != nil {
		// A fast socket decided again: its mark first, then the flow's other
		// queued packets (if h leads a group).
		b.leadFastGroup(h, v)
	}
	switch v.Action {
	case engine.Allow:
		// Remembered before the verdict: once the packet is on its way a Redecide may
		// come for it. If this verdict is not the one that counts, the flow's
		// conntrack entry will not carry MarkAllow and Redecide passes it by.
		b.rememberFlow(h.req, time.Now(), false)
		if h.cookie != 0 && (h.req.Direction == engine.Inbound || h.replyIn) && h.proto == packet.ProtoUDP {
			// Before the verdict: the socket pin's rule in LATCH-IN then
			// leaves this record alone (see pinInbound). A peer's
			// datagram on a flow this host opened (replyIn) pins the flow
			// to the socket that receives it, for which it was decided.
			b.pinInbound(h.req, h.cookie)
		}
		if b.finish(h, nfq.Repeat, withMark(MarkAllow), true) {
			b.allowed.Add(1)
		}
	case engine.Deny:
		// Fail fast: a TCP SYN is answered with a reset; other protocols are dropped.
		var ok bool
		if h.proto == packet.ProtoTCP {
			ok = b.finish(h, nfq.Repeat, withMark(MarkReject), true)
		} else {
			ok = b.finish(h, nfq.Drop, 0, false)
		}
		if ok {
			b.denied.Add(1)
		}
	case engine.Reject:
		if b.finish(h, nfq.Repeat, withMark(MarkReject), true) {
			b.rejected.Add(1)
		}
	case engine.Drop:
		if b.finish(h, nfq.Drop, 0, false) {
			b.denied.Add(1)
			b.dropped.Add(1)
		}
	default:
		if b.finish(h, nfq.Drop, 0, false) {
			b.errs.Add(1)
			b.cfg.Logf("request %d: verdict with action %v: dropped", h.req.ID, v.Action)
		}
	}
}

// finish sets the kernel verdict for h exactly once and reports whether this call did.
func (b *Backend) finish(h *hold, v nfq.Verdict, mark uint32, setMark bool) bool {
	if !h.done.CompareAndSwap(false, true) {
		if !b.closing.Load() {
			b.duplicate.Add(1)
			b.errs.Add(1)
		}
		return false
	}
	b.holdsMu.Lock()
	delete(b.holds, h.id)
	b.holdsMu.Unlock()
	if h.dnsQuery != nil && b.dnsSenders != nil {
		// Its record is kept from the verdict, which lets the query out (a hold
		// may last minutes: a question to the user).
		b.dnsSenders.put(h.dnsQuery.q, h.dnsQuery.prog, time.Now())
	}
	q := b.q.Load()
	if q == nil {
		return false
	}
	// A write can fail under memory pressure (ENOBUFS, ENOMEM). The packet must not
	// stay held for ever (no sweep will see it again): retry, then fall back to drop.
	err := q.SetVerdict(h.id, v, mark, setMark)
	for try := 1; err != nil && try <= verdictRetries; try++ {
		time.Sleep(time.Duration(try) * time.Millisecond)
		if try == verdictRetries {
			v, mark, setMark = nfq.Drop, 0, false
		}
		err = q.SetVerdict(h.id, v, mark, setMark)
	}
	if err != nil {
		b.errs.Add(1)
		b.verdictErrors.Add(1)
		b.cfg.Logf("%v", err)
		return false
	}
	lat := uint64(time.Since(h.since))
	b.latencySum.Add(lat)
	b.latencyN.Add(1)
	for {
		m := b.latencyMax.Load()
		if lat <= m || b.latencyMax.CompareAndSwap(m, lat) {
			break
		}
	}
	return true
}

// sweep drops packets held longer than HoldTimeout: the backstop that keeps every hold
// bounded in time even if a Decider never answers.
func (b *Backend) sweep(ctx context.Context) {
	period := min(b.cfg.HoldTimeout/4, time.Second)
	t := time.NewTicker(max(period, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var expired []*hold
			b.holdsMu.Lock()
			for _, h := range b.holds {
				if now.Sub(h.since) > b.cfg.HoldTimeout {
					expired = append(expired, h)
				}
			}
			b.holdsMu.Unlock()
			for _, h := range expired {
				if b.finish(h, nfq.Drop, 0, false) {
					b.holdTimeouts.Add(1)
					b.errs.Add(1)
				}
				if b.cfg.FastSockets != nil {
					// Its flow's next packet leads a group of its own.
					b.dropFastGroup(h)
				}
			}
		}
	}
}

// releaseAll answers every packet still held when Run stops.
func (b *Backend) releaseAll() {
	b.holdsMu.Lock()
	pending := make([]*hold, 0, len(b.holds))
	for _, h := range b.holds {
		pending = append(pending, h)
	}
	b.holdsMu.Unlock()
	v := nfq.Drop
	if b.cfg.FailOpen {
		v = nfq.Accept
	}
	for _, h := range pending {
		b.finish(h, v, 0, false)
	}
}

// Redecide forgets the verdicts of allowed flows whose request matches affected (nil:
// every flow latch allowed): their conntrack entries get the mark MarkRedecide, so
// that their next packet from the side that opened them is held and decided again.
// It returns how many conntrack entries it marked (ICMP ones it deletes).
//
// It reads conntrack's table twice, redecideGrace apart: a packet allowed under
// the old rules just before the change (by the fast path's match, or by a verdict
// decided before it and sent a moment later) may have its conntrack entry
// confirmed after the first read, with the allow mark; a new socket on the same
// 4-tuple would then pass by it. The second read marks such entries, and flows
// registered in between whose request came before the change.
func (b *Backend) Redecide(affected func(*engine.Request) bool) (int, error) {
	if affected == nil {
		affected = func(*engine.Request) bool { return true }
	}
	start := time.Now()
	n, err := b.redecideOnce(affected, affected)
	redecideWait()
	// Not the flows allowed again since the first read (under the new rules).
	before := func(r *engine.Request) bool { return r.Time.Before(start) && affected(r) }
	n2, err2 := b.redecideOnce(affected, before)
	if err = errors.Join(err, err2); err != nil {
		return n + n2, fmt.Errorf("linux backend: redecide: %w", err)
	}
	return n + n2, nil
}

// redecideGrace is how long Redecide waits between its two reads of conntrack's
// table: far longer than a packet takes from the output chain to conntrack's
// confirmation, or a verdict from its decision to the kernel, short enough that a
// rule change's API call hardly waits for it.
const redecideGrace = 20 * time.Millisecond

// redecideWait waits redecideGrace (tests make packets then).
var redecideWait = func() { time.Sleep(redecideGrace) }

// redecideOnce marks the allowed flows matching affected, as Redecide, once: the
// flows of the flow table that take matches, which it takes from the table, and
// the flows the table does not know that affected may match.
func (b *Backend) redecideOnce(affected, take func(*engine.Request) bool) (int, error) {
	synced := b.syncFastDecisions()
	now := time.Now()
	keys := b.flows.take(take, now)
	if len(keys) > 0 {
		b.redecidedUntil.Store(now.Add(redecidedTTL).UnixNano())
	}
	for _, req := range keys {
		b.redecided.add(req, now)
	}
	n, err := markRedecide(ctFilter{affected: affected, keys: keys, remembered: b.flows.has})
	// The fast path's untracked TCP flows: on their sockets (see "Notrack").
	m, err2 := b.redecideSockets(synced)
	return n + m, errors.Join(err, err2)
}

// Stats returns the backend's counters.
func (b *Backend) Stats() intercept.Stats {
	s := intercept.Stats{
		Backend:   b.Name(),
		Held:      b.held.Load(),
		Allowed:   b.allowed.Load(),
		Denied:    b.denied.Load(),
		Rejected:  b.rejected.Load(),
		Overflows: b.overflows.Load(),
		Errors:    b.errs.Load(),
		Extra: map[string]uint64{
			"queue":                  uint64(b.cfg.QueueNum),
			"dropped":                b.dropped.Load(),
			"malformed":              b.malformed.Load(),
			"verdict_errors":         b.verdictErrors.Load(),
			"duplicate_verdicts":     b.duplicate.Load(),
			"hold_timeouts":          b.holdTimeouts.Load(),
			"attribution_failed":     b.attributionFailed.Load(),
			"attribution_opener":     b.attributedOpener.Load(),
			"flows_remembered":       uint64(b.flows.len()),
			"traffic_reports":        b.trafficReports.Load(),
			"traffic_events_lost":    b.trafficEventsLost.Load(),
			"traffic_socket_ends":    b.socketEnds.Load(),
			"traffic_ends_lost":      b.socketEndsLost.Load(),
			"traffic_conntrack_gets": b.ctGets.Load(),
			"traffic_socket_counts":  b.trafficFromSockets.Load(),
			"traffic_update_events":  map[bool]uint64{true: 1}[b.ctUpdates.Load()],
			"verdict_latency_max_us": b.latencyMax.Load() / 1000,
		},
	}
	b.holdsMu.Lock()
	s.Extra["pending"] = uint64(len(b.holds))
	if b.dns != nil {
		// Kept for the metrics; `latch status` shows the learner's own counters.
		d := b.dns.Stats()
		responses := d.Answers
		for _, n := range d.Ignored {
			responses += n
		}
		s.Extra["dns_responses"] = responses
		s.Extra["dns_malformed"] = d.Ignored[dnsname.IgnoredMalformed]
		s.Extra["dns_overflows"] = d.Overflows
		s.Extra["dns_names"] = uint64(d.Names)
	}
	b.holdsMu.Unlock()
	if n := b.latencyN.Load(); n > 0 {
		s.Extra["verdict_latency_avg_us"] = b.latencySum.Load() / n / 1000
	}
	if b.running.Load() {
		b.readQueueStatus()
	}
	if st := b.lastQueue.Load(); st != nil {
		s.Extra["queue_waiting"] = st.Waiting
		s.Extra["queue_dropped"] = st.Dropped
		s.Extra["queue_user_dropped"] = st.UserDropped
		s.KernelDropped = st.Dropped + st.UserDropped
	}
	return s
}

func (b *Backend) readQueueStatus() {
	if qs, err := boundQueues(); err == nil {
		if st, ok := qs[b.cfg.QueueNum]; ok {
			b.lastQueue.Store(&st)
		}
	}
}

// Cleanup removes the ruleset a crashed daemon left behind in the current network
// namespace (with every mechanism that has one). It refuses while queueNum is bound,
// that is while a daemon is alive.
func Cleanup(queueNum uint16) error {
	if queueNum == 0 {
		queueNum = DefaultQueue
	}
	bound, err := boundQueues()
	if err != nil {
		return fmt.Errorf("cleanup: read bound queues: %w", err)
	}
	if st, ok := bound[queueNum]; ok {
		return fmt.Errorf("cleanup: %w (queue %d is bound by netlink port %d); stop it instead", ErrAnotherDaemon, queueNum, st.PortID)
	}
	var errs []error
	var fws []firewall
	if _, err := exec.LookPath("nft"); err == nil {
		fws = append(fws, &nftFirewall{})
	}
	if fw, err := newIptables(FirewallIptablesNft); err == nil {
		fws = append(fws, fw)
	}
	// Even listing legacy tables creates them in the namespace; look only if some are.
	if legacyFilterPresent() {
		if fw, err := newIptables(FirewallIptablesLegacy); err == nil {
			fws = append(fws, fw)
		}
	}
	for _, fw := range fws {
		exists, queues, err := fw.leftover()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !exists {
			continue
		}
		for _, q := range queues {
			if st, ok := bound[q]; ok {
				errs = append(errs, fmt.Errorf("cleanup: %s: %w (queue %d bound by netlink port %d)", fw.name(), ErrAnotherDaemon, q, st.PortID))
				exists = false
			}
		}
		if exists {
			if err := fw.removeLeftover(); err != nil {
				errs = append(errs, fmt.Errorf("cleanup: %s: %w", fw.name(), err))
			}
		}
	}
	return errors.Join(errs...)
}
