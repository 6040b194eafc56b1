package fastpath

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketPinOnlyRemovesStalePins (review11): a daemon whose fast path
// stays off loads the socket pin alone; once its ruleset is in (and names
// its own pin only) the pins a dead daemon left (a crash, or
// --keep-rules-on-exit) go, as FastPath.SetUDP removes them. They used to
// stay until `latch cleanup`, each holding its program and its 64k-entry map,
// one more per crash or kept exit while the fast path stays off.
func TestSocketPinOnlyRemovesStalePins(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bpf")
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	// A dead daemon's pins: a pid that is gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	gone := strconv.Itoa(cmd.Process.Pid)
	var stale []string
	for _, pre := range []string{pinPrefixSock, pinPrefixUDP, pinPrefixLease} {
		old, err := OpenSocketPin(dir)
		if err != nil {
			t.Skipf("cannot load the socket pin: %v", err)
		}
		p := filepath.Join(dir, pre+gone)
		if err := os.Rename(old.Path(), p); err != nil {
			old.Close()
			t.Fatalf("rename the pin to %s: %v", p, err)
		}
		stale = append(stale, p)
		// Kept, as a ruleset kept on exit names it.
		old.Close(true)
	}

	sp, err := OpenSocketPin(dir)
	if err != nil {
		t.Fatalf("OpenSocketPin: %v", err)
	}
	defer sp.Close()
	sp.RulesetInstalled()
	for _, p := range stale {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("the dead daemon's pin %s stays after the ruleset is in", p)
		}
	}
	if _, err := os.Stat(sp.Path()); err != nil {
		t.Errorf("the daemon's own pin: %v", err)
	}
}
