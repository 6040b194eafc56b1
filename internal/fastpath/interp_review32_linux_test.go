package fastpath

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestInterpreterAndLoaderStillHit (review32): the guard of identify's
// __FMODE_EXEC check for programs not executed directly. A #! script's
// executable is its interpreter, which the kernel opened for the execve
// (binfmt_script's open_exec); a program started by the loader explicitly
// (ld.so PROG) has the loader as its executable, opened for the execve too.
// Both must still be identified and hit: 10 of 10 connects, none counted as
// without identity.
func TestInterpreterAndLoaderStillHit(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		exe := publicCopy(t)
		dir := filepath.Dir(exe)
		script := filepath.Join(dir, "script")
		if err := os.WriteFile(script, []byte("#!"+exe+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		// The loader by the path /proc/PID/exe shows (merged /usr, /lib64 a link).
		ldso, err := filepath.EvalSymlinks("/lib64/ld-linux-x86-64.so.2")
		if err != nil {
			ldso = "/lib64/ld-linux-x86-64.so.2"
		}
		for _, tc := range []struct {
			name string
			exe  string   // the executable identify must see
			argv []string // how the client is started
		}{
			{"script", exe, []string{script}},
			{"loader", ldso, []string{ldso, exe}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if tc.name == "loader" {
					if _, err := os.Stat(ldso); err != nil {
						t.Skip("no " + ldso)
					}
					if exec.Command(ldso, "--verify", exe).Run() != nil {
						t.Skip("the test binary is not dynamically linked: the loader cannot run it")
					}
				}
				cg, cgfd := testCgroup(t)
				ownNetns(t)
				fp := openTest(t, cg, cfg)
				if s := fp.Stats(); !s.TCPLocal {
					t.Skipf("no TCP fast path: %+v", s)
				}
				fp.RulesChanged([]engine.Rule{{ID: 1, App: tc.exe, Action: engine.Allow}})
				dst := listen(t, "tcp4", "127.0.0.1:0")
				prog := startClientAs(t, review28Uid, cgfd, tc.exe, tc.argv...)
				r := req(prog, dst)
				r.UID = review28Uid
				if ok, err := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1)); !ok {
					t.Fatalf("not stored: %v", err)
				}
				const n = 10
				before := fp.Stats()
				hits := 0
				for range n {
					if got := prog.connect(t, dst); got == "ok 0x60000000" {
						hits++
					}
				}
				after := fp.Stats()
				if hits != n || after.NoIdentity != before.NoIdentity {
					t.Errorf("%s: %d of %d connects hit (without identity %d); want all", tc.name, hits, n, after.NoIdentity-before.NoIdentity)
				}
			})
		}
	})
}
