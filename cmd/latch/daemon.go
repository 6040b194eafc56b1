package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/latchfw/latch/internal/fastpath"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/blocklist"
	"github.com/latchfw/latch/internal/config"
	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/dnsproxy"
	"github.com/latchfw/latch/internal/encdns"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/lifetime"
	"github.com/latchfw/latch/internal/sdnotify"
	"github.com/latchfw/latch/internal/store"
	"github.com/latchfw/latch/internal/textesc"
	"github.com/latchfw/latch/internal/winsvc"
)

var daemonHelp = `Usage: latch daemon [flags]

Holds every new outbound connection (TCP SYN, the first packet of a UDP flow, any
ICMP message but errors about known flows and the link's own bookkeeping) until it is
decided: by a rule, by a person answering a question ('latch prompts', 'latch
answer', 'latch watch'), or by the default when nobody answers in time. On SIGINT or
SIGTERM it removes every firewall rule it installed (unless --keep-rules-on-exit) and
exits; on SIGHUP it reads the managed rule files again.

  --state-dir DIR          rules (rules.json, with room kept in rules.reserve) and history
                           (history.db) (default ` + defaultStateDir + `)
  --api PATH               local API socket (default $LATCH_API, else ` + api.DefaultPath + `)
  --api-group NAME         members of group NAME may use the API too (answer questions,
                           manage rules, read history, log in to the web UI); Linux
  --default allow|deny|reject|drop
                           verdict for a question nobody answers in time (default deny)
  --prompt-timeout DUR     how long a question waits for an answer (default 30s)
  --fail open|closed       while no daemon runs, new connections are accepted (open:
                           queue bypass) or dropped (closed) (default closed)
  --inbound                also hold new inbound connections
  --forward                also hold new connections this host forwards (containers on
                           a bridge, namespaces behind it), attributed to the program
                           that sent them in its own network namespace
  --exempt-loopback=BOOL   never hold loopback traffic (default true)
  --queue N                NFQUEUE queue number (default 4242)
  --encrypted-dns-list FILE
                           the encrypted DNS services (DoH) to flag, replacing the list
                           shipped with latch (format: see 'latch rules preset')
  --dns-proxy ADDR         local resolver mode: answer the machine's DNS at ADDR (e.g.
                           127.0.0.53:53, UDP and TCP), attribute each query to the asking
                           program, learn its names exactly, refuse names a deny rule covers;
                           with --fail open resolv.conf names the upstream after it, so DNS
                           goes on while the daemon is down (not with systemd-resolved's
                           stub address 127.0.0.53: use e.g. 127.0.0.153:53)
  --dns-upstream ADDR[,ADDR]
                           servers the resolver forwards to (default: the name servers of
                           the original resolv.conf)
  --resolv-conf PATH       the resolv.conf pointed at the resolver while the daemon runs and
                           restored when it stops (default /etc/resolv.conf; none: leave it)
  --dns-refuse nxdomain|zero
                           a refused name gets NXDOMAIN, or 0.0.0.0 / :: (default nxdomain)
  --host-rules-match-shared
                           let host rules and blocklists match a name another program
                           resolved (host_source "shared"); by default they match only
                           names the connecting program resolved itself ("own")
  --max-history N          connections kept in the history (default 100000)
  --max-questions N        questions open at once at most (default 1024)
  --max-questions-per-user N
                           questions of one user's programs open at most (default 256)
  --max-questions-per-app N
                           questions of one program (of one user) open at most (default 64)
  --config FILE            read flags from FILE, TOML, one key per flag: inbound = true
                           (default ` + config.DefaultPath + `; a missing default file is fine);
                           flags on the command line override the file
  --web IP:PORT            serve the web UI there (off by default); a loopback address
                           unless --web-allow-remote; open it with 'latch web open'
  --web-allow-remote       allow a --web address other machines can reach (needs
                           --web-cert and --web-key: TLS)
  --web-cert FILE          TLS certificate (PEM) for the web UI
  --web-key FILE           TLS private key (PEM) for the web UI
  --accounting=BOOL        count the bytes of every allowed connection, per program
                           (conntrack accounting; 'latch conns', 'latch top') (default true)
  --traffic-interval DUR   how often a long-lived connection's bytes are written to the
                           history; its end is always written (default 10s)
  --fast-path=BOOL         Linux: decide TCP connections a rule decided before in the
                           kernel (eBPF), without the queue (default true; off by
                           itself without BPF, BTF or privilege: see latch status)
  --fast-path-cgroup DIR   cgroup v2 directory whose processes the fast path serves
                           (default: the root of the hierarchy, every process; with
                           --attribution-cgroup, that directory)
  --attribution-cgroup DIR Linux, for tests and benchmarks: cgroup v2 directory whose
                           processes latch's kernel hooks for every process serve
                           (process attribution, the local resolver's query records, the
                           fast path's socket ends and byte counts; default: the root);
                           attribution of processes outside DIR then falls back to /proc
                           (unverified: no --app rule matches them)
  --backend auto|none      none holds nothing: the API, rules and questions work but no
                           connection is intercepted (a test and development aid)
  --keep-rules-on-exit     fail-closed: a stop (SIGTERM) leaves the firewall rules in place,
                           so new connections stay held (dropped) until the next daemon
                           replaces them in one transaction: a restart lets nothing
                           through. 'latch cleanup' removes them. latch.service sets it.
  --managed-rules DIR      rule files (*.json, the 'rules export' format) that configuration
                           management pushes, in force beside your rules but read-only;
                           reloaded on SIGHUP, 'latch reload' and a change in DIR, all or
                           nothing (default /etc/latch/rules.d; "" for none)
  --log-format text|json   log records on stderr as key=value text or JSON lines
                           (log/slog; default text)

A connection beyond a question bound gets --default at once, unasked (history:
question-cap). The user and global bounds are shared fairly: when one is full, a
program (or user) holding fewer questions takes the place of the newest question of
the one holding the most; 'latch status' counts each bound that applied.

Two daemons cannot share a state directory, an API socket or a queue: the second
refuses to start.
` + modeFlagHelp + observeHelp

