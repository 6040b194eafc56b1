// Command latch is latch's one binary: the daemon that holds every new connection
// until it is decided, and the command line that talks to it over the local API.
//
// Run `latch help` for the verbs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/config"
	"github.com/latchfw/latch/internal/textesc"
	"github.com/latchfw/latch/internal/winsvc"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func latchVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

const usage = `latch: a per-application firewall. Every new connection waits until latch decides it.

Usage: latch VERB [flags] [args]

Daemon:
  daemon [flags]            hold and decide new connections (run as root); see 'latch help daemon'
  cleanup [--queue N]       remove netfilter rules a crashed daemon left behind
  boot-protect [flags]      before the daemon starts (at boot): drop every new connection
                            the daemon would hold, until it takes over (Linux)
  config check FILE         check a daemon configuration file (` + config.DefaultPath + `)
  service install|uninstall|start|stop|status
                            run the daemon as a Windows service (Windows only)

Rules:
  rules list [--json]       show the rules in force
  rules add [flags]         add a rule; see 'latch help rules'
  rules rm ID               remove rule ID
  rules export              print the rule set as a rules file
  rules import FILE         replace the rule set with FILE's ('-': standard input);
                            --merge adds to it, --dry-run shows the difference only
  reload                    read the managed rule files (/etc/latch/rules.d) again

Questions:
  prompts [--json]          list connections waiting for a decision
  answer ID allow|deny|reject|drop [--for once|DURATION|forever] [--scope SCOPE]
                            decide question ID; unless once, remember it as a rule
  watch                     show each new question as it arrives and answer it by key

Modes:
  mode [MODE] [--for DUR]   show or set the mode: ask, learn, silent-allow, silent-deny,
                            block-all; see 'latch help mode'
  pause DURATION            allow without asking (silent-allow) for DURATION, then go back
  suggestions [accept ID...|--all]
                            rules learn mode suggests, by program; accept turns them into rules

Blocklists:
  lists [add NAME FILE --action deny|rm NAME|update]
                            domain and address lists (hosts, plain, AdBlock, CIDR); see 'latch help lists'

History and state:
  conns [--json] [--follow] [-n N]   recent connections and their verdicts
  top [--range DUR] [--by total|rate] [--json]
                            programs by bytes moved: current rate and total over a range
  status [--json]           backend, mode, counters, pending questions
  explain [flags]           which rule would decide a connection, and why; see 'latch help explain'
  events --follow [--json]  every event (latch.event/1) as it happens

Web UI (the daemon's --web):
  web url                   print a one-time login URL
  web open                  open it in the browser
  notify                    show questions as desktop notifications (Allow/Deny/Open)
  version                   print latch's version
  help [VERB]               this text, or a verb's flags; help --man: the man page (roff)
  completion bash|zsh|fish  shell completion script

Every verb but daemon talks to the daemon's API at ` + api.DefaultPath + `
(the LATCH_API environment variable, or --api on the daemon, sets another).
Exit status: 0 done, 1 failed, 2 usage error.
`

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// errHelp means the user asked for a verb's help, which was printed.
var errHelp = errors.New("help shown")

type verb struct {
	run  func(ctx context.Context, args []string) error
	help string
}

var verbs map[string]verb

