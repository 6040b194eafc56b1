package fastpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// pinPrefixSock starts the name of a pinned socket pin program, followed by
// its daemon's pid.
const pinPrefixSock = "fast-pin-"

// pinPrefixStash starts the name of a pinned sender stash program, followed
// by its daemon's pid.
const pinPrefixStash = "fast-stash-"

// SenderStash returns the path of the pinned socket filter program the
// ruleset's xt_bpf match runs on each UDP datagram this host sends just
// before it is queued (see "The sender stash" in doc.go): it records the
// datagram's socket for the daemon, which attributes the datagram to it. ""
// if there is none. Call SetSenderStash once the ruleset runs it or could not.
func (fp *FastPath) SenderStash() string { return fp.stashPin }

// SetSenderStash says whether the ruleset runs the sender stash (err == nil)
// or why not.
func (fp *FastPath) SetSenderStash(err error) {
	if err != nil {
		fp.stashOn.Store(false)
		fp.stashWhy.Store(err.Error())
		return
	}
	fp.stashWhy.Store("")
	fp.stashOn.Store(true)
}

// stashStats fills the sender stash's part of s.
func (fp *FastPath) stashStats(s *Stats) {
	if s.SenderStash = fp.stashOn.Load(); s.SenderStash {
		s.SenderStashMatch = fp.stashPin
	} else {
		s.SenderStashWhy, _ = fp.stashWhy.Load().(string)
	}
}

// SocketPin returns the path of the pinned socket filter program the
// ruleset's xt_bpf match runs on the packets of allowed UDP, UDP-Lite and ICMP
// echo flows this host sends (see "The socket pin" in doc.go): on a packet
// back from an allow verdict it records the packet's socket for its tuple, and
// on a later packet of the flow it matches only if the packet's socket is the
// one recorded. "" if there is none. Call SetSocketPin once the ruleset runs
// it or could not.
func (fp *FastPath) SocketPin() string { return fp.sockPin }

// SetSocketPin says whether the ruleset runs the socket pin (err == nil) or
// why not.
func (fp *FastPath) SetSocketPin(err error) {
	if err != nil {
		fp.sockPinOn.Store(false)
		fp.sockPinWhy.Store(err.Error())
		return
	}
	fp.sockPinWhy.Store("")
	fp.sockPinOn.Store(true)
}

// sockPinStats fills the socket pin's part of s.
func (fp *FastPath) sockPinStats(s *Stats) {
	if s.SocketPin = fp.sockPinOn.Load(); s.SocketPin {
		s.SocketPinMatch = fp.sockPin
	} else {
		s.SocketPinWhy, _ = fp.sockPinWhy.Load().(string)
	}
}

// SocketPinOnly is the socket pin loaded alone, without the rest of the fast
// path (OpenSocketPin): for a daemon whose fast path is off. The sender stash
// comes with it.
type SocketPinOnly struct {
	path      string
	prog      *ebpf.Program
	stashPath string
	stash     *ebpf.Program
	ingress   *ebpf.Program // the receive check (latch_pin_ingress), nil if not loaded
	moves     *ebpf.Map
	inStats   *ebpf.Map
	bcast     *ebpf.Map // the receive check's local_bcast
	recv      receiveCheck
	dir       string
	umnt      bool
}

