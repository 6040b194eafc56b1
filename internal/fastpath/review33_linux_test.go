package fastpath

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestReview33UserTouchDropsOthersEntries (review33, open, low: availability):
// any event on any watched executable bumps the generation, so every decision
// stored for every program and user misses from then on. An unprivileged user
// with a program of their own that a rule allows (and the fast path cached)
// changes its attributes (touch: IN_ATTRIB) as often as they like, no
// privilege needed: each time, every other user's cached decisions go (their
// connections all go through the queue until stored again), and a loop keeps
// the whole cache empty. The same holds for the 4096-watch bound, which a user
// whose programs a rule allows reaches with 2048 copies of a program
// (Remember drops every watch and bumps). Fail-closed, so no decision is
// wrong, but one user costs all others the fast path. Fix: on an event,
// delete the entries stored under that executable (or, for a directory's
// event, its executables) instead of bumping the generation: fp.exes knows
// which identity was stored for which path (inotify does not say who caused
// an event, so telling a user's touch from root's upgrade is not possible).
func TestReview33UserTouchDropsOthersEntries(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		cg, cgfd := testCgroup(t)
		exe := publicCopy(t) // root's program, in a directory of root's
		ownNetns(t)
		fp := openTest(t, cg, cfg)
		if s := fp.Stats(); !s.TCPLocal {
			t.Skipf("no TCP fast path: %+v", s)
		}
		// The user's own program, in a directory of theirs.
		b, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		home := t.TempDir()
		for d := home; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
		if err := os.Chown(home, review28Uid, review28Uid); err != nil {
			t.Fatal(err)
		}
		own := filepath.Join(home, "mine")
		if err := os.WriteFile(own, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(own, review28Uid, review28Uid); err != nil {
			t.Fatal(err)
		}
		fp.RulesChanged([]engine.Rule{{ID: 1, App: exe, Action: engine.Allow}, {ID: 2, App: own, Action: engine.Allow}})
		dst := listen(t, "tcp4", "127.0.0.1:0")
		other := startClientAs(t, 0, cgfd, exe, exe) // another user's (root's) program
		mine := startClientAs(t, review28Uid, cgfd, own, own)
		ro := req(other, dst)
		ro.UID = 0
		rm := req(mine, dst)
		rm.UID = review28Uid
		for _, s := range []struct {
			r  *engine.Request
			id engine.RuleID
		}{{ro, 1}, {rm, 2}} {
			if ok, err := fp.Remember(fp.Ticket(), s.r, ruleVerdict(engine.Allow, s.id)); !ok {
				t.Fatalf("%s not stored: %v", s.r.Exe, err)
			}
		}
		if got := other.connect(t, dst); got != "ok 0x60000000" {
			t.Fatalf("the other user's program before: %q, want a hit", got)
		}
		// The unprivileged user touches their own program.
		touch := exec.Command("touch", own)
		touch.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: review28Uid, Gid: review28Uid}}
		if out, err := touch.CombinedOutput(); err != nil {
			t.Fatalf("touch %s as uid %d: %v\n%s", own, review28Uid, err, out)
		}
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if fp.exeWatch != nil && fp.exeWatch.handled.Load() > 0 {
				break
			}
		}
		if got := other.connect(t, dst); got != "ok 0x60000000" {
			t.Errorf("another user's allowed program after an unprivileged user touched their own cached program: %q, want a hit still (its entry was dropped: the touch bumped the generation of every entry)", got)
		}
	})
}
