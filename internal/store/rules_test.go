package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// ruleSet builds n distinct valid rules whose notes carry tag, so two sets can be told
// apart after a crash.
func ruleSet(n int, tag string) []engine.Rule {
	rs := make([]engine.Rule, n)
	for i := range rs {
		rs[i] = engine.Rule{
			ID:        engine.RuleID(i + 1),
			App:       fmt.Sprintf("/usr/bin/app%d", i),
			Direction: engine.Outbound,
			Protocol:  engine.TCP,
			Remote:    netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32),
			Port:      engine.PortRange{Lo: 443, Hi: 443},
			Action:    engine.Allow,
			Note:      tag + strings.Repeat("x", 40),
		}
	}
	return rs
}

func TestSaveLoadRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), RulesFileName)
	got, err := LoadRules(path)
	if err != nil || len(got) != 0 {
		t.Fatalf("LoadRules(missing) = %v, %v; want empty, nil", got, err)
	}
	want := ruleSet(50, "a")
	want[3].Expires = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	want[4].Action = engine.Reject
	want[5].Port = engine.PortRange{Lo: 1000, Hi: 2000}
	if err := SaveRules(path, want); err != nil {
		t.Fatal(err)
	}
	got, err = LoadRules(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip changed the rules:\n got %v\nwant %v", got, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("rules file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after a save, want only the rules file: %v", len(entries), entries)
	}
}

func TestLoadMalformedNamesFieldAndChangesNothing(t *testing.T) {
	cases := []struct {
		name, content, want string
	}{
		{"bad cidr", `{"version":1,"rules":[{"id":1,"remote":"198.18.0.0/99","action":"allow"}]}`, "remote"},
		{"bad action", `{"version":1,"rules":[{"id":1,"action":"maybe"}]}`, "action"},
		{"unknown field", `{"version":1,"rules":[{"id":1,"action":"allow","colour":"red"}]}`, "colour"},
		{"port range reversed", `{"version":1,"rules":[{"id":7,"port":"2000-1000","action":"deny"}]}`, "port"},
		{"duplicate id", `{"version":1,"rules":[{"id":1,"action":"deny"},{"id":1,"action":"allow"}]}`, "id"},
		{"version", `{"version":2,"rules":[]}`, "version"},
		{"truncated", `{"version":1,"rules":[{"id":1,"act`, "EOF"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), RulesFileName)
			if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			rules, err := LoadRules(path)
			if err == nil {
				t.Fatalf("LoadRules accepted %s: %v", c.content, rules)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file and %q", err, c.want)
			}
			after, _ := os.ReadFile(path)
			if string(after) != c.content {
				t.Errorf("LoadRules changed the malformed file")
			}
		})
	}
}

// TestSaveRulesReadersSeeOldOrNew checks that a reader racing a writer only ever
// sees a whole rule set.
func TestSaveRulesReadersSeeOldOrNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), RulesFileName)
	a, b := ruleSet(300, "a"), ruleSet(700, "b")
	if err := SaveRules(path, a); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			set := a
			if i%2 == 0 {
				set = b
			}
			if err := SaveRules(path, set); err != nil {
				done <- err
				return
			}
		}
	}()
	for range 300 {
		got, err := LoadRules(path)
		if err != nil {
			t.Fatalf("reader saw a broken rules file: %v", err)
		}
		if !reflect.DeepEqual(got, a) && !reflect.DeepEqual(got, b) {
			t.Fatalf("reader saw %d rules, neither set", len(got))
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestHelperSaveLoop is not a test: TestSaveRulesSurvivesKill runs it in a child process
// that saves two rule sets in turn until it is killed.
func TestHelperSaveLoop(t *testing.T) {
	path := os.Getenv("LATCH_STORE_SAVE_LOOP")
	if path == "" {
		t.Skip("helper process for TestSaveRulesSurvivesKill")
	}
	a, b := ruleSet(2000, "a"), ruleSet(3000, "b")
	for i := 0; ; i++ {
		set := a
		if i%2 == 1 {
			set = b
		}
		if err := SaveRules(path, set); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

// TestSaveRulesSurvivesKill kills a process that is busy rewriting the rules file at
// random moments and checks that the file always holds one whole rule set.
func TestSaveRulesSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, RulesFileName)
	a, b := ruleSet(2000, "a"), ruleSet(3000, "b")
	rounds := 25
	if testing.Short() {
		rounds = 5
	}
	sawA, sawB := false, false
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSaveLoop$")
		cmd.Env = append(os.Environ(), "LATCH_STORE_SAVE_LOOP="+path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait until the file exists, then let the writer run a random while.
		for deadline := time.Now().Add(10 * time.Second); ; {
			if _, err := os.Stat(path); err == nil {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("writer never wrote %s: %s", path, stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(40_000)) * time.Microsecond)
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: writer exited by itself (%v): %s", round, err, stderr.String())
		}
		got, err := LoadRules(path)
		if err != nil {
			t.Fatalf("round %d: after a kill the rules file is broken: %v", round, err)
		}
		switch {
		case reflect.DeepEqual(got, a):
			sawA = true
		case reflect.DeepEqual(got, b):
			sawB = true
		default:
			t.Fatalf("round %d: after a kill the file holds %d rules, neither set", round, len(got))
		}
		if err := RemoveStaleTemps(path); err != nil {
			t.Fatal(err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("round %d: RemoveStaleTemps left %v", round, entries)
		}
	}
	t.Logf("after %d kills: saw set a: %v, set b: %v", rounds, sawA, sawB)
}
