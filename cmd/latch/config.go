package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"path/filepath"
	"regexp"
	"runtime"

	"github.com/latchfw/latch/internal/config"
)

const configHelp = `Usage: latch config check FILE

Checks a configuration file as the daemon would read it: every key must be a flag
of 'latch daemon' (without the leading --) with a value of its type, e.g.

  prompt-timeout = "30s"
  inbound = true
  queue = 4242

Exit status 0 when the file is good; otherwise FILE:LINE: key "NAME": what is wrong.
The daemon reads ` + config.DefaultPath + ` (or --config FILE); flags on its command
line override the file.
`

// daemonConfig is the daemon's --config flag and what the file set.
type daemonConfig struct {
	path     string
	explicit bool // --config given: a missing file is an error
	src      *config.Sources
}

// addConfigFlag adds --config to the daemon's flag set.
func addConfigFlag(fs *flag.FlagSet) *daemonConfig {
	c := &daemonConfig{}
	fs.StringVar(&c.path, "config", defaultConfigPath(), "")
	return c
}

// defaultConfigPath is /etc/latch/latch.toml; on Windows %ProgramData%\latch\latch.toml.
func defaultConfigPath() string {
	if runtime.GOOS == "windows" {
		return filepath.Join(defaultStateDir, "latch.toml")
	}
	return config.DefaultPath
}

// parse parses args, then fills every flag not given on the command line from the
// configuration file.
func (c *daemonConfig) parse(fs *flag.FlagSet, args []string) error {
	if daemonFlagsSeen != nil {
		daemonFlagsSeen(fs)
	}
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	c.explicit = set["config"]
	if c.path == "" {
		return nil // --config "": no file
	}
	src, err := config.ApplyFile(fs, c.path, set, "config")
	if err != nil {
		if errors.Is(err, iofs.ErrNotExist) && !c.explicit {
			return nil
		}
		return err
	}
	c.src = src
	return nil
}

// daemonFlagsSeen, when set (by tests), is shown the daemon's complete flag set.
var daemonFlagsSeen func(*flag.FlagSet)

var flagInErr = regexp.MustCompile(`^--([a-z0-9-]+)`)

// explain turns a check of a flag's value ("--queue 0: want 1 to 65535") into an
// error at the file's line when the value came from the file.
func (c *daemonConfig) explain(err error) error {
	if err == nil || c.src == nil {
		return err
	}
	var ue *usageError
	if !errors.As(err, &ue) {
		return err
	}
	m := flagInErr.FindStringSubmatch(ue.msg)
	if m == nil {
		return err
	}
	if line := c.src.Line(m[1]); line > 0 {
		return &config.Error{File: c.src.File, Line: line, Key: m[1], Err: errors.New(ue.msg)}
	}
	return err
}

func runConfig(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("want: config check FILE")
	}
	switch args[0] {
	case "check":
		fs := newFlags("config check")
		pos, err := parseFlags(fs, args[1:])
		if err != nil {
			return err
		}
		if err := wantArgs(pos, 1, "FILE"); err != nil {
			return err
		}
		if _, err := parseDaemonFlags([]string{"--config", pos[0]}); err != nil {
			var ue *usageError
			if errors.As(err, &ue) {
				return errors.New(ue.msg) // the file is at fault, not this command line
			}
			return err
		}
		fmt.Printf("%s: ok\n", pos[0])
		return nil
	case "-h", "--help", "help":
		return errHelp
	}
	return usagef("unknown config verb %q: want check", args[0])
}
