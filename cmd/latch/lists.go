package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/blocklist"
)

const listsHelp = `Usage:
  latch lists [--json]                    the blocklists in force
  latch lists add NAME FILE --action deny load FILE as list NAME (replacing a list of that name)
  latch lists rm NAME                     take list NAME out of force
  latch lists update                      read every list's file again (all or nothing)

A list holds domains and addresses, in any of these formats, one entry a line:
hosts file lines (0.0.0.0 ads.example.com), plain domains, AdBlock ||domain^ rules,
addresses and CIDR prefixes. A domain also lists every name below it. A connection to
a listed hostname (as the program resolved it itself, not a name another
program's lookup gave the address) or address gets the list's action,
after the rules that name a program (an app rule overrides a list) and before rules
that name none. latch reads FILE, with your rights, and sends it to the daemon, which
keeps a copy (FILE must be a regular file, at most 64 MiB); a bad line is an error and
nothing changes. update reads each list's FILE again the same way.
`

func runLists(ctx context.Context, args []string) error {
	c := client()
	var infos []blocklist.Info
	var err error
	sub := ""
	if len(args) > 0 {
		sub = args[0]
	}
	switch sub {
	case "add":
		fs := newFlags("lists add")
		action := fs.String("action", "", "allow, deny, reject or drop")
		pos, perr := parseFlags(fs, args[1:])
		if perr != nil {
			return perr
		}
		if len(pos) != 2 || *action == "" {
			return usagef("lists add: want NAME FILE --action deny|reject|drop|allow")
		}
		path, aerr := filepath.Abs(pos[1])
		if aerr != nil {
			return aerr
		}
		// Read here, with the rights of whoever runs this: the daemon reads no file a
		// client names.
		data, rerr := blocklist.ReadFile(path)
		if rerr != nil {
			return fmt.Errorf("lists add %s: %w", pos[0], rerr)
		}
		content := string(data)
		infos, err = c.AddList(ctx, api.ListRequest{Name: pos[0], Path: path, Action: *action, Content: &content})
	case "rm":
		if len(args) != 2 {
			return usagef("lists rm: want NAME")
		}
		infos, err = c.RemoveList(ctx, args[1])
	case "update":
		if infos, err = c.Lists(ctx); err != nil {
			return err
		}
		req := api.ListsUpdate{Lists: []api.ListContents{}}
		for _, in := range infos {
			data, rerr := blocklist.ReadFile(in.Path)
			if rerr != nil {
				return fmt.Errorf("lists update: list %s: %w (no list was updated)", in.Name, rerr)
			}
			content := string(data)
			req.Lists = append(req.Lists, api.ListContents{Name: in.Name, Path: in.Path, Content: &content})
		}
		infos, err = c.UpdateLists(ctx, req)
	default:
		fs := newFlags("lists")
		asJSON := fs.Bool("json", false, "")
		pos, perr := parseFlags(fs, args)
		if perr != nil {
			return perr
		}
		if len(pos) > 0 {
			return usagef("lists: unknown subcommand %q: want add, rm or update", pos[0])
		}
		if infos, err = c.Lists(ctx); err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			for _, in := range infos {
				if err := enc.Encode(in); err != nil {
					return err
				}
			}
			return nil
		}
	}
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		fmt.Println("no lists")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tACTION\tDOMAINS\tPREFIXES\tFILE\tSTATE")
	for _, in := range infos {
		state := "loaded " + in.Loaded.Local().Format("2006-01-02 15:04:05")
		if in.Error != "" {
			state = "not applied: " + in.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", field(in.Name), in.Action, in.Stats.Domains, in.Stats.Prefixes, field(in.Path), field(state))
	}
	return tw.Flush()
}
