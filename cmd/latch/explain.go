package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/textesc"
)

const explainHelp = `Usage:
  latch explain --app PATH --remote IP --port N [--proto P] [--user U] [--host NAME] [--dir in|out] [--local-port N] [--json]
  latch explain --conn ID [--json]

Says which rule would decide such a connection under the rules in force now, why (the
precedence step that made it win), and which other rules match it and lost, each with
the step at which it lost. With --conn, the connection is one from the history ('latch
conns' shows IDs), and the verdict it got then is shown too.

  --app PATH          executable ("" for unknown)
  --remote IP         remote address (required without --conn)
  --port N            remote port (required for tcp and udp)
  --proto P           tcp (default), udp, icmp, icmpv6 or a protocol number
  --user NAME|UID     account the program runs as
  --host NAME         the hostname the program resolved (as latch learns it from DNS)
  --dir in|out        direction (default out)
  --local-port N      local port
  --json              one JSON object: outcome, rule_id (0: none), rule, step, action,
                      default, losers [{rule, step}], request, conn (with --conn)

Precedence steps, in order (see 'latch help rules'): app, host, remote, port, user, identity,
local-port, protocol, direction, action (deny beats allow), id (older wins).
`

func runExplain(ctx context.Context, args []string) error {
	fs := newFlags("explain")
	var er api.ExplainRequest
	fs.Int64Var(&er.Conn, "conn", 0, "")
	fs.StringVar(&er.App, "app", "", "")
	fs.StringVar(&er.Remote, "remote", "", "")
	port := fs.Uint("port", 0, "")
	lport := fs.Uint("local-port", 0, "")
	fs.StringVar(&er.Proto, "proto", "", "")
	fs.StringVar(&er.User, "user", "", "")
	fs.StringVar(&er.Host, "host", "", "")
	fs.StringVar(&er.Dir, "dir", "", "")
	asJSON := fs.Bool("json", false, "")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *port > 65535 {
		return usagef("--port %d: want 1 to 65535", *port)
	}
	if *lport > 65535 {
		return usagef("--local-port %d: want 1 to 65535", *lport)
	}
	er.Port, er.LocalPort = uint16(*port), uint16(*lport)
	switch {
	case er.Conn < 0:
		return usagef("--conn %d: want a connection ID from 'latch conns'", er.Conn)
	case er.Conn > 0 && er != (api.ExplainRequest{Conn: er.Conn}):
		return usagef("--conn: give a connection ID or its fields, not both")
	case er.Conn == 0 && er.Remote == "":
		return usagef("want --remote IP (and --port N), or --conn ID")
	}
	ex, err := client().Explain(ctx, er)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(ex)
	}
	printExplanation(os.Stdout, ex)
	return nil
}

func printExplanation(w io.Writer, ex *api.Explanation) {
	r := ex.Request
	who := field(r.Exe)
	if r.User != "" {
		who += " (user " + field(r.User) + ")"
	} else if r.UID >= 0 {
		who += " (uid " + strconv.Itoa(int(r.UID)) + ")"
	}
	dest := textesc.String(r.RemoteIP)
	if r.Host != "" {
		dest = field(r.Host) + " (" + dest + ")"
	}
	if r.RemotePort != 0 {
		dest += ":" + strconv.Itoa(int(r.RemotePort))
	}
	fmt.Fprintf(w, "connection: %s %s %s -> %s\n", r.Direction, r.Proto, who, dest)
	if r.Container != "" {
		fmt.Fprintf(w, "container:  %s%s\n", field(r.Container), containerNameTag(r.Container, r.ContainerName))
	}
	if c := ex.Conn; c != nil {
		then := fmt.Sprintf("%s (%s", c.Verdict, c.Reason)
		if c.RuleID != 0 {
			then += fmt.Sprintf(", rule %d", c.RuleID)
		}
		fmt.Fprintf(w, "then:       %s) at %s, connection %d\n", then, c.Time.Local().Format(time.DateTime), c.ID)
	}
	if ex.Outcome == engine.OutcomeList {
		fmt.Fprintf(w, "now:        %s by list %s\n", ex.Action, field(ex.List))
		for _, n := range ex.Notes {
			fmt.Fprintf(w, "why:        %s\n", textesc.Message(n))
		}
		if len(ex.Losers) > 0 {
			fmt.Fprintf(w, "also match (and lose to the list, which comes before rules that name no program):\n")
			for _, l := range ex.Losers {
				fmt.Fprintf(w, "  rule %d: %s %s\n", l.Rule.ID, l.Rule.Action, ruleSummary(l.Rule))
			}
		}
		return
	}
	if ex.Rule == nil {
		fmt.Fprintf(w, "now:        no rule matches: it becomes a question (%s if nobody answers in time)\n", ex.Default)
		return
	}
	fmt.Fprintf(w, "now:        %s by rule %d: %s\n", ex.Action, ex.Rule.ID, ruleSummary(*ex.Rule))
	if ex.Step == engine.StepNone {
		fmt.Fprintf(w, "why:        %s\n", ex.Step.Why())
	} else {
		fmt.Fprintf(w, "why:        it wins at step %d, %s\n", ex.Step, ex.Step.Why())
	}
	for _, n := range ex.Notes {
		fmt.Fprintf(w, "note:       %s\n", textesc.Message(n))
	}
	if len(ex.Losers) == 0 {
		return
	}
	fmt.Fprintf(w, "also match (and lose):\n")
	for _, l := range ex.Losers {
		fmt.Fprintf(w, "  rule %d: %s %s; lost at step %d (%s)\n", l.Rule.ID, l.Rule.Action, ruleSummary(l.Rule), l.Step, l.Step)
	}
}

// ruleSummary lists a rule's match fields, e.g. "app=/usr/bin/curl remote=198.18.0.0/15".
func ruleSummary(r engine.Rule) string {
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+field(v)) }
	if r.App != "" {
		add("app", r.App)
	}
	if r.Service != "" {
		add("service", r.Service)
	}
	if r.Host != "" {
		add("host", r.Host)
	}
	if r.Remote.IsValid() {
		add("remote", r.Remote.String())
	}
	if !r.Port.IsZero() {
		add("port", r.Port.String())
	}
	if r.User != "" {
		add("user", r.User)
	}
	if r.Container != "" {
		add("container", r.Container)
	}
	// The program's conditions beyond its path (rules add's flags): without them a
	// narrow rule would read as one that matches every run of the program.
	for _, f := range []struct{ k, v string }{{"cmdline", r.Cmdline}, {"parent", r.Parent}, {"unit", r.Unit}, {"app-id", r.AppID}} {
		if f.v != "" {
			add(f.k, f.v)
		}
	}
	if r.SHA256 != "" {
		add("pinned-sha256", r.SHA256[:min(12, len(r.SHA256))]+"…")
	}
	if !r.LocalPort.IsZero() {
		add("local-port", r.LocalPort.String())
	}
	if r.Protocol != engine.AnyProtocol {
		add("proto", r.Protocol.String())
	}
	if r.Direction != engine.AnyDirection {
		add("dir", r.Direction.String())
	}
	if len(parts) == 0 {
		return "(matches everything)"
	}
	return strings.Join(parts, " ")
}
