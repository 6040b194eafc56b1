// Command memimport measures the memory of a latch daemon holding 100,000 rules two
// ways, side by side in interleaved rounds: started with them in its rules file
// ("fresh"), and started empty and then given them by `latch rules import`
// ("import"); and, for comparison, started with them and given them again
// ("reimport"). It prints each daemon's resident set size (VmRSS) a few seconds after it
// has its rules, and again later, and the ratio import/fresh (target: at most 1.5).
//
//	sudo go run ./test/memimport            # -rules 100000 -rounds 3
//
// The daemons run with --backend none (no interception: rules, API and history only),
// so no root-only kernel state is touched; they still need a writable state directory.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func main() {
	nrules := flag.Int("rules", 100_000, "rules to hold")
	rounds := flag.Int("rounds", 3, "interleaved rounds")
	settle := flag.Duration("settle", 3*time.Second, "wait after the rules are in before the first reading")
	later := flag.Duration("later", 20*time.Second, "wait after the first reading before the second")
	flag.Parse()
	if err := run(*nrules, *rounds, *settle, *later); err != nil {
		fmt.Fprintln(os.Stderr, "memimport:", err)
		os.Exit(1)
	}
}

func run(nrules, rounds int, settle, later time.Duration) error {
	dir, err := os.MkdirTemp("", "latch-memimport-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	latch := filepath.Join(dir, "latch")
	if out, err := exec.Command("go", "build", "-o", latch, "./cmd/latch").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/latch (run from the repository root): %v\n%s", err, out)
	}
	rulesFile := filepath.Join(dir, "rules-import.json")
	if err := os.WriteFile(rulesFile, engine.MarshalRules(makeRules(nrules)), 0o600); err != nil {
		return err
	}
	type reading struct{ first, second, peak float64 }
	res := map[string][]reading{}
	for r := range rounds {
		for _, scenario := range []string{"fresh", "import", "reimport"} {
			first, second, peak, err := measure(latch, filepath.Join(dir, fmt.Sprintf("%s-%d", scenario, r)), rulesFile, scenario, settle, later)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, scenario, err)
			}
			fmt.Printf("round %d %-8s  RSS %6.1f MiB after %v, %6.1f MiB %v later, peak %6.1f MiB\n", r+1, scenario, first, settle, second, later, peak)
			res[scenario] = append(res[scenario], reading{first, second, peak})
		}
	}
	mean := func(rs []reading, field func(reading) float64) float64 {
		s := 0.0
		for _, x := range rs {
			s += field(x)
		}
		return s / float64(len(rs))
	}
	first := func(x reading) float64 { return x.first }
	second := func(x reading) float64 { return x.second }
	peak := func(x reading) float64 { return x.peak }
	f1, f2, fp := mean(res["fresh"], first), mean(res["fresh"], second), mean(res["fresh"], peak)
	i1, i2, ip := mean(res["import"], first), mean(res["import"], second), mean(res["import"], peak)
	fmt.Printf("%d rules, mean of %d rounds: fresh start %.1f / %.1f MiB (peak %.1f), import into a running daemon %.1f / %.1f MiB (peak %.1f)\n",
		nrules, rounds, f1, f2, fp, i1, i2, ip)
	fmt.Printf("import/fresh: %.2fx after %v, %.2fx %v later (target <= 1.5x); peak %.2fx\n", i1/f1, settle, i2/f2, later, ip/fp)
	r1, r2, rp := mean(res["reimport"], first), mean(res["reimport"], second), mean(res["reimport"], peak)
	fmt.Printf("reimport (the same rules again into a daemon holding them): %.1f / %.1f MiB (peak %.1f), %.2fx / %.2fx of fresh\n",
		r1, r2, rp, r1/f1, r2/f2)
	return nil
}

// measure runs one daemon: with the rules in its rules file (fresh), imported once it
// runs (import), or both (reimport), and reads its RSS settle after the rules are
// in, and later again, and its peak.
func measure(latch, dir, rulesFile, scenario string, settle, later time.Duration) (first, second, peak float64, err error) {
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return 0, 0, 0, err
	}
	if scenario != "import" {
		data, err := os.ReadFile(rulesFile)
		if err != nil {
			return 0, 0, 0, err
		}
		if err := os.WriteFile(filepath.Join(state, "rules.json"), data, 0o600); err != nil {
			return 0, 0, 0, err
		}
	}
	sock := filepath.Join(dir, "latch.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d := exec.CommandContext(ctx, latch, "daemon", "--backend", "none", "--state-dir", state, "--api", sock)
	if err := d.Start(); err != nil {
		return 0, 0, 0, err
	}
	defer func() { d.Process.Signal(os.Interrupt); d.Wait() }()
	cli := func(args ...string) error {
		c := exec.CommandContext(ctx, latch, args...)
		c.Env = append(os.Environ(), "LATCH_API="+sock)
		out, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("latch %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for cli("status") != nil {
		if time.Now().After(deadline) {
			return 0, 0, 0, errors.New("the daemon's API did not answer within 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if scenario != "fresh" {
		if err := cli("rules", "import", rulesFile); err != nil {
			return 0, 0, 0, err
		}
	}
	time.Sleep(settle)
	if first, err = statusMiB(d.Process.Pid, "VmRSS:"); err != nil {
		return 0, 0, 0, err
	}
	time.Sleep(later)
	if second, err = statusMiB(d.Process.Pid, "VmRSS:"); err != nil {
		return 0, 0, 0, err
	}
	peak, err = statusMiB(d.Process.Pid, "VmHWM:")
	return first, second, peak, err
}

// statusMiB reads a size from /proc/PID/status: VmRSS (resident now), VmHWM (peak).
func statusMiB(pid int, key string) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", key, pid)
}

// makeRules is a realistic mix: exact apps, app globs, remotes and ports.
func makeRules(n int) []engine.Rule {
	rules := make([]engine.Rule, 0, n)
	for i := 1; i <= n; i++ {
		r := engine.Rule{ID: engine.RuleID(i), Action: engine.Allow, Protocol: engine.TCP, Direction: engine.Outbound}
		switch i % 4 {
		case 0:
			r.App = fmt.Sprintf("/opt/app%d/bin/app", i)
		case 1:
			r.App = fmt.Sprintf("/usr/lib/pkg%d/*", i)
			r.Action = engine.Deny
		case 2:
			r.App = fmt.Sprintf("/usr/bin/tool%d", i)
			r.Remote = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 32)
		case 3:
			r.App = fmt.Sprintf("/usr/local/bin/svc%d", i)
			r.Port = engine.PortRange{Lo: uint16(1000 + i%5000), Hi: uint16(1000 + i%5000)}
		}
		rules = append(rules, r)
	}
	return rules
}
