// Package api is latch's local API: HTTP with JSON bodies over a unix socket on Linux
// (a named pipe on Windows), served by the daemon and used by the latch command line.
// Only root (on Windows, SYSTEM and Administrators) is served, and on Linux the members
// of Config.Group if set: the Linux server checks each connection's peer credentials
// (SO_PEERCRED, and the supplementary groups the peer had at connect from
// SO_PEERGROUPS), the Windows pipe's security descriptor admits no one else.
//
// Endpoints (all under /v1, errors are {"error": "..."} with a 4xx or 5xx status):
//
//	GET    /v1/status                 Status
//	GET    /v1/rules                  {"rules": [Rule...]}
//	POST   /v1/rules                  Rule (no id)            -> the Rule as added
//	DELETE /v1/rules/{id}                                      -> the Rule removed
//	GET    /v1/rules/precedence       PrecedenceBody: rule IDs, the one that wins first
//	GET    /v1/rules/export           the rules file ({"version":1,"rules":[...]})
//	POST   /v1/rules/import           a rules file: replaces every rule -> {"rules": [...]}
//	GET    /v1/prompts                {"prompts": [Prompt...]}
//	POST   /v1/prompts/{id}/answer    AnswerRequest           -> {"rule": Rule|null}
//	GET    /v1/conns?after=ID&n=N     {"conns": [Conn...]}, oldest first
//	GET    /v1/events                 a stream of Event, one JSON object per line ("gap": some were lost, list again)
//	GET    /v1/events/stream          latch.event/1 documents (docs/events.md), one per line
//	POST   /v1/explain                ExplainRequest          -> Explanation
//	GET    /v1/rules/hits             {"hits": [RuleHits...]}: connections each rule decided
//	GET    /v1/history?from=&to=&step=&top=   HistorySummary (unix seconds; default the last hour by minute)
//	GET    /v1/programs               ProgramsBody: every program in the history
//	GET    /v1/programs/conns?exe=PATH&n=N    {"conns": [Conn...]}: a program's newest, oldest first
//	POST   /v1/web/login              {"url": "..."}: a one-time login URL of the web UI (the daemon's --web)
//	GET    /v1/mode                   engine.ModeState {"mode", "until", "then"}
//	POST   /v1/mode                   ModeRequest             -> engine.ModeState
//	GET    /v1/suggestions            {"suggestions": [engine.Suggestion...], "stats": {...}}
//	POST   /v1/suggestions/accept     SuggestionsAccept       -> {"rules": [Rule...]} added
//	GET    /v1/lists                  {"lists": [blocklist.Info...]}
//	POST   /v1/lists                  ListRequest (with the contents) -> {"lists": [...]}
//	DELETE /v1/lists/{name}                                    -> {"lists": [...]}
//	POST   /v1/lists/update           ListsUpdate (new contents) -> {"lists": [...]}
//
// Request bodies are decoded strictly (package strictjson, and for rules the one parser
// engine.RuleFields.Parse that the command line uses too): unknown or misspelt keys,
// keys given twice, empty or null values, wrong types, aliases and bad values are a
// 400 error naming the field, and nothing changes. A rule's user name must name an
// account here (Config.CheckUser); an imported rule must not have expired.
package api

import (
	"github.com/latchfw/latch/internal/fastpath"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/dnsproxy"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/localhttp"
	"github.com/latchfw/latch/internal/store"
)

// Group is a group of users the API admits besides root.
type Group struct {
	Name string
	GID  int
}

// EnvAddress is the environment variable that overrides the API address for every verb.
const EnvAddress = "LATCH_API"

// DefaultAddress returns $LATCH_API if set, else the platform's default address.
func DefaultAddress() string {
	if a := os.Getenv(EnvAddress); a != "" {
		return a
	}
	return DefaultPath
}

