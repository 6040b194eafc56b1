package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/latchfw/latch/internal/fastpath"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/dnsproxy"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept/linux"
	"github.com/latchfw/latch/internal/procattr"
	"github.com/latchfw/latch/internal/textesc"
	"golang.org/x/sys/unix"
)

const defaultStateDir = "/var/lib/latch"

// noTCPEnds says why the fast path need not report the end of TCP sockets, which
// byte accounting uses instead of conntrack's update events; "": it should.
func noTCPEnds(o *daemonOptions, accounting bool) string {
	switch {
	case !accounting:
		return "no byte accounting (--accounting=false)"
	case o.Forward:
		// A forwarded flow has no local socket: conntrack's update events end
		// those, and the local ones with them.
		return "--forward: conntrack's update events end the flows, forwarded ones too"
	}
	return ""
}

// exeCheckStatus is what status shows of the Resolver's executable check (see
// procattr.Resolver.ExeCheck), and the warning the daemon logs when it is off
// ("" when on).
func exeCheckStatus(res *procattr.Resolver) (*api.ExeCheckStatus, string) {
	why := res.ExeCheck()
	if why == "" {
		return &api.ExeCheckStatus{On: true}, ""
	}
	return &api.ExeCheckStatus{Why: why}, "process attribution: executable check off: " + why
}

