//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFastPathModeChangeKeepsRuleChange (review28, fixed, low): the daemon's
// OnModeChanged hook (cmd/latch/daemon.go) calls fp.RulesChanged(eng.Rules(),
// ...) outside the engine's rule lock, with the rules it read before taking the
// fast path's lock. A rule change that lands between the two (its OnInstall
// hook runs RulesChanged with the new set first) is then undone in the fast
// path: the mode hook publishes, under a newer generation, the cacheability of
// the set before the change. Here the change adds a rule with a host-name
// condition (the kernel's key cannot carry it: the README says nothing is
// cached while one is in force), and after the race the fast path says
// cacheable and caches rule decisions that such a rule may overrule (a host
// deny that a name's new mapping makes match), until the next change. A large
// rule set (the read copies it) widens the window; a mode that ends by itself
// (latch pause) races the same way with an answer's rule or an expiry, and
// listsOff() is read in the same unlocked way (a blocklist set meanwhile is
// forgotten). internal/intercept/windows FollowRules has the same mode hook.
// Fixed: the mode hook bumps the generation over the state in force
// (FastPath.ModeChanged, under genMu) and publishes no rule set; the Windows
// backend's FollowRules alike (Backend.ModeChanged). The 80 rounds pass.
func TestFastPathModeChangeKeepsRuleChange(t *testing.T) {
	n := NewNet(t)
	cg, _ := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	// 30,000 rules without a program (no traffic uses them).
	var b strings.Builder
	b.WriteString(`{"version":1,"rules":[`)
	for i := range 30000 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"action":"allow","dir":"out","proto":"tcp","remote":"198.19.%d.%d/32"}`, i/256, i%256)
	}
	b.WriteString(`]}`)
	file := filepath.Join(t.TempDir(), "rules.json")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	d.MustCLI(t, "rules", "import", file)
	type cacheState struct {
		Cacheable bool   `json:"cacheable"`
		Why       string `json:"why"`
	}
	state := func() cacheState {
		var st struct {
			FastPath *cacheState `json:"fast_path"`
		}
		if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil || st.FastPath == nil {
			t.Fatalf("status fast_path: %v", err)
		}
		return *st.FastPath
	}
	if s := state(); !s.Cacheable {
		t.Fatalf("fast path not cacheable with the imported rules: %+v", s)
	}
	modes := []string{"silent-deny", "ask"}
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; i < 80 && time.Now().Before(deadline); i++ {
		var wg sync.WaitGroup
		var added string
		var addErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			added, addErr = d.CLI("rules", "add", "--host", fmt.Sprintf("race%d.example", i), "--action", "deny")
		}()
		// The mode change a little after, by steps: its read of the rules must
		// fall just before the new set is in force.
		time.Sleep(time.Duration(i%16) * 2 * time.Millisecond)
		if _, err := d.CLI("mode", modes[i%2]); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if addErr != nil {
			t.Fatal(addErr)
		}
		if s := state(); s.Cacheable || !strings.Contains(s.Why, "host-name") {
			t.Fatalf("round %d: a rule with a host-name condition is in force (%s) and the fast path says %+v; want not cacheable", i, strings.TrimSpace(added), s)
		}
		var id int
		if _, err := fmt.Sscanf(added, "added rule %d:", &id); err != nil {
			t.Fatalf("rules add said %q: %v", added, err)
		}
		d.MustCLI(t, "rules", "rm", fmt.Sprint(id))
	}
}
