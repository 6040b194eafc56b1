package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
	"github.com/latchfw/latch/internal/textesc"
)

const modeHelp = `Usage: latch mode [ask|learn|silent-allow|silent-deny|block-all] [--for DURATION]

Without a mode, prints the mode in force. With one, puts it in force; when the verb
returns, the next connection is decided in that mode.

  ask            a connection no rule decides is a question for a person (default)
  learn          a connection no rule decides is allowed, and a rule that would allow
                 it is kept as a suggestion ('latch suggestions')
  silent-allow   a connection no rule decides is allowed, unasked
  silent-deny    a connection no rule decides is denied, unasked
  block-all      every new connection is denied, whatever the rules say (a panic
                 switch), except loopback and latch's own; 'latch mode ask' undoes it

  --for DURATION the mode ends by itself after DURATION (90m, 7d) and the mode before
                 it returns, even across a daemon restart
`

const pauseHelp = `Usage: latch pause DURATION

Allows every connection no rule decides, unasked (silent-allow), for DURATION (10m,
2h, 1d); then the mode before returns by itself, even across a daemon restart.
'latch mode ask' ends a pause early.
`

const suggestionsHelp = `Usage: latch suggestions [--json]
       latch suggestions accept ID...|--all

Lists the rules learn mode suggests, grouped by program: each would allow connections
that learn mode let through. 'accept' turns suggestions into rules.
`

func runMode(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("mode", flag.ContinueOnError)
	forDur := fs.String("for", "", "")
	asJSON := fs.Bool("json", false, "")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	c := client()
	var st engine.ModeState
	switch len(pos) {
	case 0:
		if *forDur != "" {
			return usagef("--for needs a mode")
		}
		st, err = c.Mode(ctx)
	case 1:
		if _, perr := engine.ParseMode(pos[0]); perr != nil {
			return usagef("%v", perr)
		}
		st, err = c.SetMode(ctx, api.ModeRequest{Mode: pos[0], For: *forDur})
	default:
		return usagef("mode: one mode at most")
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(st)
	}
	fmt.Println(describeMode(st))
	return nil
}

// describeMode is a mode state in words, e.g. "silent-allow until 15:04:05 (then ask)".
func describeMode(st engine.ModeState) string {
	if st.Until.IsZero() {
		return st.Mode.String()
	}
	return fmt.Sprintf("%s until %s (then %s)", st.Mode, st.Until.Local().Format("2006-01-02 15:04:05"), st.Then)
}

func runPause(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pause", flag.ContinueOnError)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("pause: want a duration, e.g. latch pause 10m")
	}
	if d, err := engine.ParseFor(pos[0]); err != nil || d <= 0 {
		return usagef("pause %q: want a duration such as 10m, 2h or 1d", pos[0])
	}
	st, err := client().SetMode(ctx, api.ModeRequest{Mode: engine.ModeSilentAllow.String(), For: pos[0]})
	if err != nil {
		return err
	}
	fmt.Println(describeMode(st))
	return nil
}

func runSuggestions(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "accept" {
		fs := flag.NewFlagSet("suggestions accept", flag.ContinueOnError)
		all := fs.Bool("all", false, "")
		pos, err := parseFlags(fs, args[1:])
		if err != nil {
			return err
		}
		if *all == (len(pos) > 0) {
			return usagef("suggestions accept: give suggestion IDs or --all")
		}
		var ids []engine.SuggestionID
		for _, p := range pos {
			id, err := api.ParseSuggestionID(p)
			if err != nil {
				return usagef("%v", err)
			}
			ids = append(ids, id)
		}
		added, err := client().AcceptSuggestions(ctx, ids, *all)
		if err != nil {
			return err
		}
		for _, r := range added {
			fmt.Println("added", r)
		}
		if len(added) == 0 {
			fmt.Println("no suggestions to accept")
		}
		return nil
	}
	fs := flag.NewFlagSet("suggestions", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("suggestions: unexpected %q (did you mean 'suggestions accept'?)", pos[0])
	}
	ss, stats, err := client().Suggestions(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		for _, s := range ss {
			if err := enc.Encode(s); err != nil {
				return err
			}
		}
		return nil
	}
	return printSuggestions(os.Stdout, ss, stats)
}

