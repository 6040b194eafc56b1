package procattr

import (
	"os"
	"testing"
)

func TestUnitOf(t *testing.T) {
	for cg, want := range map[string]string{
		"0::/system.slice/nginx.service\n":                                 "nginx.service",
		"0::/system.slice/system-getty.slice/getty@tty1.service\n":         "getty@tty1.service",
		"0::/system.slice/docker.service/sub\n":                            "docker.service",
		"0::/user.slice/user-1000.slice/user@1000.service/nginx.service\n": "", // a user's own cgroups
		"0::/user.slice/user-1000.slice/session-2.scope\n":                 "",
		"12:pids:/system.slice/nginx.service\n0::/user.slice/x.service\n":  "", // v2 line only
		"0::/system.slice/evil\x1b.service\n":                              "",
		"0::/system.slice/latch-test.slice/latch-t.service\n":              "latch-t.service",
		"0::/\n": "",
	} {
		if got := unitOf([]byte(cg)); got != want {
			t.Errorf("unitOf(%q) = %q, want %q", cg, got, want)
		}
	}
}

func TestAppIDOf(t *testing.T) {
	for cg, want := range map[string]string{
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.mozilla.firefox-12345.scope\n": "org.mozilla.firefox",
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/snap.firefox.firefox-3a7c.scope\n":             "firefox",
		"0::/system.slice/snap.lxd.daemon.service\n":                                                               "lxd",
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-x-y.scope\n":                       "",
		"0::/user.slice/user-1000.slice/session-2.scope\n":                                                         "",
	} {
		if got := appIDOf([]byte(cg)); got != want {
			t.Errorf("appIDOf(%q) = %q, want %q", cg, got, want)
		}
	}
}

// TestParentsOf: a process's chain, read from its own pid, starts with its own
// verified executable and is bounded.
func TestParentsOf(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ps := parentsOf(int32(os.Getpid()))
	if len(ps) == 0 || ps[0] != exe {
		t.Fatalf("parentsOf(self) = %q, want %q first", ps, exe)
	}
	if len(ps) > 8 {
		t.Errorf("%d ancestors, want at most 8", len(ps))
	}
}
