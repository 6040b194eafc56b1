//go:build linux

// Command bench measures what latch costs a program that connects: connect() latency
// (median, p99) and connections per second, in one run, for
//
//   - none:  no firewall at all;
//   - floor: a minimal NFQUEUE reader that accepts everything (the price of the kernel
//     round trip itself, which no queue-based firewall can avoid);
//   - conntrack: no queue, only a rule that makes the kernel track connections (the
//     price of conntrack, which latch's marks need, and so the fast path's floor
//     where its flows are tracked: without notrack);
//   - notrack: no queue, TCP kept out of conntrack in the raw table (outbound, and
//     inbound packets of a connected socket, found with the socket match) and let
//     through by that: the floor of a fast path whose flows conntrack never sees,
//     as latch's are with notrack (`fast path notrack: on`);
//   - latch: the latch daemon with 10,000 rules loaded and process attribution on,
//     without its kernel fast path (--fast-path=false): every connect is queued;
//   - latch+sinks: the same with every observer on: metrics (--metrics), a JSON-lines
//     events file, a syslog collector over TCP (a reader that discards), and an API
//     follower (`latch events --follow --json`) — to compare with latch;
//   - latch-noacct: the same as latch with byte accounting off (--accounting=false);
//   - latch+fp: latch with the fast path: after the first connect the rule's
//     decision is cached in the kernel and connects skip the queue;
//   - latch+fp-miss: the fast path attached but never hitting (a host-name rule in
//     the set turns caching off), the cost of a first-seen connection with it.
//
// and bulk throughput over one allowed connection (up to -bulk MiB or -bulk-time per
// round, whichever comes first), and reports
// latch's added latency as a multiple of the floor's, what the observers and byte
// accounting cost, and the fast path's connect median and throughput against no
// firewall, its hit ratio, ring buffer losses and map size. The fast path's
// comparisons are also taken round by round (each ratio within one round, then the
// median of the rounds' ratios), which a shared machine's drifting speed spoils
// less than pooled numbers. -udp N adds UDP exchanges, each a new flow (the first
// datagram of a flow is what latch decides), for none, latch and latch+fp;
// -scenarios picks some scenarios only; -latch-base BIN adds latch+fp@base,
// latch+fp with another latch binary (a baseline build), compared round by
// round with latch+fp. Each scenario's clients run in a cgroup of their own (under
// the bench's), and each latch daemon attaches its hooks to its scenario's alone
// (--attribution-cgroup, and --fast-path-cgroup for the fast path): no scenario's
// connects run another daemon's programs, and those without latch run none, which
// the bench checks while the daemons run ("baseline hooks: ..."). Each scenario runs in
// fresh network namespaces joined by a veth pair (198.18.0.0/15). Needs root.
//
// The set-ups are visited in turn each round, in reverse order every other round
// (A,B,B,A,...), so a drifting machine favours none. Byte accounting is judged on
// per-round ratios (latch against latch-noacct in the same round) and their median,
// not on totals one slow round can swing; for that comparison alone (1,000 connects
// per phase and round; the client's ephemeral ports, held in TIME_WAIT for a minute,
// bound the connects per scenario to about 28,000):
//
//	sudo go run ./test/bench -scenarios latch,latch-noacct -rounds 12 -n 12000
//
//	sudo go run ./test/bench [-n 2000] [-conc 8] [-rules 10000] [-rounds 5] [-bulk 1024] [-bulk-time 1s] [-udp 0] [-reset=true] [-scenarios a,b] [-latch-base BIN] [-cpuprofile DIR] [-perf DIR] [-bpfstats]
//	    [-paired 500] [-paired-slot 16] [-paired-bursts 100] [-paired-burst 200] [-paired-scenarios none,latch+fp] [-paired-idle]
//
// After the rounds, the scenarios of -paired-scenarios (default none,latch+fp, the
// reference first; those the run has, at least two) are measured once more in
// lock step, which a drifting machine cannot tilt: one client process per
// scenario, started in its network namespace and cgroup like the rounds'
// clients, runs a slot of -paired-slot sequential connects (default 16; the
// first, after the handoff, not counted) when the bench tells it to, timing
// each itself, and hands back; the slots follow a de Bruijn order (A,A,B,B,...
// for two scenarios: every scenario's slot after every scenario's alike, so that
// what a daemon still has to do after its slot falls on each equally), -paired
// slots per scenario (default 500, rounded up to whole cycles; a cycle takes a
// few milliseconds); -paired-idle waits for every latch daemon to be idle before
// each slot too (the CPUs then idle as well, and connects are slower).
// The verdict is the median of the per-cycle ratios (each scenario's median
// connect within one cycle), with a 95% bootstrap interval over cycles and the
// interquartile range ("paired connect ..." and "fast path vs no firewall,
// paired: connect ..."). Then -paired-bursts bursts per scenario (default 100) of
// -paired-burst connects (default 200) from -conc workers, in the same order,
// each after every latch daemon is idle, timed without and with the scenario's
// daemon's catch-up (until its CPU clock stands still: work it would do during
// the next connects of a steady load); the verdict on throughput is the median
// of the per-cycle ratios with the catch-up ("paired throughput ..."). A ratio
// that changes with the machine's load (the fast path's daemon competes for the
// CPUs) still differs from run to run, and so does the set-up: two scenarios with
// the same binary (latch+fp and latch+fp@base with -latch-base the same) came
// out 0.94x to 1.10x paired in four runs (0.74x to 1.35x per round). Pairing
// takes out the drift within a run; the interval covers that, not the set-up:
// compare several runs. -paired 0 -paired-bursts 0 turns it off; with -reset=false mind the
// ephemeral ports (the paired connects count towards the 28,000).
//
//	sudo go run ./test/bench -scenarios none,latch+fp -rounds 6 -n 12000 -bulk 0
//
// -cpuprofile DIR has each latch daemon write a CPU profile of itself to
// DIR/SCENARIO.pprof when it stops (`go tool pprof DIR/latch+fp.pprof`).
// That profile holds the daemon's start-up too (the rules' import, loading BTF),
// which hides what a connect costs: -perf DIR instead samples each latch daemon
// with `perf record -g` (Go keeps frame pointers) from after its rules were
// imported to the end of the rounds, the phases the "daemon CPU per connect" line
// counts, into DIR/SCENARIO.perf.data (`perf report -i DIR/latch+fp.perf.data
// --no-children`; perf must be installed).
// -bpfstats reports what each latch scenario's eBPF programs (those in force on
// its clients' cgroup) cost a connect, by program, from the kernel's run-time
// statistics, which it turns on for the run (they slow every program a little:
// take the ratios from a run without it).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
	"github.com/latchfw/latch/test/nettest"
)

