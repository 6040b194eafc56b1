package main

import (
	"context"
	"fmt"
	"github.com/latchfw/latch/internal/fastpath"
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
	for method, err := range res.MethodErrors() {
		logf("process attribution: %s unavailable: %v", method, err)
	}
	cfg := linux.DefaultConfig()
	cfg.QueueNum = o.Queue
	cfg.Inbound = o.Inbound
	cfg.FailOpen = o.FailOpen
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
	pb := &platformBackend{Backend: be, attribution: res.Methods, dns: be.DNSStats, close: func() { res.Close() }, ready: ready}
	if !o.FastPath {
		pb.fastPathOff = "--fast-path=false"
	} else if fp, err := fastpath.Open(fastpath.Config{CgroupPath: o.FastPathCgroup}); err != nil {
		// Today's path: every connection through the queue.
		pb.fastPathOff = err.Error()
		logf("%v; connections go through the queue", err)
	} else {
		pb.fastPath = fp
		pb.close = func() { fp.Close(); res.Close() }
	}
	return pb, nil
}

const cleanupHelp = `Usage: latch cleanup [--queue N]

Removes the netfilter rules (chains LATCH-OUT/LATCH-IN, table inet latch) that a
crashed or killed daemon left in this network namespace. A fail-closed daemon that
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
