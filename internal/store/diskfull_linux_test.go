package store

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// smallFS mounts a tmpfs of size (e.g. "64k") on a new directory and returns it.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "latch-test", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func testRules(n int) []engine.Rule {
	var rules []engine.Rule
	for i := range n {
		rules = append(rules, engine.Rule{
			ID: engine.RuleID(i + 1), App: fmt.Sprintf("/usr/bin/program-%d", i), Protocol: engine.TCP,
			Action: engine.Allow, Direction: engine.Outbound,
		})
	}
	return rules
}

// TestRulesHaveRoomBeforeHistory: on a 64 KiB state directory (where the history
// cannot even open next to the reserve) and on a 256 KiB one (where it writes until
// the free-space floor), the history stops (counted, said in its stats and logged
// once); rules can still be saved afterwards, several times and growing, and load
// again, also after a restart.
func TestRulesHaveRoomBeforeHistory(t *testing.T) {
	for _, size := range []string{"64k", "256k"} {
		t.Run(size, func(t *testing.T) { testRulesHaveRoom(t, size) })
	}
}

func testRulesHaveRoom(t *testing.T, size string) {
	dir := smallFS(t, size)
	rulesPath := filepath.Join(dir, RulesFileName)
	// The daemon's start-up order: the reserve, then the history.
	res, err := OpenReserve(dir, ReserveSize(0))
	if err != nil {
		t.Fatalf("reserve on an empty 64 KiB file system: %v", err)
	}
	var logged []string
	h, err := OpenHistoryOptions(filepath.Join(dir, HistoryFileName), HistoryOptions{
		Logf: func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) },
	})
	if err != nil {
		t.Fatalf("history on a 64 KiB file system: %v", err)
	}
	defer h.Close()
	fillHistory(h)
	h.Flush()
	st := h.Stats()
	if st.NoSpace == 0 || !st.Stopped {
		t.Fatalf("the history never stopped for lack of space: %+v", st)
	}
	if size != "64k" && st.Recorded == 0 {
		t.Errorf("with %s the history recorded nothing before it stopped: %+v", size, st)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], "stopped writing") {
		t.Errorf("want one log line saying the history stopped, got %q", logged)
	}
	t.Logf("history: %+v; files: %s", st, du(dir))

	for _, n := range []int{1, 10, 40} {
		if err := res.SaveRules(rulesPath, testRules(n)); err != nil {
			t.Fatalf("saving %d rules after the history filled the disk: %v (files: %s)", n, err, du(dir))
		}
		got, err := LoadRules(rulesPath)
		if err != nil || len(got) != n {
			t.Fatalf("loading the saved rules: %d rules, %v; want %d", len(got), err, n)
		}
	}
	// More history does not take the room back.
	for i := range 200 {
		h.Record(testConn(100000 + i))
	}
	h.Flush()
	if err := res.SaveRules(rulesPath, testRules(41)); err != nil {
		t.Fatalf("saving rules after more history: %v (files: %s)", err, du(dir))
	}
	if got, err := LoadRules(rulesPath); err != nil || len(got) != 41 {
		t.Fatalf("loading the saved rules: %d rules, %v; want 41", len(got), err)
	}

	// A restart on the full disk: the reserve is still there, the rules load, and
	// they can be saved again.
	h.Close()
	res2, err := OpenReserve(dir, ReserveSize(fileSize(rulesPath)))
	if err != nil {
		t.Logf("reserve at restart: %v", err)
	}
	if got, err := LoadRules(rulesPath); err != nil || len(got) != 41 {
		t.Fatalf("rules after restart: %d, %v", len(got), err)
	}
	h2, err := OpenHistoryOptions(filepath.Join(dir, HistoryFileName), HistoryOptions{})
	if err != nil {
		t.Fatalf("history at restart: %v", err)
	}
	defer h2.Close()
	fillHistory(h2)
	if st := h2.Stats(); !st.Stopped || st.NoSpace == 0 {
		t.Errorf("history after a restart never stopped: %+v", st)
	}
	if err := res2.SaveRules(rulesPath, testRules(42)); err != nil {
		t.Fatalf("saving rules after a restart on a full disk: %v (files: %s)", err, du(dir))
	}
	if got, err := LoadRules(rulesPath); err != nil || len(got) != 42 {
		t.Fatalf("rules: %d, %v", len(got), err)
	}
}

