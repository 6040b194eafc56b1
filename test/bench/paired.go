//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/test/nettest"
)

// The paired measurement (-paired, -paired-bursts) takes the scenarios' samples in
// lock step: one client process per scenario (in the scenario's network namespace
// and cgroup, as measure starts them) waits on its stdin for a command, runs a
// slot of a few sequential connects (or one burst of connects from -conc
// workers), times each itself and writes the times to its stdout; the bench then
// hands the next slot to the next scenario. The handoff is outside the timed
// region, and the first connect of a slot (the one after the handoff, on CPUs
// that may have gone idle meanwhile) is not counted: the others run back to back
// as in the rounds' sequential phases. The order is reversed every other pair
// (A,B,B,A,...), so that each scenario's slots follow each scenario's alike
// (what a latch daemon still does for its scenario's last connects, the fast
// path's ring-buffer events, falls into the next slot: its own or the other's,
// half and half). Before every burst the bench waits until every latch daemon
// of the run is idle (its CPU clock stands still), and each burst is timed also
// until its own daemon is idle. Each pair of slots is then taken within about a
// millisecond, and a machine whose speed drifts over seconds (a shared VM)
// shifts both alike: their ratio is what is compared.

// Commands of the paired client role, one byte each on its stdin.
const (
	cmdConnect = 'c' // a slot of sequential connects; answer: their times (ns, uint64 LE), or failedNS
	cmdBurst   = 'b' // one burst; answer: its time and its time with the daemon's catch-up
)

// failedNS answers a connect (or a burst with a failed connect) that failed.
const failedNS = ^uint64(0)

// pairedClient is one scenario's lock-step client process.
type pairedClient struct {
	tg  *target
	cmd *exec.Cmd
	in  io.WriteCloser
	out io.ReadCloser
}

// startPaired starts tg's paired client: in tg's client namespace and cgroup, as
// measure does. slot sequential connects make a slot; burst connects make one
// burst, from conc workers. The client is told the pid of the scenario's latch
// daemon (if any), whose catch-up after a burst it waits for and times as well.
func (tg *target) startPaired(client string, slot, conc, burst int, reset bool) (*pairedClient, error) {
	mode := "fin"
	if reset {
		mode = "reset"
	}
	pid := 0
	if tg.daemon != nil && tg.daemon.Process != nil {
		pid = tg.daemon.Process.Pid
	}
	cmd := nettest.Command(tg.pair.Client, client, "role-paired", tg.addr, fmt.Sprint(slot), fmt.Sprint(conc), fmt.Sprint(burst), mode, fmt.Sprint(pid))
	tg.inCgroup(cmd)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("paired client: %v", err)
	}
	return &pairedClient{tg: tg, cmd: cmd, in: in, out: out}, nil
}

// ask sends one command and reads the k uint64 of its answer.
func (pc *pairedClient) ask(c byte, k int) ([]uint64, error) {
	if _, err := pc.in.Write([]byte{c}); err != nil {
		return nil, fmt.Errorf("paired client of %s: send: %v", pc.tg.name, err)
	}
	buf := make([]byte, 8*k)
	if _, err := io.ReadFull(pc.out, buf); err != nil {
		return nil, fmt.Errorf("paired client of %s: answer: %v", pc.tg.name, err)
	}
	xs := make([]uint64, k)
	for i := range xs {
		xs[i] = binary.LittleEndian.Uint64(buf[8*i:])
	}
	return xs, nil
}

// close ends the client (EOF on its stdin) and waits for it.
func (pc *pairedClient) close() {
	pc.in.Close()
	done := make(chan struct{})
	go func() { pc.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		pc.cmd.Process.Kill()
		<-done
	}
}

