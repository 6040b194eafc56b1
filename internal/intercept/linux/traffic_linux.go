package linux

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// acctSysctl turns conntrack's byte and packet counters on for entries created after
// it is set, in the current network namespace.
const acctSysctl = "/proc/sys/net/netfilter/nf_conntrack_acct"

const (
	defaultTrafficInterval = 10 * time.Second
	defaultTrafficPoll     = 500 * time.Millisecond
)

// Conntrack TCP states (enum tcp_conntrack) at which a flow is over: both sides
// have closed (TIME_WAIT) or it was reset (CLOSE). Its counters no longer grow but
// for the last ACKs.
const (
	ctTCPTimeWait = 7
	ctTCPClose    = 8
)

// get returns the request of the allowed flow k, or nil.
func (t *flowTable) get(k flowKey) *engine.Request {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.m[k]; ok {
		return e.req
	}
	return nil
}

// acctFlow is what the accountant knows of one allowed flow.
type acctFlow struct {
	req                     *engine.Request
	in, out                 uint64 // at the last read
	reportedIn, reportedOut uint64
	reportedAt              time.Time
	ended                   bool
	gen                     uint64 // the poll that last saw it
}

// accountant reads the counters of the flows latch allowed from conntrack and turns
// them into Traffic reports.
type accountant struct {
	flows    *flowTable
	interval time.Duration
	list     func(netlink.InetFamily) ([]*netlink.ConntrackFlow, error)
	m        map[flowKey]*acctFlow
	gen      uint64
}

func newAccountant(flows *flowTable, interval time.Duration) *accountant {
	return &accountant{
		flows:    flows,
		interval: interval,
		list: func(fam netlink.InetFamily) ([]*netlink.ConntrackFlow, error) {
			return netlink.ConntrackTableList(netlink.ConntrackTable, fam)
		},
		m: make(map[flowKey]*acctFlow),
	}
}

// poll reads conntrack once and returns the reports due: a flow's first report
// after interval, then every interval while its counters change, and one with Ended
// when it closes or its entry is gone. With final, every flow not yet ended is
// reported as it stands.
func (a *accountant) poll(now time.Time, final bool) ([]intercept.Traffic, error) {
	a.gen++
	var out []intercept.Traffic
	var errs []error
	listed := 0
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		cts, err := a.list(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list conntrack entries (family %d): %w", fam, err))
			continue
		}
		listed++
		for _, ct := range cts {
			// A flow being decided again (MarkRedecide) is still the flow it was.
			if m := ct.Mark & MarkMask; m != MarkAllow && m != MarkRedecide {
				continue
			}
			k := ctKey(ct)
			f := a.m[k]
			if f == nil && ct.Mark&MarkMask != MarkAllow {
				continue
			}
			req := a.flows.get(k)
			switch {
			case f == nil && req == nil:
				continue
			case f == nil || f.ended && req != nil && req.ID != f.req.ID:
				// New, or a new connection on the tuple of one that ended.
				f = &acctFlow{req: req, reportedAt: now}
				a.m[k] = f
			case req != nil && req.ID != f.req.ID:
				// Decided again and allowed: the same conntrack entry, its bytes
				// from now on the new decision's.
				f.req = req
			}
			f.gen = a.gen
			if f.ended {
				continue
			}
			f.in, f.out = ct.Reverse.Bytes, ct.Forward.Bytes
			if f.req.Direction == engine.Inbound {
				f.in, f.out = f.out, f.in
			}
			closed := false
			if tcp, ok := ct.ProtoInfo.(*netlink.ProtoInfoTCP); ok {
				closed = tcp.State == ctTCPTimeWait || tcp.State == ctTCPClose
			}
			changed := f.in != f.reportedIn || f.out != f.reportedOut
			switch {
			case closed:
				f.ended = true
				out = append(out, f.report(now))
			case final || changed && now.Sub(f.reportedAt) >= a.interval:
				out = append(out, f.report(now))
			}
		}
	}
	if listed == 0 {
		// Nothing read: an entry not seen is not an entry gone.
		return out, errors.Join(errs...)
	}
	for k, f := range a.m {
		if f.gen == a.gen {
			continue
		}
		if !f.ended {
			// Gone between two reads (a UDP flow timed out, an entry was
			// deleted): its last counters are its totals.
			f.ended = true
			out = append(out, f.report(now))
		}
		delete(a.m, k)
	}
	return out, errors.Join(errs...)
}

func (f *acctFlow) report(now time.Time) intercept.Traffic {
	t := intercept.Traffic{Request: f.req, BytesIn: f.in, BytesOut: f.out, Ended: f.ended, Time: now}
	// Counters only grow; a flow's entry replaced under the same tuple starts over.
	if f.in >= f.reportedIn {
		t.DeltaIn = f.in - f.reportedIn
	} else {
		t.DeltaIn = f.in
	}
	if f.out >= f.reportedOut {
		t.DeltaOut = f.out - f.reportedOut
	} else {
		t.DeltaOut = f.out
	}
	f.reportedIn, f.reportedOut, f.reportedAt = f.in, f.out, now
	return t
}

// account runs the accountant until ctx is done, then reports once more.
func (b *Backend) account(ctx context.Context) {
	interval := b.cfg.TrafficInterval
	if interval <= 0 {
		interval = defaultTrafficInterval
	}
	poll := b.cfg.TrafficPoll
	if poll <= 0 {
		poll = min(defaultTrafficPoll, interval)
	}
	a := newAccountant(b.flows, interval)
	t := time.NewTicker(poll)
	defer t.Stop()
	var lastErr string
	for {
		var now time.Time
		final := false
		select {
		case <-ctx.Done():
			now, final = time.Now(), true
		case now = <-t.C:
		}
		rs, err := a.poll(now, final)
		if err != nil && err.Error() != lastErr {
			b.cfg.Logf("byte accounting: %v", err)
		}
		if err != nil {
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		b.trafficReports.Add(uint64(len(rs)))
		if len(rs) > 0 {
			b.cfg.OnTraffic(rs)
		}
		if final {
			return
		}
	}
}

// enableAccounting sets nf_conntrack_acct to 1 and returns a function that puts
// back the value it had.
func enableAccounting() (restore func(), err error) {
	old, err := os.ReadFile(acctSysctl)
	if err != nil {
		return nil, fmt.Errorf("byte accounting: read %s: %w", acctSysctl, err)
	}
	if strings.TrimSpace(string(old)) == "1" {
		return func() {}, nil
	}
	if err := os.WriteFile(acctSysctl, []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("byte accounting: set %s to 1: %w", acctSysctl, err)
	}
	return func() { os.WriteFile(acctSysctl, old, 0o644) }, nil
}
