package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
)

const connsHelp = `Usage: latch conns [--json] [--follow] [-n N]

Lists the most recent connections latch decided, oldest first, one per line: time,
direction, protocol, local and remote address (with the hostname the program resolved,
when latch saw it), pid, executable, user, verdict and why (rule ID, prompt, default,
timeout, limit), and the bytes an allowed connection received (IN) and sent (OUT) so far
(IP headers included; '-' until counted), and for a connection this host forwarded
(daemon --forward) the network namespace of the program that sent it (NETNS). Paths, user and host names are shown with control and invisible
characters escaped (\x1b, \u{202E}); --json keeps them as they are.

  -n N       how many (default 20)
  --follow   keep printing new connections as they are decided (Ctrl-C ends)
  --json     one JSON object per line: id, time, direction, proto, local_ip,
             local_port, remote_ip, remote_port, host (if known), pid, exe, uid,
             user, verdict, reason, rule_id, bytes_in, bytes_out, netns (if
             forwarded), and raw (the exact bytes of text that
             is not valid UTF-8, as in 'latch help prompts')
`

// followInterval is how often --follow asks for new connections.
const followInterval = 300 * time.Millisecond

func runConns(ctx context.Context, args []string) error {
	fs := newFlags("conns")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	follow := fs.Bool("follow", false, "keep printing new connections")
	fs.BoolVar(follow, "f", false, "same as --follow")
	n := fs.Int("n", 20, "how many connections")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *n <= 0 || *n > 100_000 {
		return usagef("-n %d: want 1 to 100000", *n)
	}
	c := client()
	cs, err := c.Conns(ctx, 0, *n)
	if err != nil {
		return err
	}
	p := &connPrinter{w: os.Stdout, json: *asJSON}
	if err := p.print(cs, true); err != nil {
		return err
	}
	if !*follow {
		return nil
	}
	var last int64
	if len(cs) > 0 {
		last = cs[len(cs)-1].ID
	} else {
		// Nothing yet: start after whatever arrives, not from the beginning.
		last = 0
	}
	t := time.NewTicker(followInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cs, err := c.Conns(ctx, last, 1000)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if len(cs) == 0 {
			continue
		}
		last = cs[len(cs)-1].ID
		if err := p.print(cs, false); err != nil {
			return err
		}
	}
}

type connPrinter struct {
	w      io.Writer
	json   bool
	header bool
}

func (p *connPrinter) print(cs []api.Conn, first bool) error {
	if p.json {
		enc := json.NewEncoder(p.w)
		for _, c := range cs {
			if err := enc.Encode(c); err != nil {
				return err
			}
		}
		return nil
	}
	if len(cs) == 0 {
		if first {
			fmt.Fprintln(p.w, "no connections recorded")
		}
		return nil
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	if !p.header {
		fmt.Fprintln(tw, "TIME\tDIR\tPROTO\tLOCAL\tREMOTE\tPID\tEXE\tUSER\tVERDICT\tWHY\tMODE\tIN\tOUT\tNETNS")
		p.header = true
	}
	for _, c := range cs {
		in, out := "-", "-"
		if c.BytesIn != 0 || c.BytesOut != 0 {
			in, out = humanBytes(c.BytesIn), humanBytes(c.BytesOut)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Time.Local().Format("2006-01-02 15:04:05.000"),
			c.Direction, c.Proto, hostPort(c.LocalIP, c.LocalPort, ""), remoteOf(c.RemoteIP, c.RemotePort, c.Host, c.HostSource, c.Note),
			pidOrDash(c.PID), programOf(c.Exe, c.Identity, c.Container, c.ContainerName)+identityLabels(c.Unit, c.AppID, c.Parents), userOf(c.User, c.UID), c.Verdict, why(c.Reason, c.RuleID), c.Mode, in, out, field(c.Netns))
	}
	return tw.Flush()
}

func why(reason engine.Reason, rule engine.RuleID) string {
	if rule != 0 {
		if reason == engine.ReasonRule {
			return fmt.Sprintf("rule %d", rule)
		}
		return fmt.Sprintf("%s (rule %d)", reason, rule)
	}
	return field(string(reason))
}
