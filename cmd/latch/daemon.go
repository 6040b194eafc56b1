package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/blocklist"
	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/lifetime"
	"github.com/latchfw/latch/internal/store"
	"github.com/latchfw/latch/internal/textesc"
	"github.com/latchfw/latch/internal/winsvc"
)

var daemonHelp = `Usage: latch daemon [flags]

Holds every new outbound connection (TCP SYN, the first packet of a UDP flow, any
ICMP message but errors about known flows and the link's own bookkeeping) until it is
decided: by a rule, by a person answering a question ('latch prompts', 'latch
answer', 'latch watch'), or by the default when nobody answers in time. On SIGINT or SIGTERM it removes every firewall rule it installed and exits.

  --state-dir DIR          rules (rules.json, with room kept in rules.reserve) and history
                           (history.db) (default ` + defaultStateDir + `)
  --api PATH               local API socket (default $LATCH_API, else ` + api.DefaultPath + `)
  --default allow|deny|reject|drop
                           verdict for a question nobody answers in time (default deny)
  --prompt-timeout DUR     how long a question waits for an answer (default 30s)
  --fail open|closed       while no daemon runs, new connections are accepted (open:
                           queue bypass) or dropped (closed) (default closed)
  --inbound                also hold new inbound connections
  --exempt-loopback=BOOL   never hold loopback traffic (default true)
  --queue N                NFQUEUE queue number (default 4242)
  --max-history N          connections kept in the history (default 100000)
  --max-questions N        questions open at once at most (default 1024)
  --max-questions-per-user N
                           questions of one user's programs open at most (default 256)
  --max-questions-per-app N
                           questions of one program (of one user) open at most (default 64)
  --backend auto|none      none holds nothing: the API, rules and questions work but no
                           connection is intercepted (a test and development aid)

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
	ExemptLoopback bool
	Queue          uint16
	MaxHistory     int
	Backend        string
	observeOptions // metrics and events (observe.go)

	MaxQuestions        int
	MaxQuestionsPerUser int
	MaxQuestionsPerApp  int

	Mode engine.Mode // --mode: the mode at start when none is saved (modes.go)
}

func parseDaemonFlags(args []string) (*daemonOptions, error) {
	fs := newFlags("daemon")
	o := &daemonOptions{}
	fs.StringVar(&o.StateDir, "state-dir", defaultStateDir, "")
	fs.StringVar(&o.API, "api", api.DefaultAddress(), "")
	def := fs.String("default", "deny", "")
	fs.DurationVar(&o.PromptTimeout, "prompt-timeout", engine.DefaultPromptTimeout, "")
	fail := fs.String("fail", "closed", "")
	fs.BoolVar(&o.Inbound, "inbound", false, "")
	fs.BoolVar(&o.ExemptLoopback, "exempt-loopback", true, "")
	queue := fs.Uint("queue", 4242, "")
	fs.IntVar(&o.MaxHistory, "max-history", store.DefaultMaxRows, "")
	fs.StringVar(&o.Backend, "backend", "auto", "")
	checkObserve := addObserveFlags(fs, &o.observeOptions)
	fs.IntVar(&o.MaxQuestions, "max-questions", engine.DefaultMaxPrompts, "")
	fs.IntVar(&o.MaxQuestionsPerUser, "max-questions-per-user", engine.DefaultMaxPromptsPerUser, "")
	fs.IntVar(&o.MaxQuestionsPerApp, "max-questions-per-app", engine.DefaultMaxPromptsPerApp, "")
	mode := fs.String("mode", "ask", "")
	if err := parseFlagsOnly(fs, args); err != nil {
		return nil, err
	}
	if err := checkObserve(); err != nil {
		return nil, err
	}
	var err error
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
	if o.StateDir == "" {
		return nil, usagef("--state-dir: must not be empty")
	}
	if o.API == "" {
		return nil, usagef("--api: must not be empty")
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
	close    func() // releases what newBackend opened besides the backend
	// ready is closed once Run holds connections; nil: as soon as Run is called.
	ready <-chan struct{}
	// dns returns the hostname learner's counters; nil where names are not learned.
	dns func() *dnsname.Stats
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

// daemonLogf writes one line to the standard logger (a Windows service redirects it to
// the event log). The message is escaped (internal/textesc): it may quote a path, a
// user or a host name from outside, which must not disguise or split a log line.
func daemonLogf(format string, args ...any) {
	log.Print("latch daemon: " + textesc.Message(fmt.Sprintf(format, args...)))
}

// serveDaemon runs the daemon until ctx is done or the backend fails. ready, if not
// nil, is called once everything runs.
func serveDaemon(ctx context.Context, o *daemonOptions, ready func()) (err error) {
	logf := daemonLogf

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
		BootID: boot,
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
		if err := reserve.SaveRules(rulesPath, eng.Rules()); err != nil {
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
		if n, err := be.Redecide(engine.Affected(old, new)); err != nil {
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
	decider := intercept.DeciderFunc(func(req *engine.Request, verdict func(engine.Verdict)) {
		eng.Decide(req, func(v engine.Verdict) {
			c := store.Conn{Time: req.Time, Request: *req, Verdict: v}
			verdict(v)
			obs.decided(req, v)
			counts.add(v.Action)
			if c.Time.IsZero() {
				c.Time = time.Now()
			}
			hist.Record(c) // never blocks; a full buffer is counted in the history stats
		})
	})

	lists, err := blocklist.Open(o.StateDir, eng, logf)
	if err != nil {
		return err
	}
	srv := api.NewServer(api.Config{
		Lists:     lists,
		Engine:    eng,
		History:   hist,
		SaveRules: saveRules,
		Logf:      logf,
		EventLog:  obs.hub.Subscribe,
		Status: func() api.Status {
			st := api.Status{
				Version: latchVersion(), PID: os.Getpid(), Started: started,
				Backend: be.Name(), Mode: mode, Default: o.Default, PromptTimeout: o.PromptTimeout.String(),
				Inbound: o.Inbound, ExemptLoopback: o.ExemptLoopback, StateDir: o.StateDir,
				Attribution: be.attribution(), Kernel: be.Stats(), Verdicts: counts.snapshot(),
				RulesReserve: reserve.Stats(),
				Events:       obs.eventStats(),
			}
			if o.Backend != "none" {
				st.Queue = o.Queue
			}
			if be.dns != nil {
				st.DNS = be.dns()
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
