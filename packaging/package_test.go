package packaging

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/test/nettest"
)

// buildPackages runs packaging/build (what `make package` runs) for version into dir.
func buildPackages(t *testing.T, version, dir string) (deb, rpm string) {
	t.Helper()
	cmd := exec.Command("go", "run", "./packaging/build", "-version", version, "-out", dir)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("packaging/build %s: %v\n%s", version, err, out)
	}
	for _, l := range strings.Fields(string(out)) {
		switch {
		case strings.HasSuffix(l, ".deb"):
			deb = filepath.Join("..", l)
			if filepath.IsAbs(l) {
				deb = l
			}
		case strings.HasSuffix(l, ".rpm"):
			rpm = filepath.Join("..", l)
			if filepath.IsAbs(l) {
				rpm = l
			}
		}
	}
	if deb == "" || rpm == "" {
		t.Fatalf("packaging/build printed no packages:\n%s", out)
	}
	return deb, rpm
}

func must(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var packageFiles = []string{
	"/usr/bin/latch",
	"/etc/latch/latch.toml",
	"/usr/share/man/man8/latch.8.gz",
	"/usr/share/bash-completion/completions/latch",
	"/usr/share/zsh/vendor-completions/_latch",
	"/usr/share/fish/vendor_completions.d/latch.fish",
}

// TestPackagesContents builds both packages and checks what they hold, and that
// lintian finds no error in the .deb.
func TestPackagesContents(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("packages are for Linux")
	}
	for _, tool := range []string{"dpkg-deb", "rpm", "lintian"} {
		needTool(t, tool)
	}
	for _, tool := range []string{"make"} {
		needTool(t, tool)
	}
	// The documented command.
	dir := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "package", "VERSION=0.1.0", "DIST="+dir).CombinedOutput()
	if err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	deb := filepath.Join(dir, "latch_0.1.0-1_"+runtime.GOARCH+".deb")
	rpms, _ := filepath.Glob(filepath.Join(dir, "latch-0.1.0-1.*.rpm"))
	if len(rpms) != 1 {
		t.Fatalf("make package made no single rpm in %s:\n%s", dir, out)
	}
	rpm := rpms[0]

	list := must(t, "dpkg-deb", "-c", deb)
	for _, f := range append(packageFiles, "/lib/systemd/system/latch.service", "/lib/systemd/system/latch-boot.service", "/usr/share/doc/latch/copyright", "/usr/share/doc/latch/changelog.Debian.gz") {
		if !strings.Contains(list, "."+f+"\n") {
			t.Errorf(".deb lacks %s:\n%s", f, list)
		}
	}
	if !strings.Contains(list, "-rwxr-xr-x root/root") {
		t.Errorf(".deb has no executable owned by root:\n%s", list)
	}
	info := must(t, "dpkg-deb", "-I", deb)
	for _, want := range []string{"Package: latch", "Version: 0.1.0-1", "Architecture: " + runtime.GOARCH, "Depends: iptables", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, want) {
			t.Errorf(".deb control lacks %q:\n%s", want, info)
		}
	}
	if conf := must(t, "dpkg-deb", "-f", deb, "Package"); conf == "" {
		t.Error("no Package field")
	}
	ctl := t.TempDir()
	must(t, "dpkg-deb", "-e", deb, ctl)
	if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); !strings.Contains(string(b), "/etc/latch/latch.toml") {
		t.Errorf("/etc/latch/latch.toml is not a conffile: %q", b)
	}

	rlist := must(t, "rpm", "-qlp", rpm)
	for _, f := range append(packageFiles, "/usr/lib/systemd/system/latch.service", "/usr/lib/systemd/system/latch-boot.service", "/usr/share/licenses/latch/LICENSE") {
		if !strings.Contains(rlist, f+"\n") {
			t.Errorf(".rpm lacks %s:\n%s", f, rlist)
		}
	}
	if cfg := must(t, "rpm", "-qcp", rpm); !strings.Contains(cfg, "/etc/latch/latch.toml") {
		t.Errorf(".rpm: latch.toml is not %%config: %s", cfg)
	}
	if s := must(t, "rpm", "-qp", "--scripts", rpm); !strings.Contains(s, "latch cleanup") || !strings.Contains(s, "try-restart latch.service") {
		t.Errorf(".rpm scripts:\n%s", s)
	}

	// lintian: no errors (warnings and information are printed).
	out, err = exec.Command("lintian", "--fail-on", "error", deb).CombinedOutput()
	t.Logf("lintian:\n%s", out)
	if err != nil || strings.Contains(string(out), "\nE: ") || strings.HasPrefix(string(out), "E: ") {
		t.Errorf("lintian reports errors: %v\n%s", err, out)
	}

	// The shipped configuration, every key uncommented, is what `config check` accepts.
	conf, err := os.ReadFile("latch.toml")
	if err != nil {
		t.Fatal(err)
	}
	var on strings.Builder
	n := 0
	for _, l := range strings.Split(string(conf), "\n") {
		if k, _, ok := strings.Cut(strings.TrimPrefix(l, "#"), " = "); ok && strings.HasPrefix(l, "#") && !strings.Contains(k, " ") {
			on.WriteString(strings.TrimPrefix(l, "#") + "\n")
			n++
		}
	}
	p := filepath.Join(t.TempDir(), "all.toml")
	os.WriteFile(p, []byte(on.String()), 0o644)
	bin := latchBinary(t, t.TempDir())
	if out, err := exec.Command(bin, "config", "check", p).CombinedOutput(); err != nil || n < 8 {
		t.Errorf("the default configuration with its %d keys uncommented: %v\n%s\n%s", n, err, out, on.String())
	}
}

