//go:build linux

package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigEveryDaemonFlag writes a file that sets every flag the daemon has (seen
// from its own flag set, so flags added later are covered) and checks it is accepted
// and takes effect.
func TestConfigEveryDaemonFlag(t *testing.T) {
	var fs *flag.FlagSet
	daemonFlagsSeen = func(f *flag.FlagSet) { fs = f }
	defer func() { daemonFlagsSeen = nil }()
	if _, err := parseDaemonFlags([]string{"--config", ""}); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		n++
		g := f.Value.(flag.Getter).Get()
		switch g.(type) {
		case bool:
			fmt.Fprintf(&b, "%s = %s\n", f.Name, f.DefValue)
		case int, uint, int64, uint64:
			fmt.Fprintf(&b, "%s = %s\n", f.Name, f.DefValue)
		default:
			fmt.Fprintf(&b, "%s = %s\n", f.Name, strconv.Quote(f.DefValue))
		}
	})
	p := writeFile(t, "all.toml", b.String())
	if _, err := parseDaemonFlags([]string{"--config", p}); err != nil {
		t.Fatalf("a file setting all %d daemon flags to their defaults: %v\n%s", n, err, b.String())
	}
	if n < 10 {
		t.Fatalf("only %d daemon flags seen", n)
	}

	// Values take effect; the command line wins over the file.
	p = writeFile(t, "some.toml", `# latch
prompt-timeout = "45s"
inbound = true
exempt-loopback = false
queue = 77
default = "reject"
fail = "open"
state-dir = "/srv/latch"
max-history = 5
`)
	o, err := parseDaemonFlags([]string{"--config", p, "--queue", "88", "--inbound=false"})
	if err != nil {
		t.Fatal(err)
	}
	if o.PromptTimeout != 45*time.Second || o.Inbound || o.ExemptLoopback || o.Queue != 88 ||
		o.Default != engine.Reject || !o.FailOpen || o.StateDir != "/srv/latch" || o.MaxHistory != 5 {
		t.Fatalf("options %+v", o)
	}
}

func TestConfigFileMissing(t *testing.T) {
	_, err := parseDaemonFlags([]string{"--config", filepath.Join(t.TempDir(), "none.toml")})
	if err == nil || !strings.Contains(err.Error(), "none.toml") {
		t.Fatalf("an explicit missing config file: %v", err)
	}
}

func TestConfigCheckVerb(t *testing.T) {
	good := writeFile(t, "good.toml", "inbound = true\nprompt-timeout = \"10s\"\n")
	r := runLatch(t, nil, nil, "config", "check", good)
	if r.code != 0 || !strings.Contains(r.stdout, "ok") {
		t.Fatalf("good file: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	cases := []struct{ file, want string }{
		{"inbound = true\n\nprompt-timout = \"10s\"\n", `:3: key "prompt-timout": unknown key`},
		{"\ninbound = 1\n", `:2: key "inbound": want a boolean, got an integer`},
		// Checked by the daemon after parsing: still the line of the file.
		{"inbound = true\nqueue = 0\n", `:2: key "queue": --queue 0: want 1 to 65535`},
		{"default = \"maybe\"\n", `:1: key "default": --default`},
		{"fail = \"sometimes\"\n", `:1: key "fail": --fail "sometimes"`},
		{"inbound = true\ninbound = false\n", `:2:`},
	}
	for _, c := range cases {
		p := writeFile(t, "bad.toml", c.file)
		r := runLatch(t, nil, nil, "config", "check", p)
		if r.code == 0 || !strings.Contains(r.stderr, p+c.want) {
			t.Errorf("file %q: exit %d, stderr %q; want %q", c.file, r.code, r.stderr, p+c.want)
		}
	}
	r = runLatch(t, nil, nil, "config", "check")
	if r.code != 2 {
		t.Errorf("config check without a file: exit %d", r.code)
	}
}

// TestConfigFileOthersMayWriteIsRefused: a configuration file or managed rule file
// that a user other than root may change steers the firewall for them ("fail =
// open", an allow-all rule): the daemon refuses it, and so does config check.
func TestConfigFileOthersMayWriteIsRefused(t *testing.T) {
	p := writeFile(t, "latch.toml", "fail = \"open\"\n")
	os.Chmod(p, 0o666)
	if _, err := parseDaemonFlags([]string{"--config", p}); err == nil || !strings.Contains(err.Error(), "may write") {
		t.Errorf("a world-writable config file: %v", err)
	}
	if r := runLatch(t, nil, nil, "config", "check", p); r.code == 0 || !strings.Contains(r.stderr, "may write") {
		t.Errorf("config check of a world-writable file: exit %d %q", r.code, r.stderr)
	}
	if os.Geteuid() == 0 {
		os.Chmod(p, 0o644)
		os.Chown(p, 65534, 65534)
		if _, err := parseDaemonFlags([]string{"--config", p}); err == nil || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("a config file owned by nobody: %v", err)
		}
	}

	dir := t.TempDir()
	md := filepath.Join(dir, "rules.d")
	os.Mkdir(md, 0o755)
	mf := filepath.Join(md, "all.json")
	os.WriteFile(mf, []byte(`{"version": 1, "rules": [{"dir": "any", "proto": "any", "action": "allow"}]}`), 0o666)
	os.Chmod(mf, 0o666)
	r := runLatch(t, nil, nil, "daemon", "--backend", "none", "--config", "", "--state-dir", filepath.Join(dir, "s"), "--api", filepath.Join(dir, "a.sock"), "--managed-rules", md)
	if r.code == 0 || !strings.Contains(r.stderr, "may write") || !strings.Contains(r.stderr, mf) {
		t.Errorf("a world-writable managed rule file: exit %d %q", r.code, r.stderr)
	}
	os.Chmod(mf, 0o644)
	os.Chmod(md, 0o777)
	r = runLatch(t, nil, nil, "daemon", "--backend", "none", "--config", "", "--state-dir", filepath.Join(dir, "s"), "--api", filepath.Join(dir, "a.sock"), "--managed-rules", md)
	if r.code == 0 || !strings.Contains(r.stderr, "may write") || !strings.Contains(r.stderr, md) {
		t.Errorf("a world-writable managed rules directory: exit %d %q", r.code, r.stderr)
	}
}
