package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitCaps reads the capability set latch.service grants.
func unitCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../packaging/latch.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("latch.service has no CapabilityBoundingSet")
	}
	return strings.Fields(string(m[1]))
}

// capArg turns CAP_NET_ADMIN... into setpriv's -all,+net_admin,...
func capArg(caps []string) string {
	s := "-all"
	for _, c := range caps {
		s += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	return s
}

type capsRun struct {
	started     bool
	attribution string // the status line
	exe         string // the question's program, as a user other than root asked
	output      string
}

// runWithCaps starts the daemon as root limited to caps (bounding set, as systemd's
// CapabilityBoundingSet does), with a cgroup2 file system mounted as systemd has one,
// lets a connect by user nobody become a question and reports what the daemon saw.
func runWithCaps(t *testing.T, n *Net, bindir string, caps []string) capsRun {
	t.Helper()
	dir, err := os.MkdirTemp("", "latch-caps-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	api := filepath.Join(dir, "latch.sock")
	cg := filepath.Join(dir, "cgroup2")
	os.Mkdir(cg, 0o755)
	// `ip netns exec` mounts a fresh /sys, without the host's cgroup2.
	mount := fmt.Sprintf("{ grep -q ' - cgroup2 ' /proc/self/mountinfo || mount -t cgroup2 none %s; } && ", cg)
	script := fmt.Sprintf("%sexec setpriv --inh-caps=-all --bounding-set=%s %s daemon --config '' --state-dir %s --api %s --prompt-timeout 5s",
		mount, capArg(caps), filepath.Join(bindir, "latch"), filepath.Join(dir, "state"), api)
	p := n.Start(n.Client, "unshare", "-m", "sh", "-c", script)
	defer p.Signal(syscall.SIGTERM, 20*time.Second)
	d := &Daemon{Proc: p, net: n, API: api}
	var r capsRun
	deadline := time.Now().Add(15 * time.Second)
	for {
		if st, err := d.CLI("status"); err == nil {
			for _, l := range strings.Split(st, "\n") {
				if strings.HasPrefix(l, "attribution:") {
					r.attribution = l
				}
			}
			r.started = true
			break
		}
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			r.output = p.Output()
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := n.Start(n.Client, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", filepath.Join(bindir, "e2ehelper"), "connect", n.ServerIP+":8221", "3s")
	defer c.Kill()
	for i := 0; i < 100; i++ {
		if out, err := d.CLI("prompts", "--json"); err == nil {
			if ps := JSONLines(t, out); len(ps) > 0 {
				r.exe = fmt.Sprint(ps[0]["exe"])
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.output = p.Output()
	return r
}

// TestUnitCapabilitySet: the daemon does its whole job with exactly the capabilities
// latch.service grants (interception, eBPF attribution, the program of another user's
// connection), and each of them is needed: without it something a user sees breaks.
func TestUnitCapabilitySet(t *testing.T) {
	for _, tool := range []string{"setpriv", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed", tool)
		}
	}
	// Binaries where user nobody may run them.
	bindir, err := os.MkdirTemp("", "latch-caps-bin-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(bindir)
	os.Chmod(bindir, 0o755)
	for _, b := range []string{latchBin, helperBin} {
		if out, err := exec.Command("cp", b, bindir).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	helper := filepath.Join(bindir, "e2ehelper")
	n := NewNet(t)
	n.Serve(t, 8221)
	caps := unitCaps(t)
	t.Logf("latch.service: CapabilityBoundingSet=%s", strings.Join(caps, " "))

	all := runWithCaps(t, n, bindir, caps)
	if !all.started || !strings.Contains(all.attribution, "ebpf-cgroup") || all.exe != helper {
		t.Fatalf("with the unit's capabilities: started %v, %q, question's program %q (want %s)\n%s", all.started, all.attribution, all.exe, helper, all.output)
	}
	without := func(c string) []string {
		var s []string
		for _, x := range caps {
			if x != c {
				s = append(s, x)
			}
		}
		return s
	}
	for _, c := range caps {
		var broke string
		switch c {
		case "CAP_NET_RAW":
			// Only iptables-legacy needs it (a raw socket); the daemon uses it when
			// neither nftables nor iptables-nft works.
			cmd := exec.Command("ip", "netns", "exec", n.Client, "setpriv", "--inh-caps=-all", "--bounding-set="+capArg(without(c)), "iptables-legacy", "-w", "-t", "filter", "-S")
			if out, err := cmd.CombinedOutput(); err != nil {
				broke = "iptables-legacy: " + strings.TrimSpace(string(out))
			}
			cmd = exec.Command("ip", "netns", "exec", n.Client, "setpriv", "--inh-caps=-all", "--bounding-set="+capArg(caps), "iptables-legacy", "-w", "-t", "filter", "-S")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("iptables-legacy with the unit's capabilities: %v %s", err, out)
			}
		case "CAP_DAC_READ_SEARCH":
			// The /proc/*/fd scan, attribution's last resort when eBPF is not there
			// (older kernels, no cgroup2), reads other users' fd directories.
			noBPF := runWithCaps(t, n, bindir, without("CAP_BPF"))
			if noBPF.exe != helper {
				t.Errorf("without eBPF (CAP_BPF), with CAP_DAC_READ_SEARCH: another user's program is %q, want %s", noBPF.exe, helper)
			}
			caps2 := caps
			caps = without("CAP_BPF")
			r := runWithCaps(t, n, bindir, without(c))
			caps = caps2
			if r.exe != helper {
				broke = fmt.Sprintf("without eBPF too, another user's program is %q (the /proc scan cannot read their fds)", r.exe)
			}
		default:
			r := runWithCaps(t, n, bindir, without(c))
			switch {
			case !r.started:
				broke = "the daemon does not start"
			case !strings.Contains(r.attribution, "ebpf-cgroup"):
				broke = "no eBPF attribution"
			case r.exe != helper:
				broke = fmt.Sprintf("another user's program is %q", r.exe)
			}
		}
		if broke == "" {
			t.Errorf("without %s nothing broke: the unit grants more than needed", c)
		} else {
			t.Logf("without %s: %s", c, broke)
		}
	}
}
