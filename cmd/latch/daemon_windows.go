package main

import (
	"context"
	"errors"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept/windows"
	"github.com/latchfw/latch/internal/winsvc"
)

// defaultStateDir is %ProgramData%\latch.
var defaultStateDir = winsvc.DataDir()

// newBackend connects to latch's WFP callout driver through its Filter Manager port.
func newBackend(o *daemonOptions, logf func(string, ...any)) (*platformBackend, error) {
	be, err := windows.New(windows.Config{Default: o.Default, PromptTimeout: o.PromptTimeout, Logf: logf})
	if err != nil {
		return nil, err
	}
	return &platformBackend{
		Backend:     be,
		attribution: func() []string { return []string{"wfp-driver"} }, // pid and image path come with each request
		close:       func() {},
		// The driver's verdict cache is emptied before a rule change returns.
		followRules: be.FollowRules,
		cacheOff:    be.CacheOff,
		// Connections the driver's cache decided come back as records: history rows.
		recordHits: func(record func(*engine.Request, engine.Verdict)) { be.RecordHits(record) },
	}, nil
}

const cleanupHelp = `Usage: latch cleanup

On Windows the driver removes its filters itself when it unloads; there is nothing
to clean up.
`

func runCleanup(ctx context.Context, args []string) error {
	return errors.New("not needed on Windows: the driver's filters live in a dynamic WFP session and vanish with it")
}

// checkAttributionCgroup refuses --attribution-cgroup: Windows has no cgroups.
func checkAttributionCgroup(dir string) error {
	return errors.New("only on Linux (a cgroup v2 directory)")
}
