package linux

import (
	"errors"
	"fmt"
)

// Hold installs latch's ruleset with no reader behind its queue: every new connection
// the daemon would hold is dropped instead (fail-closed, no queue bypass), until a
// daemon binds the queue and replaces the ruleset in one transaction. It is boot
// protection: run before the network comes up, it closes the window until the daemon
// starts. It uses the firewall mechanism a daemon with cfg would detect, so the daemon
// finds and replaces this very ruleset. It refuses a FailOpen cfg, and returns an
// error wrapping ErrAnotherDaemon, changing nothing, when a daemon already holds the
// queue. It returns the mechanism's name.
func Hold(cfg Config) (string, error) {
	if cfg.FailOpen {
		return "", errors.New("hold: a fail-open configuration holds nothing while no daemon runs")
	}
	if cfg.QueueNum == 0 {
		cfg.QueueNum = DefaultQueue
	}
	bound, err := boundQueues()
	if err != nil {
		return "", fmt.Errorf("hold: read bound queues: %w", err)
	}
	if st, ok := bound[cfg.QueueNum]; ok {
		return "", fmt.Errorf("hold: %w (queue %d is bound by netlink port %d)", ErrAnotherDaemon, cfg.QueueNum, st.PortID)
	}
	fw, err := detectFirewall(cfg.Firewall, cfg.QueueNum)
	if err != nil {
		return "", fmt.Errorf("hold: %w", err)
	}
	// The daemon's own ruleset, DNS copies included (NFLOG with no listener passes
	// the packet on), so the daemon replaces it shape for shape.
	spec := ruleSpec{queue: cfg.QueueNum, inbound: cfg.Inbound, exemptLoopback: cfg.ExemptLoopback}
	if cfg.Hostnames != nil {
		spec.dnsLogGroup = cfg.DNSLogGroup
		if spec.dnsLogGroup == 0 {
			spec.dnsLogGroup = DefaultDNSLogGroup
		}
	}
	if err := fw.install(spec); err != nil {
		return "", fmt.Errorf("hold: %w", err)
	}
	return fw.name(), nil
}
