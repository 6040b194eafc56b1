// Package engine holds latch's platform-neutral core: the description of a held
// connection (Request), the answer to it (Verdict), the user's rules, the compiled
// matcher that evaluates them and the prompt broker that asks a person.
//
// The engine knows no kernel. Backends in internal/intercept turn kernel events into
// Requests and Verdicts back into kernel actions; they call Engine.Decide, which never
// blocks.
//
// # Rules
//
// A Rule matches a Request when every field it sets matches; an empty field matches
// anything. App is an executable path, either exact or a glob: path.Match syntax on
// '/'-separated segments, plus a "**" segment that matches any number of segments
// (including none). A pattern that looks like a Windows path ("C:\..." or "\\server\...")
// uses '\' as its separator and matches case-insensitively. User is an account name or
// a numeric uid. Service (Windows) names a service the process hosts (svchost.exe).
// Host is the remote's hostname as the program resolved it (Request.Host, learned from
// DNS): an exact name, or "*.example.com", which matches every name below example.com
// but not example.com itself; case and a trailing dot do not matter, and a request
// whose hostname is unknown matches no Host rule; nor, unless
// Config.HostRulesMatchShared, does one whose name another program resolved
// (Request.HostSource HostShared). Remote is an address or CIDR prefix,
// Port and LocalPort inclusive ranges. Cmdline, Parent, Unit, Container and AppID narrow
// a rule by the process's identity beyond its executable (see ident.go; Cmdline needs
// App, AppID needs User). A rule whose Expires has passed never matches and is dropped from the set.
//
// # Precedence
//
// When several rules match, the most specific one decides. Two rules are compared field
// by field, in this order, and the first field that differs settles it:
//
//  1. App: an exact path beats a glob, a glob beats no app; then a rule naming a
//     service beats one that does not.
//  2. Host: an exact name beats a wildcard, a wildcard with more labels beats one
//     with fewer (*.a.example.com beats *.example.com), any host beats no host. A
//     name is as specific as a single address, so it comes before Remote.
//  3. Remote: a narrower prefix beats a wider one, any prefix beats no remote.
//  4. Port: a narrower range beats a wider one, any range beats no port.
//  5. User: set beats unset.
//  6. Identity: a rule naming more of Cmdline, Parent, Unit, Container and AppID
//     beats one naming fewer (so "python3 with this script" beats "python3").
//  7. LocalPort: narrower beats wider beats unset.
//  8. Protocol: set beats any.
//  9. Direction: set beats any.
//  10. Action: at equal specificity deny, reject and drop beat allow.
//  11. ID: the lower ID (the older rule) wins.
//
// The order is total, so the verdict never depends on the order rules were added or
// listed. All globs are equally specific among themselves.
//
// # Evaluation
//
// Rules are compiled into an immutable index, rebuilt and swapped in atomically on
// every change, so Decide never waits for a writer. Rules are grouped by app class
// (exact path, looked up by path; glob, looked up by its literal leading segments and
// last segment; none); then by service; then by host (exact names looked up by name,
// wildcards by each suffix of the request's name); within a large group, by remote prefix (longest first) and then
// by port (single port, narrow range, wide range, any). Because the groups follow the
// precedence keys, the first rule that matches in the most specific group that has one
// is the winner, and evaluation stays well under a microsecond at 100,000 rules
// (BenchmarkMatch; BenchmarkLinearScan is the plain scan for comparison).
//
// # Explain and rule hits
//
// Explain answers "why": the rule Decide would use for a request (from the same
// compiled matcher), the precedence step (Step, numbered as above) at which it beat
// the best other matching rule, and every other matching rule with the step at which
// it lost. The losers are found with the matcher's own per-rule test and the steps
// with the comparison that orders the matcher, so the explanation cannot drift from
// the decision. A list that decides (see Lists) is reported as such, by name
// (OutcomeList), and the request is readied as Decide readies it (readyRequest). Each rule also counts the connections it decided and when last
// (RuleHits): an atomic add on the decision path, kept across rule-set changes.
//
// # Lists
//
// Blocklists (SetLists, package blocklist) come between the rules that name a program
// and those that do not: when the winning rule names an app (or an identity field), it
// decides; otherwise a list naming the request's hostname (the one host rules match:
// not a shared one unless Config.HostRulesMatchShared) or address decides
// (ReasonList); otherwise the winning app-less rule, if any.
//
// # Modes
//
// The Mode (SetMode) says what happens to a Request no rule decides: ModeAsk makes it
// a question; ModeLearn allows it and records a Suggestion (an allow rule for the
// verified program, direction, protocol, host or address and port; AcceptSuggestions
// turns suggestions into rules); ModeSilentAllow and ModeSilentDeny allow or deny it
// unasked. In these modes rules decide first. ModeBlockAll is a panic switch that comes
// before every rule: every Request is denied (ReasonMode) without consulting the rules,
// except loopback ones, which rules and questions decide as in ModeAsk. The mode is an
// atomic read by Decide and is stored before SetMode returns, so the next Decide after
// SetMode uses it; open questions the new mode decides are closed by it at once. A mode
// may be set until a time (ModeState.Until), after which ModeState.Then returns by
// itself. Until is a wall-clock time, reached by the engine's clock (Config.Now): the
// timer that ends the mode runs on the monotonic clock and checks the wall clock when
// it fires, and CheckModeEnd ends a mode whose end a step of the wall clock passed
// (the daemon calls it at a step; review29). Every Verdict carries the mode it was
// given in.
//
// # Questions
//
// A Request no rule matches becomes a question (Prompt) for a person. Identical
// questions (same executable, direction, protocol, remote address, port and hostname,
// and user) share one Prompt; every connection attached to it gets the same verdict. Each Prompt
// has a deadline (Config.PromptTimeout); when it passes, every attached connection gets
// Config.Default with ReasonTimeout. Answering a Prompt may create a rule (see Answer
// and Scope; a "host" scope names the request's hostname when it is known, its address
// otherwise); any other open Prompt that rule matches is decided by it at once.
//
// Open questions are bounded per program (of one user), per user and in all
// (Config.MaxPromptsPerApp, MaxPromptsPerUser, MaxPrompts); the user and global bounds
// are shared max-min fairly, so one program or user cannot take the questions away
// from the others. A connection a bound refuses, and a question evicted to make room
// for one holding fewer, get Config.Default with ReasonQuestionCap. See questioncap.go.
package engine
