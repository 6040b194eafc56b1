//go:build linux

package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/intercept"
)

// TestStatusCountsKernelDrops: the kernel line says how many packets the kernel
// dropped (a full queue, a full socket buffer); it used to say "overflows 0" while
// queue_dropped counted millions.
func TestStatusCountsKernelDrops(t *testing.T) {
	f := newFixture(t)
	f.kernel = intercept.Stats{Backend: "nfqueue/test", Held: 10, Denied: 10, KernelDropped: 3_450_000,
		Extra: map[string]uint64{"queue_dropped": 3_449_000, "queue_user_dropped": 1_000}}
	out := f.must(t, "status")
	want := "held 10, allowed 0, denied 10, rejected 0, dropped by kernel 3450000 (queue full 3449000, socket buffer full 1000), overflows 0, errors 0\n"
	if !strings.Contains(out, want) {
		t.Errorf("status lacks\n%s in\n%s", want, out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(f.must(t, "status", "--json")), &st); err != nil || st.Kernel.KernelDropped != 3_450_000 {
		t.Errorf("status --json: kernel %+v, %v", st.Kernel, err)
	}
	// A backend without the kernel's queue counters (Windows, none) says what it knows.
	f.kernel = intercept.Stats{Backend: "wfp/test", Overflows: 2}
	if out := f.must(t, "status"); !strings.Contains(out, "dropped by kernel 0, overflows 2, errors 0\n") {
		t.Errorf("status without queue counters:\n%s", out)
	}
}

// TestDaemonLogEscapes: a log line that quotes outside text (an error naming a path)
// stays one record on one line and shows its control characters escaped (slog's text
// form quotes the message the Go way; JSON records escape as JSON does).
func TestDaemonLogEscapes(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf strings.Builder
		logf, err := newLogf(format, &buf)
		if err != nil {
			t.Fatal(err)
		}
		logf("saving rules: open %s: permission denied", "/var/lib/latch/rules\x1b[2K\r\nlatch daemon: stopped\u202e")
		out := buf.String()
		want := `rules\x1b[2K\r\nlatch daemon: stopped\u202e: permission denied` // Go quoting
		if format == "json" {
			// JSON keeps the exact text; only what would break the line is escaped.
			want = `rules\u001b[2K\r\nlatch daemon: stopped` + "\u202e: permission denied"
		}
		if strings.Count(out, "\n") != 1 || strings.ContainsAny(out, "\x1b\r") || !strings.Contains(out, want) {
			t.Errorf("%s daemon log line: %q", format, out)
		}
	}
}

// TestStatusShowsDriverCache: on Windows, status says whether the driver decides
// repeats of a rule's verdict itself, and when not, which rule turns it off.
func TestStatusShowsDriverCache(t *testing.T) {
	f := newFixture(t)
	if out := f.must(t, "status"); strings.Contains(out, "driver cache") {
		t.Errorf("a backend without a driver cache shows one:\n%s", out)
	}
	f.kernel = intercept.Stats{Backend: "wfp/test", Extra: map[string]uint64{"driver_cache_hits": 7, "driver_hits_lost": 3}}
	f.driverCache = &api.DriverCacheStatus{On: true}
	if out := f.must(t, "status"); !strings.Contains(out, "on: repeats of a rule's verdict decided in the driver 7 times; history records lost 3\n") {
		t.Errorf("status with the cache on:\n%s", out)
	}
	var on api.Status
	if err := json.Unmarshal([]byte(f.must(t, "status", "--json")), &on); err != nil || on.Kernel.Extra["driver_hits_lost"] != 3 {
		t.Errorf("status --json: kernel extra %v, %v (want driver_hits_lost 3)", on.Kernel.Extra, err)
	}
	f.driverCache = &api.DriverCacheStatus{Why: "rule 2 has a host-name condition\x1b[2K"}
	if out := f.must(t, "status"); !strings.Contains(out, "off for now: rule 2 has a host-name condition\\x1b[2K\n") {
		t.Errorf("status with the cache off:\n%s", out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(f.must(t, "status", "--json")), &st); err != nil || st.DriverCache == nil ||
		st.DriverCache.On || st.DriverCache.Why != "rule 2 has a host-name condition\x1b[2K" {
		t.Errorf("status --json: driver_cache %+v, %v", st.DriverCache, err)
	}
}
