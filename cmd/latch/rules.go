package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
)

const rulesHelp = `Usage:
  latch rules list [--json]
  latch rules add --action allow|deny|reject|drop [match flags] [--for DURATION|forever] [--note TEXT]
  latch rules rm ID
  latch rules export > FILE
  latch rules import FILE       (FILE '-' reads standard input)

Match flags of 'rules add' (each left out matches anything):
  --app PATH          executable, exact path or glob (*, ?, [..], ** across directories)
  --user NAME|UID     account the program runs as
  --dir in|out|any    direction
  --proto tcp|udp|icmp|icmpv6|any
  --host NAME         remote hostname as the program resolved it (learned from DNS):
                      www.example.com, or *.example.com for every name below it (not
                      example.com itself); a connection whose name is unknown never matches
  --remote IP|CIDR    remote address or network
  --port N|N-M        remote port or range
  --local-port N|N-M  local port or range

Actions: allow lets the connection through; deny fails it at once (TCP reset);
reject also answers UDP/ICMP with ICMP unreachable; drop discards silently.
--for makes the rule expire (90m, 12h, 7d); forever (the default) never does.

Precedence: the most specific matching rule wins (exact app > app glob > any app; then
host: exact name > *.wildcard (more labels first) > none; then narrower remote,
narrower port, user, local port, protocol, direction); at equal
specificity deny/reject/drop beat allow, then the lower ID.

'rules import' replaces the whole rule set, all or nothing; its file is the format
'rules export' prints, which is also the daemon's rules.json.
`

func runRules(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("want a subcommand: list, add, rm, export or import")
	}
	switch args[0] {
	case "list", "ls":
		return rulesList(ctx, args[1:])
	case "add":
		return rulesAdd(ctx, args[1:])
	case "rm", "remove", "delete":
		return rulesRemove(ctx, args[1:])
	case "export":
		return rulesExport(ctx, args[1:])
	case "import":
		return rulesImport(ctx, args[1:])
	case "-h", "-help", "--help", "help":
		return errHelp
	}
	return usagef("unknown subcommand %q: want list, add, rm, export or import", args[0])
}

func rulesList(ctx context.Context, args []string) error {
	fs := newFlags("rules list")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	rules, err := client().Rules(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSONLines(rules)
	}
	printRules(os.Stdout, rules)
	return nil
}

func printRules(w io.Writer, rules []engine.Rule) {
	if len(rules) == 0 {
		fmt.Fprintln(w, "no rules")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tACTION\tDIR\tPROTO\tAPP\tUSER\tHOST\tREMOTE\tPORT\tLOCAL-PORT\tEXPIRES\tNOTE")
	for _, r := range rules {
		remote, port, lport, expires := "-", "-", "-", "never"
		if r.Remote.IsValid() {
			remote = r.Remote.String()
		}
		if !r.Port.IsZero() {
			port = r.Port.String()
		}
		if !r.LocalPort.IsZero() {
			lport = r.LocalPort.String()
		}
		if !r.Expires.IsZero() {
			expires = r.Expires.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Action, r.Direction, r.Protocol,
			orDash(r.App), orDash(r.User), orDash(r.Host), remote, port, lport, expires, orDash(r.Note))
	}
	tw.Flush()
}

func rulesAdd(ctx context.Context, args []string) error {
	fs := newFlags("rules add")
	var (
		f      api.RuleForm
		asJSON = fs.Bool("json", false, "print the added rule as JSON")
	)
	fs.StringVar(&f.App, "app", "", "executable path or glob")
	fs.StringVar(&f.User, "user", "", "account name or uid")
	fs.StringVar(&f.Dir, "dir", "any", "in, out or any")
	fs.StringVar(&f.Proto, "proto", "any", "tcp, udp, icmp, icmpv6 or any")
	fs.StringVar(&f.Host, "host", "", "remote hostname, or *.example.com for its subdomains")
	fs.StringVar(&f.Remote, "remote", "", "remote IP or CIDR")
	fs.StringVar(&f.Port, "port", "", "remote port N or range N-M")
	fs.StringVar(&f.LocalPort, "local-port", "", "local port N or range N-M")
	fs.StringVar(&f.Action, "action", "", "allow, deny, reject or drop")
	fs.StringVar(&f.For, "for", "forever", "how long the rule holds: a duration (90m, 7d) or forever")
	fs.StringVar(&f.Note, "note", "", "free text shown with the rule")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	// The web UI parses its rule form with the same function: the same errors.
	r, err := f.Rule(time.Now())
	if err != nil {
		return usagef("%v", err)
	}
	added, err := client().AddRule(ctx, r)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(added)
	}
	fmt.Printf("added rule %d: %s\n", added.ID, added)
	return nil
}

func rulesRemove(ctx context.Context, args []string) error {
	fs := newFlags("rules rm")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("want the ID of the rule to remove (see 'latch rules list')")
	}
	ids := make([]engine.RuleID, len(pos))
	for i, s := range pos {
		id, err := strconv.ParseUint(s, 10, 64)
		if err != nil || id == 0 {
			return usagef("rule ID %q: want a positive number", s)
		}
		ids[i] = engine.RuleID(id)
	}
	c := client()
	for _, id := range ids {
		removed, err := c.RemoveRule(ctx, id)
		if err != nil {
			return err
		}
		fmt.Printf("removed rule %d: %s\n", removed.ID, removed)
	}
	return nil
}

func rulesExport(ctx context.Context, args []string) error {
	fs := newFlags("rules export")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	data, err := client().ExportRules(ctx)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(data)
	return err
}

func rulesImport(ctx context.Context, args []string) error {
	fs := newFlags("rules import")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "one rules file ('-' for standard input)"); err != nil {
		return err
	}
	var data []byte
	if pos[0] == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(pos[0])
	}
	if err != nil {
		return err
	}
	// Check locally first, so a broken file is reported with its name.
	if _, err := engine.ParseRules(data); err != nil {
		return fmt.Errorf("%s: %w (nothing changed)", pos[0], err)
	}
	rules, err := client().ImportRules(ctx, data)
	if err != nil {
		return err
	}
	fmt.Printf("imported %s from %s; it replaces the previous set\n", plural(len(rules), "rule"), pos[0])
	return nil
}
