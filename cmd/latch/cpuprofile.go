package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
)

// cpuProfileEnv names a file `latch daemon` writes a CPU profile of itself to (Go's
// pprof format, read with `go tool pprof`): profiling starts with the daemon and the
// profile is written when it stops cleanly (SIGTERM, SIGINT). A developer's tool,
// not a flag: test/bench -cpuprofile sets it for the daemons it starts. Next to it,
// FILE.heap gets a heap profile written at the same time, whose alloc_space and
// alloc_objects samples count what the daemon allocated over its life (go tool
// pprof -sample_index=alloc_objects). Its default sampling (one sample per
// 512 KB allocated) leaves a count a connect off by a third from run to run:
// GODEBUG=memprofilerate=4096 in the bench's environment (the daemons inherit
// it) makes it about 1%.
const cpuProfileEnv = "LATCH_CPUPROFILE"

// startCPUProfile starts profiling if $LATCH_CPUPROFILE names a file, and returns
// the function that stops and writes it.
func startCPUProfile() (stop func(), err error) {
	path := os.Getenv(cpuProfileEnv)
	if path == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cpuProfileEnv, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s %s: %w", cpuProfileEnv, path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		// The allocs profile counts up to the last finished collection: one
		// now, or the connects since the last (tens of thousands) are left out.
		runtime.GC()
		if h, err := os.OpenFile(path+".heap", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err == nil {
			pprof.Lookup("allocs").WriteTo(h, 0)
			h.Close()
		}
	}, nil
}
