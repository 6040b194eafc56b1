package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// latchBinary builds cmd/latch into dir.
func latchBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "latch")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/latch").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (test.sh installs it)", name)
		}
		t.Skipf("%s not installed", name)
	}
}

// unitRoot makes a root directory for systemd-analyze --root: systemd's own units,
// the latch binary at /usr/bin/latch, and units (name -> contents).
func unitRoot(t *testing.T, bin string, units map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/systemd", "etc/systemd/system"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	if out, err := exec.Command("cp", "-a", "/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy systemd units: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", bin, filepath.Join(root, "usr/bin/latch")).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, tool := range []string{"touch", "kill"} {
		if p, err := exec.LookPath(tool); err == nil {
			exec.Command("cp", p, filepath.Join(root, "usr/bin", tool)).Run()
		}
	}
	os.Symlink("usr/bin", filepath.Join(root, "bin")) // merged /usr
	for name, text := range units {
		if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readUnit(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// verify runs systemd-analyze verify and returns its complaints.
func verify(t *testing.T, root string, names ...string) (string, error) {
	args := append([]string{"verify", "--man=no", "--root=" + root}, names...)
	out, err := exec.Command("systemd-analyze", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestUnitsVerify: systemd-analyze verify has nothing to say about either unit; and
// it would, about a misspelt directive (so this test can fail).
func TestUnitsVerify(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("systemd units are for Linux")
	}
	needTool(t, "systemd-analyze")
	bin := latchBinary(t, t.TempDir())
	units := map[string]string{"latch.service": readUnit(t, "latch.service"), "latch-boot.service": readUnit(t, "latch-boot.service")}
	root := unitRoot(t, bin, units)
	if out, err := verify(t, root, "latch.service", "latch-boot.service"); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	units["latch.service"] = strings.Replace(units["latch.service"], "ProtectSystem=strict", "ProtectSystm=strict", 1)
	root = unitRoot(t, bin, units)
	if out, _ := verify(t, root, "latch.service"); !strings.Contains(out, "ProtectSystm") {
		t.Fatalf("verify did not notice a misspelt directive: %q", out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for latch\.service: ([0-9.]+) (\S+)`)

// TestUnitExposureScore: systemd-analyze security rates latch.service, and the README
// states that very score.
func TestUnitExposureScore(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("systemd units are for Linux")
	}
	needTool(t, "systemd-analyze")
	bin := latchBinary(t, t.TempDir())
	root := unitRoot(t, bin, map[string]string{"latch.service": readUnit(t, "latch.service")})
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", "--root="+root, "latch.service").CombinedOutput()
	m := exposureRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	t.Logf("systemd-analyze security latch.service: exposure %s %s", m[1], m[2])
	readme := readUnit(t, "../README.md")
	want := "exposure level " + m[1] + " " + m[2]
	if !strings.Contains(readme, want) {
		t.Errorf("README.md does not state %q", want)
	}
}

// TestUnitCapabilitiesMatchREADME keeps the measured capability set in one place:
// the unit; the README names the same.
func TestUnitCapabilitiesMatchREADME(t *testing.T) {
	caps := unitCapabilities(t)
	readme := readUnit(t, "../README.md")
	for _, c := range caps {
		if !strings.Contains(readme, c) {
			t.Errorf("README.md does not name %s of the unit's CapabilityBoundingSet", c)
		}
	}
}

// unitCapabilities returns latch.service's CapabilityBoundingSet.
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.*)$`).FindStringSubmatch(readUnit(t, "latch.service"))
	if m == nil {
		t.Fatal("latch.service has no CapabilityBoundingSet")
	}
	return strings.Fields(m[1])
}

// TestUnitReadsContainerState: the daemon reads docker's and podman's state to name
// containers (root's under /var/lib, a user's own under their home, owned by that
// user with mode 0600): the unit must leave those paths visible (read-only is
// enough) and keep CAP_DAC_READ_SEARCH, which reads another user's files without
// CAP_DAC_OVERRIDE.
func TestUnitReadsContainerState(t *testing.T) {
	unit := readUnit(t, "latch.service")
	settings := map[string][]string{}
	for _, l := range strings.Split(unit, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok && !strings.HasPrefix(k, "#") {
			settings[k] = append(settings[k], v)
		}
	}
	for _, v := range settings["ProtectHome"] {
		if v != "read-only" && v != "no" && v != "false" {
			t.Errorf("ProtectHome=%s hides users' container state (~/.local/share/containers, ~/.local/share/docker); want read-only", v)
		}
	}
	for _, k := range []string{"InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths"} {
		for _, v := range settings[k] {
			for _, p := range strings.Fields(v) {
				p = strings.TrimLeft(strings.SplitN(p, ":", 2)[0], "-+")
				for _, want := range []string{"/var/lib/docker/containers", "/var/lib/containers/storage", "/home"} {
					if p == "/" || strings.HasPrefix(want+"/", strings.TrimSuffix(p, "/")+"/") {
						t.Errorf("%s=%s covers %s, where container names are read", k, v, want)
					}
				}
			}
		}
	}
	if !strings.Contains(strings.Join(settings["CapabilityBoundingSet"], " "), "CAP_DAC_READ_SEARCH") {
		t.Errorf("CapabilityBoundingSet lacks CAP_DAC_READ_SEARCH: a user's own container state (mode 0600) cannot be read")
	}
	if !strings.Contains(unit, "container names") {
		t.Errorf("latch.service does not say why it leaves /var/lib and /home readable")
	}
}