// trimRules is the size of a rule change (rules before plus after) from which the
// daemon returns freed memory to the system once the change has settled.
const trimRules = 10_000

// daemonOptions are the daemon's flags.
type daemonOptions struct {
	StateDir       string
	API            string
	Default        engine.Action
	PromptTimeout  time.Duration
	FailOpen       bool
	Inbound        bool
	Forward        bool
	ExemptLoopback bool
	Queue          uint16
	MaxHistory     int
	Backend        string
	observeOptions // metrics and events (observe.go)

	MaxQuestions        int
	MaxQuestionsPerUser int
	MaxQuestionsPerApp  int
	LogFormat           string // text or json (log/slog on stderr)
	KeepRules           bool   // --keep-rules-on-exit
	ManagedRules        string // --managed-rules DIR
	APIGroup            string // group admitted to the API besides root; "" is none
	Web                 string // web UI listen address; "" is off
	WebAllowRemote      bool
	WebCert             string
	WebKey              string
	// HostRulesMatchShared: see engine.Config.HostRulesMatchShared.
	HostRulesMatchShared bool
	// EncryptedDNS is the list of encrypted DNS services connections are flagged for.
	EncryptedDNS *encdns.List
	// Local resolver mode: see dnsproxy.
	DNSProxy    string
	DNSUpstream []string
	ResolvConf  string
	DNSRefuse   string
	// Accounting counts each allowed flow's bytes; TrafficInterval is how often a
	// long-lived one is reported.
	Accounting      bool
	TrafficInterval time.Duration
	// onTraffic receives the backend's byte reports (set by runDaemon).
	onTraffic      func([]intercept.Traffic)
	FastPath       bool
	FastPathCgroup string
	// AttributionCgroup (--attribution-cgroup) is the cgroup v2 directory the hooks
	// that serve every process attach to; "": the root.
	AttributionCgroup string

	Mode engine.Mode // --mode: the mode at start when none is saved (modes.go)
}

