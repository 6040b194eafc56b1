//go:build linux

package e2e

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// attachedNames lists the names of the programs attached to the cgroup at path
// itself (not its ancestors'), by attach type.
func attachedNames(t *testing.T, path string, types ...ebpf.AttachType) map[ebpf.AttachType][]string {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	names := map[ebpf.AttachType][]string{}
	for _, at := range types {
		res, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: at})
		if errors.Is(err, unix.EINVAL) {
			continue
		}
		if err != nil {
			t.Fatalf("query the programs of %s at %v: %v", path, at, err)
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				continue // gone meanwhile
			}
			if info, err := prog.Info(); err == nil {
				names[at] = append(names[at], info.Name)
			}
			prog.Close()
		}
	}
	return names
}

// TestAttributionCgroup: with --attribution-cgroup DIR the daemon's hooks that
// serve every process by default (process attribution, the fast path's socket
// ends and byte counters) attach to DIR, which is also the fast path's cgroup;
// the fast path still reports socket ends; a program in DIR is attributed and
// decided by its rule; one outside it is found through /proc, unverified. A
// directory that is no cgroup is refused.
func TestAttributionCgroup(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8341)
	cg, cgfd := fastPathCgroup(t)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s", "--attribution-cgroup", cg)
	if fp := d.fastPath(t); !fp.On {
		t.Fatalf("fast path off: %s", fp.Reason)
	}
	types := []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupSockOps, ebpf.AttachCGroupInetEgress, ebpf.AttachCGroupInetIngress}
	// The daemon attached each in DIR (the hooks of the tests running beside this
	// one may be on the root: only DIR's own list is this daemon's).
	got := attachedNames(t, cg, types...)
	for _, want := range []struct {
		at   ebpf.AttachType
		name string
	}{
		{ebpf.AttachCGroupInet4Connect, "latch_sockaddr"},      // process attribution
		{ebpf.AttachCGroupInet4Connect, "latch_fast_connect4"}, // the fast path
		{ebpf.AttachCGroupSockOps, "latch_fast_sockops"},       // socket ends: on the root without the flag
		{ebpf.AttachCGroupInetEgress, "latch_fast_skb_egress"}, // byte counters: likewise
	} {
		if !slices.Contains(got[want.at], want.name) {
			t.Errorf("cgroup %s at %v: programs %q, want %s among them", cg, want.at, got[want.at], want.name)
		}
	}
	var st struct {
		FastPath struct {
			TCPEnds    bool   `json:"tcp_ends"`
			TCPEndsWhy string `json:"tcp_ends_why"`
		} `json:"fast_path"`
		ExeCheck *struct {
			On  bool   `json:"on"`
			Why string `json:"why"`
		} `json:"attribution_exe_check"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if !st.FastPath.TCPEnds {
		t.Errorf("fast path tcp_ends off (%s): the sock_ops program in DIR serves the fast path's processes", st.FastPath.TCPEndsWhy)
	}
	// The hooks in DIR read each connecting program's executable (review 32:
	// status says so, and why not when they do not).
	if st.ExeCheck == nil || !st.ExeCheck.On {
		t.Errorf("status --json: attribution_exe_check %+v; want on", st.ExeCheck)
	}

	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8341", "--action", "allow")
	for i, r := range results(t, n.inCgroup(t, cgfd, helperBin, "connects", n.ServerIP+":8341", "2", "10s")) {
		if r.Outcome != "connected" {
			t.Errorf("connect %d from inside DIR: %+v; want connected by the rule", i, r)
		}
	}
	// Outside DIR the hooks made no record of the socket: /proc names the
	// program, unverified, which no --app rule matches: it is asked about (and
	// denied at the question's timeout).
	for i, r := range results(t, n.MustExec(t, n.Client, helperBin, "connects", n.ServerIP+":8341", "1", "10s")) {
		if r.Outcome == "connected" {
			t.Errorf("connect %d from outside DIR: %+v; want not decided by the --app rule", i, r)
		}
	}
	verified := 0
	for _, c := range connsTo(t, d, 8341, 3) {
		if c["exe"] != helperBin || num(c["pid"]) == 0 {
			t.Errorf("history row %v: want %s and a pid", c, helperBin)
		}
		switch {
		case c["identity"] == "verified" && c["verdict"] == "allow":
			verified++
		case c["identity"] == "unverified" && c["reason"] == "timeout":
		default:
			t.Errorf("history row %v: want verified and allowed (inside DIR) or unverified and asked (outside)", c)
		}
	}
	if verified != 2 {
		t.Errorf("%d verified connections, want the 2 from inside DIR", verified)
	}
	if a := waitAccepted(srv, 2); a != 2 {
		t.Errorf("server accepted %d, want 2", a)
	}

	t.Run("not a cgroup", func(t *testing.T) {
		out, err := n.Exec(n.Client, latchBin, "daemon", "--attribution-cgroup", filepath.Dir(t.TempDir()), "--state-dir", t.TempDir())
		if err == nil || !strings.Contains(out, "--attribution-cgroup") || !strings.Contains(out, "not a cgroup v2 directory") {
			t.Errorf("daemon with a plain directory as --attribution-cgroup: %v\n%s\nwant refused, saying it is not a cgroup v2 directory", err, out)
		}
	})
}