// Status is what GET /v1/status returns: how the daemon runs and its counters.
type Status struct {
	Version string    `json:"version"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Backend string    `json:"backend"` // interception mechanism, e.g. "nfqueue/iptables-nft"
	Mode    string    `json:"mode"`    // "fail-closed" or "fail-open": what happens without a daemon
	// DecisionMode is the mode deciding connections (ask, learn, silent-allow,
	// silent-deny, block-all), with its end when set for a time (latch pause).
	DecisionMode    *engine.ModeState `json:"decision_mode,omitempty"`
	Default         engine.Action     `json:"default"` // verdict for unanswered questions
	PromptTimeout   string            `json:"prompt_timeout"`
	Inbound         bool              `json:"inbound"`
	ExemptLoopback  bool              `json:"exempt_loopback"`
	Queue           uint16            `json:"queue,omitempty"` // NFQUEUE number (Linux)
	StateDir        string            `json:"state_dir"`
	Attribution     []string          `json:"attribution"` // live process attribution methods
	Kernel          intercept.Stats   `json:"kernel"`      // the backend's counters
	Verdicts        map[string]uint64 `json:"verdicts"`    // verdicts carried out, by action
	Decisions       map[string]uint64 `json:"decisions"`   // engine verdicts, by reason
	PendingPrompts  int               `json:"pending_prompts"`
	HeldConnections int               `json:"held_connections"` // connections waiting on those prompts
	// QuestionCaps are the bounds on open questions (per program, per user, global)
	// and how often each applied: connections given the default unasked, questions
	// closed early to make room.
	QuestionCaps engine.QuestionCapStats `json:"question_caps"`
	Rules        int                     `json:"rules"`
	History      store.HistoryStats      `json:"history"`
	// RulesReserve is the room kept for the rules file (see store.Reserve).
	RulesReserve store.ReserveStats `json:"rules_reserve"`

	// DNS counts the hostnames learned from DNS answers and the answers ignored, by
	// reason (Linux; absent where names are not learned).
	DNS *dnsname.Stats `json:"dns,omitempty"`

	Events []EventSinkStats `json:"events,omitempty"` // event sinks: sent and dropped
	// DNSProxy counts what the local resolver (--dns-proxy) did, when it runs.
	DNSProxy *dnsproxy.Stats `json:"dns_proxy,omitempty"`
	// FastPath is the kernel fast path (Linux): on or off and why, and its counters
	// (absent where there is none, e.g. Windows, whose driver has its own cache).
	FastPath *FastPathStatus `json:"fast_path,omitempty"`
	// DriverCache is the Windows driver's verdict cache (absent elsewhere): whether
	// it caches the verdicts of rules now, and why not. Its hits are counted in
	// Kernel.Extra["driver_cache_hits"].
	DriverCache *DriverCacheStatus `json:"driver_cache,omitempty"`
	// AttributionExeCheck is process attribution's executable check (Linux):
	// whether a connection is verified only while the program that made it
	// (the eBPF hooks' record of its executable) is the one its process runs,
	// and why not (absent where attribution has no such check, e.g. Windows,
	// whose driver names the image with each connection).
	AttributionExeCheck *ExeCheckStatus `json:"attribution_exe_check,omitempty"`
	// Web and Metrics are the web UI's and the metrics' listeners (absent when off):
	// up, or down and why (another program holds the address); a listener that
	// is down is bound again in the background.
	Web     *localhttp.Status `json:"web,omitempty"`
	Metrics *localhttp.Status `json:"metrics,omitempty"`
}

// DriverCacheStatus says whether the Windows driver may decide a repeated connection
// from a rule's earlier verdict now (see internal/intercept/windows).
type DriverCacheStatus struct {
	On  bool   `json:"on"`
	Why string `json:"why,omitempty"` // why not, when off (e.g. a rule with a host name)
}

// ExeCheckStatus says whether process attribution checks the executable that
// made each connection (see procattr.Resolver.ExeCheck).
type ExeCheckStatus struct {
	On  bool   `json:"on"`
	Why string `json:"why,omitempty"` // why not, when off, and what follows
}

// EventSinkStats are one event sink's counters in Status.
type EventSinkStats struct {
	Sink    string `json:"sink"` // file, syslog, api
	Sent    uint64 `json:"sent"`
	Dropped uint64 `json:"dropped"` // a full queue or a failed sink; verdicts never wait
}

// FastPathStatus says whether the kernel fast path decides connections a rule
// decided before, and counts what it did.
type FastPathStatus struct {
	On bool `json:"on"`
	// Reason says why it is off (--fast-path=false, no BPF, BTF or privilege).
	Reason string `json:"reason,omitempty"`
	fastpath.Stats
}

// Prompt is an open question as the API shows it: a flat view of engine.Prompt.
type Prompt struct {
	ID         engine.PromptID  `json:"id"`
	PID        int32            `json:"pid"`
	Exe        string           `json:"exe"`
	UID        int32            `json:"uid"`
	User       string           `json:"user"`
	Cmdline    string           `json:"cmdline,omitempty"`
	Direction  engine.Direction `json:"direction"`
	Proto      engine.Protocol  `json:"proto"`
	LocalIP    string           `json:"local_ip"`
	LocalPort  uint16           `json:"local_port"`
	RemoteIP   string           `json:"remote_ip"`
	RemotePort uint16           `json:"remote_port"`
	Host       string           `json:"host,omitempty"`
	// HostSource says whose DNS answer gave host: "own" (this program resolved it),
	// "shared" (another program did; host rules skip it unless the daemon runs with
	// --host-rules-match-shared) or "none".
	HostSource string `json:"host_source,omitempty"`
	// Note is what latch wants you to know about the connection, e.g. that it goes
	// to an encrypted DNS service, so names after it are not visible.
	Note string `json:"note,omitempty"`
	// Identity: "verified" (exe is the host's file the process runs), "unverified"
	// or "container" (app rules do not match it, and an answer cannot be
	// remembered as a rule), "" (no process). See engine.Identity.
	Identity  engine.Identity `json:"identity"`
	Container string          `json:"container,omitempty"` // "RUNTIME:ID" when identity is "container"
	// ContainerName is the name docker or podman gives the container (from its own
	// state; for a user's own "RUNTIME@UID:ID" container that user's claim), exact
	// bytes; "" if none.
	ContainerName string `json:"container_name,omitempty"`
	IdentityNote  string `json:"identity_note,omitempty"` // why the identity is not verified
	// Netns names the sending network namespace of a forwarded connection.
	Netns     string    `json:"netns,omitempty"`
	Unit      string    `json:"unit,omitempty"`       // systemd system unit
	AppID     string    `json:"app_id,omitempty"`     // flatpak/snap app id
	Parents   []string  `json:"parents,omitempty"`    // ancestors' verified executables, parent first ("": not verified)
	ExeSHA256 string    `json:"exe_sha256,omitempty"` // the executable's SHA-256; "" while being hashed
	Held      int       `json:"held"`
	Opened    time.Time `json:"opened"`
	Expires   time.Time `json:"expires"`
	// Raw has the exact bytes of exe, user, cmdline or host where they are not valid
	// UTF-8 (see RawText); filled when marshalled.
	Raw RawText `json:"raw,omitempty"`
}

// Conn is one decided connection of the history: a flat view of store.Conn.
type Conn struct {
	ID         int64            `json:"id"`
	Time       time.Time        `json:"time"`
	Direction  engine.Direction `json:"direction"`
	Proto      engine.Protocol  `json:"proto"`
	LocalIP    string           `json:"local_ip"`
	LocalPort  uint16           `json:"local_port"`
	RemoteIP   string           `json:"remote_ip"`
	RemotePort uint16           `json:"remote_port"`
	PID        int32            `json:"pid"`
	Exe        string           `json:"exe"`
	UID        int32            `json:"uid"`
	User       string           `json:"user"`
	Cmdline    string           `json:"cmdline,omitempty"`
	Host       string           `json:"host,omitempty"`
	// HostSource says whose DNS answer gave host: "own" (this program resolved it),
	// "shared" (another program did; host rules skip it unless the daemon runs with
	// --host-rules-match-shared) or "none".
	HostSource string `json:"host_source,omitempty"`
	// Note is what latch wants you to know about the connection, e.g. that it goes
	// to an encrypted DNS service, so names after it are not visible.
	Note string `json:"note,omitempty"`
	// Identity as in Prompt; "" also for connections recorded before latch
	// checked identities.
	Identity  engine.Identity `json:"identity"`
	Container string          `json:"container,omitempty"`
	// ContainerName as in Prompt.
	ContainerName string        `json:"container_name,omitempty"`
	IdentityNote  string        `json:"identity_note,omitempty"`
	Unit          string        `json:"unit,omitempty"`
	AppID         string        `json:"app_id,omitempty"`
	Parents       []string      `json:"parents,omitempty"`
	Verdict       engine.Action `json:"verdict"`
	Reason        engine.Reason `json:"reason"`
	RuleID        engine.RuleID `json:"rule_id"`
	// BytesIn and BytesOut are what an allowed flow moved (received and sent by the
	// local program, IP headers included) as last reported: every report interval
	// while it lasts, and when it ends. 0 without byte accounting.
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
	// Netns names the sending network namespace of a forwarded connection.
	Netns string `json:"netns,omitempty"`
	// Mode is the mode in force when the connection was decided (ask, learn,
	// silent-allow, silent-deny, block-all).
	Mode engine.Mode `json:"mode"`
	// Raw has the exact bytes of exe, user, cmdline or host where they are not valid
	// UTF-8 (see RawText); filled when marshalled.
	Raw RawText `json:"raw,omitempty"`
}

// AnswerRequest is the body of POST /v1/prompts/{id}/answer.
type AnswerRequest struct {
	Action string `json:"action"`          // allow, deny, reject or drop (required)
	For    string `json:"for,omitempty"`   // once (default), forever, or a duration such as 1h or 7d
	Scope  string `json:"scope,omitempty"` // app, app+host, app+port or app+host+port (default)
}

// EventKind says what an Event reports.
type EventKind string

// Event kinds; besides the engine's, the stream starts with "hello".
const (
	EventHello    EventKind = "hello"
	EventPrompt   EventKind = EventKind(engine.EventPrompt)
	EventAnswered EventKind = EventKind(engine.EventAnswered)
	EventRules    EventKind = EventKind(engine.EventRules)
	// EventGap: the client was too slow and events were lost before this one; it
	// should list the open questions (and rules) again, as after hello.
	EventGap EventKind = EventKind(engine.EventGap)
)

// Event is one line of GET /v1/events.
type Event struct {
	Kind    EventKind       `json:"kind"`
	Prompt  *Prompt         `json:"prompt,omitempty"`
	Verdict *engine.Verdict `json:"verdict,omitempty"`
	Rules   []engine.Rule   `json:"rules,omitempty"`
}

type errorBody struct {
	Error string `json:"error"`
}

// PromptView flattens an engine prompt for the API.
func PromptView(p *engine.Prompt) Prompt {
	r := &p.Request
	return Prompt{
		ID: p.ID, PID: r.PID, Exe: r.Exe, UID: r.UID, User: r.User, Cmdline: r.Cmdline,
		Direction: r.Direction, Proto: r.Protocol,
		LocalIP: addrString(r.Local.Addr()), LocalPort: r.Local.Port(),
		RemoteIP: addrString(r.Remote.Addr()), RemotePort: r.Remote.Port(),
		Host: r.Host, Netns: r.Netns, HostSource: r.HostSource, Note: joinNotes(r.Note, p.Note), Held: p.Held, Opened: p.Opened, Expires: p.Expires, ExeSHA256: r.ExeSHA256,
		Identity: r.Identity, Container: r.Container, ContainerName: r.ContainerName, IdentityNote: r.IdentityNote,
		Unit: r.Unit, AppID: r.AppID, Parents: r.Parents,
	}
}

// ConnView flattens a history entry for the API.
func ConnView(c *store.Conn) Conn {
	r := &c.Request
	return Conn{
		ID: c.ID, Time: c.Time, Direction: r.Direction, Proto: r.Protocol,
		LocalIP: addrString(r.Local.Addr()), LocalPort: r.Local.Port(),
		RemoteIP: addrString(r.Remote.Addr()), RemotePort: r.Remote.Port(),
		PID: r.PID, Exe: r.Exe, UID: r.UID, User: r.User, Cmdline: r.Cmdline, Host: r.Host,
		HostSource: r.HostSource, Note: r.Note,
		Verdict: c.Verdict.Action, Reason: c.Verdict.Reason, RuleID: c.Verdict.RuleID, Mode: c.Verdict.Mode,
		Identity: r.Identity, Container: r.Container, ContainerName: r.ContainerName, IdentityNote: r.IdentityNote,
		BytesIn: c.BytesIn, BytesOut: c.BytesOut, Netns: r.Netns,
		Unit: r.Unit, AppID: r.AppID, Parents: r.Parents,
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

// joinNotes joins what the backend and the engine want a person to know about a
// question (e.g. encrypted DNS; a pinned program that changed), "; " between.
func joinNotes(notes ...string) string {
	var out []string
	for _, n := range notes {
		if n != "" {
			out = append(out, n)
		}
	}
	return strings.Join(out, "; ")
}
