package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/managed"
)

const reloadHelp = `Usage: latch reload

Makes the daemon read its managed rule files (--managed-rules DIR, default
/etc/latch/rules.d) again, as SIGHUP and a change in the directory do. All or
nothing: a bad file keeps the rules in force and is named with its line.
`

// defaultManagedRules is where configuration management puts rule files.
func defaultManagedRules() string {
	if runtime.GOOS == "windows" {
		return filepath.Join(defaultStateDir, "rules.d")
	}
	return "/etc/latch/rules.d"
}

// startManaged puts the managed rule files of dir in force (an error refuses to
// start, like a bad rules file) and reloads them on SIGHUP and on a change in dir,
// until ctx is done. It returns the reload function (for `latch reload`).
func startManaged(ctx context.Context, dir string, eng *engine.Engine, logf func(string, ...any)) (func() (string, error), error) {
	if dir == "" {
		reload := func() (string, error) {
			return "nothing to reload: no managed rules directory (--managed-rules \"\")", nil
		}
		onHangup(ctx, func() { msg, _ := reload(); logf("%s", msg) }) // SIGHUP must not end the daemon
		return reload, nil
	}
	var mu sync.Mutex
	load := func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		rules, err := managed.Load(dir)
		if err == nil {
			err = eng.SetManaged(rules)
		}
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("managed rules: %s from %s", plural(len(rules), "rule"), dir), nil
	}
	msg, err := load()
	if err != nil {
		return nil, fmt.Errorf("%w\n(fix the file, or move it out of %s)", err, dir)
	}
	logf("%s", msg)
	reload := func() (string, error) {
		msg, err := load()
		if err != nil {
			n := len(eng.Rules()) - len(engine.OwnRules(eng.Rules()))
			err = fmt.Errorf("managed rules not reloaded, the %s in force stay: %w", plural(n, "managed rule"), err)
			logf("%v", err)
			return "", err
		}
		logf("reloaded %s", msg)
		return msg, nil
	}
	onHangup(ctx, func() { reload() })
	if err := managed.Watch(ctx, dir, func() { reload() }); err != nil {
		logf("managed rules: not watching for changes (SIGHUP and 'latch reload' still reload): %v", err)
	}
	return reload, nil
}

func runReload(ctx context.Context, args []string) error {
	fs := newFlags("reload")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	msg, err := client().Reload(ctx)
	if err != nil {
		return err
	}
	fmt.Println(msg)
	return nil
}

// onHangup calls fn on each SIGHUP until ctx is done.
func onHangup(ctx context.Context, fn func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				fn()
			}
		}
	}()
}