// printSuggestions shows suggestions as text: each program's path on a line of its
// own, then its suggestions, one a line. The path and the host name are fields (a
// value with a space is in double quotes, see README "Text output"), and a host
// named "any" is quoted too, apart from "any" for no destination.
func printSuggestions(w io.Writer, ss []engine.Suggestion, stats engine.SuggestionStats) error {
	if len(ss) == 0 {
		fmt.Fprintln(w, "no suggestions (learn mode records them: latch mode learn)")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	app := ""
	for i, s := range ss {
		if i == 0 || s.Rule.App != app {
			app = s.Rule.App
			fmt.Fprintf(tw, "%s\n", exeOrUnknown(app))
		}
		r := s.Rule
		dest := "any"
		switch {
		case r.Host == "any":
			dest = textesc.Quote(r.Host)
		case r.Host != "":
			dest = field(r.Host)
		case r.Remote.IsValid():
			dest = r.Remote.String()
		}
		fmt.Fprintf(tw, "  %d\t%s %s\t%s\tport %s\t%d connections\tlast %s\n", s.ID, r.Direction, r.Protocol,
			dest, r.Port, s.Count, s.Last.Local().Format("2006-01-02 15:04:05"))
	}
	if stats.Unnamed > 0 || stats.Dropped > 0 {
		fmt.Fprintf(tw, "(%d connections of unverified programs and %d beyond %d suggestions were allowed without a suggestion)\n",
			stats.Unnamed, stats.Dropped, engine.MaxSuggestions)
	}
	return tw.Flush()
}

// suggestionsSaveInterval is how often the daemon saves new suggestions (and on a clean
// stop); a crash loses at most this much learning.
const suggestionsSaveInterval = 10 * time.Second

// keepMode puts the saved mode in force (a pause that ended while the daemon was down
// has ended: the mode after it applies), else def; saves every change of the mode;
// loads the saved suggestions and saves new ones until the returned func is called.
func keepMode(eng *engine.Engine, stateDir string, def engine.Mode, logf func(string, ...any)) (stop func(), err error) {
	modePath := filepath.Join(stateDir, store.ModeFileName)
	st, ok, err := store.LoadMode(modePath)
	if err != nil {
		return nil, fmt.Errorf("%w (move it away to start in the --mode mode)", err)
	}
	if !ok {
		st = engine.ModeState{Mode: def}
	}
	eng.OnModeChanged(func(s engine.ModeState) {
		if err := store.SaveMode(modePath, s); err != nil {
			logf("%v", err)
		}
	})
	if ok {
		if err := eng.SetMode(st); err != nil {
			return nil, fmt.Errorf("mode file %s: %w", modePath, err)
		}
	} else if err := eng.SetMode(st); err != nil {
		return nil, err
	}
	sugPath := filepath.Join(stateDir, store.SuggestionsFileName)
	if ss, err := store.LoadSuggestions(sugPath); err != nil {
		logf("%v; starting without suggestions", err)
	} else if err := eng.RestoreSuggestions(ss); err != nil {
		logf("suggestions file %s: %v; starting without suggestions", sugPath, err)
	}
	saved := eng.SuggestionsGeneration()
	save := func() {
		gen := eng.SuggestionsGeneration()
		if gen == saved {
			return
		}
		if err := store.SaveSuggestions(sugPath, eng.Suggestions()); err != nil {
			logf("%v", err)
			return
		}
		saved = gen
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(suggestionsSaveInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				save()
			case <-done:
				save()
				return
			}
		}
	}()
	return func() { close(done); <-finished }, nil
}

// modeFlagHelp is the --mode line of the daemon's help.
var modeFlagHelp = "  --mode " + strings.Join([]string{"ask", "learn", "silent-allow", "silent-deny", "block-all"}, "|") + `
                           mode at start when 'latch mode' or 'latch pause' has not set one
                           (kept in mode.json in the state directory) (default ask)
`