const benchPort = 9000

// cpuProfileDir (-cpuprofile): where the daemons write their CPU profiles; "": none.
var cpuProfileDir string

// perfDir (-perf): where perf record writes the daemons' samples of the
// measuring phases; "": none.
var perfDir string

// Measurement is one scenario's numbers, as the client role prints them.
type Measurement struct {
	Scenario string  `json:"scenario"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	ConnPerS float64 `json:"conn_per_s"`
	Connects int     `json:"connects"`
	BulkMiBs float64 `json:"bulk_mib_s"`
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "role-client":
			roleClient(os.Args[2:])
			return
		case "role-paired":
			rolePaired(os.Args[2:])
			return
		case "role-server":
			roleServer(os.Args[2])
			return
		case "role-sink":
			roleSink(os.Args[2])
			return
		case "role-bulk":
			roleBulk(os.Args[2], os.Args[3], os.Args[4])
			return
		case "role-floor":
			roleFloor()
			return
		case "role-collector":
			roleCollector(os.Args[2])
			return
		}
	}
	n := flag.Int("n", 2000, "connects per phase (sequential latency, then concurrent throughput)")
	conc := flag.Int("conc", 8, "concurrent connecting workers in the throughput phase")
	nrules := flag.Int("rules", 10000, "rules loaded into latch")
	rounds := flag.Int("rounds", 5, "interleaved rounds the connects are split into")
	latchBin := flag.String("latch", "", "latch binary (default: build ./cmd/latch)")
	baseBin := flag.String("latch-base", "", "a second latch binary (a baseline build, e.g. of main) for scenario latch+fp@base: latch+fp with it, side by side")
	bulk := flag.Int("bulk", 1024, "at most this many MiB sent over one connection per scenario and round (0: no bulk phase)")
	bulkTime := flag.Duration("bulk-time", time.Second, "at most this long sending per scenario and round")
	only := flag.String("scenarios", "", "comma-separated scenarios to run (default: all)")
	reset := flag.Bool("reset", true, "close each connect with a reset (no TIME_WAIT); false: a normal close, whose TIME_WAIT sockets make the kernel's search for a free local port part of every connect")
	flag.BoolVar(&bpfStats, "bpfstats", false, "turn the kernel's eBPF run-time statistics on for the run and report what each latch scenario's eBPF programs cost a connect (every program run then costs two clock readings more: use a run without it for the ratios)")
	flag.StringVar(&cpuProfileDir, "cpuprofile", "", "write a CPU profile of each latch daemon to DIR/SCENARIO.pprof (LATCH_CPUPROFILE), when it stops")
	paired := flag.Int("paired", 500, "lock-step slots of -paired-slot sequential connects per scenario of -paired-scenarios, after the rounds (0: none)")
	pairedSlot := flag.Int("paired-slot", 16, "sequential connects per lock-step slot (at least 2: the first of a slot is not counted)")
	pairedBursts := flag.Int("paired-bursts", 100, "lock-step bursts of -paired-burst connects from -conc workers per scenario of -paired-scenarios, after the paired slots (0: none)")
	pairedBurst := flag.Int("paired-burst", 200, "connects per lock-step burst")
	pairedIdle := flag.Bool("paired-idle", false, "before each paired connect, wait until every latch daemon is idle (its work from the last slot done; the CPUs then idle too, and connects are slower than back to back)")
	pairedSpec := flag.String("paired-scenarios", "none,latch+fp", "the scenarios measured in lock step, the reference first (those the run has; fewer than two: no paired measurement)")
	flag.StringVar(&perfDir, "perf", "", "sample each latch daemon with perf record -g from after its set-up to the end of the rounds, into DIR/SCENARIO.perf.data")
	udpN := flag.Int("udp", 0, "UDP exchanges (each a new flow) per phase, in the same rounds, for none, latch and latch+fp (0: none)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fatalf("bench needs root (network namespaces, netfilter)")
	}
	self, err := os.Executable()
	if err != nil {
		fatalf("%v", err)
	}
	dir, err := os.MkdirTemp("", "latch-bench-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(dir)
	atExit = append(atExit, func() { os.RemoveAll(dir) })
	// Copy ourselves to a stable path: the latch scenario allows this executable by path.
	client := filepath.Join(dir, "latch-bench-client")
	if out, err := exec.Command("cp", self, client).CombinedOutput(); err != nil {
		fatalf("cp: %v: %s", err, out)
	}
	if *latchBin == "" {
		*latchBin = filepath.Join(dir, "latch")
		if out, err := exec.Command("go", "build", "-o", *latchBin, "./cmd/latch").CombinedOutput(); err != nil {
			fatalf("go build ./cmd/latch (run from the repository root): %v\n%s", err, out)
		}
	}

	// The three set-ups stay up side by side and the client visits them in turn, a
	// slice of the connects each round: a machine whose speed drifts (a shared VM)
	// then shifts all three alike instead of whichever ran last.
	names := []string{"none", "floor", "conntrack", "notrack", "latch", "latch+sinks", "latch-noacct", "latch+fp", "latch+fp-miss"}
	if *baseBin != "" {
		names = append(names, baseScenario)
	}
	if *only != "" {
		var picked []string
		for _, sc := range strings.Split(*only, ",") {
			sc = strings.TrimSpace(sc)
			if !slices.Contains(names, sc) {
				fatalf("-scenarios: unknown scenario %q (want some of %s)", sc, strings.Join(names, ","))
			}
			if !slices.Contains(picked, sc) {
				picked = append(picked, sc)
			}
		}
		names = picked
	}
	if *rounds < 1 || *n < 1 || *bulk < 0 || *bulkTime <= 0 {
		fatalf("-rounds, -n and -bulk-time must be positive, -bulk not negative")
	}
	if *paired < 0 || *pairedBursts < 0 || *pairedBurst < 1 || *pairedSlot < 2 || *pairedSlot > 1000 ||
		*paired*(*pairedSlot) > 1000000 || *pairedBursts*(*pairedBurst) > 1000000 {
		fatalf("-paired and -paired-bursts must not be negative, -paired-burst must be positive, -paired-slot from 2 to 1000, and -paired times -paired-slot and -paired-bursts times -paired-burst at most 1000000")
	}
	cg, cgfd, err := benchCgroup(dir)
	if err != nil {
		fatalf("%v", err)
	}
	if bpfStats {
		st, err := enableBPFStats()
		if err != nil {
			fatalf("-bpfstats: %v", err)
		}
		defer st.Close()
	}
	atExit = append(atExit, func() { unix.Close(cgfd); removeCgroup(cg) })
	defer func() { unix.Close(cgfd); removeCgroup(cg) }()
	var targets []*target
	plain := map[string]string{} // the cgroups of the scenarios without latch, by name
	tolerate := ""               // why latch's hooks may be on the root: a daemon without --attribution-cgroup
	for _, sc := range names {
		bin := *latchBin
		if sc == baseScenario {
			bin = *baseBin
		}
		scg, scgfd, err := scenarioCgroup(cg, sc)
		if err != nil {
			fatalf("scenario %s: %v", sc, err)
		}
		own := hasAttributionCgroup(bin)
		if !own && strings.HasPrefix(sc, "latch") {
			tolerate = fmt.Sprintf("%s's latch (%s) has no --attribution-cgroup: its hooks are on the root cgroup, so every other scenario's clients run them too, the other latch scenarios' besides their own", sc, bin)
		}
		tg, err := setup(strings.TrimSuffix(sc, "@base"), sc, client, bin, dir, *nrules, scg, scgfd, own)
		if tg != nil && tg.daemon == nil {
			plain[sc] = scg
		}
		if tg != nil {
			tg.name = sc
			atExit = append(atExit, tg.close)
			defer tg.close()
		}
		if err != nil {
			fatalf("scenario %s: %v", sc, err)
		}
		targets = append(targets, tg)
	}
	// Every daemon is up and has attached its hooks: the scenarios without latch
	// must run none of them. Checked again after the rounds: another process's
	// (a latch daemon of some test) would slow every scenario, none too.
	hooksBefore := checkBaselineHooks(filepath.Dir(cg), plain, tolerate, "")
	per := max(*n / *rounds, 1)
	var prev *target // the target measured last
	for r := 0; r < *rounds; r++ {
		order := slices.Clone(targets)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, tg := range order {
			settleAll(targets, prev)
			prev = tg
			if err := tg.measure(client, per, *conc, *reset); err != nil {
				fatalf("scenario %s: %v", tg.name, err)
			}
			if *udpN > 0 && (tg.name == "none" || tg.name == "latch" || tg.name == "latch+fp") {
				if err := tg.measureUDP(client, max(*udpN / *rounds, 1), *conc); err != nil {
					fatalf("scenario %s: %v", tg.name, err)
				}
			}
			if *bulk > 0 {
				if err := tg.measureBulk(client, *bulk, *bulkTime); err != nil {
					fatalf("scenario %s: bulk: %v", tg.name, err)
				}
			}
		}
	}
	settleAll(targets, prev)
	for _, tg := range targets {
		tg.stopPerf()
	}
	var pairedRes *pairedResult
	if pt := pairedTargets(*pairedSpec, targets); pt != nil && (*paired > 0 || *pairedBursts > 0) {
		if pairedRes, err = runPaired(pt, targets, client, *paired, *pairedSlot, *pairedBursts, *pairedBurst, *conc, *reset, *pairedIdle); err != nil {
			fatalf("paired: %v", err)
		}
		settleAll(targets, nil)
	}
	checkBaselineHooks(filepath.Dir(cg), plain, tolerate, hooksBefore)
	var results []Measurement
	for _, tg := range targets {
		results = append(results, tg.result())
	}
	report(results, per**rounds, *conc, *nrules, *rounds)
	reportRounds(targets, *udpN > 0)
	if pairedRes != nil {
		reportPaired(pairedRes)
	}
	reportAccounting(targets, *bulk, *bulkTime, per, *rounds)
	for _, tg := range targets {
		if tg.api != "" && strings.HasPrefix(tg.name, "latch+fp") {
			reportFastPath(tg, *latchBin)
		}
		reportBPFStats(tg)
		if tg.daemon != nil && tg.daemon.Process != nil {
			// CPU time is what a loaded machine does not blur: what the daemon
			// takes from the clients on a machine with few cores.
			if cpu, err := processCPU(tg.daemon.Process.Pid); err == nil && tg.conns > 0 {
				cpu -= tg.cpuStart
				k := len(tg.latency) + tg.conns + tg.pairedConns
				fmt.Printf("%s: daemon CPU %.1f µs per connect (%.2f s for %d connects and %d UDP flows)\n",
					tg.name, cpu.Seconds()*1e6/float64(k+tg.udpFlows), cpu.Seconds(), k, tg.udpFlows)
			}
			if len(tg.settled) > 0 {
				ms := make([]float64, len(tg.settled))
				for i, d := range tg.settled {
					ms[i] = float64(d.Milliseconds())
				}
				fmt.Printf("%s: daemon still busy after its phases (waited for before the next phase): median %.0f ms, max %.0f ms\n",
					tg.name, median(ms), slices.Max(ms))
			}
		}
	}
}

// baseScenario is latch+fp with the -latch-base binary.
const baseScenario = "latch+fp@base"

// benchCgroup mounts the cgroup v2 hierarchy under dir (outside /sys, which `ip
// netns exec` hides) and makes the bench's cgroup in it.
func benchCgroup(dir string) (string, int, error) {
	mnt := filepath.Join(dir, "cgroup2")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", -1, err
	}
	if err := unix.Mount("cgroup2", mnt, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", -1, fmt.Errorf("mount cgroup2 on %s: %w", mnt, err)
	}
	cg := filepath.Join(mnt, fmt.Sprintf("latch-bench-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		return "", -1, err
	}
	fd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		removeCgroup(cg)
		return "", -1, err
	}
	return cg, fd, nil
}

