package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/intercept/linux"
	"github.com/latchfw/latch/internal/procattr"
)

const defaultStateDir = "/var/lib/latch"

// newBackend builds the NFQUEUE backend with process attribution.
func newBackend(o *daemonOptions, logf func(string, ...any)) (*platformBackend, error) {
	res, err := procattr.NewResolver(procattr.Options{})
	if err != nil {
		return nil, fmt.Errorf("process attribution: %w", err)
	}
	var warnings []string
	for method, err := range res.MethodErrors() {
		logf("process attribution: %s unavailable: %v", method, err)
		warnings = append(warnings, fmt.Sprintf("process attribution: %s unavailable: %v", method, err))
	}
	cfg := linux.DefaultConfig()
	cfg.QueueNum = o.Queue
	cfg.Inbound = o.Inbound
	cfg.FailOpen = o.FailOpen
	cfg.KeepRulesOnExit = o.KeepRules
	cfg.ExemptLoopback = o.ExemptLoopback
	cfg.Resolver = res
	// Names from DNS responses label connections (prompts, history, host rules).
	cfg.Hostnames = dnsname.NewCache(0)
	cfg.HoldTimeout = o.PromptTimeout + max(o.PromptTimeout, 30*time.Second)
	cfg.Logf = logf
	ready := make(chan struct{})
	cfg.Ready = sync.OnceFunc(func() { close(ready) })
	be, err := linux.New(cfg)
	if err != nil {
		res.Close()
		return nil, err
	}
	attrStats := func() map[string]uint64 {
		st := res.Stats()
		return map[string]uint64{"ebpf": st.EBPF, "procfs": st.Procfs, "no_socket": st.NoSocket, "no_process": st.NoProcess}
	}
	return &platformBackend{Backend: be, attribution: res.Methods, attrStats: attrStats, warnings: warnings,
		dns: be.DNSStats, close: func() { res.Close() }, ready: ready}, nil
}

const cleanupHelp = `Usage: latch cleanup [--queue N]

Removes the netfilter rules (chains LATCH-OUT/LATCH-IN, table inet latch) that a
crashed or killed daemon left in this network namespace, and those of boot
protection (latch boot-protect) and of a daemon stopped with --keep-rules-on-exit. A fail-closed daemon that
died keeps dropping new connections until its rules are removed. Refuses while a
daemon still holds the queue.
`

func runCleanup(ctx context.Context, args []string) error {
	fs := newFlags("cleanup")
	queue := fs.Uint("queue", uint(linux.DefaultQueue), "NFQUEUE queue number")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *queue == 0 || *queue > 65535 {
		return usagef("--queue %d: want 1 to 65535", *queue)
	}
	if err := linux.Cleanup(uint16(*queue)); err != nil {
		return err
	}
	fmt.Println("removed latch's leftover firewall rules (if there were any)")
	return nil
}
