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

	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/textesc"
)

const statusHelp = `Usage: latch status [--json]

Shows how the daemon runs: interception backend and firewall mechanism, fail-open or
fail-closed, the default verdict, the queue and decision counters, the questions
pending, the process attribution methods in use, the hostnames learned from DNS
answers (and the answers ignored, by reason: unmatched, late, duplicate,
mismatched_question, truncated, malformed, other_type) and the history's size.

The kernel line counts connections held and decided, and the packets the kernel
dropped before latch could hold them: "dropped by kernel N (queue full N, socket
buffer full N)". Those never get through; a flood or a stalled daemon shows there.
--json has it as kernel.kernel_dropped (and kernel.extra.queue_dropped,
queue_user_dropped).
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
	// Every value comes from the daemon: anything left unescaped below (a mode, a
	// duration) is escaped here too; what is already escaped is left as it is.
	row := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t%s\n", k, textesc.Message(fmt.Sprintf(format, args...)))
	}
	row("daemon", "latch %s, pid %d, up %s", textesc.String(st.Version), st.PID, time.Since(st.Started).Round(time.Second))
	row("backend", "%s", textesc.String(st.Backend))
	if st.Queue != 0 {
		row("queue", "%d", st.Queue)
	}
	row("mode", "%s (without a running daemon new connections are %s)", st.Mode,
		map[bool]string{true: "accepted", false: "dropped"}[st.Mode == "fail-open"])
	row("default", "%s after %s unanswered", st.Default, st.PromptTimeout)
	row("holding", "outbound%s; loopback %s", map[bool]string{true: " and inbound", false: " only"}[st.Inbound],
		map[bool]string{true: "exempt", false: "held too"}[st.ExemptLoopback])
	row("attribution", "%s", orDash(strings.Join(textesc.Strings(st.Attribution), ", ")))
	row("rules", "%d", st.Rules)
	row("pending", "%s, %s held", plural(st.PendingPrompts, "question"), plural(st.HeldConnections, "connection"))
	k := st.Kernel
	row("kernel", "%s", kernelLine(k))
	if len(k.Extra) > 0 {
		row("kernel extra", "%s", counters(k.Extra))
	}
	if n := st.DNS; n != nil {
		row("dns", "%d queries tracked (%d waiting), %d answered, %d addresses learned (%d held), copies lost %d times",
			n.Queries, n.Pending, n.Answers, n.Learned, n.Names, n.Overflows)
		row("dns ignored", "%s", counters(n.Ignored))
		row("dns not tracked", "%s", counters(n.QueriesNotTracked))
	}
	if f := st.FastPath; f != nil {
		if f.On {
			row("fast path", "on: %d allowed and %d refused in the kernel, %d misses, %d stale; map %d of %d entries; ring buffer lost %d",
				f.HitsAllow, f.HitsReject, f.Misses, f.Stale, f.Entries, f.MaxEntries, f.RingLost)
			if !f.Cacheable {
				row("fast path off for now", "%s", f.Why)
			}
		} else {
			row("fast path", "off: %s", f.Reason)
		}
	}
	row("verdicts", "%s", counters(st.Verdicts))
	row("decided by", "%s", counters(st.Decisions))
	h := st.History
	row("history", "%d recorded, %d dropped, %d failed, kept %d at most", h.Recorded, h.Dropped, h.Failed, h.MaxRows)
	row("state dir", "%s", field(st.StateDir))
	return tw.Flush()
}

// kernelLine is status's headline on the interception: what was held and decided,
// and what the kernel dropped before latch could hold it (a full queue, a full socket
// buffer), which no per-verdict counter sees.
func kernelLine(k intercept.Stats) string {
	dropped := fmt.Sprintf("dropped by kernel %d", k.KernelDropped)
	qd, ok1 := k.Extra["queue_dropped"]
	ud, ok2 := k.Extra["queue_user_dropped"]
	if ok1 || ok2 {
		dropped += fmt.Sprintf(" (queue full %d, socket buffer full %d)", qd, ud)
	}
	return fmt.Sprintf("held %d, allowed %d, denied %d, rejected %d, %s, overflows %d, errors %d",
		k.Held, k.Allowed, k.Denied, k.Rejected, dropped, k.Overflows, k.Errors)
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
		parts[i] = fmt.Sprintf("%s %d", textesc.String(k), m[k])
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