func parseDaemonFlags(args []string) (_ *daemonOptions, err error) {
	fs := newFlags("daemon")
	cfg := addConfigFlag(fs) // --config: every flag below can be set in the file
	defer func() { err = cfg.explain(err) }()
	o := &daemonOptions{}
	fs.StringVar(&o.StateDir, "state-dir", defaultStateDir, "")
	fs.StringVar(&o.API, "api", api.DefaultAddress(), "")
	fs.StringVar(&o.APIGroup, "api-group", "", "")
	def := fs.String("default", "deny", "")
	fs.DurationVar(&o.PromptTimeout, "prompt-timeout", engine.DefaultPromptTimeout, "")
	fail := fs.String("fail", "closed", "")
	fs.BoolVar(&o.Inbound, "inbound", false, "")
	fs.BoolVar(&o.Forward, "forward", false, "")
	fs.BoolVar(&o.ExemptLoopback, "exempt-loopback", true, "")
	queue := fs.Uint("queue", 4242, "")
	fs.IntVar(&o.MaxHistory, "max-history", store.DefaultMaxRows, "")
	fs.StringVar(&o.Backend, "backend", "auto", "")
	checkObserve := addObserveFlags(fs, &o.observeOptions)
	fs.IntVar(&o.MaxQuestions, "max-questions", engine.DefaultMaxPrompts, "")
	fs.IntVar(&o.MaxQuestionsPerUser, "max-questions-per-user", engine.DefaultMaxPromptsPerUser, "")
	fs.IntVar(&o.MaxQuestionsPerApp, "max-questions-per-app", engine.DefaultMaxPromptsPerApp, "")
	fs.StringVar(&o.LogFormat, "log-format", "text", "")
	fs.BoolVar(&o.KeepRules, "keep-rules-on-exit", false, "")
	fs.StringVar(&o.ManagedRules, "managed-rules", defaultManagedRules(), "")
	fs.StringVar(&o.Web, "web", "", "")
	fs.BoolVar(&o.WebAllowRemote, "web-allow-remote", false, "")
	fs.StringVar(&o.WebCert, "web-cert", "", "")
	fs.StringVar(&o.WebKey, "web-key", "", "")
	fs.BoolVar(&o.HostRulesMatchShared, "host-rules-match-shared", false, "")
	encList := fs.String("encrypted-dns-list", "", "")
	fs.StringVar(&o.DNSProxy, "dns-proxy", "", "")
	upstream := fs.String("dns-upstream", "", "")
	fs.StringVar(&o.ResolvConf, "resolv-conf", "/etc/resolv.conf", "")
	fs.StringVar(&o.DNSRefuse, "dns-refuse", dnsproxy.RefuseNXDomain, "")
	fs.BoolVar(&o.Accounting, "accounting", true, "")
	fs.DurationVar(&o.TrafficInterval, "traffic-interval", 10*time.Second, "")
	fs.BoolVar(&o.FastPath, "fast-path", true, "")
	fs.StringVar(&o.FastPathCgroup, "fast-path-cgroup", "", "")
	fs.StringVar(&o.AttributionCgroup, "attribution-cgroup", "", "")
	mode := fs.String("mode", "ask", "")
	if err := cfg.parse(fs, args); err != nil {
		return nil, err
	}
	if err := checkObserve(); err != nil {
		return nil, err
	}
	if o.AttributionCgroup != "" {
		if err := checkAttributionCgroup(o.AttributionCgroup); err != nil {
			return nil, usagef("--attribution-cgroup: %v", err)
		}
		if o.FastPathCgroup == "" {
			o.FastPathCgroup = o.AttributionCgroup
		}
	}
	if *upstream != "" {
		for _, u := range strings.Split(*upstream, ",") {
			if _, err := netip.ParseAddrPort(u); err != nil {
				return nil, usagef("--dns-upstream %q: want ADDRESS:PORT[,ADDRESS:PORT]", u)
			}
			o.DNSUpstream = append(o.DNSUpstream, u)
		}
	}
	if o.DNSProxy != "" {
		ap, err := netip.ParseAddrPort(o.DNSProxy)
		if err != nil {
			return nil, usagef("--dns-proxy %q: want ADDRESS:PORT, e.g. 127.0.0.53:53", o.DNSProxy)
		}
		if o.ResolvConf != "none" && ap.Port() != 53 {
			return nil, usagef("--dns-proxy %s: resolv.conf names no port, so the resolver must listen on port 53 (or use --resolv-conf none)", o.DNSProxy)
		}
	}
	if o.DNSRefuse != dnsproxy.RefuseNXDomain && o.DNSRefuse != dnsproxy.RefuseZero {
		return nil, usagef("--dns-refuse %q: want nxdomain or zero", o.DNSRefuse)
	}
	o.EncryptedDNS = encdns.Shipped()
	if *encList != "" {
		if o.EncryptedDNS, err = encdns.Load(*encList); err != nil {
			return nil, usagef("--encrypted-dns-list: %v", err)
		}
	}
	if o.Default, err = engine.ParseAction(*def); err != nil {
		return nil, usagef("--default: %v", err)
	}
	if o.Mode, err = engine.ParseMode(*mode); err != nil {
		return nil, usagef("--mode: %v", err)
	}
	switch *fail {
	case "open":
		o.FailOpen = true
	case "closed":
	default:
		return nil, usagef("--fail %q: want open or closed", *fail)
	}
	if o.PromptTimeout <= 0 || o.PromptTimeout > 24*time.Hour {
		return nil, usagef("--prompt-timeout %v: want a duration from 1ms to 24h", o.PromptTimeout)
	}
	if *queue == 0 || *queue > 65535 {
		return nil, usagef("--queue %d: want 1 to 65535", *queue)
	}
	o.Queue = uint16(*queue)
	if o.MaxHistory <= 0 {
		return nil, usagef("--max-history %d: want a positive number", o.MaxHistory)
	}
	for _, b := range []struct {
		flag string
		v    int
	}{{"max-questions", o.MaxQuestions}, {"max-questions-per-user", o.MaxQuestionsPerUser}, {"max-questions-per-app", o.MaxQuestionsPerApp}} {
		if b.v <= 0 || b.v > 1<<20 {
			return nil, usagef("--%s %d: want a number from 1 to %d", b.flag, b.v, 1<<20)
		}
	}
	if o.MaxQuestionsPerUser > o.MaxQuestions {
		return nil, usagef("--max-questions-per-user %d is above --max-questions %d", o.MaxQuestionsPerUser, o.MaxQuestions)
	}
	if o.MaxQuestionsPerApp > o.MaxQuestionsPerUser {
		return nil, usagef("--max-questions-per-app %d is above --max-questions-per-user %d", o.MaxQuestionsPerApp, o.MaxQuestionsPerUser)
	}
	if o.TrafficInterval < time.Second || o.TrafficInterval > 24*time.Hour {
		return nil, usagef("--traffic-interval %v: want a duration from 1s to 24h", o.TrafficInterval)
	}
	if o.StateDir == "" {
		return nil, usagef("--state-dir: must not be empty")
	}
	if o.API == "" {
		return nil, usagef("--api: must not be empty")
	}
	if _, err := newLogf(o.LogFormat, io.Discard); err != nil {
		return nil, err
	}
	if err := checkWebFlags(o); err != nil {
		return nil, err
	}
	switch o.Backend {
	case "auto", "none":
	default:
		return nil, usagef("--backend %q: want auto or none", o.Backend)
	}
	return o, nil
}

