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
	"unicode"
	"unicode/utf8"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
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
	who := shown(orDash(r.Exe))
	if r.User != "" {
		who += " (user " + shown(r.User) + ")"
	} else if r.UID >= 0 {
		who += " (uid " + strconv.Itoa(int(r.UID)) + ")"
	}
	dest := r.RemoteIP
	if r.Host != "" {
		dest = shown(r.Host) + " (" + r.RemoteIP + ")"
	}
	if r.RemotePort != 0 {
		dest += ":" + strconv.Itoa(int(r.RemotePort))
	}
	fmt.Fprintf(w, "connection: %s %s %s -> %s\n", r.Direction, r.Proto, who, dest)
	if r.Container != "" {
		fmt.Fprintf(w, "container:  %s%s\n", shown(r.Container), containerNameTag(r.Container, r.ContainerName))
	}
	if c := ex.Conn; c != nil {
		then := fmt.Sprintf("%s (%s", c.Verdict, c.Reason)
		if c.RuleID != 0 {
			then += fmt.Sprintf(", rule %d", c.RuleID)
		}
		fmt.Fprintf(w, "then:       %s) at %s, connection %d\n", then, c.Time.Local().Format(time.DateTime), c.ID)
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
		fmt.Fprintf(w, "note:       %s\n", shown(n))
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
	add := func(k, v string) { parts = append(parts, k+"="+shown(v)) }
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

// shown escapes text from outside (paths, names) for the terminal, by the project's
// escaping rule (internal/textesc.String; this stand-in follows the same rule until
// that package is merged): invalid UTF-8 and C0/DEL as \xNN, other deceptive runes as
// \u{XXXX}, a backslash doubled before x, u, \ or an escaped character.
func shown(s string) string {
	var b strings.Builder
	esc := func(i int) (string, int) { // the escape for the character at s[i], if any, and its size
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return fmt.Sprintf(`\x%02x`, s[i]), 1
		case r < 0x20 || r == 0x7f:
			return fmt.Sprintf(`\x%02x`, r), size
		case (r >= 0x80 && r <= 0x9f) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co) ||
			(unicode.Is(unicode.Zs, r) && r != ' ') || !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.C):
			return fmt.Sprintf(`\u{%04X}`, r), size
		}
		return "", size
	}
	for i := 0; i < len(s); {
		e, size := esc(i)
		if e != "" {
			b.WriteString(e)
			i += size
			continue
		}
		if s[i] == '\\' && i+1 < len(s) {
			if next := s[i+1]; next == 'x' || next == 'u' || next == '\\' {
				b.WriteString(`\\`)
				i++
				continue
			}
			if e2, _ := esc(i + 1); e2 != "" {
				b.WriteString(`\\`)
				i++
				continue
			}
		}
		b.WriteString(s[i : i+size])
		i += size
	}
	return b.String()
}
