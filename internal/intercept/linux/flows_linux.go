package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flowKey is a flow as conntrack sees it: its original-direction tuple. ICMP flows
// carry port 0.
type flowKey struct {
	proto    uint8
	src, dst netip.AddrPort
}

func keyOf(req *engine.Request) flowKey {
	k := flowKey{proto: uint8(req.Protocol), src: req.Local, dst: req.Remote}
	if req.Direction == engine.Inbound {
		k.src, k.dst = req.Remote, req.Local
	}
	return k
}

type flowEntry struct {
	req     *engine.Request
	expires time.Time
}

// flowTable remembers the requests of allowed flows so that Redecide can tell which
// conntrack entries a rule change affects. It is bounded in size and age.
type flowTable struct {
	mu  sync.Mutex
	m   map[flowKey]flowEntry
	max int
	ttl time.Duration
}

func newFlowTable(max int, ttl time.Duration) *flowTable {
	return &flowTable{m: make(map[flowKey]flowEntry), max: max, ttl: ttl}
}

func (t *flowTable) add(req *engine.Request, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= t.max {
		for k, e := range t.m {
			if now.After(e.expires) {
				delete(t.m, k)
			}
		}
		// Still full: forget arbitrary flows (map order is random). Their conntrack
		// entries stay; Redecide(nil) still finds them by mark.
		for k := range t.m {
			if len(t.m) < t.max*7/8 {
				break
			}
			delete(t.m, k)
		}
	}
	t.m[keyOf(req)] = flowEntry{req: req, expires: now.Add(t.ttl)}
}

// take removes and returns the flows whose request matches.
func (t *flowTable) take(match func(*engine.Request) bool, now time.Time) map[flowKey]struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make(map[flowKey]struct{})
	for k, e := range t.m {
		if now.After(e.expires) {
			delete(t.m, k)
			continue
		}
		if match(e.req) {
			keys[k] = struct{}{}
			delete(t.m, k)
		}
	}
	return keys
}

func (t *flowTable) clear() {
	t.mu.Lock()
	clear(t.m)
	t.mu.Unlock()
}

func (t *flowTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// ctFilter matches conntrack entries latch allowed (conntrack mark MarkAllow) whose
// original tuple is in keys; nil keys match every entry latch allowed.
type ctFilter struct{ keys map[flowKey]struct{} }

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f ctFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Mark&MarkMask != MarkAllow {
		return false
	}
	if f.keys == nil {
		return true
	}
	t := flow.Forward
	k := flowKey{proto: t.Protocol}
	switch t.Protocol {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		k.src = netip.AddrPortFrom(addrOf(t.SrcIP), t.SrcPort)
		k.dst = netip.AddrPortFrom(addrOf(t.DstIP), t.DstPort)
	default:
		k.src = netip.AddrPortFrom(addrOf(t.SrcIP), 0)
		k.dst = netip.AddrPortFrom(addrOf(t.DstIP), 0)
	}
	_, ok := f.keys[k]
	return ok
}

// deleteConntrack deletes the matching conntrack entries of both families with one dump
// each and returns how many it deleted.
func deleteConntrack(keys map[flowKey]struct{}) (int, error) {
	var total int
	var errs []error
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, ctFilter{keys})
		total += int(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("delete conntrack entries (family %d): %w", fam, err))
		}
	}
	return total, errors.Join(errs...)
}