// platformBackend is the interception backend with what status shows about it.
type platformBackend struct {
	intercept.Backend
	attribution func() []string // live attribution methods
	// attrStats counts attributions by method and failures by cause (metrics); nil: none.
	attrStats func() map[string]uint64
	// warnings say what works less well than it could (reported as backend.degraded).
	warnings []string
	// exeCheck is process attribution's executable check (Linux), nil where
	// there is none.
	exeCheck *api.ExeCheckStatus
	close    func() // releases what newBackend opened besides the backend
	// ready is closed once Run holds connections; nil: as soon as Run is called.
	ready <-chan struct{}
	// dns returns the hostname learner's counters; nil where names are not learned.
	dns func() *dnsname.Stats
	// For the local resolver (nil where there is none): the names it teaches, who
	// sent a query, and the mark that keeps its own upstream queries from being held.
	names    *dnsname.Cache
	identify func(proto engine.Protocol, client, server netip.AddrPort, id uint16) engine.Request
	control  func(network, address string, c syscall.RawConn) error
	// fastPath is the kernel fast path (Linux), nil when off; fastPathOff says why.
	fastPath    *fastpath.FastPath
	fastPathOff string
	// socketPin fills the socket pin's part of the status while the fast path
	// is off (the pin loaded alone); nil where there is none.
	socketPin func(*fastpath.Stats)
	// socketEnded hands the backend's byte accountant the end of a TCP socket the
	// fast path reported; nil where there is none.
	socketEnded func(fastpath.End)
	// followRules hooks the backend's kernel verdict cache (Windows) to the engine's
	// rule and mode changes, synchronously; nil where there is none.
	followRules func(*engine.Engine)
	// cacheOff says why that cache caches nothing now ("": it does); nil where there
	// is none.
	cacheOff func() string
	// recordHits hands the backend the function that records a connection its kernel
	// cache decided (Windows: the driver's HIT_BATCH records); nil where there is none.
	recordHits func(record func(*engine.Request, engine.Verdict))
	// trackFlow registers a flow the kernel fast path allowed (with its local
	// address and port) as a queued allow is registered: for the byte accountant
	// and Redecide; nil where there is none.
	trackFlow func(*engine.Request)
}

// noBackend holds nothing: `--backend none`.
type noBackend struct{}

func (noBackend) Name() string { return "none (nothing is intercepted)" }
func (noBackend) Run(ctx context.Context, d intercept.Decider) error {
	<-ctx.Done()
	return nil
}
func (noBackend) Redecide(func(*engine.Request) bool) (int, error) { return 0, nil }
func (noBackend) Stats() intercept.Stats                           { return intercept.Stats{Backend: "none"} }

func runDaemon(ctx context.Context, args []string) error {
	o, err := parseDaemonFlags(args)
	if err != nil {
		return err
	}
	stopProfile, err := startCPUProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	// Started by the Windows service control manager, the daemon runs as its service
	// (logging to the event log); everywhere else this returns at once.
	if isService, err := winsvc.RunIfService(func(ctx context.Context) error {
		return serveDaemon(ctx, o, nil)
	}); isService {
		return err
	}
	return serveDaemon(ctx, o, nil)
}

// verdictCounts counts verdicts carried out, by action.
type verdictCounts struct {
	allow, deny, reject, drop, other atomic.Uint64
}

func (c *verdictCounts) add(a engine.Action) {
	switch a {
	case engine.Allow:
		c.allow.Add(1)
	case engine.Deny:
		c.deny.Add(1)
	case engine.Reject:
		c.reject.Add(1)
	case engine.Drop:
		c.drop.Add(1)
	default:
		c.other.Add(1)
	}
}

func (c *verdictCounts) snapshot() map[string]uint64 {
	return map[string]uint64{
		"allow": c.allow.Load(), "deny": c.deny.Load(), "reject": c.reject.Load(), "drop": c.drop.Load(),
	}
}

// fastRequest fills req, a zero request, with the request of the fast path's
// decision d (id is its own, user the name of d.UID). Field by field: assigning
// a whole Request built it on the stack and copied all of its 432 bytes over
// the zeroed one with write barriers (a tenth of the decisions' reader).
func fastRequest(req *engine.Request, id engine.RequestID, d *fastpath.Decision, user string) {
	req.ID, req.Time, req.Direction, req.Protocol = id, d.Time, engine.Outbound, d.Protocol
	req.Local, req.Remote = d.Local, d.Remote
	req.PID, req.Exe, req.UID, req.User = d.PID, d.Exe, d.UID, user
	// The kernel matched the file the rule's path verified (dev, inode), and
	// only decisions of verified requests are cached.
	req.Identity = engine.IdentityVerified
}