// pairedResult is what one paired run measured, per scenario in the order given
// (the first is the reference).
type pairedResult struct {
	names []string
	// lat[s]: scenario s's counted connects (µs), slot after slot, per slot the
	// slot's connects but its first.
	lat   [][]float64
	slot  int // connects per slot, the first not counted
	cycle int // slots in one cycle of the order: each scenario's k of them
	// burst[s][i], catchup[s][i]: scenario s's burst i, seconds, without and with
	// the daemon's catch-up.
	burst, catchup [][]float64
	burstSize      int
	conc           int
	// waits: how long the bench waited for the daemons to be idle before a slot
	// that follows scenario s's (µs), per scenario.
	waits [][]float64
	// slotTime: the mean time from one slot's start to the next's.
	slotTime time.Duration
	idle     bool // waited for the daemons to be idle before each paired connect
	// What else the machine did meanwhile (other programs: other benchmarks and
	// tests), during the slots and during the bursts.
	connLoad, burstLoad load
}

// loadSnap is the machine's CPU use so far, and the bench's own (this process,
// every scenario's processes and cgroup).
type loadSnap struct {
	at               time.Time
	busy, steal, own time.Duration
	ok               bool
}

// load is what the machine's other programs used over an interval: CPUs (1.0 =
// one CPU all the time), and the share of time the hypervisor gave no CPU (steal).
type load struct {
	others, steal float64
	ok            bool
}

// takeLoad reads /proc/stat (all CPUs: busy time, steal) and the CPU time of the
// bench itself, of every process of the targets (servers, daemons) and of their
// cgroups (the clients).
func takeLoad(targets []*target) loadSnap {
	l := loadSnap{at: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return l
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return l
	}
	var v [8]int64
	for i := range v {
		fmt.Sscan(f[i+1], &v[i])
	}
	// user nice system idle iowait irq softirq steal, in 1/100 s
	tick := 10 * time.Millisecond
	l.busy = time.Duration(v[0]+v[1]+v[2]+v[5]+v[6]) * tick
	l.steal = time.Duration(v[7]) * tick
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		l.own += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for _, t := range targets {
		for _, p := range t.procs {
			if p.Process != nil {
				if c, err := cpuClock(p.Process.Pid); err == nil {
					l.own += c
				}
			}
		}
		if st, err := os.ReadFile(t.cgPath + "/cpu.stat"); err == nil {
			var usec int64
			if _, rest, ok := strings.Cut(string(st), "usage_usec "); ok {
				fmt.Sscan(rest, &usec)
			}
			l.own += time.Duration(usec) * time.Microsecond
		}
	}
	l.ok = true
	return l
}

// since is the load between snapshot a and l.
func (l loadSnap) since(a loadSnap) load {
	d := l.at.Sub(a.at)
	if !l.ok || !a.ok || d <= 0 {
		return load{}
	}
	return load{
		others: max(float64(l.busy-a.busy-(l.own-a.own)), 0) / float64(d),
		steal:  float64(l.steal-a.steal) / float64(d),
		ok:     true,
	}
}

// String tells the load for the report.
func (l load) String() string {
	if !l.ok {
		return "other programs' load unknown"
	}
	return fmt.Sprintf("other programs' load %.2f CPUs, steal %.0f%% of a CPU", l.others, 100*l.steal)
}

