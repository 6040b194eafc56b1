//go:build linux

package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bpfStats (-bpfstats): the kernel's run-time statistics of eBPF programs are on
// for the run (BPF_ENABLE_STATS), and each latch scenario reports what its
// daemon's programs cost a connect. The statistics cost every program run on the
// machine two clock readings (tens of nanoseconds, the scenarios without latch
// run none), so they are off by default: a run with them measures the programs,
// not the ratios.
var bpfStats bool

// enableBPFStats turns the statistics on until the returned closer is closed.
func enableBPFStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable eBPF run-time statistics: %w", err)
	}
	return c, nil
}

// progCost is one program's runs and run time (as the kernel counts them), or
// the difference of two readings.
type progCost struct {
	name string // "name at attach type"
	runs uint64
	time time.Duration
}

// hookStats reads the run count and run time of every program in force on the
// cgroup at path (those attached to its ancestors included), by program ID.
func hookStats(path string) (map[ebpf.ProgramID]progCost, error) {
	hooks, err := effectiveHookIDs(path)
	if err != nil {
		return nil, err
	}
	out := map[ebpf.ProgramID]progCost{}
	for _, h := range hooks {
		if _, ok := out[h.id]; ok {
			continue
		}
		prog, err := ebpf.NewProgramFromID(h.id)
		if err != nil {
			continue // gone meanwhile
		}
		st, err := prog.Stats()
		prog.Close()
		if err != nil {
			return nil, fmt.Errorf("program %d (%s): %w", h.id, h.String(), err)
		}
		out[h.id] = progCost{name: h.String(), runs: st.RunCount, time: st.Runtime}
	}
	return out, nil
}

// addStats adds to tg.bpfCost what each program of its cgroup ran between the
// readings before and after (a program that came or went in between is left out).
func (tg *target) addStats(before, after map[ebpf.ProgramID]progCost) {
	if tg.bpfCost == nil {
		tg.bpfCost = map[ebpf.ProgramID]progCost{}
	}
	for id, a := range after {
		b, ok := before[id]
		if !ok || a.runs < b.runs {
			continue
		}
		c := tg.bpfCost[id]
		c.name = a.name
		c.runs += a.runs - b.runs
		c.time += a.time - b.time
		tg.bpfCost[id] = c
	}
}

// reportBPFStats prints, for a scenario whose programs were measured (-bpfstats),
// each program's runs and run time per connect (sequential and concurrent
// connects together) and their sum, the most costly first. Programs of the same
// name and attach type (latch's attribution hook, one per attach type, is one
// program each) are shown apart only if they ran.
func reportBPFStats(tg *target) {
	connects := len(tg.latency) + tg.conns
	if len(tg.bpfCost) == 0 || connects == 0 {
		return
	}
	costs := make([]progCost, 0, len(tg.bpfCost))
	var total time.Duration
	for _, c := range tg.bpfCost {
		if c.runs == 0 {
			continue
		}
		costs = append(costs, c)
		total += c.time
	}
	slices.SortFunc(costs, func(a, b progCost) int { return int(b.time - a.time) })
	var parts []string
	for _, c := range costs {
		parts = append(parts, fmt.Sprintf("%s %.2f runs %.0f ns (%.0f ns a run)", c.name,
			float64(c.runs)/float64(connects), float64(c.time.Nanoseconds())/float64(connects),
			float64(c.time.Nanoseconds())/float64(c.runs)))
	}
	fmt.Printf("%s: eBPF programs per connect (-bpfstats, %d connects): %.0f ns in all: %s\n",
		tg.name, connects, float64(total.Nanoseconds())/float64(connects), strings.Join(parts, "; "))
}