// serveDaemon runs the daemon until ctx is done or the backend fails. ready, if not
// nil, is called once everything runs.
func serveDaemon(ctx context.Context, o *daemonOptions, ready func()) (err error) {
	// Structured records on the standard logger's writer: stderr (journald keeps it),
	// or the event log when a Windows service redirects it.
	logf, err := newLogf(o.LogFormat, log.Writer())
	if err != nil {
		return err
	}

	lock, err := store.LockStateDir(o.StateDir)
	if err != nil {
		return err
	}
	defer lock.Unlock()

	rulesPath := filepath.Join(o.StateDir, store.RulesFileName)
	if err := store.RemoveStaleTemps(rulesPath); err != nil {
		logf("removing temporary files a crash left: %v", err)
	}
	rules, err := store.LoadRules(rulesPath)
	if err != nil {
		return fmt.Errorf("%w (the file is left as it is: fix it, or move it away to start with no rules)", err)
	}
	// Rules until-reboot of an earlier boot end here (a platform without a boot id
	// keeps none: "" matches no rule's boot).
	boot, err := lifetime.BootID()
	if err != nil {
		logf("%v: rules until-reboot cannot be made", err)
	}
	rules, dropped := lifetime.DropOtherBoots(rules, boot)
	if dropped > 0 {
		logf("%d rules until-reboot of an earlier boot ended", dropped)
	}
	eng, err := engine.New(engine.Config{
		Default: o.Default, PromptTimeout: o.PromptTimeout, MaxPrompts: o.MaxQuestions,
		MaxPromptsPerUser: o.MaxQuestionsPerUser, MaxPromptsPerApp: o.MaxQuestionsPerApp,
		HostRulesMatchShared: o.HostRulesMatchShared,
		BootID:               boot,
	}, rules)
	if err != nil {
		return fmt.Errorf("rules file %s: %w", rulesPath, err)
	}
	defer eng.Close()
	stopHits := keepRuleHits(eng, o.StateDir, logf)
	defer stopHits()
	stopMode, err := keepMode(eng, o.StateDir, o.Mode, logf)
	if err != nil {
		return err
	}
	defer stopMode()
	exits, err := lifetime.NewWatcher(eng, logf)
	if err != nil {
		return err
	}
	defer exits.Close()
	eng.OnRulesChanged(func(old, new []engine.Rule) { exits.Sync(new) })
	exits.Sync(eng.Rules())

	reloadManaged, err := startManaged(ctx, o.ManagedRules, eng, logf)
	if err != nil {
		return err
	}

	// Room for the rules comes first: the reserve is allocated before the history
	// opens, and the history stops at a free-space floor, so a full disk never
	// keeps a rule from being saved.
	var rulesSize int64
	if fi, err := os.Stat(rulesPath); err == nil {
		rulesSize = fi.Size()
	}
	reserve, err := store.OpenReserve(o.StateDir, store.ReserveSize(rulesSize))
	if err != nil {
		logf("%v (rules are saved without it while the disk is full)", err)
	}
	hist, err := store.OpenHistoryOptions(filepath.Join(o.StateDir, store.HistoryFileName),
		store.HistoryOptions{MaxRows: o.MaxHistory, Logf: logf})
	if err != nil {
		return err
	}
	defer hist.Close()

	// Byte reports of allowed flows go to the history: the connection's row gets
	// its totals, its program the bytes since the last report.
	o.onTraffic = func(ts []intercept.Traffic) {
		for _, t := range ts {
			hist.RecordTraffic(store.Traffic{Time: t.Time, Request: *t.Request,
				BytesIn: t.BytesIn, BytesOut: t.BytesOut, DeltaIn: t.DeltaIn, DeltaOut: t.DeltaOut, Ended: t.Ended})
		}
	}
	var be *platformBackend
	if o.Backend == "none" {
		be = &platformBackend{Backend: noBackend{}, attribution: func() []string { return nil }, close: func() {}}
	} else if be, err = newBackend(o, logf); err != nil {
		return err
	}
	defer be.close()
	if be.ready == nil {
		ready := make(chan struct{})
		close(ready)
		be.ready = ready
	}

	// Rules are saved on every change: at once by the API (which reports a failure
	// to the user), and by this hook for changes the engine makes by itself (expiry).
	// A change is saved once: the API saves before it replies, and the hook finds the
	// file already at that generation (at 100,000 rules a save is a 10 MB file).
	var saveMu sync.Mutex
	var savedGen uint64
	saveRules := func() error {
		saveMu.Lock()
		defer saveMu.Unlock()
		gen := eng.Generation()
		if gen == savedGen {
			return nil
		}
		// Managed rules live in their files.
		if err := reserve.SaveRules(rulesPath, engine.OwnRules(eng.Rules())); err != nil {
			return err
		}
		savedGen = gen
		return nil
	}
	savedGen = eng.Generation() // the rules file holds what the engine started with
	// A change to a large rule set (an import of 100,000 rules) briefly needs the set
	// several times over (request body, parsed rules, the new compiled matcher beside
	// the old, the saved file); the Go runtime keeps those pages after they are free,
	// and an idle daemon runs no collection that would give them back. So once such a
	// change has settled, hand them back to the system.
	trim := time.AfterFunc(time.Hour, debug.FreeOSMemory)
	trim.Stop()
	defer trim.Stop()
	eng.OnRulesChanged(func(old, new []engine.Rule) {
		if err := saveRules(); err != nil {
			logf("%v", err)
		}
		if len(old)+len(new) >= trimRules {
			trim.Reset(time.Second)
		}
		if n, err := be.Redecide(engine.AffectedAllowed(old, new)); err != nil {
			logf("re-deciding flows after a rule change: %v", err)
		} else if n > 0 {
			logf("rule change: %d flows will be decided again", n)
		}
	})

	started := time.Now()
	mode := "fail-closed"
	if o.FailOpen {
		mode = "fail-open"
	}
	obs, err := startObservers(o, eng, hist, be, mode, logf)
	if err != nil {
		return err
	}
	defer obs.close()

	var counts verdictCounts
	var users userNames
	// record counts a carried-out decision, queued or the fast path's, and reports it
	// to the observers (metrics, events) and the history (never blocks; a full buffer
	// is counted in the history stats).
	record := func(req *engine.Request, v engine.Verdict) {
		counts.add(v.Action)
		obs.decided(req, v)
		hist.RecordDecision(req.Time, req, v)
	}
	if be.followRules != nil {
		be.followRules(eng)
	}
	if be.recordHits != nil {
		// The driver's cache hits: one history row each, with the rule that decided.
		be.recordHits(kernelHitRecorder(eng, record))
	}
	fp := be.fastPath
	if fp != nil {
		// Synchronous: the kernel stops using decisions of the old rules before the
		// call that changed them returns.
		listsOff := func() string {
			if eng.HasLists() {
				return "a blocklist is in force (it can overrule a rule by a host name)"
			}
			return ""
		}
		eng.OnInstall(func(live []engine.Rule) {
			if err := fp.RulesChanged(live, listsOff()); err != nil {
				logf("%v", err)
			}
		})
		// A mode decides before the rules (block-all) or after them: a change of mode
		// drops every cached decision too, before 'latch mode' returns. It keeps the
		// rules and lists the install hook put in force: read here, outside the
		// engine's rule lock, they could be older than a concurrent change's
		// (review28).
		eng.OnModeChanged(func(engine.ModeState) {
			if err := fp.ModeChanged(); err != nil {
				logf("%v", err)
			}
		})
		fpCtx, stopFP := context.WithCancel(context.Background())
		fpDone := make(chan struct{})
		go func() {
			defer close(fpDone)
			err := fp.Run(fpCtx, func(d fastpath.Decision) {
				// Its own id, above the 32-bit ids of queued packets, so that events
				// and history tell fast-path connections apart.
				id := engine.RequestID(fastPathIDBase + fastPathSeq.Add(1))
				v := engine.Verdict{Action: d.Action, Reason: engine.ReasonFastPath, RuleID: d.RuleID}
				eng.CountHit(d.RuleID, d.Time)
				if !d.Local.IsValid() || d.Action != engine.Allow || be.trackFlow == nil {
					var req engine.Request // on the stack: the history copies it
					fastRequest(&req, id, &d, users.name(d.UID))
					record(&req, v)
					return
				}
				// Its flow is registered too: the request is made once, on the
				// heap, shared by the flow table and the history's call (a copy
				// for the flow table cost a second request's allocation and copy
				// per connect).
				req := new(engine.Request)
				fastRequest(req, id, &d, users.name(d.UID))
				record(req, v)
				// Registered as a queued allow is: its bytes are counted for this
				// row, Redecide knows its program. After the row is queued: a
				// report of a flow already over may follow at once, and must find
				// the row.
				be.trackFlow(req)
			}, be.socketEnded)
			if err != nil {
				logf("fast path: %v", err)
			}
		}()
		defer func() { stopFP(); <-fpDone }()
	}
	// A step of the wall clock moves every rule's expiry against the engine's
	// expiry timer and the fast path's deadlines (review28): check them again.
	var bump generationBumper
	if fp != nil {
		bump = fp
	}
	stepCtx, stopSteps := context.WithCancel(ctx)
	stepsDone := make(chan struct{})
	go func() {
		defer close(stepsDone)
		if err := watchClockSteps(stepCtx, func() { clockStepped(eng, bump, logf) }); err != nil {
			logf("%v", err)
		}
	}()
	defer func() { stopSteps(); <-stepsDone }()
	decider := intercept.DeciderFunc(func(req *engine.Request, verdict func(engine.Verdict)) {
		// Flagged before deciding, so that the question shows it too.
		if note, ok := o.EncryptedDNS.Match(req); ok && req.Note == "" {
			req.Note = note
		}
		var ticket fastpath.Ticket
		if fp != nil {
			// Before the engine decides: a decision that races with a rule change is
			// stored under the older generation and never hits.
			ticket = fp.Ticket()
		}
		eng.Decide(req, func(v engine.Verdict) {
			verdict(v)
			record(req, v)
			if fp != nil {
				fp.Offer(ticket, req, v)
			}
		})
	})

	var proxy atomic.Pointer[dnsproxy.Proxy]
	var group *api.Group
	if o.APIGroup != "" {
		g, err := user.LookupGroup(o.APIGroup)
		if err != nil {
			return fmt.Errorf("--api-group %q: %w", o.APIGroup, err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return fmt.Errorf("--api-group %q: group id %q is not a number", o.APIGroup, g.Gid)
		}
		group = &api.Group{Name: o.APIGroup, GID: gid}
	}
	webUI := &webUI{}
	lists, err := blocklist.Open(o.StateDir, eng, logf)
	if err != nil {
		return err
	}
	// Lists match a program's own names only; through nss-resolve every name is shared.
	// Logged when it appears or changes, not again on every list update.
	var sharedWarned onChange
	lists.OnApply(func(withHosts []string) {
		sharedWarned.report(sharedNamesWarning(withHosts, o.HostRulesMatchShared, nsswitchConf), func(w string) { logf("%s", w) })
	})
	srv := api.NewServer(api.Config{
		Lists:     lists,
		Group:     group,
		Routes:    map[string]http.Handler{"POST /v1/web/login": webUI.loginHandler()},
		Engine:    eng,
		History:   hist,
		SaveRules: saveRules,
		Reload:    reloadManaged,
		Logf:      logf,
		EventLog:  obs.hub.Subscribe,
		// Long-lived flows are reported every interval: a window of two holds one
		// report of each busy flow.
		RateWindow: 2 * o.TrafficInterval,
		Status: func() api.Status {
			st := api.Status{
				Version: latchVersion(), PID: os.Getpid(), Started: started,
				Backend: be.Name(), Mode: mode, Default: o.Default, PromptTimeout: o.PromptTimeout.String(),
				Inbound: o.Inbound, ExemptLoopback: o.ExemptLoopback, StateDir: o.StateDir,
				Attribution: be.attribution(), AttributionExeCheck: be.exeCheck, Kernel: be.Stats(), Verdicts: counts.snapshot(),
				RulesReserve: reserve.Stats(),
				Events:       obs.eventStats(),
			}
			if o.Backend != "none" {
				st.Queue = o.Queue
			}
			if be.dns != nil {
				st.DNS = be.dns()
			}
			if p := proxy.Load(); p != nil {
				ps := p.Stats()
				st.DNSProxy = &ps
			}
			if fp != nil {
				st.FastPath = &api.FastPathStatus{On: true, Stats: fp.Stats()}
			} else if be.fastPathOff != "" {
				st.FastPath = &api.FastPathStatus{Reason: be.fastPathOff}
				if be.socketPin != nil {
					be.socketPin(&st.FastPath.Stats)
				}
			}
			st.Web = webUI.status()
			st.Metrics = obs.metricsStatus()
			if be.cacheOff != nil {
				why := be.cacheOff()
				st.DriverCache = &api.DriverCacheStatus{On: why == "", Why: why}
			}
			return st
		},
	})
	// Claim the socket now, so a second daemon fails before touching the firewall, but
	// serve only once the backend holds connections: a client that gets an answer from
	// the API may rely on interception being in place.
	l, err := api.Listen(o.API)
	if err != nil {
		return err
	}
	defer l.Close()
	if group != nil {
		if err := api.ShareWithGroup(o.API, group); err != nil {
			return err
		}
	}

	runCtx, stopBackend := context.WithCancel(context.Background())
	defer stopBackend()
	runErr := make(chan error, 1)
	go func() { runErr <- be.Run(runCtx, decider) }()
	select {
	case <-be.ready:
	case err := <-runErr:
		if err == nil {
			err = errors.New("the interception backend stopped")
		}
		return fmt.Errorf("backend %s: %w", be.Name(), err)
	case <-ctx.Done():
		stopBackend()
		return <-runErr
	}

	if o.Web != "" {
		stopWeb, err := webUI.start(o, srv, eng, hist, logf)
		if err != nil {
			stopBackend()
			<-runErr
			return err
		}
		defer stopWeb()
	}
	if o.DNSProxy != "" {
		p, stopProxy, err := startDNSProxy(o, be, eng, hist, logf)
		if err != nil {
			stopBackend()
			<-runErr
			return err
		}
		proxy.Store(p)
		defer stopProxy()
	} else if o.ResolvConf != "none" {
		// An earlier daemon ran its resolver, died, and this one runs without it: the
		// file names a resolver that no longer answers.
		if restored, err := dnsproxy.RestoreLeftover(o.ResolvConf, o.StateDir); err != nil {
			logf("local resolver of an earlier run: %v", err)
		} else if restored {
			logf("restored %s, which the local resolver of an earlier run pointed at itself", textesc.String(o.ResolvConf))
		}
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
			logf("API server: %v", err)
		}
	}()

	logf("started: backend %s, %s, default %s after %s, rules %d, API %s, state %s",
		be.Name(), mode, o.Default, o.PromptTimeout, len(rules), o.API, o.StateDir)
	obs.started()
	if len(rules) >= trimRules {
		trim.Reset(time.Second) // reading a large rules file left the same garbage
	}
	if ready != nil {
		ready()
	}
	// systemd (Type=notify): the kernel rules and the queue are live, the API serves.
	if _, err := sdnotify.Notify(sdnotify.Ready); err != nil {
		logf("%v", err)
	}
	select {
	case err := <-runErr:
		if err == nil {
			err = errors.New("the interception backend stopped")
		}
		err = fmt.Errorf("backend %s: %w", be.Name(), err)
		obs.stopped(err)
		return err
	case <-ctx.Done():
	}
	sdnotify.Notify(sdnotify.Stopping)
	logf("stopping: removing interception")
	stopBackend()
	err = <-runErr
	// Questions still open get the default now, and their verdicts reach the history.
	eng.Close()
	obs.stopped(err)
	if err != nil {
		logf("backend %s stopped with: %v", be.Name(), err)
		return fmt.Errorf("stopping backend %s: %w", be.Name(), err)
	}
	logf("stopped")
	return nil
}