// runPaired measures targets (the first is the reference) in lock step: slots
// slots of slot sequential connects per scenario, then bursts bursts of
// burstSize connects from conc workers (no bursts for bursts 0), both rounded
// up to whole cycles of the order (deBruijn). The latch daemons of all (every target of the
// run) are waited for before every burst, and before every slot of connects with
// idle. Bounded: every connect has a 5 s
// timeout, every idle wait 20 ms, every catch-up 100 ms.
func runPaired(targets []*target, all []*target, client string, slots, slot, bursts, burstSize, conc int, reset, idle bool) (*pairedResult, error) {
	var pids []int
	for _, t := range all {
		if t.daemon != nil && t.daemon.Process != nil {
			pids = append(pids, t.daemon.Process.Pid)
		}
	}
	res := &pairedResult{burstSize: burstSize, conc: conc, idle: idle, slot: slot}
	var clients []*pairedClient
	defer func() {
		for _, pc := range clients {
			pc.close()
		}
	}()
	for _, tg := range targets {
		pc, err := tg.startPaired(client, slot, conc, burstSize, reset)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %v", tg.name, err)
		}
		clients = append(clients, pc)
		res.names = append(res.names, tg.name)
		res.lat = append(res.lat, make([]float64, 0, (slots+len(targets))*(slot-1)))
		res.burst = append(res.burst, make([]float64, 0, bursts))
		res.catchup = append(res.catchup, make([]float64, 0, bursts))
		res.waits = append(res.waits, nil)
	}
	order := deBruijn(len(clients))
	res.cycle = len(order)
	cycles := func(per int) int { return (per + len(clients) - 1) / len(clients) }
	prev := -1
	wait := func() {
		w := waitIdle(pids)
		if prev >= 0 {
			res.waits[prev] = append(res.waits[prev], us(w))
		}
	}
	l0 := takeLoad(all)
	start := time.Now()
	for range cycles(slots) {
		for _, s := range order {
			if idle {
				wait()
			}
			a, err := clients[s].ask(cmdConnect, slot)
			if err != nil {
				return nil, err
			}
			if slices.Contains(a, failedNS) {
				return nil, fmt.Errorf("scenario %s: a paired connect failed", res.names[s])
			}
			for _, ns := range a[1:] {
				res.lat[s] = append(res.lat[s], float64(ns)/1000)
			}
			prev = s
		}
	}
	if k := len(res.lat[0]) / (slot - 1); k > 0 {
		res.slotTime = time.Since(start) / time.Duration(k*len(clients))
	}
	l1 := takeLoad(all)
	res.connLoad = l1.since(l0)
	prev = -1
	for range cycles(bursts) {
		for _, s := range order {
			wait()
			a, err := clients[s].ask(cmdBurst, 2)
			if err != nil {
				return nil, err
			}
			if a[0] == failedNS {
				return nil, fmt.Errorf("scenario %s: a connect of a paired burst failed", res.names[s])
			}
			res.burst[s] = append(res.burst[s], float64(a[0])/1e9)
			res.catchup[s] = append(res.catchup[s], float64(a[1])/1e9)
			prev = s
		}
	}
	res.burstLoad = takeLoad(all).since(l1)
	for s, tg := range targets {
		tg.pairedConns += len(res.lat[s])/(slot-1)*slot + len(res.burst[s])*burstSize
	}
	return res, nil
}

// cpuClock reads process pid's CPU clock (user and system time of all its
// threads, in ns: clock_gettime on the process's CPU-time clock).
func cpuClock(pid int) (time.Duration, error) {
	var ts unix.Timespec
	// MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
	if err := unix.ClockGettime(int32((^pid)<<3|2), &ts); err != nil {
		return 0, fmt.Errorf("CPU clock of process %d: %w", pid, err)
	}
	return time.Duration(ts.Nano()), nil
}

// waitIdle waits until none of the processes pids used more than 10 µs of CPU
// in a window of 200 µs, at most 20 ms, and returns how long it waited.
func waitIdle(pids []int) time.Duration {
	start := time.Now()
	if len(pids) == 0 {
		return 0
	}
	read := func() []time.Duration {
		cs := make([]time.Duration, len(pids))
		for i, p := range pids {
			cs[i], _ = cpuClock(p)
		}
		return cs
	}
	last := read()
	for time.Since(start) < 20*time.Millisecond {
		time.Sleep(200 * time.Microsecond)
		now := read()
		quiet := true
		for i := range now {
			if now[i]-last[i] > 10*time.Microsecond {
				quiet = false
			}
		}
		if quiet {
			break
		}
		last = now
	}
	return time.Since(start)
}

