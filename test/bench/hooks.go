//go:build linux

package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// cgroupAttachTypes are the cgroup hooks a socket's syscalls and packets run (and
// the device and sysctl ones, for completeness): those a daemon could slow a
// scenario's clients with.
var cgroupAttachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupInetIngress, ebpf.AttachCGroupInetEgress, ebpf.AttachCGroupInetSockCreate,
	ebpf.AttachCGroupSockOps, ebpf.AttachCGroupDevice,
	ebpf.AttachCGroupInet4Bind, ebpf.AttachCGroupInet6Bind,
	ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCGroupInet4PostBind, ebpf.AttachCGroupInet6PostBind,
	ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg,
	ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCGroupUDP6Recvmsg,
	ebpf.AttachCGroupSysctl, ebpf.AttachCGroupGetsockopt, ebpf.AttachCGroupSetsockopt,
	ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername,
	ebpf.AttachCgroupInet4GetSockname, ebpf.AttachCgroupInet6GetSockname,
	ebpf.AttachCgroupInetSockRelease,
}

// attachedHook is one program in force on a cgroup.
type attachedHook struct {
	Name   string // the program's name as the kernel keeps it (15 bytes at most)
	Attach ebpf.AttachType
}

// latch tells whether the program is one of latch's (its programs are named latch_*).
func (h attachedHook) latch() bool { return strings.HasPrefix(h.Name, "latch_") }

func (h attachedHook) String() string {
	at := h.Attach.String()
	if h.Attach == ebpf.AttachCGroupInetIngress {
		at = "CGroupInetIngress" // its value is also AttachNone's, which String names
	}
	return h.Name + " at " + at
}

// effectiveHooks lists the programs in force for the processes of the cgroup at
// path, those attached to its ancestors included (BPF_F_QUERY_EFFECTIVE). Attach
// types the kernel does not know are skipped.
func effectiveHooks(path string) ([]attachedHook, error) {
	ids, err := effectiveHookIDs(path)
	if err != nil {
		return nil, err
	}
	hooks := make([]attachedHook, len(ids))
	for i, h := range ids {
		hooks[i] = h.attachedHook
	}
	return hooks, nil
}

// idHook is an attachedHook with its program's ID.
type idHook struct {
	attachedHook
	id ebpf.ProgramID
}

// effectiveHookIDs is effectiveHooks with the programs' IDs.
func effectiveHookIDs(path string) ([]idHook, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the cgroup %s: %w", path, err)
	}
	defer unix.Close(fd)
	var hooks []idHook
	for _, at := range cgroupAttachTypes {
		res, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: at, QueryFlags: unix.BPF_F_QUERY_EFFECTIVE})
		if errors.Is(err, unix.EINVAL) {
			continue // an attach type this kernel does not have
		}
		if err != nil {
			return nil, fmt.Errorf("query the programs of cgroup %s at %v: %w", path, at, err)
		}
		for _, p := range res.Programs {
			h := idHook{attachedHook{Name: fmt.Sprintf("id %d", p.ID), Attach: at}, p.ID}
			if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
				if info, err := prog.Info(); err == nil && info.Name != "" {
					h.Name = info.Name
				}
				prog.Close()
			}
			hooks = append(hooks, h)
		}
	}
	return hooks, nil
}

// baselineHooks lists the eBPF programs in force on the root cgroup and on the
// cgroups of the scenarios without latch (by scenario name) in a line for the
// output ("baseline hooks: ..."), with latch's among them, if any: those the
// scenarios without latch run, though they are to run no firewall.
func baselineHooks(root string, cgroups map[string]string) (line string, latch []string, err error) {
	var names []string
	for name := range cgroups {
		names = append(names, name)
	}
	slices.Sort(names)
	// A program attached to an ancestor is in force on a cgroup too: each
	// scenario's list is the root's and those attached between.
	count := func(hooks []attachedHook) (map[string]int, []string) {
		n := map[string]int{}
		var order []string
		for _, h := range hooks {
			if n[h.String()] == 0 {
				order = append(order, h.String())
			}
			n[h.String()]++
			if h.latch() && n[h.String()] == 1 {
				latch = append(latch, h.String())
			}
		}
		return n, order
	}
	show := func(n map[string]int, order []string, minus map[string]int) string {
		var parts []string
		for _, k := range order {
			if c := n[k] - minus[k]; c == 1 {
				parts = append(parts, k)
			} else if c > 1 {
				parts = append(parts, fmt.Sprintf("%s (%d programs)", k, c))
			}
		}
		return strings.Join(parts, ", ")
	}
	rootHooks, err := effectiveHooks(root)
	if err != nil {
		return "", nil, err
	}
	rootN, rootOrder := count(rootHooks)
	var parts []string
	if len(rootHooks) > 0 {
		parts = append(parts, "on the root cgroup (so on every process): "+show(rootN, rootOrder, nil))
	}
	for _, name := range names {
		hooks, err := effectiveHooks(cgroups[name])
		if err != nil {
			return "", nil, err
		}
		n, order := count(hooks)
		if extra := show(n, order, rootN); extra != "" {
			parts = append(parts, "on "+name+"'s cgroup besides: "+extra)
		}
	}
	slices.Sort(latch)
	latch = slices.Compact(latch)
	what := "the root cgroup"
	if len(names) > 0 {
		what += " and the cgroups of " + strings.Join(names, ", ")
	}
	if len(parts) == 0 {
		return fmt.Sprintf("baseline hooks: none attached (no eBPF program in force on %s)", what), nil, nil
	}
	return "baseline hooks: " + strings.Join(parts, "; "), latch, nil
}

// checkBaselineHooks prints which eBPF programs are in force on the root cgroup
// and the cgroups of the scenarios without latch (plain), and warns if latch's
// are among them still after 10 s (another process's, such as a test's daemon,
// may come and go): those scenarios' clients then pay for a daemon they do not
// measure, and every ratio against them is flattered. tolerate says why one of
// the bench's own daemons has its hooks on the root, if one has. With last it
// prints only what differs from last, at once. It returns what it found.
func checkBaselineHooks(root string, plain map[string]string, tolerate, last string) string {
	line, latch, err := baselineHooks(root, plain)
	for deadline := time.Now().Add(10 * time.Second); err == nil && len(latch) > 0 && tolerate == "" && last == "" && time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		line, latch, err = baselineHooks(root, plain)
	}
	if err != nil {
		fatalf("baseline hooks: %v", err)
	}
	if last != "" {
		if line == last {
			return line
		}
		line = "after the rounds, " + line
	}
	fmt.Println(line)
	if len(latch) > 0 {
		why := tolerate
		if why == "" {
			// Every daemon of the bench was given its scenario's cgroup.
			why = "not this bench's daemons: another process's latch, a test's daemon?"
		}
		fmt.Printf("baseline hooks: WARNING: latch's programs run in the scenarios without latch (%s): their numbers include them\n", why)
	}
	return line
}
