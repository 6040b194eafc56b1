package main

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/procattr"
)

// TestStatusShowsExeCheck (review 32): status says whether process
// attribution checks the executable that made each connection, and when it
// does not, why and what follows (the daemon logs the same at start): the
// check used to drop silently when the kernel refused the eBPF hooks' read of
// the executable. The Resolver's own word is shown (here without the hooks;
// internal/procattr's TestExeCheckOffNotVerified has the kernel refuse the
// read).
func TestStatusShowsExeCheck(t *testing.T) {
	f := newFixture(t)
	if out := f.must(t, "status"); strings.Contains(out, "exe check") {
		t.Errorf("a backend without the check shows one:\n%s", out)
	}
	f.exeCheck = &api.ExeCheckStatus{On: true}
	on := regexp.MustCompile(`\nattribution exe check: +on: a connection is verified only if the program that made it is the one its process runs\n`)
	if out := f.must(t, "status"); !on.MatchString(out) {
		t.Errorf("status with the check on:\n%s", out)
	}
	if os.Geteuid() != 0 {
		t.Skip("a Resolver needs root")
	}
	res, err := procattr.NewResolver(procattr.Options{DisableEBPF: true})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	var warning string
	f.exeCheck, warning = exeCheckStatus(res)
	if f.exeCheck.On || !strings.Contains(f.exeCheck.Why, "eBPF hooks are off (disabled by options)") ||
		!strings.HasPrefix(warning, "process attribution: executable check off: the eBPF hooks are off") {
		t.Fatalf("without the hooks: status %+v, warning %q", f.exeCheck, warning)
	}
	f.exeCheck.Why += "\x1b[2K"
	out := f.must(t, "status")
	off := regexp.MustCompile(`\nattribution exe check: +off: the eBPF hooks are off \(disabled by options\): connections are checked in /proc alone, .*not the one that connected\\x1b\[2K\n`)
	if !off.MatchString(out) {
		t.Errorf("status with the check off lacks %s (escaped) in\n%s", off, out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(f.must(t, "status", "--json")), &st); err != nil || st.AttributionExeCheck == nil ||
		st.AttributionExeCheck.On || st.AttributionExeCheck.Why != f.exeCheck.Why {
		t.Errorf("status --json: attribution_exe_check %+v, %v; want %+v", st.AttributionExeCheck, err, f.exeCheck)
	}
}