// rolePaired is the paired client: args are the server's address, the connects of
// a slot, the workers and connects of a burst, the close mode (reset or fin) and the scenario's latch
// daemon's pid (0: none). It answers each command on its stdin (cmdConnect,
// cmdBurst) on its stdout until its stdin ends.
func rolePaired(args []string) {
	if len(args) != 6 {
		fatalf("role-paired: want ADDR SLOT CONC BURST MODE DAEMON-PID, got %q", args)
	}
	addr := args[0]
	var slot, conc, burst, pid int
	fmt.Sscan(args[1], &slot)
	fmt.Sscan(args[2], &conc)
	fmt.Sscan(args[3], &burst)
	fmt.Sscan(args[5], &pid)
	if slot < 1 || conc < 1 || burst < 1 {
		fatalf("role-paired: slot, workers and burst must be positive, got %q", args)
	}
	closeConn := closeReset
	if args[4] == "fin" {
		closeConn = func(c net.Conn) { c.Close() }
	}
	dial := func() bool {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return false
		}
		closeConn(c)
		return true
	}
	// The burst's workers wait for a start token each.
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	startW := make(chan struct{})
	for w := 0; w < conc; w++ {
		go func() {
			for range startW {
				for next.Add(1) <= int64(burst) {
					if !dial() {
						failed.Add(1)
					}
				}
				wg.Done()
			}
		}()
	}
	cmd := make([]byte, 1)
	ans := make([]byte, 8*max(slot, 2))
	ts := make([]uint64, slot)
	answer := func(xs ...uint64) {
		for i, x := range xs {
			binary.LittleEndian.PutUint64(ans[8*i:], x)
		}
		if _, err := os.Stdout.Write(ans[:8*len(xs)]); err != nil {
			fatalf("role-paired: %v", err)
		}
	}
	for {
		if _, err := os.Stdin.Read(cmd); err != nil {
			return // EOF: done
		}
		switch cmd[0] {
		case cmdConnect:
			for i := range ts {
				start := time.Now()
				ok := dial()
				d := time.Since(start)
				ts[i] = uint64(d.Nanoseconds())
				if !ok {
					ts[i] = failedNS
				}
			}
			answer(ts...)
		case cmdBurst:
			next.Store(0)
			failed.Store(0)
			wg.Add(conc)
			start := time.Now()
			for w := 0; w < conc; w++ {
				startW <- struct{}{}
			}
			wg.Wait()
			d := time.Since(start)
			end := catchUp(pid, start.Add(d))
			if failed.Load() > 0 {
				answer(failedNS, failedNS)
			} else {
				answer(uint64(d.Nanoseconds()), uint64(end.Sub(start).Nanoseconds()))
			}
		default:
			fatalf("role-paired: unknown command %q", cmd[0])
		}
	}
}

// catchUp waits until the latch daemon pid (0: none) is idle — its CPU clock
// advanced by at most 5 µs in 1 ms of 100 µs polls — and returns when it was
// last seen working, or done if it was not after done; at most 100 ms.
func catchUp(pid int, done time.Time) time.Time {
	if pid == 0 {
		return done
	}
	last, err := cpuClock(pid)
	if err != nil {
		return done
	}
	busy := done
	for time.Since(done) < 100*time.Millisecond && time.Since(busy) < time.Millisecond {
		time.Sleep(100 * time.Microsecond)
		now, err := cpuClock(pid)
		if err != nil {
			break
		}
		if now-last > 5*time.Microsecond {
			busy = time.Now()
		}
		last = now
	}
	return busy
}

