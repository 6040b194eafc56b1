package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/events"
	"github.com/latchfw/latch/internal/textesc"
)

const eventsHelp = `Usage: latch events --follow [--json]

Prints every event the daemon emits from now on (latch.event/1, see docs/events.md):
connection.decided, question.opened, question.answered, rule.added, rule.removed,
rule.changed, rule.expired, daemon.started, daemon.stopped, backend.degraded.
Ctrl-C ends it.

  --follow   keep printing events as they happen (required: there is no event history;
             'latch conns' shows past connections)
  --json     each event as the daemon encoded it, one JSON object per line
`

func runEvents(ctx context.Context, args []string) error {
	fs := newFlags("events")
	follow := fs.Bool("follow", false, "")
	fs.BoolVar(follow, "f", false, "")
	asJSON := fs.Bool("json", false, "")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if !*follow {
		return usagef("want --follow (events are a live stream; 'latch conns' shows past connections)")
	}
	st, err := client().EventLog(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	go func() { <-ctx.Done(); st.Close() }()
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	for {
		line, err := st.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if *asJSON {
			out.Write(line)
			out.WriteByte('\n')
		} else {
			var ev events.Event
			if err := json.Unmarshal(line, &ev); err != nil {
				return fmt.Errorf("event %q: %w", line, err)
			}
			fmt.Fprintln(out, eventLine(&ev))
		}
		if !st.Buffered() { // write out what arrived together
			if err := out.Flush(); err != nil {
				return err
			}
		}
	}
}

// eventLine is an event in one line of text, outside text escaped and, where a value
// could hold a space (a path, a host name), shown as a field (quoted then).
func eventLine(ev *events.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-18s", ev.Time.Local().Format(time.DateTime), ev.Event)
	if c, p := ev.Connection, ev.Process; c != nil && p != nil {
		dest := textesc.String(c.RemoteIP)
		if c.RemoteHost != "" {
			dest = field(c.RemoteHost) + " (" + dest + ")"
		}
		fmt.Fprintf(&b, " %s %s %s pid %d -> %s:%d", textesc.String(c.Direction), textesc.String(c.Protocol), field(p.Executable), p.PID, dest, c.RemotePort)
	}
	if q := ev.Question; q != nil {
		fmt.Fprintf(&b, " question %d (%d held)", q.ID, q.Held)
	}
	if d := ev.Decision; d != nil {
		fmt.Fprintf(&b, ": %s (%s", d.Action, d.Reason)
		if d.RuleID != 0 {
			fmt.Fprintf(&b, ", rule %d", d.RuleID)
		}
		b.WriteString(")")
	}
	if r := ev.Rule; r != nil {
		fmt.Fprintf(&b, " rule %d: %s %s", r.ID, r.Action, ruleSummary(*r))
	}
	if d := ev.Daemon; d != nil {
		fmt.Fprintf(&b, " latch %s pid %d, %s, %s", field(d.Version), d.PID, field(d.Backend), textesc.String(d.Mode))
		if d.Error != "" {
			fmt.Fprintf(&b, ": %s", textesc.Message(d.Error))
		}
	}
	if be := ev.Backend; be != nil {
		fmt.Fprintf(&b, " %s: %s", textesc.String(be.Condition), textesc.Message(be.Message))
	}
	return b.String()
}