func init() {
	verbs = map[string]verb{
		"daemon":      {runDaemon, daemonHelp},
		"cleanup":     {runCleanup, cleanupHelp},
		"rules":       {runRules, rulesHelp},
		"prompts":     {runPrompts, promptsHelp},
		"answer":      {runAnswer, answerHelp},
		"watch":       {runWatch, watchHelp},
		"conns":       {runConns, connsHelp},
		"top":         {runTop, topHelp},
		"status":      {runStatus, statusHelp},
		"explain":     {runExplain, explainHelp},
		"events":      {runEvents, eventsHelp},
		"web":         {runWeb, webHelp},
		"notify":      {runNotify, notifyHelp},
		"service":     {runService, winsvc.Usage},
		"mode":        {runMode, modeHelp},
		"pause":       {runPause, pauseHelp},
		"suggestions": {runSuggestions, suggestionsHelp},
		"lists":       {runLists, listsHelp},
		"version":     {runVersion, "Usage: latch version\n\nPrints latch's version.\n"},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && args[1] == "--man" {
			if err := writeMan(stdout); err != nil {
				fmt.Fprintf(stderr, "latch help --man: %v\n", err)
				return 1
			}
			return 0
		}
		if len(args) > 1 {
			if v, ok := verbs[args[1]]; ok {
				fmt.Fprint(stdout, v.help)
				return 0
			}
			fmt.Fprintf(stderr, "latch help: unknown verb %q\n", args[1])
			return 2
		}
		fmt.Fprint(stdout, usage)
		return 0
	case "-version", "--version":
		name = "version"
	}
	v, ok := verbs[name]
	if !ok {
		fmt.Fprintf(stderr, "latch: unknown verb %q\nRun 'latch help' for usage.\n", name)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := v.run(ctx, args[1:])
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, v.help)
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "latch %s: %s\nRun 'latch help %s' for usage.\n", name, textesc.Message(err.Error()), name)
		return 2
	default:
		// An error may quote what it failed on: a path, a name, the daemon's answer.
		fmt.Fprintf(stderr, "latch %s: %s\n", name, textesc.Message(err.Error()))
		return 1
	}
}

// newFlags returns a flag set that reports errors as usage errors instead of printing.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags parses args, allowing flags after positional arguments
// ("latch answer 3 allow --for 1h"), and returns the positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, usagef("%v", err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// A "--" ends the flags: everything after it is positional.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseFlagsOnly is parseFlags for a verb that takes no positional arguments.
func parseFlagsOnly(fs *flag.FlagSet, args []string) error {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	return wantArgs(pos, 0, "")
}

// wantArgs checks the number of positional arguments.
func wantArgs(pos []string, n int, what string) error {
	if len(pos) != n {
		if n == 0 {
			return usagef("unexpected argument %q", pos[0])
		}
		return usagef("want %s, got %d argument(s)", what, len(pos))
	}
	return nil
}

func runService(ctx context.Context, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		return errHelp
	}
	if err := winsvc.Command(args); err != nil {
		// winsvc's messages already say "latch service: ". One that ends with the
		// usage text is a usage error: run() escapes the message into one line, so
		// the usage is pointed to instead.
		msg := strings.TrimPrefix(err.Error(), "latch service: ")
		if m, ok := strings.CutSuffix(msg, "\n"+winsvc.Usage); ok {
			return usagef("%s", m)
		}
		return errors.New(msg)
	}
	return nil
}

func client() *api.Client { return api.NewClient("") }

func runVersion(ctx context.Context, args []string) error {
	fs := newFlags("version")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	fmt.Printf("latch %s (%s %s/%s)\n", latchVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}

// plural returns "1 rule" or "2 rules".
func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// field shows a value from outside (a path, a name, a note) in a table or a line:
// escaped by the one rule of internal/textesc, and in double quotes when it holds a
// space or a double quote or could pass for a placeholder ("-", "(unknown)"), so that
// it never looks like more columns, other fields or none; "-" when empty.
func field(s string) string {
	switch {
	case s == "":
		return "-"
	case needsQuotes(s):
		return textesc.Quote(s)
	}
	return textesc.String(s)
}

// shortField is field in at most width cells, cut in the middle where it is longer
// (see textesc.Shorten); width <= 0 means no limit. It reports whether it cut.
func shortField(s string, width int) (string, bool) {
	switch {
	case s == "":
		return "-", false
	case width <= 0:
		return field(s), false
	case needsQuotes(s):
		return textesc.ShortenQuoted(s, width)
	}
	return textesc.Shorten(s, width)
}

func needsQuotes(s string) bool {
	return s == "-" || s == "(unknown)" || strings.ContainsAny(s, ` "`)
}

// orDash shows empty fields in tables.
func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// printJSONLines writes one JSON object per line, the --json form of every list verb.
func printJSONLines[T any](items []T) error {
	enc := json.NewEncoder(os.Stdout)
	for _, it := range items {
		if err := enc.Encode(it); err != nil {
			return err
		}
	}
	return nil
}
