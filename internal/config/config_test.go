package config

import (
	"errors"
	"flag"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testFlags struct {
	fs      *flag.FlagSet
	dir     *string
	timeout *time.Duration
	inbound *bool
	queue   *uint
	max     *int
	ratio   *float64
}

func newTestFlags() *testFlags {
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	t := &testFlags{fs: fs}
	t.dir = fs.String("state-dir", "/var/lib/latch", "")
	t.timeout = fs.Duration("prompt-timeout", 30*time.Second, "")
	t.inbound = fs.Bool("inbound", false, "")
	t.queue = fs.Uint("queue", 4242, "")
	t.max = fs.Int("max-history", 100000, "")
	t.ratio = fs.Float64("ratio", 0.5, "")
	fs.String("config", "", "")
	return t
}

func TestApplySetsEveryKind(t *testing.T) {
	f := newTestFlags()
	src, err := Apply(f.fs, "a.toml", []byte(`# latch
state-dir = "/srv/latch"
prompt-timeout = "45s"
inbound = true
queue = 7
"max-history" = 1_000
ratio = 0.25
`), nil, "config")
	if err != nil {
		t.Fatal(err)
	}
	if *f.dir != "/srv/latch" || *f.timeout != 45*time.Second || !*f.inbound || *f.queue != 7 || *f.max != 1000 || *f.ratio != 0.25 {
		t.Fatalf("flags not set: %q %v %v %v %v %v", *f.dir, *f.timeout, *f.inbound, *f.queue, *f.max, *f.ratio)
	}
	if src.Line("queue") != 5 || src.Line("state-dir") != 2 {
		t.Errorf("lines: %v", src.Lines)
	}
}

func TestCommandLineWins(t *testing.T) {
	f := newTestFlags()
	if err := f.fs.Parse([]string{"--queue", "9"}); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	src, err := Apply(f.fs, "a.toml", []byte("queue = 7\ninbound = true\n"), set)
	if err != nil {
		t.Fatal(err)
	}
	if *f.queue != 9 || !*f.inbound {
		t.Fatalf("queue %d inbound %v: the command line must win, the file fill the rest", *f.queue, *f.inbound)
	}
	if src.Line("queue") != 0 {
		t.Errorf("queue reported as from the file")
	}
}

func TestErrorsNameFileLineKey(t *testing.T) {
	cases := []struct{ name, file, want string }{
		{"unknown", "inbound = true\n\nfrobnicate = 1\n", `x.toml:3: key "frobnicate": unknown key`},
		{"bool type", "queue = 1\ninbound = \"yes\"\n", `x.toml:2: key "inbound": want a boolean, got a string`},
		{"int type", "queue = \"7\"\n", `x.toml:1: key "queue": want a integer, got a string`},
		{"duration as number", "\nprompt-timeout = 30\n", `x.toml:2: key "prompt-timeout": want a string, got an integer`},
		{"bad duration", "prompt-timeout = \"soon\"\n", `x.toml:1: key "prompt-timeout": invalid value`},
		{"negative uint", "queue = -1\n", `x.toml:1: key "queue": invalid value`},
		{"table", "inbound = true\n[web]\nport = 1\n", `x.toml:2: key "web": tables are not allowed`},
		{"dotted", "web.port = 1\n", `x.toml:1: key "web": dotted keys are not allowed`},
		{"array", "state-dir = [\"a\"]\n", `x.toml:1: key "state-dir": want a string, got an array`},
		{"reserved", "config = \"/x\"\n", `x.toml:1: key "config": cannot be set`},
		{"syntax", "inbound = true\nqueue = = 3\n", `x.toml:2: `},
		{"duplicate", "queue = 1\nqueue = 2\n", `x.toml:2: `},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newTestFlags()
			_, err := Apply(f.fs, "x.toml", []byte(c.file), nil, "config")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *config.Error", err)
			}
			// Nothing changed.
			if *f.queue != 4242 || *f.inbound || *f.timeout != 30*time.Second || *f.dir != "/var/lib/latch" {
				t.Fatalf("a bad file changed flags: queue %d inbound %v", *f.queue, *f.inbound)
			}
		})
	}
}

func TestBadValueLaterRollsBackEarlier(t *testing.T) {
	f := newTestFlags()
	_, err := Apply(f.fs, "x.toml", []byte("queue = 7\nstate-dir = \"/a\"\nprompt-timeout = \"never\"\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "x.toml:3:") {
		t.Fatalf("error %v", err)
	}
	if *f.queue != 4242 || *f.dir != "/var/lib/latch" {
		t.Fatalf("earlier keys were left set: queue %d dir %q", *f.queue, *f.dir)
	}
}

func TestApplyFileMissing(t *testing.T) {
	f := newTestFlags()
	_, err := ApplyFile(f.fs, filepath.Join(t.TempDir(), "none.toml"), nil)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("error %v, want not-exist", err)
	}
	p := filepath.Join(t.TempDir(), "ok.toml")
	os.WriteFile(p, []byte("inbound = true\n"), 0o644)
	if _, err := ApplyFile(f.fs, p, nil); err != nil || !*f.inbound {
		t.Fatalf("ApplyFile: %v, inbound %v", err, *f.inbound)
	}
}