// reportPaired prints the paired run's numbers: for every scenario against the
// reference (the first), the median connect of each over the same cycles and
// their ratio, and the median of the per-cycle ratios (of the medians of each
// scenario's connects in one cycle), with a 95% bootstrap interval (resampling
// cycles) and the interquartile range; then the same for the bursts' rates
// (connects over time), without and with the daemon's catch-up. The per-cycle
// median is the verdict: each ratio is taken within a few milliseconds, where
// pooled medians mix what the machine did at different speeds.
func reportPaired(r *pairedResult) {
	within := func(ok bool) string {
		if ok {
			return "within"
		}
		return "OVER"
	}
	k := len(r.names)
	how := "slot after slot"
	if r.idle {
		how = "every daemon idle before each slot"
	}
	// One cycle: k slots of each scenario, k*(slot-1) counted connects.
	block := k * (r.slot - 1)
	cycles := len(r.lat[0]) / block
	for s := 1; s < k && cycles > 0; s++ {
		ref, x := r.lat[0], r.lat[s]
		ratio := func(idx []int) float64 {
			var a, b []float64
			for _, c := range idx {
				a = append(a, ref[c*block:(c+1)*block]...)
				b = append(b, x[c*block:(c+1)*block]...)
			}
			return median(b) / median(a)
		}
		var per []float64
		for c := range cycles {
			per = append(per, ratio([]int{c}))
		}
		mr, mx := median(ref), median(x)
		q1, q2, q3 := quartiles(per)
		lo, hi := bootstrap(cycles, func(idx []int) float64 { return medianOf(per, idx) })
		fmt.Printf("paired connect (lock-step, %d cycles of %d slots of %d sequential connects, each scenario's slots after each's alike, the first connect of a slot not counted, %s, %.0f µs a slot, %v): %s median %.1f µs, %s median %.1f µs, ratio of medians %.2fx; median of the per-cycle ratios %.2fx (95%% CI %.2f-%.2f, bootstrap over cycles; IQR %.2f-%.2f)\n",
			cycles, r.cycle, r.slot, how, us(r.slotTime), r.connLoad, r.names[0], mr, r.names[s], mx, mx/mr, q2, lo, hi, q1, q3)
		if cycles >= 10 {
			// A stretch of the run that differs (a daemon busy with something
			// else for a while) shows here.
			fmt.Printf("paired connect %s / %s, median of the per-cycle ratios by tenth of the run:", r.names[s], r.names[0])
			for t := range 10 {
				fmt.Printf(" %.2f", median(per[t*cycles/10:(t+1)*cycles/10]))
			}
			fmt.Println()
		}
		if r.names[0] == "none" && r.names[s] == "latch+fp" {
			fmt.Printf("fast path vs no firewall, paired: connect %.2fx (95%% CI %.2f-%.2f; target <= 1.2x: %s)\n", q2, lo, hi, within(q2 <= 1.2))
		}
	}
	for s := 1; s < k; s++ {
		if w := r.waits[s]; len(w) > 0 {
			fmt.Printf("%s: paired, waited for the daemons to be idle after its bursts (and slots, with -paired-idle): median %.0f µs, p90 %.0f µs\n", r.names[s], median(w), percentile(w, 0.9))
		}
	}
	bcycles := len(r.burst[0]) / k
	if bcycles == 0 {
		return
	}
	sum := func(xs []float64, idx []int) float64 {
		t := 0.0
		for _, c := range idx {
			for _, x := range xs[c*k : (c+1)*k] {
				t += x
			}
		}
		return t
	}
	all := make([]int, bcycles)
	for c := range all {
		all[c] = c
	}
	rate := func(xs []float64) float64 { return float64(r.burstSize*k*bcycles) / sum(xs, all) }
	for s := 1; s < k; s++ {
		plain := func(idx []int) float64 { return sum(r.burst[0], idx) / sum(r.burst[s], idx) }
		caught := func(idx []int) float64 { return sum(r.burst[0], idx) / sum(r.catchup[s], idx) }
		var pp, pc []float64
		for c := range bcycles {
			pp = append(pp, plain([]int{c}))
			pc = append(pc, caught([]int{c}))
		}
		q1, q2, q3 := quartiles(pc)
		lo, hi := bootstrap(bcycles, func(idx []int) float64 { return medianOf(pc, idx) })
		fmt.Printf("paired throughput (lock-step, %d cycles of %d bursts of %d connects from %d workers, every daemon idle before each burst, %v): %s %.0f conn/s, %s %.0f conn/s (ratio %.2fx, median of the per-cycle ratios %.2fx); counting %s's daemon's catch-up after each burst %.0f conn/s (ratio %.2fx), median of the per-cycle ratios %.2fx (95%% CI %.2f-%.2f, bootstrap over cycles; IQR %.2f-%.2f)\n",
			bcycles, r.cycle, r.burstSize, r.conc, r.burstLoad, r.names[0], rate(r.burst[0]), r.names[s], rate(r.burst[s]), plain(all), median(pp),
			r.names[s], rate(r.catchup[s]), caught(all), q2, lo, hi, q1, q3)
		if r.names[0] == "none" && r.names[s] == "latch+fp" {
			fmt.Printf("fast path vs no firewall, paired: throughput %.2fx counting the daemon's catch-up (95%% CI %.2f-%.2f; target >= 0.85x: %s), %.2fx without\n", q2, lo, hi, within(q2 >= 0.85), median(pp))
		}
	}
}

