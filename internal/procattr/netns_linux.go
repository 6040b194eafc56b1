package procattr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"golang.org/x/sys/unix"
)

// netnsCacheTTL is how long the network namespace found for a source address is
// trusted before it is looked up again.
const netnsCacheTTL = 10 * time.Second

// netnsRescanGap bounds how often a miss walks every namespace on the machine.
const netnsRescanGap = 200 * time.Millisecond

// netnsIndex remembers which namespace holds which address.
type netnsIndex struct {
	mu       sync.Mutex
	byAddr   map[netip.Addr]netnsEntry
	lastScan time.Time
	self     uint64 // the daemon's own namespace: never a source of forwarded packets
}

type netnsEntry struct {
	ns        Netns
	ambiguous bool // more than one namespace holds the address
	expires   time.Time
}

var forwardIndex = &netnsIndex{byAddr: map[netip.Addr]netnsEntry{}}

// ResolveForwarded finds the process that sent a packet this host forwards: the
// owner of the socket from local to remote inside the network namespace on this
// machine that holds the address local (a container behind a bridge or veth pair).
// It returns that namespace too. A packet from another machine, or from a socket
// in no namespace here, gives ErrNoSocket.
func (r *Resolver) ResolveForwarded(proto engine.Protocol, local, remote netip.AddrPort) (Process, Netns, error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return unknown(), Netns{}, errors.New("procattr: Resolve on a closed Resolver")
	}
	ns, err := forwardIndex.find(local.Addr().Unmap())
	if err != nil {
		r.noSocket.Add(1)
		return unknown(), Netns{}, fmt.Errorf("procattr: forwarded %v %v -> %v: %w", proto, local, remote, err)
	}
	si, err := lookupIn(ns, proto, local, remote)
	if err != nil {
		r.noSocket.Add(1)
		return unknown(), ns, fmt.Errorf("procattr: forwarded %v %v -> %v in netns %s: %w", proto, local, remote, ns.Name, err)
	}
	owner := Process{UID: int32(si.UID), User: r.users.name(si.UID)}
	// Socket inodes are unique on the machine, whatever the namespace: the process
	// that holds it is found as for a local socket.
	p, err := r.attribute(si, owner)
	if err != nil {
		return p, ns, fmt.Errorf("procattr: forwarded %v %v -> %v in netns %s: %w", proto, local, remote, ns.Name, err)
	}
	return p, ns, nil
}

// lookupIn asks sock_diag inside ns for the socket from local to remote.
func lookupIn(ns Netns, proto engine.Protocol, local, remote netip.AddrPort) (socketInfo, error) {
	var si socketInfo
	err := runInNetns(ns.path, func() error {
		d, err := newSockDiag(1)
		if err != nil {
			return err
		}
		defer d.close()
		si, err = d.lookup(proto, local, remote, 0, false)
		return err
	})
	return si, err
}

// runInNetns runs fn on an OS thread that joined the namespace at path. The thread is
// never given back: it ends with its goroutine, so that no other goroutine ever runs
// in the namespace.
func runInNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// find returns the namespace that holds addr, looking at every namespace on the
// machine when the cache does not know it (at most every netnsRescanGap).
func (x *netnsIndex) find(addr netip.Addr) (Netns, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	now := time.Now()
	if e, ok := x.byAddr[addr]; ok && now.Before(e.expires) {
		if e.ambiguous {
			return Netns{}, fmt.Errorf("source %v is held by more than one network namespace: %w", addr, ErrNoSocket)
		}
		return e.ns, nil
	}
	if now.Sub(x.lastScan) < netnsRescanGap {
		return Netns{}, fmt.Errorf("source %v is in no network namespace known (looked %v ago): %w", addr, now.Sub(x.lastScan).Round(time.Millisecond), ErrNoSocket)
	}
	x.lastScan = now
	if x.self == 0 {
		if st, err := os.Stat("/proc/self/ns/net"); err == nil {
			x.self = st.Sys().(*syscall.Stat_t).Ino
		}
	}
	clear(x.byAddr)
	for _, ns := range listNetns(x.self) {
		addrs, err := addrsIn(ns.path)
		if err != nil {
			continue // gone meanwhile
		}
		for _, a := range addrs {
			if a.IsLoopback() || a.IsLinkLocalUnicast() {
				continue
			}
			if e, dup := x.byAddr[a]; dup && e.ns.inode != ns.inode {
				// Two namespaces hold it (separate networks reusing addresses): the
				// sender cannot be told by its address, so it is nobody's.
				x.byAddr[a] = netnsEntry{ambiguous: true, expires: now.Add(netnsCacheTTL)}
				continue
			}
			x.byAddr[a] = netnsEntry{ns: ns, expires: now.Add(netnsCacheTTL)}
		}
	}
	if e, ok := x.byAddr[addr]; ok {
		if e.ambiguous {
			return Netns{}, fmt.Errorf("source %v is held by more than one network namespace: %w", addr, ErrNoSocket)
		}
		return e.ns, nil
	}
	return Netns{}, fmt.Errorf("source %v is in no network namespace on this machine: %w", addr, ErrNoSocket)
}

// listNetns lists the network namespaces on the machine but self: those `ip netns`
// named, then those of processes, each once.
func listNetns(self uint64) []Netns {
	seen := map[uint64]bool{self: true}
	var out []Netns
	add := func(path, name string) {
		st, err := os.Stat(path)
		if err != nil {
			return
		}
		ino := st.Sys().(*syscall.Stat_t).Ino
		if seen[ino] {
			return
		}
		seen[ino] = true
		if name == "" {
			name = "net:[" + strconv.FormatUint(ino, 10) + "]"
		}
		out = append(out, Netns{Name: name, inode: ino, path: path})
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			add(filepath.Join("/run/netns", e.Name()), e.Name())
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				add(filepath.Join("/proc", e.Name(), "ns", "net"), "")
			}
		}
	}
	return out
}

// addrsIn lists the addresses of the interfaces in the namespace at path.
func addrsIn(path string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := runInNetns(path, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				out = append(out, p.Addr().Unmap())
			}
		}
		return nil
	})
	return out, err
}
