package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/encdns"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/procattr"
	"github.com/latchfw/latch/internal/textesc"
)

const rulesHelp = `Usage:
  latch rules list [--json]
  latch rules add --action allow|deny|reject|drop [match flags] [--for DURATION|forever] [--note TEXT]
  latch rules rm ID
  latch rules export > FILE
  latch rules import [--merge] [--dry-run] FILE   (FILE '-' reads standard input)
  latch rules preset block-encrypted-dns [--list FILE] [--print]

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

Identity beyond the executable (each narrows the rule; see README "Program identity"):
  --cmdline GLOB      the arguments joined by single spaces, argv[0] first; '*' matches
                      any run of characters, '/' and spaces included. Needs --app: the
                      command line is what the process says about itself, so it only
                      narrows a rule for a verified executable ("allow this script,
                      not every python3")
  --parent PATH|GLOB  any ancestor (up to 8 up) whose executable is verified like --app's
  --unit NAME         the systemd system unit (from the cgroup under system.slice)
  --container ID|NAME a container: its id (12+ leading hex digits do), its name (lxc,
                      machined; docker and podman as the runtime names it now, so a
                      new container given the name matches too), RUNTIME:NAME, or
                      RUNTIME:ID as 'latch conns' shows it
  --pin               pin the executable's content (SHA-256 of the file at --app now):
                      the rule stops matching when the file changes, and the question
                      then says "the program at PATH changed since you allowed it"
  --service NAME      Windows: a service the process hosts (svchost.exe), e.g. Dnscache
  --app-id ID         flatpak (app-flatpak-ID-*.scope) or snap (snap.NAME.*) app id;
                      needs --user: the name comes from cgroups the user's own programs
                      can name

Actions: allow lets the connection through; deny fails it at once (TCP reset);
reject also answers UDP/ICMP with ICMP unreachable; drop discards silently.
--for makes the rule expire (90m, 12h, 7d); forever (the default) never does;
until-reboot ends it with this boot of the machine.

Precedence: the most specific matching rule wins (exact app > app glob > any app; then
host: exact name > *.wildcard (more labels first) > none; then narrower remote,
narrower port, user, more identity fields, local port, protocol, direction); at equal
specificity deny/reject/drop beat allow, then the lower ID.

'rules import' replaces the whole rule set, all or nothing; its file is the format
'rules export' prints, which is also the daemon's rules.json. --merge adds the file's
rules that are not in the set yet and keeps the rest; --dry-run prints what would be
added (+), removed (-) and changed (~), and changes nothing.
Managed rules (SOURCE managed:FILE, from the daemon's --managed-rules directory) are
read-only: change their file, then 'latch reload'. Import leaves them as they are.

'rules preset block-encrypted-dns' adds deny rules for encrypted DNS: TCP and UDP port
853 to anywhere (DNS over TLS/QUIC), and port 443 of every service of the list shipped
with latch, or of --list FILE (DNS over HTTPS). FILE has one endpoint a line: an
address, a CIDR prefix or a hostname, then the service's name; '#' starts a comment.
The rules name no program: an allow rule for an app is more specific and still wins.
--print shows the rules (as 'rules export' would) instead of adding them.
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
	case "preset":
		return rulesPreset(ctx, args[1:])
	case "-h", "-help", "--help", "help":
		return errHelp
	}
	return usagef("unknown subcommand %q: want list, add, rm, export, import or preset", args[0])
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
	hits, err := ruleHitsByID(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printRulesJSON(os.Stdout, rules, hits)
	}
	printRules(os.Stdout, rules, hits)
	return nil
}

func printRules(w io.Writer, rules []engine.Rule, hits map[engine.RuleID]engine.RuleHits) {
	if len(rules) == 0 {
		fmt.Fprintln(w, "no rules")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tACTION\tDIR\tPROTO\tAPP\tUSER\tHOST\tREMOTE\tPORT\tLOCAL-PORT\tEXPIRES\tHITS\tLAST-HIT\tNOTE\tSOURCE")
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
		h := hits[r.ID]
		last := "never"
		if !h.LastHit.IsZero() {
			last = h.LastHit.Local().Format(time.DateTime)
		}
		source := "own"
		if r.Source != "" {
			source = "managed:" + r.Source
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.ID, r.Action, r.Direction, r.Protocol,
			field(r.App), field(r.User), field(r.Host), remote, port, lport, expires, h.Hits, last, field(r.Note), field(source))
	}
	tw.Flush()
}

func rulesAdd(ctx context.Context, args []string) error {
	fs := newFlags("rules add")
	fs.String("app", "", "executable path or glob")
	fs.String("user", "", "account name or uid")
	fs.String("dir", "any", "in, out or any")
	fs.String("proto", "any", "tcp, udp, icmp, icmpv6 or any")
	fs.String("host", "", "remote hostname, or *.example.com for its subdomains")
	fs.String("remote", "", "remote IP or CIDR")
	fs.String("port", "", "remote port N or range N-M")
	fs.String("local-port", "", "local port N or range N-M")
	fs.String("action", "", "allow, deny, reject or drop")
	forStr := fs.String("for", "forever", "how long the rule holds: a duration (90m, 7d) or forever")
	fs.String("note", "", "free text shown with the rule")
	fs.String("cmdline", "", "glob over the command line (needs --app)")
	fs.String("parent", "", "path or glob of any (verified) ancestor's executable")
	fs.String("unit", "", "systemd system unit, e.g. nginx.service")
	fs.String("container", "", "container id, name or RUNTIME:ID (with --app: that container's program at the path it sees)")
	fs.String("app-id", "", "flatpak or snap app id (needs --user)")
	fs.String("service", "", "Windows: a service the process hosts (svchost.exe)")
	pin := fs.Bool("pin", false, "pin the executable's SHA-256: the rule stops matching when the file changes")
	asJSON := fs.Bool("json", false, "print the added rule as JSON")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	// The flags given, as the fields of a rule: the API's parser reads them (and the web
	// UI's rule form goes through the same api.ParseRuleFields), so that all say the
	// same about the same mistake. Flags left out match anything; a flag given empty
	// is an error.
	var f engine.RuleFields
	field := map[string]**string{
		"app": &f.App, "user": &f.User, "dir": &f.Direction, "proto": &f.Protocol, "host": &f.Host,
		"remote": &f.Remote, "port": &f.Port, "local-port": &f.LocalPort, "action": &f.Action, "note": &f.Note,
		"cmdline": &f.Cmdline, "parent": &f.Parent, "unit": &f.Unit, "container": &f.Container, "app-id": &f.AppID, "service": &f.Service,
	}
	fs.Visit(func(fl *flag.Flag) {
		if dst, ok := field[fl.Name]; ok {
			v := fl.Value.String()
			*dst = &v
		}
	})
	if *pin {
		if f.App == nil {
			return usagef("--pin needs --app PATH: a pin is the content of one file")
		}
		sum, err := procattr.HashFile(*f.App)
		if err != nil {
			return fmt.Errorf("--pin: hashing %s: %w", textesc.String(*f.App), err)
		}
		f.SHA256 = &sum
	}
	r, err := api.ParseRuleFields(f, *forStr, time.Now())
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
	merge := fs.Bool("merge", false, "add the file's rules to the set instead of replacing it")
	dryRun := fs.Bool("dry-run", false, "print what would be added, removed and changed; change nothing")
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
	incoming, err := engine.ParseRules(data)
	if err != nil {
		return fmt.Errorf("%s: %w (nothing changed)", textesc.String(pos[0]), err)
	}
	if !*merge && !*dryRun {
		rules, err := client().ImportRules(ctx, data)
		if err != nil {
			return err
		}
		fmt.Printf("imported %s from %s; it replaces the previous set\n", plural(len(rules), "rule"), pos[0])
		return nil
	}
	c := client()
	current, err := c.Rules(ctx)
	if err != nil {
		return err
	}
	own := engine.OwnRules(current)
	var want []engine.Rule
	if *merge {
		want = engine.MergeRules(own, engine.OwnRules(incoming))
	} else {
		want = engine.OwnRules(incoming)
	}
	d := engine.DiffRules(own, want)
	if *dryRun {
		printDiff(os.Stdout, d)
		fmt.Printf("dry run: %d added, %d removed, %d changed; nothing changed\n", len(d.Added), len(d.Removed), len(d.Changed))
		return nil
	}
	rules, err := c.ImportRules(ctx, engine.MarshalRules(want))
	if err != nil {
		return err
	}
	fmt.Printf("merged %s from %s: %d added; %s in force\n", plural(len(incoming), "rule"), textesc.String(pos[0]), len(d.Added), plural(len(engine.OwnRules(rules)), "own rule"))
	return nil
}

// printDiff prints a rule set difference, one rule a line: + added, - removed,
// ~ changed (old, then new).
func printDiff(w io.Writer, d engine.RulesDiff) {
	for _, r := range d.Added {
		fmt.Fprintf(w, "+ %s\n", ruleLine(r))
	}
	for _, r := range d.Removed {
		fmt.Fprintf(w, "- %s\n", ruleLine(r))
	}
	for _, c := range d.Changed {
		fmt.Fprintf(w, "~ %s\n  -> %s\n", ruleLine(c.Old), ruleLine(c.New))
	}
}

func ruleLine(r engine.Rule) string {
	if r.ID == 0 {
		return "(new) " + strings.TrimPrefix(r.String(), "#0 ")
	}
	return r.String()
}

// rulesPreset adds a named set of rules; block-encrypted-dns is the one there is.
func rulesPreset(ctx context.Context, args []string) error {
	fs := newFlags("rules preset")
	list := fs.String("list", "", "encrypted DNS services, replacing the shipped list")
	print := fs.Bool("print", false, "show the rules instead of adding them")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a preset name: block-encrypted-dns"); err != nil {
		return err
	}
	if pos[0] != "block-encrypted-dns" {
		return usagef("preset %q: want block-encrypted-dns", pos[0])
	}
	l := encdns.Shipped()
	if *list != "" {
		if l, err = encdns.Load(*list); err != nil {
			return err
		}
	}
	rules := l.BlockRules()
	if *print {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rules)
	}
	for _, r := range rules {
		added, err := client().AddRule(ctx, r)
		if err != nil {
			return fmt.Errorf("preset block-encrypted-dns: %w", err)
		}
		fmt.Printf("added rule %d: %s\n", added.ID, added)
	}
	return nil
}
