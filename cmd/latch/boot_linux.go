package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/intercept/linux"
)

func runBootProtect(ctx context.Context, args []string) error {
	o, err := parseDaemonFlags(args)
	if err != nil {
		return err
	}
	if o.FailOpen {
		fmt.Println("latch boot-protect: --fail open is configured: boot protection is off, nothing installed")
		return nil
	}
	if o.Backend == "none" {
		fmt.Println("latch boot-protect: --backend none is configured: nothing is intercepted, nothing installed")
		return nil
	}
	cfg := linux.DefaultConfig()
	cfg.QueueNum = o.Queue
	cfg.Inbound = o.Inbound
	cfg.ExemptLoopback = o.ExemptLoopback
	cfg.Hostnames = dnsname.NewCache(0) // the daemon's ruleset copies DNS responses: so does this one
	name, err := linux.Hold(cfg)
	if errors.Is(err, linux.ErrAnotherDaemon) {
		fmt.Printf("latch boot-protect: a daemon already holds queue %d: nothing to do\n", o.Queue)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Printf("latch boot-protect: %s ruleset installed on queue %d with no reader: new connections are dropped until the daemon takes over ('latch cleanup' removes it)\n", name, o.Queue)
	return nil
}