// TestDebInstallUpgradePurge installs the .deb into this machine with dpkg, runs the
// installed daemon in a network namespace, answers a question, upgrades to a newer
// build, checks that the rule, the history and the administrator's configuration
// survived, then removes and purges. It leaves the machine as it found it.
func TestDebInstallUpgradePurge(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("packages are for Linux")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: dpkg -i")
	}
	needTool(t, "dpkg")
	if err := exec.Command("dpkg", "-s", "latch").Run(); err == nil {
		t.Skip("a latch package is installed on this machine already: not touching it")
	}
	for _, p := range []string{"/usr/bin/latch", "/etc/latch", "/var/lib/latch"} {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("%s exists on this machine already: not touching it", p)
		}
	}
	dir := t.TempDir()
	deb1, _ := buildPackages(t, "0.1.0", filepath.Join(dir, "v1"))
	deb2, _ := buildPackages(t, "0.2.0", filepath.Join(dir, "v2"))
	t.Cleanup(func() {
		if out, err := exec.Command("dpkg", "--purge", "latch").CombinedOutput(); err != nil {
			t.Errorf("cleanup: dpkg --purge latch: %v\n%s", err, out)
		}
	})

	must(t, "dpkg", "-i", deb1)
	for _, f := range append(packageFiles, "/lib/systemd/system/latch.service", "/lib/systemd/system/latch-boot.service") {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	if st, err := os.Stat("/var/lib/latch"); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("/var/lib/latch after install: %v %v", st, err)
	}
	// Enabled the Debian way (deb-systemd-helper), even with no systemd running.
	for _, l := range []string{"/etc/systemd/system/multi-user.target.wants/latch.service", "/etc/systemd/system/sysinit.target.wants/latch-boot.service"} {
		if _, err := os.Lstat(l); err != nil {
			t.Errorf("unit not enabled: %v", err)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		// The installed units, against the installed binary and man page.
		if out, err := exec.Command("systemd-analyze", "verify", "latch.service", "latch-boot.service").CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify on the installed units: %v\n%s", err, out)
		}
	}
	if out := must(t, "/usr/bin/latch", "version"); !strings.Contains(out, "0.1.0") {
		t.Errorf("installed latch version: %s", out)
	}
	// The administrator changes the configuration (a comment: other tests on this
	// machine may run daemons that read it).
	conf, _ := os.ReadFile("/etc/latch/latch.toml")
	os.WriteFile("/etc/latch/latch.toml", append(conf, []byte("# changed by the administrator\n")...), 0o644)

	helper := filepath.Join(dir, "bin", "e2ehelper")
	os.MkdirAll(filepath.Dir(helper), 0o755)
	os.Chmod(dir, 0o755)
	build := exec.Command("go", "build", "-o", helper, "./test/e2e/e2ehelper")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build e2ehelper: %v\n%s", err, out)
	}
	pair, err := nettest.NewPair()
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	srv := nettest.Command(pair.Server, helper, "serve", pair.ServerIP+":8301")
	var srvOut bytes.Buffer
	srv.Stdout = &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(300 * time.Millisecond)

	state, api := filepath.Join(dir, "state"), filepath.Join(dir, "latch.sock")
	cli := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c := exec.CommandContext(ctx, "/usr/bin/latch", args...)
		c.Env = append(os.Environ(), "LATCH_API="+api)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	startDaemon := func() (*exec.Cmd, *bytes.Buffer) {
		d := nettest.Command(pair.Client, "/usr/bin/latch", "daemon", "--state-dir", state, "--api", api, "--prompt-timeout", "20s")
		var out bytes.Buffer
		d.Stdout, d.Stderr = &out, &out
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 300; i++ {
			if _, err := cli("status"); err == nil {
				return d, &out
			}
			time.Sleep(50 * time.Millisecond)
		}
		d.Process.Kill()
		d.Wait()
		t.Fatalf("installed daemon did not come up:\n%s", out.String())
		return nil, nil
	}
	stopDaemon := func(d *exec.Cmd) {
		d.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { d.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			d.Process.Kill()
			<-done
			t.Error("installed daemon did not stop on SIGTERM")
		}
	}

	d, dout := startDaemon()
	// A question: the connect waits until it is answered.
	conn := nettest.Command(pair.Client, helper, "connect", pair.ServerIP+":8301", "15s")
	var connOut bytes.Buffer
	conn.Stdout = &connOut
	conn.Start()
	var id string
	for i := 0; i < 200 && id == ""; i++ {
		out, _ := cli("prompts", "--json")
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var p map[string]any
			if json.Unmarshal([]byte(l), &p) == nil && p["exe"] == helper {
				id = fmt.Sprint(p["id"])
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if id == "" {
		stopDaemon(d)
		t.Fatalf("no question for e2ehelper's connect:\n%s", dout.String())
	}
	if out, err := cli("answer", id, "allow", "--for", "forever", "--scope", "app+port"); err != nil {
		t.Fatalf("answer: %v\n%s", err, out)
	}
	conn.Wait()
	if !strings.Contains(connOut.String(), `"outcome":"connected"`) {
		t.Errorf("the answered connect: %s", connOut.String())
	}
	time.Sleep(300 * time.Millisecond)
	stopDaemon(d)

	// Upgrade.
	must(t, "dpkg", "-i", deb2)
	if out := must(t, "/usr/bin/latch", "version"); !strings.Contains(out, "0.2.0") {
		t.Errorf("after the upgrade, latch version: %s", out)
	}
	if b, _ := os.ReadFile("/etc/latch/latch.toml"); !strings.Contains(string(b), "# changed by the administrator") {
		t.Errorf("the upgrade lost the administrator's configuration change")
	}
	d, dout = startDaemon()
	rules, _ := cli("rules", "list", "--json")
	conns, _ := cli("conns", "--json")
	status, _ := cli("status")
	stopDaemon(d)
	if !strings.Contains(rules, helper) || !strings.Contains(rules, "8301") {
		t.Errorf("after the upgrade, the answered rule is gone: %s", rules)
	}
	if !strings.Contains(conns, helper) {
		t.Errorf("after the upgrade, the history is gone: %s", conns)
	}
	if !strings.Contains(status, "0.2.0") {
		t.Errorf("the daemon after the upgrade is not the new one:\n%s\n%s", status, dout.String())
	}

	// Remove keeps state; purge deletes it, and the units' symlinks.
	os.WriteFile("/var/lib/latch/marker", []byte("x"), 0o600)
	must(t, "dpkg", "--remove", "latch")
	if _, err := os.Stat("/usr/bin/latch"); err == nil {
		t.Error("/usr/bin/latch still there after dpkg --remove")
	}
	if _, err := os.Stat("/var/lib/latch/marker"); err != nil {
		t.Errorf("dpkg --remove deleted state: %v", err)
	}
	must(t, "dpkg", "--purge", "latch")
	for _, p := range []string{"/var/lib/latch", "/etc/latch", "/etc/systemd/system/multi-user.target.wants/latch.service", "/etc/systemd/system/sysinit.target.wants/latch-boot.service", "/etc/systemd/system/latch.service"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s still there after purge", p)
		}
	}
}
