package main

import (
	"context"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/config"
	"github.com/latchfw/latch/internal/docgen"
)

const completionHelp = `Usage: latch completion bash|zsh|fish

Prints the shell completion script for latch's verbs and their flags.
The packages install them; by hand, e.g.: latch completion bash > /etc/bash_completion.d/latch
`

// docPage is latch's help as docgen renders it.
func docPage() *docgen.Page {
	p := &docgen.Page{
		Command: "latch", Section: 8, Version: latchVersion(), Date: docDate(),
		Summary: "per-application firewall: every new connection waits until latch decides it",
		Usage:   usage,
		Files: map[string]string{
			config.DefaultPath:   "the daemon's configuration: one key per daemon flag (latch config check FILE)",
			defaultStateDir:      "rules (rules.json) and connection history (history.db)",
			api.DefaultPath:      "the daemon's local API, for root only",
			"/etc/latch/rules.d": "managed rule files (*.json, the 'rules export' format), read-only beside your rules (--managed-rules)",
		},
		SeeAlso: []string{"systemctl(1)", "iptables(8)", "nft(8)"},
	}
	for name, v := range verbs {
		p.Verbs = append(p.Verbs, docgen.Verb{Name: name, Help: v.help})
	}
	return p
}

// docDate is SOURCE_DATE_EPOCH (reproducible builds), else the commit's time, else now.
func docDate() time.Time {
	if s, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
		return time.Unix(s, 0).UTC()
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.time" {
				if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
					return t.UTC()
				}
			}
		}
	}
	return time.Now().UTC()
}

func writeMan(w io.Writer) error { return docgen.Man(w, docPage()) }

func runCompletion(ctx context.Context, args []string) error {
	fs := newFlags("completion")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "bash, zsh or fish"); err != nil {
		return err
	}
	switch pos[0] {
	case "bash", "zsh", "fish":
	default:
		return usagef("completion %q: want bash, zsh or fish", pos[0])
	}
	return docgen.Completion(os.Stdout, pos[0], docPage())
}
