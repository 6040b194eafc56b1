package lifetime

import (
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func hasRule(eng *engine.Engine, id engine.RuleID) bool {
	return slices.ContainsFunc(eng.Rules(), func(r engine.Rule) bool { return r.ID == id })
}

// TestRuleEndsWhenProcessExits: a rule until-exit is removed within a second of its
// process's exit (the watcher sleeps in epoll_wait on a pidfd); a rule whose process
// is already gone is removed at once; other rules stay.
func TestRuleEndsWhenProcessExits(t *testing.T) {
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Config{Default: engine.Deny}, []engine.Rule{
		{ID: 1, App: "/usr/bin/curl", Action: engine.Allow, ExitPID: int32(child.Process.Pid)},
		{ID: 2, App: "/usr/bin/wget", Action: engine.Allow, ExitPID: int32(gone.Process.Pid)},
		{ID: 3, App: "/usr/bin/ssh", Action: engine.Allow},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	w, err := NewWatcher(eng, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	eng.OnRulesChanged(func(_, new []engine.Rule) { w.Sync(new) })
	w.Sync(eng.Rules())
	if hasRule(eng, 2) {
		t.Error("the rule of a process already gone is still there")
	}
	if !hasRule(eng, 1) {
		t.Fatal("the rule of a running process was removed")
	}
	child.Process.Kill()
	child.Wait()
	exited := time.Now()
	for hasRule(eng, 1) {
		if time.Since(exited) > time.Second {
			t.Fatal("the rule is still there 1 s after its process exited")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("rule removed %v after the process exited", time.Since(exited))
	if !hasRule(eng, 3) {
		t.Error("a rule without a process was removed")
	}
}

func TestDropOtherBoots(t *testing.T) {
	rs, n := DropOtherBoots([]engine.Rule{{ID: 1, BootID: "a"}, {ID: 2, BootID: "b"}, {ID: 3}}, "a")
	if n != 1 || len(rs) != 2 || rs[0].ID != 1 || rs[1].ID != 3 {
		t.Errorf("kept %+v, dropped %d", rs, n)
	}
}