// medianOf returns the median of xs[i] for the i in idx.
func medianOf(xs []float64, idx []int) float64 {
	ys := make([]float64, len(idx))
	for j, i := range idx {
		ys[j] = xs[i]
	}
	return median(ys)
}

// quartiles returns the first quartile, median and third quartile of xs.
func quartiles(xs []float64) (q1, q2, q3 float64) {
	return percentile(xs, 0.25), median(xs), percentile(xs, 0.75)
}

// percentile returns the p-quantile of xs (linear interpolation), or 0 for none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	pos := p * float64(len(c)-1)
	i := int(pos)
	if i+1 >= len(c) {
		return c[len(c)-1]
	}
	return c[i] + (pos-float64(i))*(c[i+1]-c[i])
}

// bootstrap returns a 95% interval of stat over n cycles by resampling whole
// cycles (each keeps its scenarios' samples together, taken side by side), 1000
// times, with a fixed seed; 0, 0 for fewer than 2 cycles.
func bootstrap(n int, stat func(cycles []int) float64) (lo, hi float64) {
	if n < 2 {
		return 0, 0
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rs := make([]float64, 0, 1000)
	idx := make([]int, n)
	for range 1000 {
		for i := range idx {
			idx[i] = rng.IntN(n)
		}
		rs = append(rs, stat(idx))
	}
	return percentile(rs, 0.025), percentile(rs, 0.975)
}

// deBruijn returns an order of k scenarios' slots in which every scenario follows
// every scenario (itself too) exactly once, counting from the last slot of one
// cycle to the first of the next (a de Bruijn sequence of order 2: 0,0,1,1 for
// two, the A,A,B,B,A,A,... of interleaved rounds): what a scenario's slot leaves
// behind (a daemon's pending work, warm caches) then falls on each scenario alike.
func deBruijn(k int) []int {
	if k == 1 {
		return []int{0}
	}
	var seq []int
	a := make([]int, 3)
	var db func(t, p int)
	db = func(t, p int) {
		if t > 2 {
			if 2%p == 0 {
				seq = append(seq, a[1:p+1]...)
			}
			return
		}
		a[t] = a[t-p]
		db(t+1, p)
		for j := a[t-p] + 1; j < k; j++ {
			a[t] = j
			db(t+1, t)
		}
	}
	db(1, 1)
	return seq
}

// pairedTargets picks the targets of the scenarios listed in spec (comma-separated,
// the reference first) that the run has; fewer than two: none.
func pairedTargets(spec string, targets []*target) []*target {
	var ts []*target
	for _, name := range strings.Split(spec, ",") {
		for _, tg := range targets {
			if tg.name == strings.TrimSpace(name) && !slices.Contains(ts, tg) {
				ts = append(ts, tg)
			}
		}
	}
	if len(ts) < 2 {
		return nil
	}
	return ts
}