// TestReserveGivesWayToRules: whatever fills the disk (here a file), the reserve
// is given up to save rules, and taken back as far as the room allows.
func TestReserveGivesWayToRules(t *testing.T) {
	dir := smallFS(t, "64k")
	rulesPath := filepath.Join(dir, RulesFileName)
	res, err := OpenReserve(dir, ReserveSize(0))
	if err != nil {
		t.Fatal(err)
	}
	fillDisk(t, dir)
	if err := WriteFileAtomic(filepath.Join(dir, "probe"), []byte("x"), 0o600); err == nil {
		t.Fatal("the disk is not full")
	}
	if err := res.SaveRules(rulesPath, testRules(20)); err != nil {
		t.Fatalf("saving rules on a full disk with a reserve: %v", err)
	}
	if got, err := LoadRules(rulesPath); err != nil || len(got) != 20 {
		t.Fatalf("rules: %d, %v", len(got), err)
	}
	if st := res.Stats(); st.Size >= st.Want || st.Error == "" {
		t.Errorf("after spending the reserve on a full disk its stats say %+v, want less held than wanted and why", st)
	}
}

// fillHistory records connections until the history stops for lack of space (or
// 20,000 have been recorded).
func fillHistory(h *History) {
	for i := 0; i < 20000 && h.Stats().NoSpace == 0; i++ {
		c := testConn(i)
		c.Request.Cmdline = strings.Repeat("x", 200) // fill faster
		h.Record(c)
		if i%64 == 63 {
			h.Flush()
		}
	}
	h.Flush()
}

// fillDisk writes a file in dir until the file system is full.
func fillDisk(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 4096)
	for range 1 << 16 { // bounded: 256 MiB at most
		if _, err := f.Write(block); err != nil {
			return
		}
	}
	t.Fatal("the small file system never filled")
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// du lists the files of dir with their sizes.
func du(dir string) string {
	es, _ := os.ReadDir(dir)
	var parts []string
	for _, e := range es {
		if fi, err := e.Info(); err == nil {
			parts = append(parts, fmt.Sprintf("%s %d", e.Name(), fi.Size()))
		}
	}
	return strings.Join(parts, ", ")
}

// TestHistoryResumesWhenRoomReturns: a history stopped for lack of space writes
// again once space is freed, and says so once each way.
func TestHistoryResumesWhenRoomReturns(t *testing.T) {
	dir := smallFS(t, "4m")
	var logged []string
	h, err := OpenHistoryOptions(filepath.Join(dir, HistoryFileName), HistoryOptions{
		Logf: func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.Record(testConn(0))
	h.Flush()
	fillDisk(t, dir)
	for i := range 10 {
		h.Record(testConn(1 + i))
	}
	h.Flush()
	if st := h.Stats(); st.NoSpace != 10 || !st.Stopped || st.Recorded != 1 {
		t.Fatalf("on a full disk: %+v, want 10 not recorded, stopped, 1 recorded", st)
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		h.Record(testConn(100 + i))
	}
	h.Flush()
	if st := h.Stats(); st.Recorded != 11 || st.Stopped {
		t.Fatalf("after space was freed: %+v, want 11 recorded and writing", st)
	}
	if n, err := h.Count(); err != nil || n != 11 {
		t.Errorf("history holds %d rows (%v), want 11", n, err)
	}
	if len(logged) != 2 || !strings.Contains(logged[0], "stopped writing") || !strings.Contains(logged[1], "writing again") {
		t.Errorf("log: %q, want one line for the stop and one for the resume", logged)
	}
}