// newBackend builds the NFQUEUE backend with process attribution.
func newBackend(o *daemonOptions, logf func(string, ...any)) (*platformBackend, error) {
	res, err := procattr.NewResolver(procattr.Options{CgroupPath: o.AttributionCgroup})
	if err != nil {
		return nil, fmt.Errorf("process attribution: %w", err)
	}
	var warnings []string
	for method, err := range res.MethodErrors() {
		logf("process attribution: %s unavailable: %v", method, err)
		warnings = append(warnings, fmt.Sprintf("process attribution: %s unavailable: %v", method, err))
	}
	exeCheck, warning := exeCheckStatus(res)
	if warning != "" {
		logf("%s", warning)
		warnings = append(warnings, warning)
	}
	cfg := linux.DefaultConfig()
	cfg.QueueNum = o.Queue
	cfg.Inbound = o.Inbound
	cfg.Forward = o.Forward
	cfg.FailOpen = o.FailOpen
	cfg.KeepRulesOnExit = o.KeepRules
	cfg.ExemptLoopback = o.ExemptLoopback
	cfg.Resolver = res
	// Names from DNS responses label connections (prompts, history, host rules).
	names := dnsname.NewCache(0)
	cfg.Hostnames = names
	cfg.HoldTimeout = o.PromptTimeout + max(o.PromptTimeout, 30*time.Second)
	cfg.Logf = logf
	if o.Accounting && o.onTraffic != nil {
		cfg.OnTraffic = o.onTraffic
		cfg.TrafficInterval = o.TrafficInterval
	}
	// The fast path first: the ruleset the backend installs runs its UDP match.
	var fp *fastpath.FastPath
	var noNotrack error // why the ruleset does not keep fast flows out of conntrack, if not the fast path's reason
	fastPathOff := ""
	if !o.FastPath {
		fastPathOff = "--fast-path=false"
	} else if fp, err = fastpath.Open(fastpath.Config{
		CgroupPath:     o.FastPathCgroup,
		EndsCgroupPath: o.AttributionCgroup,
		PinDir:         fastpath.PinDir(o.StateDir),
		// A ruleset kept on exit still names the pinned program (iptables-legacy
		// checks it again at every change of the filter table).
		KeepPin:   o.KeepRules && !o.FailOpen,
		NoTCPEnds: noTCPEnds(o, cfg.OnTraffic != nil),
	}); err != nil {
		// Today's path: every connection through the queue.
		fastPathOff = err.Error()
		logf("%v; connections go through the queue", err)
		fp = nil
	} else {
		cfg.FastUDPMatch = fp.UDPMatch()
		// Its connect hooks decide TCP (with the sock_ops program): the ruleset
		// lets the SYNs they allowed pass (without, it holds them, whatever
		// their mark).
		cfg.FastTCP = fp.Stats().TCPLocal
		// ... only while this daemon lives (the lease; see "The lease" in
		// internal/fastpath).
		cfg.FastLease = fp.Lease()
		// An allowed UDP (ICMP echo) flow passes only from the socket it was
		// allowed for (see "The socket pin" in internal/fastpath).
		cfg.FastSocketPin = fp.SocketPin()
		// Each queued UDP datagram is attributed to the socket that sent it
		// (see "The sender stash" in internal/fastpath).
		cfg.FastSenderStash = fp.SenderStash()
		// The kernel reports the end of every TCP socket: the accountant needs
		// no conntrack update events (which the kernel builds for each state
		// change of every flow while anybody listens).
		cfg.SocketEnds = fp.Stats().TCPEnds
		// The live counts of the TCP sockets the kernel counts: the accountant
		// reports from them the flows conntrack does not list.
		if fp.Stats().TCPLiveBytes {
			cfg.SocketCounts = func(fn func(local, remote netip.AddrPort, bytes linux.SocketBytes)) error {
				return fp.SocketCounts(func(local, remote netip.AddrPort, c fastpath.Counts) {
					fn(local, remote, linux.SocketBytes{Out: c.Out, In: c.In})
				})
			}
		}
		// With the TCP socket iterators the ruleset keeps the fast path's TCP
		// flows out of conntrack: a rule change marks their sockets instead.
		// Only with the live counts: conntrack would no longer report a long
		// flow's bytes while it lasts.
		switch {
		case fp.Notrack() != "":
		case cfg.SocketCounts == nil:
			noNotrack = errors.New("no live byte counts (a TCP flow conntrack does not track would show its bytes at its end only)")
		default:
			cfg.FastSockets = fp
		}
	}
	// Without the fast path, its socket pin alone: an allowed UDP (ICMP echo)
	// flow still passes only from the socket it was allowed for.
	var pinOnly *fastpath.SocketPinOnly
	var pinWhy atomic.Pointer[string] // why the socket pin is off; "" when on
	setPinWhy := func(s string) { pinWhy.Store(&s) }
	var stashWhy atomic.Pointer[string] // why the sender stash is off; "" when on
	setStashWhy := func(s string) { stashWhy.Store(&s) }
	if fp == nil {
		if pinOnly, err = fastpath.OpenSocketPin(fastpath.PinDir(o.StateDir)); err != nil {
			logf("socket pin: %v; an allowed UDP flow passes from any socket while its conntrack entry lives", err)
			setPinWhy(err.Error())
			setStashWhy(err.Error())
			pinOnly = nil
		} else {
			cfg.FastSocketPin = pinOnly.Path()
			cfg.FastSenderStash = pinOnly.StashPath()
			setPinWhy("the ruleset is not installed yet")
			setStashWhy("the ruleset is not installed yet")
		}
	}
	closePin := func() {
		if pinOnly != nil {
			// A ruleset kept on exit still names the pinned program.
			pinOnly.Close(o.KeepRules && !o.FailOpen)
		}
	}
	ready := make(chan struct{})
	var be *linux.Backend
	cfg.Ready = sync.OnceFunc(func() {
		if fp != nil {
			fp.SetUDP(be.FastUDP())
			fp.SetLease(be.FastLease())
			fp.SetSocketPin(be.FastSocketPin())
			fp.SetSenderStash(be.FastSenderStash())
			fp.SetTCPRuleset(be.FastTCP())
			if noNotrack != nil {
				fp.SetNotrack(noNotrack)
			} else {
				fp.SetNotrack(be.Notrack())
			}
		} else if pinOnly != nil {
			// The ruleset no longer names the pins of daemons gone before
			// (a crash, or a ruleset kept on exit): free their programs and
			// maps, as fp.SetUDP does.
			pinOnly.RulesetInstalled()
			if err := be.FastSocketPin(); err != nil {
				setPinWhy(err.Error())
			} else {
				setPinWhy("")
			}
			if err := be.FastSenderStash(); err != nil {
				setStashWhy(err.Error())
			} else {
				setStashWhy("")
			}
		}
		close(ready)
	})
	be, err = linux.New(cfg)
	if err != nil {
		if fp != nil {
			fp.Close()
		}
		closePin()
		res.Close()
		return nil, err
	}
	// The socket pin's receive check reports a peer's datagram the kernel
	// gave another socket than its flow's: the backend decides a flow the
	// peer opened again for that socket (see "The receive check" in
	// internal/fastpath). The reader stops when the fast path (pin) closes.
	pinMoved := func(m fastpath.PinMove) { be.PinMoved(m.Protocol, m.Local, m.Remote, m.Cookie) }
	if fp != nil {
		go fp.ReadPinMoves(pinMoved)
	} else if pinOnly != nil {
		go pinOnly.ReadPinMoves(pinMoved)
	}
	attrStats := func() map[string]uint64 {
		st := res.Stats()
		return map[string]uint64{"ebpf": st.EBPF, "procfs": st.Procfs, "no_socket": st.NoSocket, "no_process": st.NoProcess}
	}
	// The local resolver's UDP queries: each attributed by the record the kernel made
	// of its sending socket as it sent it (one map lookup), where the kernel allows.
	var queries *procattr.DNSQueries
	if o.DNSProxy != "" {
		if ap, err := netip.ParseAddrPort(o.DNSProxy); err == nil {
			if queries, err = res.WatchDNSQueries(ap, o.AttributionCgroup); err != nil {
				logf("local resolver: queries attributed through their sockets (sock_diag): %v", err)
			} else {
				logf("local resolver: each UDP query attributed by the kernel's record of the socket that sent it")
			}
		}
	}
	identify := func(proto engine.Protocol, client, server netip.AddrPort, id uint16) engine.Request {
		req := engine.Request{UID: -1}
		var p procattr.Process
		var err error
		if proto == engine.UDP && queries != nil {
			// Asks once more itself, for the socket its record names only.
			p, err = queries.Resolve(client, server, id)
		} else if p, err = res.ResolveDev(proto, client, server, -1, 0); errors.Is(err, procattr.ErrNoProcess) {
			// The socket is there but no method named its process yet: without the
			// eBPF hooks, /proc is rescanned at most every 50 ms. The program waits
			// for its answer meanwhile, so ask once more rather than learn its names
			// as nobody's.
			time.Sleep(procattr.NoProcessRetry)
			p, err = res.ResolveDev(proto, client, server, -1, 0)
		}
		if err != nil || p.PID == 0 {
			return req
		}
		req.PID, req.Exe, req.UID, req.User, req.Cmdline = p.PID, p.Exe, p.UID, p.User, p.Cmdline
		req.Identity, req.Container, req.IdentityNote = p.Identity, p.Container, p.IdentityNote
		return req
	}
	pb := &platformBackend{Backend: be, attribution: res.Methods, attrStats: attrStats, warnings: warnings, exeCheck: exeCheck,
		dns: be.DNSStats, ready: ready,
		names: names, identify: identify, control: linux.Control}
	closeRes := func() {
		if queries != nil {
			queries.Close()
		}
		res.Close()
	}
	pb.close = func() { closePin(); closeRes() }
	pb.fastPathOff = fastPathOff
	if fp == nil {
		path, stashPath := cfg.FastSocketPin, cfg.FastSenderStash
		pb.socketPin = func(s *fastpath.Stats) {
			why := *pinWhy.Load()
			if s.SocketPin = why == ""; s.SocketPin {
				s.SocketPinMatch = path
			} else {
				s.SocketPinWhy = why
			}
			if pinOnly != nil {
				r := pinOnly.Stats()
				s.SocketPinReceive, s.SocketPinReceiveWhy, s.SocketPinReceiveCgroup = r.SocketPinReceive, r.SocketPinReceiveWhy, r.SocketPinReceiveCgroup
				s.SocketPinReceiveDropped, s.SocketPinReceiveClaimed, s.SocketPinReceiveLost = r.SocketPinReceiveDropped, r.SocketPinReceiveClaimed, r.SocketPinReceiveLost
			} else {
				s.SocketPinReceiveWhy = why
			}
			why = *stashWhy.Load()
			if s.SenderStash = why == ""; s.SenderStash {
				s.SenderStashMatch = stashPath
			} else {
				s.SenderStashWhy = why
			}
		}
	}
	if fp != nil {
		pb.fastPath = fp
		pb.close = func() { fp.Close(); closeRes() }
		pb.trackFlow = be.TrackFlow
		pb.socketEnded = func(e fastpath.End) {
			// The socket's own counts, if the kernel counted them: the
			// accountant ends the flow without reading conntrack.
			var bytes *linux.SocketBytes
			if e.Counted {
				bytes = &linux.SocketBytes{Out: e.Bytes.Out, In: e.Bytes.In}
			}
			be.SocketEnded(e.Local, e.Remote, e.Time, bytes)
		}
		if why := fp.Stats().TCPLocalWhy; why != "" {
			logf("fast path: TCP is not decided in the kernel (every connect goes through the queue): %s", why)
		}
	}
	return pb, nil
}

