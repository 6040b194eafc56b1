package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

const statusHelp = `Usage: latch status [--json]

Shows how the daemon runs: interception backend and firewall mechanism, fail-open or
fail-closed, the default verdict, the queue and decision counters, the questions
pending, the bounds on open questions and how often each applied ("question caps":
connections given the default unasked because their program, their user or the
machine had its maximum of questions open; questions evicted to make room for a
program holding fewer), the process attribution methods in use and the history's size.
`

func runStatus(ctx context.Context, args []string) error {
	fs := newFlags("status")
	asJSON := fs.Bool("json", false, "print the status as one JSON object")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	st, err := client().Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(st)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("daemon", "latch %s, pid %d, up %s", st.Version, st.PID, time.Since(st.Started).Round(time.Second))
	row("backend", "%s", st.Backend)
	if st.Queue != 0 {
		row("queue", "%d", st.Queue)
	}
	row("mode", "%s (without a running daemon new connections are %s)", st.Mode,
		map[bool]string{true: "accepted", false: "dropped"}[st.Mode == "fail-open"])
	row("default", "%s after %s unanswered", st.Default, st.PromptTimeout)
	row("holding", "outbound%s; loopback %s", map[bool]string{true: " and inbound", false: " only"}[st.Inbound],
		map[bool]string{true: "exempt", false: "held too"}[st.ExemptLoopback])
	row("attribution", "%s", orDash(strings.Join(st.Attribution, ", ")))
	row("rules", "%d", st.Rules)
	row("pending", "%s, %s held", plural(st.PendingPrompts, "question"), plural(st.HeldConnections, "connection"))
	q := st.QuestionCaps
	row("questions", "at most %d open, %d per user, %d per program", q.Max, q.PerUser, q.PerApp)
	row("question caps", "program %d, user %d, global %d (connections given the default unasked); evicted %d",
		q.App, q.User, q.Global, q.Evicted)
	k := st.Kernel
	row("kernel", "held %d, allowed %d, denied %d, rejected %d, overflows %d, errors %d",
		k.Held, k.Allowed, k.Denied, k.Rejected, k.Overflows, k.Errors)
	if len(k.Extra) > 0 {
		row("kernel extra", "%s", counters(k.Extra))
	}
	row("verdicts", "%s", counters(st.Verdicts))
	row("decided by", "%s", counters(st.Decisions))
	h := st.History
	row("history", "%d recorded, %d dropped, %d failed, kept %d at most", h.Recorded, h.Dropped, h.Failed, h.MaxRows)
	row("state dir", "%s", orDash(st.StateDir))
	return tw.Flush()
}

// counters formats a map of counters in key order: "allow 3, deny 1".
func counters(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
