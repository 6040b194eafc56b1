package managed

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

func write(t *testing.T, dir, name, s string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	b := write(t, dir, "20-b.json", `{"version": 1, "rules": [
  {"id": 7, "dir": "out", "proto": "tcp", "port": "443", "action": "allow", "app": "/usr/bin/curl"}
]}`)
	a := write(t, dir, "10-a.json", `{"version": 1, "rules": [
  {"id": 1, "dir": "any", "proto": "any", "remote": "198.18.0.0/15", "action": "deny"},
  {"dir": "out", "proto": "udp", "port": 53, "action": "allow"}
]}`)
	write(t, dir, "10-a.json~", "garbage")
	write(t, dir, ".hidden.json", "garbage")
	write(t, dir, "README", "garbage")
	rules, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 3 || rules[0].Source != a || rules[2].Source != b || rules[2].App != "/usr/bin/curl" {
		t.Fatalf("rules %+v", rules)
	}
	for _, r := range rules {
		if r.ID != 0 {
			t.Errorf("a managed rule kept the file's id %d", r.ID)
		}
	}
	if rules, err := Load(filepath.Join(dir, "none")); err != nil || len(rules) != 0 {
		t.Fatalf("missing dir: %v %v", rules, err)
	}
}

func TestErrorsNameFileAndLine(t *testing.T) {
	cases := []struct {
		file string
		line int
		want string
	}{
		{`{"version": 1, "rules": [
  {"dir": "out", "proto": "tcp", "action": "allow"},

  {"dir": "up", "proto": "tcp", "action": "allow"}
]}`, 4, `field "dir"`},
		{`{"version": 1, "rules": [
  {"dir": "out", "proto": "tcp", "action": "allow"},
  {"dir": "out", "proto": "tcp", "port": "70000", "action": "allow"}]}`, 3, `port`},
		{"{\"version\": 1,\n \"rules\": [\n {\"dir\": \"out\",, }]}", 3, "invalid character"},
		{`{"version": 2, "rules": []}`, 1, "version 2"},
		{`{"version": 1, "rules": [{"dir":"out","proto":"tcp","action":"allow","colour":"red"}]}`, 1, "colour"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		write(t, dir, "00-good.json", `{"version": 1, "rules": [{"dir":"out","proto":"tcp","action":"allow"}]}`)
		p := write(t, dir, "50-bad.json", c.file)
		_, err := Load(dir)
		var me *Error
		if !errors.As(err, &me) || me.File != p || me.Line != c.line || !strings.Contains(err.Error(), c.want) {
			t.Errorf("file %q: error %v (line %d), want %s:%d: ...%s", c.file, err, func() int {
				if me != nil {
					return me.Line
				}
				return -1
			}(), p, c.line, c.want)
		}
		if !strings.HasPrefix(err.Error(), p+":") {
			t.Errorf("error %q does not start with the file", err)
		}
	}
}

// FuzzParse: any bytes give rules that each validate and carry the file's name, or an
// *Error with a line inside the file.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"version": 1, "rules": [{"dir":"out","proto":"tcp","port":"443","action":"allow"}]}`))
	f.Add([]byte("{\"version\": 1, \"rules\": [\n{\"dir\":\"up\"}]}"))
	f.Add([]byte(`{"version": 1, "rules": [{"id": 3, "dir":"any","proto":"any","action":"deny","source":"x"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := Parse("f.json", data)
		if err != nil {
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("error %T: %v", err, err)
			}
			if me.Line < 1 || me.Line > 1+strings.Count(string(data), "\n") {
				t.Fatalf("line %d outside the file: %v", me.Line, err)
			}
			return
		}
		for _, r := range rules {
			if r.Source != "f.json" || r.ID != 0 {
				t.Fatalf("rule %+v", r)
			}
			if err := r.Validate(); err != nil {
				t.Fatalf("accepted an invalid rule: %v", err)
			}
		}
	})
}

// TestEngineManagedRules: managed rules are in force, read-only, survive an import,
// keep their IDs when reloaded unchanged, and a bad set changes nothing.
func TestEngineManagedRules(t *testing.T) {
	own := engine.Rule{Direction: engine.Outbound, Protocol: engine.TCP, Port: engine.PortRange{Lo: 22, Hi: 22}, Action: engine.Allow}
	eng, err := engine.New(engine.Config{Default: engine.Deny}, []engine.Rule{own})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	dir := t.TempDir()
	write(t, dir, "corp.json", `{"version": 1, "rules": [
  {"id": 1, "dir": "out", "proto": "tcp", "port": "25", "action": "deny", "note": "no mail"}
]}`)
	m, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.SetManaged(m); err != nil {
		t.Fatal(err)
	}
	rules := eng.Rules()
	if len(rules) != 2 || rules[1].Source == "" || rules[1].ID == rules[0].ID {
		t.Fatalf("rules %+v", rules)
	}
	mid := rules[1].ID
	if _, err := eng.RemoveRule(mid); !errors.Is(err, engine.ErrManaged) || !strings.Contains(err.Error(), "corp.json") {
		t.Fatalf("removing a managed rule: %v", err)
	}
	if _, err := eng.AddRule(engine.Rule{Action: engine.Allow, Source: "/x.json"}); err == nil {
		t.Fatal("a rule with a source was added through AddRule")
	}
	// Import replaces the user's rules only (managed ones in the input are ignored),
	// even with an ID the managed rule has.
	if err := eng.ReplaceRules([]engine.Rule{{ID: mid, Direction: engine.Outbound, Protocol: engine.UDP, Action: engine.Allow}, rules[1]}); err != nil {
		t.Fatal(err)
	}
	rules = eng.Rules()
	if len(rules) != 2 || len(engine.OwnRules(rules)) != 1 || engine.OwnRules(rules)[0].Protocol != engine.UDP {
		t.Fatalf("after import: %+v", rules)
	}
	var managedID engine.RuleID
	for _, r := range rules {
		if r.Source != "" {
			managedID = r.ID
		}
	}
	// Reloading the same file keeps the managed rule's ID.
	m, _ = Load(dir)
	if err := eng.SetManaged(m); err != nil {
		t.Fatal(err)
	}
	for _, r := range eng.Rules() {
		if r.Source != "" && r.ID != managedID {
			t.Errorf("unchanged managed rule got a new ID %d (was %d)", r.ID, managedID)
		}
	}
	before := eng.Rules()
	if err := eng.SetManaged([]engine.Rule{{Action: engine.Allow, Source: "a"}, {Action: engine.Action(99), Source: "b"}}); err == nil {
		t.Fatal("a bad managed set was accepted")
	}
	if after := eng.Rules(); len(after) != len(before) {
		t.Fatalf("a bad managed set changed the rules: %+v", after)
	}
}

func TestLoadRefusesDeceptiveFileNames(t *testing.T) {
	for _, name := range []string{"a\x1b[2Jb.json", "evil\u202e.json", "bad\xff.json", "new\nline.json"} {
		dir := t.TempDir()
		write(t, dir, name, `{"version": 1, "rules": []}`)
		_, err := Load(dir)
		if err == nil || strings.ContainsAny(err.Error(), "\x1b\n\u202e") {
			t.Errorf("file %q: error %v", name, err)
		}
	}
}
