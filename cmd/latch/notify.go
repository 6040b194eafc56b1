package main

import (
	"context"
	"fmt"
	"os"

	"github.com/godbus/dbus/v5"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/notify"
	"github.com/latchfw/latch/internal/weblaunch"
)

const notifyHelp = `Usage: latch notify [--for once|DURATION|forever] [--scope SCOPE]

Runs in your desktop session and shows each new question as a desktop notification
(freedesktop.org notifications over D-Bus) with Allow, Deny and Open actions: Allow
and Deny answer it (--for and --scope say how: default once, app+host+port); Open
opens the web UI (the daemon's --web). When the daemon stops, the notifications go
away and latch notify waits for it to come back. Needs access to the API: root, or a
member of the daemon's --api-group. Stop it with Ctrl-C.
`

func runNotify(ctx context.Context, args []string) error {
	fs := newFlags("notify")
	forStr := fs.String("for", "once", "how long an answer holds: once, a duration, or forever")
	scope := fs.String("scope", "app+host+port", "what the remembered rule matches: app, app+host, app+port, app+host+port")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if _, err := engine.ParseFor(*forStr); err != nil {
		return usagef("--for: %v", err)
	}
	if _, err := engine.ParseScope(*scope); err != nil {
		return usagef("--scope: %v", err)
	}
	bus, err := dbus.ConnectSessionBus()
	if err != nil {
		return fmt.Errorf("desktop session bus: %w (latch notify runs in a desktop session)", err)
	}
	defer bus.Close()
	return notify.Run(ctx, notify.Config{
		API: client(), Bus: bus, For: *forStr, Scope: *scope,
		Open: weblaunch.Open, // never the token on a command line
		Logf: func(format string, a ...any) { fmt.Fprintf(os.Stderr, "latch notify: "+format+"\n", a...) },
	})
}