// OpenSocketPin loads the socket pin program alone (with its map) and pins it
// in dir (a directory on a BPF file system, mounted there if it is not), as
// Open does with Config.PinDir, and the sender stash with it. Path and
// StashPath say where; Close unpins and frees them. It attaches the pin's
// receive check to the root cgroup too (see "The receive check" in doc.go)
// unless noReceiveCheck gives a reason not to (tests); Stats says whether
// it runs.
func OpenSocketPin(dir string, noReceiveCheck ...string) (*SocketPinOnly, error) {
	spec, err := loadFastpath()
	if err != nil {
		return nil, fmt.Errorf("fast path: load the socket pin's object: %w", err)
	}
	off := ""
	if len(noReceiveCheck) > 0 {
		off = noReceiveCheck[0]
	}
	if off == "" && skbNetnsCookie() {
		// The receive check serves the sockets of this namespace only
		// (where the kernel cannot tell, every namespace's).
		cookie, err := netnsCookie()
		if err != nil {
			off = err.Error()
		} else if err := spec.Variables["netns_cookie"].Set(cookie); err != nil {
			off = fmt.Sprintf("set the network namespace: %v", err)
		} else if err := spec.Variables["skb_netns"].Set(uint32(1)); err != nil {
			off = fmt.Sprintf("read the namespace of a packet's socket: %v", err)
		}
	}
	var objs struct {
		Prog  *ebpf.Program `ebpf:"latch_fast_pin"`
		Stash *ebpf.Program `ebpf:"latch_send_stash"`
	}
	var in struct {
		Prog    *ebpf.Program `ebpf:"latch_fast_pin"`
		Stash   *ebpf.Program `ebpf:"latch_send_stash"`
		Ingress *ebpf.Program `ebpf:"latch_pin_ingress"`
		Moves   *ebpf.Map     `ebpf:"pin_moves"`
		Stats   *ebpf.Map     `ebpf:"pin_in_stats"`
		Bcast   *ebpf.Map     `ebpf:"local_bcast"`
	}
	if off == "" {
		// With the receive check, sharing the pin's map.
		if err := spec.LoadAndAssign(&in, nil); err != nil {
			off = fmt.Sprintf("load the receive check: %v", err)
		} else {
			objs.Prog, objs.Stash = in.Prog, in.Stash
		}
	}
	if objs.Prog == nil {
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return nil, fmt.Errorf("fast path: load the socket pin and sender stash programs: %w", err)
		}
	}
	p := &SocketPinOnly{prog: objs.Prog, stash: objs.Stash, ingress: in.Ingress, moves: in.Moves, inStats: in.Stats, bcast: in.Bcast, dir: dir}
	p.recv.attach(in.Ingress, in.Moves, in.Stats, in.Bcast, off, "")
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		p.Close()
		return nil, fmt.Errorf("fast path: make the pin directory's parent: %w", err)
	}
	if err := ownDir(dir); err != nil {
		p.Close()
		return nil, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		p.Close()
		return nil, fmt.Errorf("fast path: stat the pin directory %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", dir, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
			p.Close()
			return nil, fmt.Errorf("fast path: mount a BPF file system on %s: %w", dir, err)
		}
		p.umnt = true
	}
	path := filepath.Join(dir, fmt.Sprintf("%s%d", pinPrefixSock, os.Getpid()))
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.Close()
		return nil, fmt.Errorf("fast path: remove the old pin %s: %w", path, err)
	}
	if err := objs.Prog.Pin(path); err != nil {
		p.Close()
		return nil, fmt.Errorf("fast path: pin the socket pin at %s: %w", path, err)
	}
	p.path = path
	spath := filepath.Join(dir, fmt.Sprintf("%s%d", pinPrefixStash, os.Getpid()))
	if err := os.Remove(spath); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.Close()
		return nil, fmt.Errorf("fast path: remove the old pin %s: %w", spath, err)
	}
	if err := objs.Stash.Pin(spath); err != nil {
		p.Close()
		return nil, fmt.Errorf("fast path: pin the sender stash at %s: %w", spath, err)
	}
	p.stashPath = spath
	return p, nil
}

// StashPath returns where the sender stash program is pinned.
func (p *SocketPinOnly) StashPath() string { return p.stashPath }

// RulesetInstalled says the daemon's ruleset is installed (whether or not it
// runs the pin): the ruleset no longer names the pins of daemons gone before
// (a crash, or a ruleset kept on exit), so it frees their programs and maps,
// as FastPath.SetUDP does.
func (p *SocketPinOnly) RulesetInstalled() {
	removePins(p.dir, func(pid int) bool { return pid != os.Getpid() && processGone(pid) })
}

// Path returns where the socket pin program is pinned.
func (p *SocketPinOnly) Path() string { return p.path }

// Close unpins the program (unless keep: a ruleset kept on exit names it)
// and frees it.
func (p *SocketPinOnly) Close(keep ...bool) error {
	k := len(keep) > 0 && keep[0]
	var errs []error
	if p.path != "" && !k {
		if err := os.Remove(p.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		p.path = ""
	}
	if p.stashPath != "" && !k {
		if err := os.Remove(p.stashPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		p.stashPath = ""
	}
	if p.umnt && !k {
		unix.Unmount(p.dir, unix.MNT_DETACH)
		p.umnt = false
	}
	if !k {
		os.Remove(p.dir) // if empty
	}
	errs = append(errs, p.recv.close())
	if p.ingress != nil {
		errs = append(errs, p.ingress.Close())
		p.ingress = nil
	}
	for _, m := range []*ebpf.Map{p.moves, p.inStats, p.bcast} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	p.moves, p.inStats, p.bcast = nil, nil, nil
	if p.prog != nil {
		errs = append(errs, p.prog.Close())
		p.prog = nil
	}
	if p.stash != nil {
		errs = append(errs, p.stash.Close())
		p.stash = nil
	}
	return errors.Join(errs...)
}