const cleanupHelp = `Usage: latch cleanup [--queue N] [--state-dir DIR] [--resolv-conf PATH]

Removes the netfilter rules (chains LATCH-OUT/LATCH-IN, table inet latch) that a
crashed or killed daemon left in this network namespace, and those of boot
protection (latch boot-protect) and of a daemon stopped with --keep-rules-on-exit. A fail-closed daemon that
died keeps dropping new connections until its rules are removed. Refuses while a
daemon still holds the queue. A daemon that ran its local resolver (--dns-proxy)
kept the original resolv.conf in its state directory: cleanup puts it back too,
and removes the kernel fast path's UDP match the rules named (pinned in the state
directory's bpf/).
`

func runCleanup(ctx context.Context, args []string) error {
	fs := newFlags("cleanup")
	queue := fs.Uint("queue", uint(linux.DefaultQueue), "NFQUEUE queue number")
	stateDir := fs.String("state-dir", defaultStateDir, "the daemon's state directory")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "the resolv.conf the local resolver pointed")
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
	// The fast path's UDP match, pinned for those rules, holds its program and maps.
	// Under /sys/fs/bpf if a BPF file system is there, else (or as an older
	// daemon left it) under the state directory.
	for _, dir := range []string{fastpath.PinDir(*stateDir), filepath.Join(*stateDir, "bpf")} {
		if removed, err := fastpath.RemovePin(dir); err != nil {
			return err
		} else if removed {
			fmt.Println("removed the fast path's pinned UDP match")
		}
	}
	if restored, err := dnsproxy.RestoreLeftover(*resolvConf, *stateDir); err != nil {
		return err
	} else if restored {
		fmt.Printf("restored %s\n", textesc.String(*resolvConf))
	}
	return nil
}

// checkAttributionCgroup says why dir cannot be --attribution-cgroup: it must be a
// directory of a cgroup v2 hierarchy.
func checkAttributionCgroup(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("%q: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%q is not a cgroup v2 directory (no cgroup2 file system)", dir)
	}
	return nil
}