// scenarioCgroup makes the cgroup of one scenario's clients in the bench's cgroup
// cg, and opens it (for clone3's CLONE_INTO_CGROUP).
func scenarioCgroup(cg, scenario string) (string, int, error) {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, scenario)
	path := filepath.Join(cg, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		return "", -1, fmt.Errorf("make the scenario's cgroup: %w", err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(path)
		return "", -1, fmt.Errorf("open the scenario's cgroup: %w", err)
	}
	return path, fd, nil
}

// hasAttributionCgroup tells whether the latch binary has the daemon flag
// --attribution-cgroup (a baseline build may predate it).
func hasAttributionCgroup(latchBin string) bool {
	out, _ := exec.Command(latchBin, "daemon", "--help").CombinedOutput()
	return strings.Contains(string(out), "--attribution-cgroup")
}

// removeCgroup removes the bench's cgroup, the scenarios' in it first, and
// unmounts the hierarchy.
func removeCgroup(cg string) {
	rm := func(dir string) {
		for i := 0; i < 250 && os.Remove(dir) != nil; i++ {
			if _, err := os.Stat(dir); err != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if ents, err := os.ReadDir(cg); err == nil {
		for _, e := range ents {
			if e.IsDir() {
				rm(filepath.Join(cg, e.Name()))
			}
		}
	}
	rm(cg)
	unix.Unmount(filepath.Dir(cg), unix.MNT_DETACH)
}

// reportFastPath prints what the daemon's fast path counted.
func reportFastPath(tg *target, latchBin string) {
	cli := exec.Command(latchBin, "status", "--json")
	cli.Env = append(os.Environ(), "LATCH_API="+tg.api)
	out, err := cli.Output()
	if err != nil {
		fmt.Printf("%s: latch status: %v\n", tg.name, err)
		return
	}
	var st struct {
		FastPath struct {
			On         bool   `json:"on"`
			Reason     string `json:"reason"`
			HitsAllow  uint64 `json:"hits_allow"`
			HitsReject uint64 `json:"hits_reject"`
			Misses     uint64 `json:"misses"`
			Stale      uint64 `json:"stale"`
			RingLost   uint64 `json:"ring_lost"`
			Entries    int    `json:"entries"`
			MaxEntries int    `json:"max_entries"`
			Notrack    bool   `json:"tcp_notrack"`
			NotrackWhy string `json:"tcp_notrack_why"`
			Lease      bool   `json:"lease"`
		} `json:"fast_path"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		fmt.Printf("%s: latch status: %v\n", tg.name, err)
		return
	}
	f := st.FastPath
	if !f.On {
		fmt.Printf("%s: fast path OFF: %s\n", tg.name, f.Reason)
		return
	}
	hits := f.HitsAllow + f.HitsReject
	total := hits + f.Misses + f.Stale
	ratio := 0.0
	if total > 0 {
		ratio = float64(hits) / float64(total)
	}
	notrack := "on"
	if !f.Notrack {
		notrack = "off (" + f.NotrackWhy + ")"
	}
	fmt.Printf("%s: fast path hit ratio %.4f (%d of %d connects), ring buffer losses %d, map %d of %d entries, notrack %s, lease %t\n",
		tg.name, ratio, hits, total, f.RingLost, f.Entries, f.MaxEntries, notrack, f.Lease)
}

// target is one scenario's namespaces and processes, and the samples taken so far.
type target struct {
	name    string
	cgfd    int    // the cgroup the scenario's clients run in (its own)
	cgPath  string // that cgroup's directory
	api     string // the latch daemon's API socket, if any
	pair    *nettest.Pair
	addr    string
	procs   []*exec.Cmd
	latency []float64 // µs, every sequential connect
	conns   int       // connects of the concurrent phases
	// connects of the paired measurement (-paired, -paired-bursts), in no other number
	pairedConns int
	seconds     float64 // their wall time
	failed      int
	// Per round for UDP (-udp; a new flow per exchange): the median sequential
	// exchange (µs) and the concurrent phase's rate (TCP's are in rounds).
	udpMedian, udpRate []float64
	udpFlows           int

	daemon   *exec.Cmd     // latch's daemon, if any
	cpuStart time.Duration // its CPU time once set up (rules imported)
	perf     *exec.Cmd     // perf record sampling the daemon (-perf), until stopPerf

	sinkAddr    string
	bulkBytes   int64
	bulkSeconds float64

	rounds []roundStat // one per round, in order
	// What the programs in force on its cgroup ran during its connect phases
	// (-bpfstats, latch's scenarios), by program.
	bpfCost map[ebpf.ProgramID]progCost
	// How long the daemon went on working after each of its phases (settle).
	settled []time.Duration
}

// cpuSeconds is the CPU time (user and system) the latch daemon used since it was
// set up (rules imported), or 0.
func (tg *target) cpuSeconds() float64 {
	if tg.daemon == nil || tg.daemon.Process == nil {
		return 0
	}
	cpu, err := processCPU(tg.daemon.Process.Pid)
	if err != nil {
		return 0
	}
	return (cpu - tg.cpuStart).Seconds()
}

// medians is the scenario's sequential connect median of each round, in order.
func (tg *target) medians() []float64 {
	xs := make([]float64, len(tg.rounds))
	for i, r := range tg.rounds {
		xs[i] = r.medianUS
	}
	return xs
}

// rates is the scenario's concurrent connects per second of each round, in order.
func (tg *target) rates() []float64 {
	xs := make([]float64, len(tg.rounds))
	for i, r := range tg.rounds {
		xs[i] = r.connPerS
	}
	return xs
}

// roundStat is one scenario's numbers in one round.
type roundStat struct {
	medianUS float64 // sequential connects
	connPerS float64 // concurrent connects
	bulkMiBs float64 // 0: no bulk phase
}

func (tg *target) close() {
	for i := len(tg.procs) - 1; i >= 0; i-- {
		stop(tg.procs[i])
	}
	tg.pair.Close()
	if tg.cgfd >= 0 {
		unix.Close(tg.cgfd)
		tg.cgfd = -1
	}
}

// stopPerf stops the daemon's perf record (-perf), which then writes its file.
func (tg *target) stopPerf() {
	if tg.perf == nil {
		return
	}
	tg.perf.Process.Signal(os.Interrupt)
	// perf exits with the interrupt's status once it wrote the file.
	if err := tg.perf.Wait(); err != nil && !errors.As(err, new(*exec.ExitError)) {
		fmt.Fprintf(os.Stderr, "%s: perf record: %v\n", tg.name, err)
	}
	tg.procs = slices.DeleteFunc(tg.procs, func(c *exec.Cmd) bool { return c == tg.perf })
	tg.perf = nil
}

// inCgroup has cmd start in the scenario's cgroup.
func (tg *target) inCgroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: tg.cgfd}
}

// measure runs one round: n sequential connects, then n from conc workers.
func (tg *target) measure(client string, n, conc int, reset bool) error {
	mode := "fin"
	if reset {
		mode = "reset"
	}
	cmd := nettest.Command(tg.pair.Client, client, "role-client", tg.addr, fmt.Sprint(n), fmt.Sprint(conc), mode)
	tg.inCgroup(cmd)
	var before map[ebpf.ProgramID]progCost
	if bpfStats && tg.daemon != nil {
		var err error
		if before, err = hookStats(tg.cgPath); err != nil {
			return fmt.Errorf("-bpfstats: %v", err)
		}
	}
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("client: %v", err)
	}
	if before != nil {
		after, err := hookStats(tg.cgPath)
		if err != nil {
			return fmt.Errorf("-bpfstats: %v", err)
		}
		tg.addStats(before, after)
	}
	var r clientRound
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("client output %q: %v", out, err)
	}
	if r.Failed > 0 {
		return fmt.Errorf("%d of %d connects failed", r.Failed, 2*n)
	}
	tg.latency = append(tg.latency, r.LatencyUS...)
	tg.conns += n
	tg.seconds += r.Seconds
	rs := roundStat{medianUS: median(r.LatencyUS)}
	if r.Seconds > 0 {
		rs.connPerS = float64(n) / r.Seconds
	}
	tg.rounds = append(tg.rounds, rs)
	return nil
}

// measureUDP runs one round of UDP exchanges, each from a new socket (a new flow):
// n sequential, then n from conc workers.
func (tg *target) measureUDP(client string, n, conc int) error {
	cmd := nettest.Command(tg.pair.Client, client, "role-client", tg.addr, fmt.Sprint(n), fmt.Sprint(conc), "udp")
	tg.inCgroup(cmd)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("udp client: %v", err)
	}
	var r clientRound
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("udp client output %q: %v", out, err)
	}
	if r.Failed > 0 {
		return fmt.Errorf("%d of %d UDP exchanges failed", r.Failed, 2*n)
	}
	tg.udpFlows += 2 * n
	tg.udpMedian = append(tg.udpMedian, median(r.LatencyUS))
	tg.udpRate = append(tg.udpRate, float64(n)/r.Seconds)
	return nil
}

// settleAll waits for every target's daemon to settle, so that none takes CPU from
// the next phase, and records in prev.settled how long prev's daemon (the one
// measured last) went on working.
func settleAll(targets []*target, prev *target) {
	for _, t := range targets {
		if d, ok := t.settle(); ok && t == prev {
			t.settled = append(t.settled, d)
		}
	}
}

// settle waits until the target's latch daemon, if any, is done with the work its
// last phase left (history rows, byte counts): until its CPU time grows by at most
// one clock tick in each of two 100 ms windows, at most 10 s. It returns how long
// the daemon went on working.
func (tg *target) settle() (time.Duration, bool) {
	if tg.daemon == nil || tg.daemon.Process == nil {
		return 0, false
	}
	start := time.Now()
	last, err := processCPU(tg.daemon.Process.Pid)
	quiet := 0
	for err == nil && quiet < 2 && time.Since(start) < 10*time.Second {
		time.Sleep(100 * time.Millisecond)
		var cpu time.Duration
		if cpu, err = processCPU(tg.daemon.Process.Pid); err != nil {
			break
		}
		if cpu-last <= 10*time.Millisecond {
			quiet++
		} else {
			quiet = 0
		}
		last = cpu
	}
	// The two quiet windows are not the daemon's catching up.
	return max(time.Since(start)-200*time.Millisecond, 0), err == nil
}

// processCPU returns the user and system CPU time process pid has used
// (/proc/PID/stat, in clock ticks of 1/100 s).
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok {
		return 0, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// ratios prints a/b round by round for latency (median connect) and throughput,
// and the median of each, and returns the two medians.
func ratios(label string, aLat, bLat, aRate, bRate []float64) (lat, rate float64) {
	var ls, rs []float64
	for i := range min(len(aLat), len(bLat)) {
		if bLat[i] > 0 && bRate[i] > 0 {
			ls = append(ls, aLat[i]/bLat[i])
			rs = append(rs, aRate[i]/bRate[i])
		}
	}
	f := func(xs []float64) string {
		var b strings.Builder
		for _, x := range xs {
			fmt.Fprintf(&b, " %.2f", x)
		}
		return b.String()
	}
	lat, rate = median(ls), median(rs)
	fmt.Printf("%s per round: median connect%s (median %.2fx); throughput%s (median %.2fx)\n", label, f(ls), lat, f(rs), rate)
	return lat, rate
}

func (tg *target) result() Measurement {
	slices.Sort(tg.latency)
	m := Measurement{Scenario: tg.name, Connects: len(tg.latency) + tg.conns}
	if k := len(tg.latency); k > 0 {
		m.MedianUS = tg.latency[k/2]
		m.P99US = tg.latency[k*99/100]
	}
	if tg.seconds > 0 {
		m.ConnPerS = float64(tg.conns) / tg.seconds
	}
	if tg.bulkSeconds > 0 {
		m.BulkMiBs = float64(tg.bulkBytes) / (1 << 20) / tg.bulkSeconds
	}
	return m
}

// clientRound is what the client role prints for one round.
type clientRound struct {
	LatencyUS []float64 `json:"latency_us"`
	Seconds   float64   `json:"seconds"` // wall time of the concurrent phase
	Failed    int       `json:"failed"`
}

// setup makes one scenario's namespaces and starts its server and, for floor and
// latch, its queue reader. Its clients will run in the cgroup cg (cgfd, which the
// target owns from now on), where a latch daemon attaches its hooks: every hook
// with --attribution-cgroup (own: the binary has it), the fast path's with
// --fast-path-cgroup. label is the scenario as listed (latch+fp@base runs name
// latch+fp), which names the daemon's profile. On error the target returned (if
// any) must still be closed.
func setup(name, label, client, latchBin, dir string, nrules int, cg string, cgfd int, own bool) (*target, error) {
	p, err := nettest.NewPair()
	if err != nil {
		unix.Close(cgfd)
		return nil, err
	}
	tg := &target{name: name, pair: p, addr: fmt.Sprintf("%s:%d", p.ServerIP, benchPort), cgfd: cgfd, cgPath: cg}
	addr := tg.addr
	srv := nettest.Command(p.Server, client, "role-server", addr)
	if err := startAndWait(srv, "listening"); err != nil {
		return tg, fmt.Errorf("server: %v", err)
	}
	tg.procs = append(tg.procs, srv)
	tg.sinkAddr = fmt.Sprintf("%s:%d", p.ServerIP, benchPort+1)
	sink := nettest.Command(p.Server, client, "role-sink", tg.sinkAddr)
	if err := startAndWait(sink, "listening"); err != nil {
		return tg, fmt.Errorf("sink: %v", err)
	}
	tg.procs = append(tg.procs, sink)

	switch name {
	case "floor":
		// The same match latch uses for TCP: SYNs by flag.
		rule := []string{"-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "SYN,ACK,RST,FIN", "SYN", "-j", "NFQUEUE", "--queue-num", "4300"}
		if out, err := nettest.Command(p.Client, "iptables", rule...).CombinedOutput(); err != nil {
			return tg, fmt.Errorf("iptables: %v: %s", err, out)
		}
		floor := nettest.Command(p.Client, client, "role-floor")
		if err := startAndWait(floor, "reading"); err != nil {
			return tg, fmt.Errorf("floor reader: %v", err)
		}
		tg.procs = append(tg.procs, floor)
	case "conntrack":
		rule := []string{"-A", "OUTPUT", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"}
		if out, err := nettest.Command(p.Client, "iptables", rule...).CombinedOutput(); err != nil {
			return tg, fmt.Errorf("iptables: %v: %s", err, out)
		}
	case "notrack":
		// What a ruleset costs that keeps TCP out of conntrack (both directions, in
		// the raw table) and lets it pass by that: the kernel's floor for a fast
		// path whose flows conntrack never sees.
		for _, rule := range [][]string{
			{"-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", "CT", "--notrack"},
			{"-t", "raw", "-A", "PREROUTING", "-p", "tcp", "-m", "socket", "--nowildcard", "-j", "CT", "--notrack"},
			{"-A", "OUTPUT", "-p", "tcp", "-m", "conntrack", "--ctstate", "UNTRACKED", "-j", "ACCEPT"},
		} {
			if out, err := nettest.Command(p.Client, "iptables", rule...).CombinedOutput(); err != nil {
				return tg, fmt.Errorf("iptables: %v: %s", err, out)
			}
		}
	case "latch", "latch+sinks", "latch-noacct", "latch+fp", "latch+fp-miss":
		state := filepath.Join(dir, "state-"+p.Client)
		api := filepath.Join(dir, p.Client+".sock")
		tg.api = api
		rulesFile := filepath.Join(dir, "rules-"+p.Client+".json")
		if err := writeRules(rulesFile, client, p.ServerIP, nrules, name == "latch+fp-miss"); err != nil {
			return tg, err
		}
		args := []string{"daemon", "--state-dir", state, "--api", api, "--default", "deny"}
		if name == "latch+sinks" {
			coll := nettest.Command(p.Client, client, "role-collector", "127.0.0.1:5514")
			if err := startAndWait(coll, "listening"); err != nil {
				return tg, fmt.Errorf("collector: %v", err)
			}
			tg.procs = append(tg.procs, coll)
			args = append(args, "--metrics", "127.0.0.1:9184", "--events-file", filepath.Join(dir, p.Client+"-events.jsonl"),
				"--events-syslog", "tcp://127.0.0.1:5514")
		}
		args = append(args, fmt.Sprintf("--accounting=%t", name != "latch-noacct"))
		if own {
			args = append(args, "--attribution-cgroup", cg)
		}
		if strings.HasPrefix(name, "latch+fp") {
			args = append(args, "--fast-path-cgroup", cg)
		} else {
			args = append(args, "--fast-path=false")
		}
		d := nettest.Command(p.Client, latchBin, args...)
		d.Stdout, d.Stderr = os.Stderr, os.Stderr
		if cpuProfileDir != "" {
			d.Env = append(os.Environ(), "LATCH_CPUPROFILE="+filepath.Join(cpuProfileDir, label+".pprof"))
		}
		if err := d.Start(); err != nil {
			return tg, err
		}
		tg.procs = append(tg.procs, d)
		tg.daemon = d
		if err := waitAPI(latchBin, api); err != nil {
			return tg, err
		}
		cli := exec.Command(latchBin, "rules", "import", rulesFile)
		cli.Env = append(os.Environ(), "LATCH_API="+api)
		if out, err := cli.CombinedOutput(); err != nil {
			return tg, fmt.Errorf("latch rules import: %v: %s", err, out)
		}
		tg.cpuStart, _ = processCPU(d.Process.Pid)
		if perfDir != "" {
			// From now on: what the rounds cost the daemon, not its start-up.
			rec := exec.Command("perf", "record", "-F", "2000", "-g", "-p", strconv.Itoa(d.Process.Pid),
				"-o", filepath.Join(perfDir, label+".perf.data"))
			rec.Stderr = os.Stderr
			if err := rec.Start(); err != nil {
				return tg, fmt.Errorf("-perf: %v", err)
			}
			tg.perf = rec
			tg.procs = append(tg.procs, rec)
		}
		if name == "latch+sinks" {
			follow := exec.Command(latchBin, "events", "--follow", "--json")
			follow.Env = append(os.Environ(), "LATCH_API="+api)
			follow.Stdout = io.Discard
			if err := follow.Start(); err != nil {
				return tg, fmt.Errorf("latch events --follow: %v", err)
			}
			tg.procs = append(tg.procs, follow)
		}
	}
	return tg, nil
}

// writeRules writes nrules-1 rules that do not match the benchmark client (other apps,
// other networks, other ports — a realistic mix) and one that allows it. With
// hostRule one of the others names a host, which turns the fast path's caching off.
func writeRules(path, client, serverIP string, nrules int, hostRule bool) error {
	rules := make([]engine.Rule, 0, nrules)
	for i := 1; i < nrules-1; i++ {
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
		if hostRule && i == 1 {
			r.Host = "never.example"
		}
		rules = append(rules, r)
	}
	rules = append(rules, engine.Rule{ID: engine.RuleID(nrules - 1), App: client, Action: engine.Allow,
		Protocol: engine.UDP, Port: engine.PortRange{Lo: benchPort, Hi: benchPort}})
	rules = append(rules, engine.Rule{ID: engine.RuleID(nrules), App: client, Action: engine.Allow,
		Protocol: engine.TCP, Port: engine.PortRange{Lo: benchPort, Hi: benchPort + 1}})
	return os.WriteFile(path, engine.MarshalRules(rules), 0o600)
}

func report(ms []Measurement, n, conc, nrules, rounds int) {
	fmt.Printf("connect() to a veth peer, per scenario: %d sequential connects for latency, %d with %d workers for throughput, in %d interleaved rounds\n", n, n, conc, rounds)
	fmt.Printf("%-14s %12s %12s %12s\n", "", "median µs", "p99 µs", "conn/s")
	for _, m := range ms {
		fmt.Printf("%-14s %12.1f %12.1f %12.0f\n", m.Scenario, m.MedianUS, m.P99US, m.ConnPerS)
	}
	by := map[string]Measurement{}
	for _, m := range ms {
		by[m.Scenario] = m
	}
	none, floor, latch := by["none"], by["floor"], by["latch"]
	_, haveFloor := by["floor"]
	_, haveLatch := by["latch"]
	if haveFloor && haveLatch {
		floorAdd := floor.MedianUS - none.MedianUS
		latchAdd := latch.MedianUS - none.MedianUS
		fmt.Printf("added median latency: floor %.1f µs, latch (%d rules, attribution on) %.1f µs\n", floorAdd, nrules, latchAdd)
		if floorAdd > 0 {
			ratio := latchAdd / floorAdd
			verdict := "within"
			if ratio > 1.25 {
				verdict = "OVER"
			}
			fmt.Printf("latch/floor added-latency ratio: %.2fx (target <= 1.25x: %s)\n", ratio, verdict)
		}
		fmt.Printf("throughput: floor %.2fx of none, latch %.2fx of none, latch %.2fx of floor\n",
			floor.ConnPerS/none.ConnPerS, latch.ConnPerS/none.ConnPerS, latch.ConnPerS/floor.ConnPerS)
	}
	if sinks, ok := by["latch+sinks"]; ok {
		diff := (sinks.MedianUS - latch.MedianUS) / latch.MedianUS * 100
		verdict := "within"
		if diff > 5 {
			verdict = "OVER"
		}
		fmt.Printf("all sinks on (metrics, events file, syslog over TCP, API follower) vs off: median %.1f vs %.1f µs (%+.1f%%, target <= 5%%: %s); throughput %.2fx\n",
			sinks.MedianUS, latch.MedianUS, diff, verdict, sinks.ConnPerS/latch.ConnPerS)
	}
	fp, okFP := by["latch+fp"]
	miss, okMiss := by["latch+fp-miss"]
	if !okFP {
		return
	}
	if ct, ok := by["conntrack"]; ok {
		fmt.Printf("conntrack alone: connect median %.2fx of none, throughput %.2fx; the fast path %.2fx of it, throughput %.2fx\n",
			ct.MedianUS/none.MedianUS, ct.ConnPerS/none.ConnPerS, fp.MedianUS/ct.MedianUS, fp.ConnPerS/ct.ConnPerS)
	}
	within := func(ok bool) string {
		if ok {
			return "within"
		}
		return "OVER"
	}
	fmt.Printf("fast path (ruled connections), pooled over all rounds: connect median %.2fx of none (target <= 1.2x: %s), throughput %.2fx of none (target >= 0.85x: %s)\n",
		fp.MedianUS/none.MedianUS, within(fp.MedianUS <= 1.2*none.MedianUS), fp.ConnPerS/none.ConnPerS, within(fp.ConnPerS >= 0.85*none.ConnPerS))
	if okMiss && haveLatch {
		fmt.Printf("fast path attached, every connect a miss, pooled: connect median %.2fx of latch without it (target <= 1.05x: %s), throughput %.2fx\n",
			miss.MedianUS/latch.MedianUS, within(miss.MedianUS <= 1.05*latch.MedianUS), miss.ConnPerS/latch.ConnPerS)
	}
}

// reportRounds prints the fast path's comparisons round by round (the robust
// numbers on a shared machine: each ratio is taken within one round).
func reportRounds(targets []*target, udp bool) {
	by := map[string]*target{}
	for _, tg := range targets {
		by[tg.name] = tg
	}
	within := func(ok bool) string {
		if ok {
			return "within"
		}
		return "OVER"
	}
	none, fp := by["none"], by["latch+fp"]
	if none != nil && fp != nil {
		lat, rate := ratios("latch+fp / none", fp.medians(), none.medians(), fp.rates(), none.rates())
		fmt.Printf("fast path vs no firewall, medians of the per-round ratios: connect %.2fx (target <= 1.2x: %s), throughput %.2fx (target >= 0.85x: %s)\n",
			lat, within(lat <= 1.2), rate, within(rate >= 0.85))
	}
	if ct := by["conntrack"]; ct != nil && none != nil {
		ratios("conntrack / none", ct.medians(), none.medians(), ct.rates(), none.rates())
		if fp != nil {
			ratios("latch+fp / conntrack", fp.medians(), ct.medians(), fp.rates(), ct.rates())
		}
	}
	if nt := by["notrack"]; nt != nil && none != nil {
		ratios("notrack / none", nt.medians(), none.medians(), nt.rates(), none.rates())
	}
	if base := by[baseScenario]; base != nil && fp != nil {
		lat, rate := ratios("latch+fp / latch+fp@base", fp.medians(), base.medians(), fp.rates(), base.rates())
		fmt.Printf("fast path, this build vs the baseline build (-latch-base), medians of the per-round ratios: connect %.3fx, throughput %.3fx\n", lat, rate)
	}
	if miss, latch := by["latch+fp-miss"], by["latch"]; miss != nil && latch != nil {
		lat, rate := ratios("latch+fp-miss / latch", miss.medians(), latch.medians(), miss.rates(), latch.rates())
		fmt.Printf("fast path attached, every connect a miss, vs latch without it: connect %.2fx (target <= 1.05x: %s), throughput %.2fx\n", lat, within(lat <= 1.05), rate)
	}
	if !udp || none == nil {
		return
	}
	for _, name := range []string{"latch", "latch+fp"} {
		if tg := by[name]; tg != nil && len(tg.udpMedian) > 0 {
			ratios("UDP (a new flow per exchange) "+name+" / none", tg.udpMedian, none.udpMedian, tg.udpRate, none.udpRate)
		}
	}
}

// roleCollector is a syslog collector that reads and discards a TCP stream.
func roleCollector(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatalf("%v", err)
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			fatalf("%v", err)
		}
		go io.Copy(io.Discard, c)
	}
}

// measureBulk sends up to mib MiB, for at most d, over one new connection to the
// sink; it belongs to the round measure last started.
func (tg *target) measureBulk(client string, mib int, d time.Duration) error {
	cmd := nettest.Command(tg.pair.Client, client, "role-bulk", tg.sinkAddr, fmt.Sprint(mib), d.String())
	tg.inCgroup(cmd)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("bulk client: %v", err)
	}
	var r struct {
		Bytes   int64   `json:"bytes"`
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("bulk client output %q: %v", out, err)
	}
	tg.bulkBytes += r.Bytes
	tg.bulkSeconds += r.Seconds
	if k := len(tg.rounds); k > 0 && r.Seconds > 0 {
		tg.rounds[k-1].bulkMiBs = float64(r.Bytes) / (1 << 20) / r.Seconds
	}
	return nil
}

// reportAccounting prints every scenario's bulk throughput and compares latch with
// byte accounting on and off round by round: the ratio on/off of connects per second,
// of the sequential connect rate (1/median latency) and of bulk throughput in each
// round, and the median of each against the target (>= 0.95x).
func reportAccounting(targets []*target, bulk int, bulkTime time.Duration, per, rounds int) {
	if bulk > 0 {
		fmt.Printf("bulk throughput over one connection (up to %d MiB or %v per round, %d rounds), MiB/s:", bulk, bulkTime, rounds)
		for _, tg := range targets {
			fmt.Printf(" %s %.0f", tg.name, tg.result().BulkMiBs)
		}
		fmt.Println()
	}
	var on, off *target
	for _, tg := range targets {
		switch tg.name {
		case "latch":
			on = tg
		case "latch-noacct":
			off = tg
		}
	}
	if on == nil || off == nil {
		return
	}
	fmt.Printf("byte accounting on (latch) vs off (latch-noacct), per round (%d connects per phase):\n", per)
	fmt.Printf("%-6s %-27s %-27s %-27s\n", "round", "connects/s on/off", "median connect µs off/on", "bulk MiB/s on/off")
	var conn, seq, blk []float64
	for r := range min(len(on.rounds), len(off.rounds)) {
		a, b := on.rounds[r], off.rounds[r]
		cr, sr := a.connPerS/b.connPerS, b.medianUS/a.medianUS
		conn, seq = append(conn, cr), append(seq, sr)
		line := fmt.Sprintf("%-6d %9.0f/%-9.0f %6.3fx %9.1f/%-9.1f %6.3fx", r+1, a.connPerS, b.connPerS, cr, b.medianUS, a.medianUS, sr)
		if a.bulkMiBs > 0 && b.bulkMiBs > 0 {
			br := a.bulkMiBs / b.bulkMiBs
			blk = append(blk, br)
			line += fmt.Sprintf(" %9.0f/%-9.0f %6.3fx", a.bulkMiBs, b.bulkMiBs, br)
		}
		fmt.Println(line)
	}
	verdict := func(x float64) string {
		if x >= 0.95 {
			return "within"
		}
		return "UNDER"
	}
	mc, ms := median(conn), median(seq)
	fmt.Printf("byte accounting on vs off, median of %d per-round ratios: connects/s %.3fx (target >= 0.95x: %s), sequential connect rate %.3fx (%s)",
		len(conn), mc, verdict(mc), ms, verdict(ms))
	if len(blk) > 0 {
		mb := median(blk)
		fmt.Printf(", bulk throughput %.3fx (target >= 0.95x: %s)", mb, verdict(mb))
	}
	fmt.Println()
	if a, b := on.cpuSeconds(), off.cpuSeconds(); a > 0 && b > 0 {
		// Every connect and bulk byte of the run, whichever phase: CPU time is what
		// accounting adds to the daemon, less swayed by other load than rates.
		ca, cb := a/float64(on.result().Connects)*1e6, b/float64(off.result().Connects)*1e6
		fmt.Printf("daemon CPU time (user+system) per connect over the run: on %.1f µs, off %.1f µs (%.2fx)\n", ca, cb, ca/cb)
	}
	if rounds < 10 {
		fmt.Println("(few rounds: for the accounting target run -scenarios latch,latch-noacct -rounds 12 -n 12000)")
	}
}

// median returns the median of xs (the mean of the middle two for an even count), or
// 0 for none. xs is not changed.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// roleSink reads every connection to its end.
func roleSink(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatalf("%v", err)
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			fatalf("%v", err)
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			io.Copy(io.Discard, c)
		}()
	}
}

// roleBulk sends up to mib MiB over one connection to addr, stopping after d (at
// least 1 MiB), waits for the sink to have read it all (it closes when it has), and
// prints the bytes and seconds.
func roleBulk(addr, mib, d string) {
	var n int
	fmt.Sscan(mib, &n)
	limit, err := time.ParseDuration(d)
	if err != nil {
		fatalf("bulk duration %q: %v", d, err)
	}
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fatalf("%v", err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 1<<20)
	sent := 0
	for sent < n && (sent == 0 || time.Since(start) < limit) {
		if _, err := c.Write(buf); err != nil {
			fatalf("%v", err)
		}
		sent++
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	c.Close()
	b, _ := json.Marshal(map[string]any{"bytes": int64(sent) << 20, "seconds": time.Since(start).Seconds()})
	fmt.Println(string(b))
}

// roleClient connects n times one after another, then n times from conc workers, and
// prints a clientRound.
func roleClient(args []string) {
	addr := args[0]
	var n, conc int
	fmt.Sscan(args[1], &n)
	fmt.Sscan(args[2], &conc)
	if len(args) > 3 && args[3] == "udp" {
		roleClientUDP(addr, n, conc)
		return
	}
	closeConn := closeReset
	if len(args) > 3 && args[3] == "fin" {
		closeConn = func(c net.Conn) { c.Close() }
	}
	var r clientRound
	r.LatencyUS = make([]float64, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			r.Failed++
			continue
		}
		r.LatencyUS = append(r.LatencyUS, us(time.Since(start)))
		closeConn(c)
	}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				closeConn(c)
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	r.Failed += int(failed.Load())
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

// closeReset closes a connection with a reset (SO_LINGER 0), leaving no TIME_WAIT
// socket: tens of thousands of them from one address to one server would make the
// kernel's search for a free local port (__inet_hash_connect) the larger part of
// every scenario's connect, hiding what the firewalls cost.
func closeReset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// roleClientUDP is roleClient for UDP: each exchange (a datagram and its echo) from
// a new connected socket, so each is a new flow.
func roleClientUDP(addr string, n, conc int) {
	exchange := func(buf []byte) bool {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return false
		}
		_, err = c.Read(buf)
		return err == nil
	}
	var r clientRound
	buf := make([]byte, 64)
	for i := 0; i < n; i++ {
		start := time.Now()
		if !exchange(buf) {
			r.Failed++
			continue
		}
		r.LatencyUS = append(r.LatencyUS, us(time.Since(start)))
	}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Go(func() {
			buf := make([]byte, 64)
			for next.Add(1) <= int64(n) {
				if !exchange(buf) {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	r.Failed += int(failed.Load())
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func roleServer(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatalf("%v", err)
	}
	// A UDP echo on the same address, for -udp.
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		fatalf("%v", err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:k], from)
		}
	}()
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			fatalf("%v", err)
		}
		c.Close()
	}
}

func roleFloor() {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := nfq.AcceptAll(ctx, 4300, func() { fmt.Println("reading") }); err != nil && ctx.Err() == nil {
		fatalf("floor reader: %v", err)
	}
}

func startAndWait(cmd *exec.Cmd, line string) error {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 256)
		k, err := out.Read(buf)
		if err != nil {
			got <- err
			return
		}
		if !strings.Contains(string(buf[:k]), line) {
			got <- fmt.Errorf("printed %q, want %q", buf[:k], line)
			return
		}
		got <- nil
	}()
	select {
	case err := <-got:
		return err
	case <-time.After(15 * time.Second):
		return fmt.Errorf("no %q within 15s", line)
	}
}

func waitAPI(latchBin, api string) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		cli := exec.Command(latchBin, "status")
		cli.Env = append(os.Environ(), "LATCH_API="+api)
		if cli.Run() == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("latch daemon API %s did not answer within 15s", api)
}

func stop(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// atExit is what fatalf undoes before it exits (os.Exit runs no defers): the
// namespaces and processes of the set-ups made so far.
var atExit []func()

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	for i := len(atExit) - 1; i >= 0; i-- {
		atExit[i]()
	}
	os.Exit(1)
}