// startDNSProxy starts the local resolver and points resolv.conf at it; the function
// it returns restores resolv.conf, then stops the resolver.
func startDNSProxy(o *daemonOptions, be *platformBackend, eng *engine.Engine, hist *store.History, logf func(string, ...any)) (*dnsproxy.Proxy, func(), error) {
	if be.names == nil {
		return nil, nil, fmt.Errorf("--dns-proxy: the %s backend learns no names", be.Name())
	}
	listen := netip.MustParseAddrPort(o.DNSProxy)
	var rc *dnsproxy.ResolvConf
	upstream := o.DNSUpstream
	var upstreamFile string // resolved's own resolv.conf: followed as it changes
	if o.ResolvConf != "none" {
		var err error
		if rc, err = dnsproxy.OpenResolvConf(o.ResolvConf, o.StateDir); err != nil {
			return nil, nil, fmt.Errorf("--dns-proxy: %w", err)
		}
		if uplink, ok := rc.SystemdResolved(); ok {
			// systemd-resolved's stub: never its address, and upstream are the servers
			// resolved itself uses (resolved reads the resolv.conf latch writes as
			// "foreign" and would ask latch's resolver: its stub as upstream would loop).
			for _, stub := range dnsproxy.ResolvedStub {
				if listen.Addr().Unmap() == stub {
					rc.Release()
					return nil, nil, fmt.Errorf("--dns-proxy %s: systemd-resolved's stub resolver answers at %s (%s is its stub-resolv.conf); choose another address, e.g. 127.0.0.153:53",
						o.DNSProxy, stub, textesc.String(o.ResolvConf))
				}
			}
			if len(upstream) == 0 {
				if upstream, err = dnsproxy.ResolvedNameservers(uplink, listen.Addr()); err != nil {
					rc.Release()
					return nil, nil, fmt.Errorf("--dns-proxy: %w", err)
				}
				upstreamFile = uplink
			}
		} else if len(upstream) == 0 {
			upstream = rc.Nameservers(listen.Addr())
		}
	}
	// Fail-open: the upstream servers resolv.conf can name (port 53) follow the proxy,
	// so DNS goes on without the daemon. Fail-closed: only the proxy.
	fallback := func(upstream []string) []netip.Addr {
		if !o.FailOpen {
			return nil
		}
		var fb []netip.Addr
		for _, u := range upstream {
			if ap := netip.MustParseAddrPort(u); ap.Port() == 53 {
				fb = append(fb, ap.Addr())
			}
		}
		if len(fb) == 0 {
			logf("local resolver: no upstream on port 53 to name in %s after it: DNS stops while the daemon does (--fail open)", textesc.String(o.ResolvConf))
		}
		return fb
	}
	// pointing serialises the file's rewrites: the first, a new upstream list
	// (fail-open) and the restore on stop. A new list re-points the file only between
	// the first and the restore.
	var pointing sync.Mutex
	pointed, stopped := false, false
	var onUpstream func([]string)
	if rc != nil && o.FailOpen {
		onUpstream = func(list []string) {
			pointing.Lock()
			defer pointing.Unlock()
			if !pointed || stopped {
				return
			}
			if err := rc.Point(listen.Addr(), fallback(list)); err != nil {
				logf("local resolver: %v", err)
			}
		}
	}
	p, err := dnsproxy.New(dnsproxy.Config{
		Listen: o.DNSProxy, Upstream: upstream, Refuse: o.DNSRefuse,
		UpstreamFile: upstreamFile, OnUpstream: onUpstream,
		Identify: be.identify, Decide: eng.RuleFor, MayRefuse: eng.HostRefusable, Names: be.names, Control: be.control, Logf: logf,
		Record: func(req engine.Request, v engine.Verdict) {
			hist.Record(store.Conn{Time: req.Time, Request: req, Verdict: v})
		},
	})
	if err != nil {
		rc.Release()
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() { done <- p.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		rc.Release()
		return nil, nil, err
	}
	if rc != nil {
		pointing.Lock()
		err := rc.Point(listen.Addr(), fallback(upstream))
		pointed = err == nil
		pointing.Unlock()
		if err != nil {
			cancel()
			<-done
			rc.Release()
			return nil, nil, fmt.Errorf("--dns-proxy: %w", err)
		}
	}
	logf("local resolver on %s (UDP and TCP), forwarding to %s", o.DNSProxy, strings.Join(upstream, ", "))
	return p, func() {
		if rc != nil {
			pointing.Lock()
			stopped = true
			if err := rc.Restore(); err != nil {
				logf("local resolver: %v", err)
			} else {
				logf("local resolver: %s restored", textesc.String(rc.Path))
			}
			pointing.Unlock()
		}
		cancel()
		<-done
	}, nil
}

// kernelHitRecorder returns what records a connection a kernel cache decided by itself
// (the Windows driver's HIT_BATCH records): the rule's hit is counted, as for a
// connection the engine decided by it, and the decision goes to record (history,
// metrics, events) like any other.
func kernelHitRecorder(eng *engine.Engine, record func(*engine.Request, engine.Verdict)) func(*engine.Request, engine.Verdict) {
	return func(req *engine.Request, v engine.Verdict) {
		if v.RuleID != 0 {
			eng.CountHit(v.RuleID, req.Time)
		}
		record(req, v)
	}
}

// fastPathIDBase is where the request ids of fast-path decisions start: above every
// id the queue gives (a packet id is 32 bits).
const fastPathIDBase = 1 << 40

// fastPathSeq numbers fast-path decisions.
var fastPathSeq atomic.Uint64

// userNames caches account names by uid for the fast path's history rows.
type userNames struct {
	mu    sync.Mutex
	names map[int32]string
}

func (u *userNames) name(uid int32) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if n, ok := u.names[uid]; ok {
		return n
	}
	n := ""
	if acct, err := user.LookupId(strconv.Itoa(int(uid))); err == nil {
		n = acct.Username
	}
	if u.names == nil || len(u.names) >= 4096 {
		u.names = make(map[int32]string)
	}
	u.names[uid] = n
	return n
}
