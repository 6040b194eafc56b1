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

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/localhttp"
	"github.com/latchfw/latch/internal/textesc"
)

const statusHelp = `Usage: latch status [--json]

Shows how the daemon runs: interception backend and firewall mechanism, fail-open or
fail-closed, the default verdict, the queue and decision counters, the questions
pending, the bounds on open questions and how often each applied ("question caps":
connections given the default unasked because their program, their user or the
machine had its maximum of questions open; questions evicted to make room for a
program holding fewer), the process attribution methods in use and whether they
check the executable that made each connection ("attribution exe check": when
off, it says why and what follows), the hostnames
learned from DNS answers (and the answers ignored, by reason: unmatched, late,
duplicate, mismatched_question, truncated, malformed, other_type) and the history's
size.

The kernel line counts connections held and decided, and the packets the kernel
dropped before latch could hold them: "dropped by kernel N (queue full N, socket
buffer full N)". Those never get through; a flood or a stalled daemon shows there.
--json has it as kernel.kernel_dropped (and kernel.extra.queue_dropped,
queue_user_dropped).

With --web or --metrics, the "web UI" and "metrics" lines say whether their listener
is up, or DOWN since when and why (e.g. another program holds the address; the daemon
binds it again in the background). --json: web and metrics, with up and error.
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
	if st.DecisionMode != nil {
		row("mode", "%s", describeMode(*st.DecisionMode))
	}
	row("fail mode", "%s (without a running daemon new connections are %s)", st.Mode,
		map[bool]string{true: "accepted", false: "dropped"}[st.Mode == "fail-open"])
	row("default", "%s after %s unanswered", st.Default, st.PromptTimeout)
	row("holding", "outbound%s; loopback %s", map[bool]string{true: " and inbound", false: " only"}[st.Inbound],
		map[bool]string{true: "exempt", false: "held too"}[st.ExemptLoopback])
	row("attribution", "%s", orDash(strings.Join(textesc.Strings(st.Attribution), ", ")))
	if c := st.AttributionExeCheck; c != nil {
		if c.On {
			row("attribution exe check", "on: a connection is verified only if the program that made it is the one its process runs")
		} else {
			row("attribution exe check", "off: %s", textesc.Message(c.Why))
		}
	}
	row("rules", "%d", st.Rules)
	row("pending", "%s, %s held", plural(st.PendingPrompts, "question"), plural(st.HeldConnections, "connection"))
	q := st.QuestionCaps
	row("questions", "at most %d open, %d per user, %d per program", q.Max, q.PerUser, q.PerApp)
	row("question caps", "program %d, user %d, global %d (connections given the default unasked); evicted %d",
		q.App, q.User, q.Global, q.Evicted)
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
			if f.UDP {
				row("fast path udp", "on: the first datagram of a UDP flow is decided in the kernel too")
			} else {
				row("fast path udp", "off (UDP flows go through the queue): %s", textesc.Message(f.UDPWhy))
			}
			socketPinRow(row, f.SocketPin, f.SocketPinWhy)
			receiveCheckRow(row, f)
			senderStashRow(row, f.SenderStash, f.SenderStashWhy)
			if !f.TCPLocal {
				row("fast path tcp", "off (every TCP connect goes through the queue: without the sock_ops program nothing checks a decision again when its SYN leaves): %s", textesc.Message(f.TCPLocalWhy))
			}
			if f.TCPLocal && f.TCPRulesetWhy != "" {
				row("fast path tcp rules", "off (every TCP connect goes through the queue, and INVALID TCP is dropped): %s", textesc.Message(f.TCPRulesetWhy))
			}
			if f.Lease {
				row("fast path lease", "on: what the kernel allowed passes only while this daemon lives")
				if f.LeaseSweepWhy != "" {
					row("fast path sweep", "off (a SYN a daemon gone before let go retransmits under this daemon's lease): %s", textesc.Message(f.LeaseSweepWhy))
				} else if f.LeaseSwept > 0 {
					row("fast path sweep", "%d sockets a daemon gone before left mid-connect are decided again", f.LeaseSwept)
				}
			} else if f.TCPLocal || f.UDP {
				row("fast path lease", "off (a connect whose SYN is on its way when the daemon dies may connect again anywhere after): %s", textesc.Message(f.LeaseWhy))
			}
			if f.SimultaneousOpenGuard {
				row("fast path simultaneous open", "on: a SYN without ACK to a socket in SYN_SENT (its own SYN may wait for a verdict) is dropped (%d dropped; cgroup %s)", f.SimultaneousOpenDropped, textesc.String(f.SimultaneousOpenGuardCgroup))
			} else {
				row("fast path simultaneous open", "off (without --inbound, the host a held connect goes to can connect it by a simultaneous open): %s", textesc.Message(f.SimultaneousOpenGuardWhy))
			}
			if f.TCPEnds {
				row("fast path ends", "on: the kernel reports the end of each TCP socket (%d read, %d lost); byte accounting reads no conntrack update events", f.Ends, f.EndsLost)
			} else {
				row("fast path ends", "off (byte accounting learns TCP flow ends from conntrack update events): %s", textesc.Message(f.TCPEndsWhy))
			}
			if f.TCPEndBytes {
				row("fast path end bytes", "on: the kernel counts the bytes of each TCP connection opened here and sends them with its end; byte accounting reads conntrack once more only for accepted connections")
			} else {
				row("fast path end bytes", "off (byte accounting reads each ended flow's counters from conntrack): %s", textesc.Message(f.TCPEndBytesWhy))
			}
			if f.TCPLiveBytes {
				row("fast path live bytes", "on: byte accounting reads the live counts of the TCP connections opened here (%s) for the flows conntrack does not list", f.TCPLiveBytesVia)
			} else {
				row("fast path live bytes", "off (a TCP flow conntrack does not list shows its bytes at its end only): %s", textesc.Message(f.TCPLiveBytesWhy))
			}
			if f.TCPNotrack {
				row("fast path notrack", "on")
			} else {
				row("fast path notrack", "off (%s)", textesc.Message(f.TCPNotrackWhy))
			}
		} else {
			row("fast path", "off: %s", f.Reason)
			why := f.SocketPinWhy
			if !f.SocketPin && why == "" {
				why = "the fast path is off"
			}
			socketPinRow(row, f.SocketPin, why)
			receiveCheckRow(row, f)
			why = f.SenderStashWhy
			if !f.SenderStash && why == "" {
				why = "the fast path is off"
			}
			senderStashRow(row, f.SenderStash, why)
		}
	}
	if c := st.DriverCache; c != nil {
		if c.On {
			row("driver cache", "on: repeats of a rule's verdict decided in the driver %d times; history records lost %d",
				st.Kernel.Extra["driver_cache_hits"], st.Kernel.Extra["driver_hits_lost"])
		} else {
			row("driver cache", "off for now: %s", textesc.Message(c.Why))
		}
	}
	listenerRow(row, "web UI", st.Web)
	listenerRow(row, "metrics", st.Metrics)
	row("verdicts", "%s", counters(st.Verdicts))
	row("decided by", "%s", counters(st.Decisions))
	h := st.History
	row("history", "%d recorded, %d dropped, %d failed, %d not recorded for lack of disk space, kept %d at most",
		h.Recorded, h.Dropped, h.Failed, h.NoSpace, h.MaxRows)
	if h.Stopped {
		row("history stopped", "less than %d bytes free on the state dir's disk: connections are counted, not recorded, until there is room", h.MinFree)
	}
	if r := st.RulesReserve; r.Want > 0 {
		if r.Error != "" {
			row("rules reserve", "%d of %d bytes: %s", r.Size, r.Want, textesc.Message(r.Error))
		} else {
			row("rules reserve", "%d bytes", r.Size)
		}
	}
	if len(st.Events) > 0 {
		ev := make([]string, len(st.Events))
		for i, e := range st.Events {
			ev[i] = fmt.Sprintf("%s %d sent, %d dropped", e.Sink, e.Sent, e.Dropped)
		}
		row("events", "%s", strings.Join(ev, "; "))
	}
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

// socketPinRow writes the status line of the socket pin (see "The socket pin"
// in internal/fastpath): on, or off and why.
func socketPinRow(row func(string, string, ...any), on bool, why string) {
	if on {
		row("fast path socket pin", "on: an allowed UDP or ICMP echo flow passes only from the socket it was allowed for")
		return
	}
	row("fast path socket pin", "off (an allowed UDP or ICMP echo flow passes from any socket while its conntrack entry lives: another program that binds the local port its socket freed sends on it unasked): %s", textesc.Message(why))
}

// receiveCheckRow writes the status line of the socket pin's receive check
// (see "The receive check" in internal/fastpath): on (with the pin), or off
// and why.
func receiveCheckRow(row func(string, string, ...any), f *api.FastPathStatus) {
	switch {
	case f.SocketPinReceive && f.SocketPin:
		row("fast path receive check", "on: a peer's datagram of an allowed UDP or ICMP echo flow reaches only the socket the flow was allowed for (%d dropped, %d reports lost; cgroup %s)",
			f.SocketPinReceiveDropped, f.SocketPinReceiveLost, textesc.String(f.SocketPinReceiveCgroup))
	case f.SocketPinReceive:
		row("fast path receive check", "off (another program that joins an allowed UDP flow's local port, SO_REUSEADDR or SO_REUSEPORT, receives the flow's datagrams unasked): the socket pin is off")
	default:
		why := f.SocketPinReceiveWhy
		if why == "" {
			why = "not loaded"
		}
		row("fast path receive check", "off (another program that joins an allowed UDP flow's local port, SO_REUSEADDR or SO_REUSEPORT, receives the flow's datagrams unasked): %s", textesc.Message(why))
	}
}

// senderStashRow writes the status line of the sender stash (see "The sender
// stash" in internal/fastpath): on, or off and why.
func senderStashRow(row func(string, string, ...any), on bool, why string) {
	if on {
		row("fast path sender stash", "on: a UDP datagram is attributed to the socket that sent it, also where two sockets share its local port")
		return
	}
	row("fast path sender stash", "off (a UDP datagram from a local port two sockets share is attributed to the socket a lookup of its tuple finds, the last bound, which may be another program's): %s", textesc.Message(why))
}

// listenerRow shows whether the web UI's or the metrics' listener is up (nil: off).
func listenerRow(row func(string, string, ...any), name string, st *localhttp.Status) {
	if st == nil {
		return
	}
	if st.Up {
		row(name, "up at %s", field(st.Addr))
		return
	}
	row(name, "DOWN since %s: %s; binding %s again in the background (%d attempts so far)",
		st.Since.Local().Format(time.DateTime), textesc.Message(st.Error), field(st.Addr), st.Retries+1)
}
