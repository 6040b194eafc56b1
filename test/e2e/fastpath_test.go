//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/test/nettest"
)

// fastPathCgroup makes a cgroup v2 directory for one test, on a cgroup2 mount of the
// test's own outside /sys (`ip netns exec` gives the daemon a /sys without it), and
// returns its path and an open fd. The daemon's fast path attaches there, and only
// the test's clients run in it: other processes on the machine are not served.
func fastPathCgroup(t *testing.T) (string, int) {
	t.Helper()
	mnt, err := os.MkdirTemp("", "latch-e2e-cgroup2-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("cgroup2", mnt, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		os.Remove(mnt)
		t.Skipf("no cgroup v2: %v", err)
	}
	dir := filepath.Join(mnt, fmt.Sprintf("latch-e2e-fastpath-%d-%s", os.Getpid(), t.Name()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		for i := 0; i < 250 && os.Remove(dir) != nil; i++ {
			time.Sleep(20 * time.Millisecond) // its last processes are still exiting
		}
		unix.Unmount(mnt, unix.MNT_DETACH)
		os.Remove(mnt)
	})
	return dir, fd
}

// inCgroup runs e2ehelper in the client namespace, inside the cgroup fd.
func (n *Net) inCgroup(t *testing.T, cgfd int, bin string, args ...string) string {
	t.Helper()
	cmd := nettest.Command(n.Client, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
	}
	return string(out)
}

// results decodes e2ehelper's result lines.
func results(t *testing.T, out string) []Result {
	t.Helper()
	var rs []Result
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r Result
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("e2ehelper line %q: %v", l, err)
		}
		rs = append(rs, r)
	}
	return rs
}

type fastPathStatus struct {
	On         bool   `json:"on"`
	Reason     string `json:"reason"`
	HitsAllow  uint64 `json:"hits_allow"`
	HitsReject uint64 `json:"hits_reject"`
	Misses     uint64 `json:"misses"`
	Stale      uint64 `json:"stale"`
	RingLost   uint64 `json:"ring_lost"`
	Entries    int    `json:"entries"`
	Events     uint64 `json:"events"`
	// Verdicts of the queue the store worker took: stored, or not (it may
	// not, or the map refused).
	Stored      uint64 `json:"stored"`
	NotStored   uint64 `json:"not_stored"`
	StoreErrors uint64 `json:"store_errors"`
	// The ruleset lets a fast SYN pass only while the daemon lives.
	Lease    bool   `json:"lease"`
	LeaseWhy string `json:"lease_why"`
}

// waitFastPathEntries waits (up to 10 s) until the fast path's map holds at least n
// verdicts: the queue's verdict goes out first and a worker stores it just after,
// so on a loaded machine the next few connections can still miss.
func (d *Daemon) waitFastPathEntries(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fp := d.fastPath(t)
		if fp.Entries >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fast path's map has %d entries after 10 s, want %d: %+v", fp.Entries, n, fp)
		}
	}
}

// waitFastPathOffers waits (up to 10 s) until the fast path has taken every
// verdict the queue gave so far, stored or not: as many as the history has rows
// the fast path did not decide. A verdict is stored by a worker just after it
// went out, so on a loaded machine an earlier one can still land after a later
// connection's row is written. The caller waits for the rows first (connsTo).
func (d *Daemon) waitFastPathOffers(t *testing.T) {
	t.Helper()
	queued := uint64(0)
	for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "100000")) {
		if c["reason"] != "fast-path" {
			queued++
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fp := d.fastPath(t)
		if fp.Stored+fp.NotStored+fp.StoreErrors >= queued {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fast path took %d verdicts after 10 s, want the %d the history has from the queue: %+v", fp.Stored+fp.NotStored+fp.StoreErrors, queued, fp)
		}
	}
}

func (d *Daemon) fastPath(t *testing.T) fastPathStatus {
	t.Helper()
	var st struct {
		FastPath *fastPathStatus `json:"fast_path"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.FastPath == nil {
		t.Fatal("status has no fast_path")
	}
	return *st.FastPath
}

// connsTo returns the history rows of connections to port, waiting until there are
// want of them (or 10 s).
func connsTo(t *testing.T, d *Daemon, port, want int) []map[string]any {
	t.Helper()
	var rows []map[string]any
	for deadline := time.Now().Add(10 * time.Second); ; {
		rows = rows[:0]
		for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "100000")) {
			if int(num(c["remote_port"])) == port {
				rows = append(rows, c)
			}
		}
		if len(rows) >= want || time.Now().After(deadline) {
			return rows
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func startFastPathDaemon(t *testing.T, n *Net, cg string, flags ...string) *Daemon {
	t.Helper()
	d := n.StartDaemon(append([]string{"--default", "deny", "--prompt-timeout", "2s", "--fast-path-cgroup", cg}, flags...)...)
	if fp := d.fastPath(t); !fp.On {
		t.Fatalf("fast path off: %s", fp.Reason)
	}
	return d
}

// TestFastPathDecidesRuledConnections: after a rule decided a program's connection
// once through the queue, its next connections are decided in the kernel: allowed
// ones get through, denied ones are refused at once, and the history has one row per
// connection with the rule's id.
func TestFastPathDecidesRuledConnections(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8301)
	n.Serve(t, 8302)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--remote", n.ServerIP, "--port", "8301", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8302", "--action", "deny")

	// One connect each through the queue first; the map learns their verdicts just
	// after (a worker checks the program's file and stores it).
	for _, port := range []string{":8301", ":8302"} {
		results(t, n.inCgroup(t, cgfd, helperBin, "connects", n.ServerIP+port, "1", "10s"))
	}
	d.waitFastPathEntries(t, 2)
	const conns = 20
	for i, r := range results(t, n.inCgroup(t, cgfd, helperBin, "connects", n.ServerIP+":8301", strconv.Itoa(conns), "10s")) {
		if r.Outcome != "connected" {
			t.Errorf("allowed connect %d: %+v", i, r)
		}
	}
	for i, r := range results(t, n.inCgroup(t, cgfd, helperBin, "connects", n.ServerIP+":8302", "5", "10s")) {
		if r.Outcome != "refused" || r.Millis > 1000 {
			t.Errorf("denied connect %d: %+v; want refused at once", i, r)
		}
	}
	fp := d.fastPath(t)
	t.Logf("fast path: %+v", fp)
	// A connect that still missed is decided by the queue, as exactly. Most must hit.
	if fp.HitsAllow < conns/2 || fp.HitsReject < 2 || fp.HitsAllow+fp.HitsReject+fp.Misses != conns+5+2 || fp.RingLost != 0 || fp.Entries < 2 {
		t.Errorf("fast path counters %+v: want at least %d allowed and 2 refused in the kernel, map of at least 2", fp, conns/2)
	}
	hits := map[int]int{8301: int(fp.HitsAllow), 8302: int(fp.HitsReject)}
	for port, want := range map[int]struct {
		n       int
		verdict string
	}{8301: {conns + 1, "allow"}, 8302: {5 + 1, "reject"}} {
		rows := connsTo(t, d, port, want.n)
		fast := 0
		for _, c := range rows {
			if c["reason"] == "fast-path" {
				fast++
				if c["verdict"] != want.verdict || c["exe"] != helperBin || num(c["pid"]) == 0 {
					t.Errorf("port %d: fast-path row %v: want verdict %s, exe %s and a pid", port, c, want.verdict, helperBin)
				}
			}
			if num(c["rule_id"]) == 0 {
				t.Errorf("port %d: row without a rule id: %v", port, c)
			}
		}
		if len(rows) != want.n || fast != hits[port] {
			t.Errorf("port %d: %d history rows, %d by the fast path; want %d, %d", port, len(rows), fast, want.n, hits[port])
		}
	}
	if a := waitAccepted(srv, conns+1); a != conns+1 {
		t.Errorf("server accepted %d, want %d", a, conns+1)
	}
	if out := d.MustCLI(t, "status"); !strings.Contains(out, "fast path:") || !strings.Contains(out, fmt.Sprintf("%d allowed and %d refused in the kernel", fp.HitsAllow, fp.HitsReject)) {
		t.Errorf("latch status does not show the fast path:\n%s", out)
	}
}

// TestFastPathDenyRuleStopsCachedAllow: a flood of connects a cached allow lets
// through; a deny rule added meanwhile stops every connect begun after `rules add`
// returned. A rule that expires does the same.
func TestFastPathDenyRuleStopsCachedAllow(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8303)
	n.Serve(t, 8304)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8303", "--action", "allow")
	n.inCgroup(t, cgfd, helperBin, "connect", n.ServerIP+":8303", "10s") // the queue decides, the map learns

	type flood struct {
		out string
		err error
	}
	done := make(chan flood, 1)
	cmd := nettest.Command(n.Client, helperBin, "flood-log", n.ServerIP+":8303", "30000", "4", "2s")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	go func() {
		out, err := cmd.CombinedOutput()
		done <- flood{string(out), err}
	}()
	// Change the rules while the flood is getting through (on a loaded machine the
	// flood may take a while to start).
	for deadline := time.Now().Add(30 * time.Second); Accepted(srv) < 200; {
		if time.Now().After(deadline) {
			t.Fatalf("the flood did not get going: server accepted %d", Accepted(srv))
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8303", "--action", "deny")
	returned := time.Now().UnixNano()
	var f flood
	select {
	case f = <-done:
	case <-time.After(120 * time.Second):
		cmd.Process.Kill()
		t.Fatal("flood did not end")
	}
	if f.err != nil {
		t.Fatalf("flood: %v\n%.2000s", f.err, f.out)
	}
	before, after := 0, 0
	var summary string
	for _, l := range strings.Split(strings.TrimSpace(f.out), "\n") {
		var at struct {
			ConnectedAt int64 `json:"connected_at"`
		}
		if json.Unmarshal([]byte(l), &at) != nil || at.ConnectedAt == 0 {
			summary = l
			continue
		}
		if at.ConnectedAt > returned {
			after++
		} else {
			before++
		}
	}
	t.Logf("flood: %s; %d got through before `rules add` returned, %d after", summary, before, after)
	if before == 0 {
		t.Errorf("no connect got through before the deny rule: the flood did not cross the change")
	}
	if after != 0 {
		t.Errorf("%d connects begun after the deny rule's `rules add` returned got through", after)
	}
	fp := d.fastPath(t)
	if fp.HitsAllow == 0 || fp.HitsReject == 0 {
		t.Errorf("fast path %+v: want both cached allows (before) and cached denies (after)", fp)
	}

	// Expiry: an allow for 2 seconds is cached, then stops at its expiry.
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8304", "--action", "allow", "--for", "2s")
	expires := time.Now().Add(2 * time.Second)
	rs := results(t, n.inCgroup(t, cgfd, helperBin, "connects", n.ServerIP+":8304", "3", "10s"))
	for i, r := range rs {
		if r.Outcome != "connected" {
			t.Fatalf("connect %d under the 2s rule: %+v", i, r)
		}
	}
	time.Sleep(time.Until(expires) + 100*time.Millisecond)
	if r := results(t, n.inCgroup(t, cgfd, helperBin, "connect", n.ServerIP+":8304", "10s"))[0]; r.Outcome == "connected" {
		t.Errorf("connect after the rule expired got through: %+v", r)
	}
	rows := connsTo(t, d, 8304, 4)
	if len(rows) != 4 || rows[len(rows)-1]["reason"] == "fast-path" {
		t.Errorf("history for the expired rule: %v; want 4 rows, the last not by the fast path", rows)
	}
}

// TestFastPathMissesCopyAndUnruled: a copy of a ruled program at another path, and
// the ruled program to a destination no rule names, are still held and asked (the
// question times out to the default, deny); UDP is decided by the rule, through
// the queue first, then in the kernel (see fastpath_udp_test.go); IPv6 is served
// like IPv4.
func TestFastPathMissesCopyAndUnruled(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8305)
	n.Serve(t, 8306)
	n.ServeUDP(t, 8307)
	s6 := addIPv6s(t, n, 0x18, 1)[0]
	srv6 := n.Start(n.Server, helperBin, "serve", "["+s6+"]:8308")
	srv6.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8305", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8307", "--proto", "udp", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8308", "--action", "allow")
	for i, r := range results(t, n.inCgroup(t, cgfd, helperBin, "connects", n.ServerIP+":8305", "3", "10s")) {
		if r.Outcome != "connected" {
			t.Fatalf("ruled connect %d: %+v", i, r)
		}
	}
	copied := filepath.Join(t.TempDir(), "e2ehelper-copy")
	copyProgram(t, copied)
	if r := results(t, n.inCgroup(t, cgfd, copied, "connect", n.ServerIP+":8305", "10s"))[0]; r.Outcome == "connected" || r.Millis < 1500 {
		t.Errorf("the copy's connect: %+v; want held for the question (2s) and refused", r)
	}
	if r := results(t, n.inCgroup(t, cgfd, helperBin, "connect", n.ServerIP+":8306", "10s"))[0]; r.Outcome == "connected" || r.Millis < 1500 {
		t.Errorf("the unruled connect: %+v; want held for the question (2s) and refused", r)
	}
	for _, c := range connsTo(t, d, 8306, 1) {
		if c["reason"] != "timeout" {
			t.Errorf("unruled connect's history: %v; want reason timeout", c)
		}
	}
	rows := connsTo(t, d, 8305, 4)
	if len(rows) != 4 || rows[3]["exe"] != copied || rows[3]["reason"] != "timeout" {
		t.Errorf("history for port 8305: %v; want 3 ruled rows and the copy's, asked (timeout)", rows)
	}
	for i := 0; i < 3; i++ {
		if r := results(t, n.inCgroup(t, cgfd, helperBin, "udp", n.ServerIP+":8307", "5s"))[0]; r.Outcome != "connected" {
			t.Errorf("UDP exchange %d: %+v", i, r)
		}
	}
	for i, c := range connsTo(t, d, 8307, 3) {
		if (i == 0 && c["reason"] != "rule") || (c["reason"] != "rule" && c["reason"] != "fast-path") || num(c["rule_id"]) == 0 {
			t.Errorf("UDP history row %d %v: want the rule's id, reason rule first (the queue), then rule or fast-path", i, c)
		}
	}
	// The IPv6 connects are one process's (a talker): the kernel's key has the
	// mount the program was executed through, and each `ip netns exec` makes a
	// mount namespace of its own whose mounts take new ids (an earlier
	// invocation's only if its namespace is gone and no other took them
	// meanwhile, not so on a loaded machine), so connects of separate
	// invocations can have separate keys, each decided by the queue.
	tk := startTalk(t, n, cgfd)
	if r := tk.say(t, "open ["+s6+"]:8308"); r.Outcome != "connected" {
		t.Fatalf("IPv6 connect 0: %+v", r)
	}
	// It is decided by the queue; its verdict is stored a moment after it went
	// out, so the next ones wait for it.
	connsTo(t, d, 8308, 1)
	d.waitFastPathOffers(t)
	hits := d.fastPath(t).HitsAllow
	for i := 1; i <= 2; i++ {
		if r := tk.say(t, "open ["+s6+"]:8308"); r.Outcome != "connected" {
			t.Errorf("IPv6 connect %d: %+v", i, r)
		}
	}
	rows = connsTo(t, d, 8308, 3)
	if len(rows) != 3 || rows[0]["reason"] != "rule" || rows[1]["reason"] != "fast-path" || rows[2]["reason"] != "fast-path" {
		t.Errorf("IPv6 history: %v; want the rule once, then the fast path", rows)
	}
	fp := d.fastPath(t)
	t.Logf("fast path: %+v", fp)
	if fp.HitsAllow-hits != 2 || fp.HitsReject != 0 {
		t.Errorf("fast path %+v: want the 2 IPv6 connects after the first allowed in the kernel (%d allow hits before them), no refusals", fp, hits)
	}
}

// TestFastPathOff: --fast-path=false says so in latch status and decides through
// the queue; a fast path that cannot attach falls back to the queue and says why.
func TestFastPathOff(t *testing.T) {
	t.Run("cannot attach", func(t *testing.T) {
		n := NewNet(t)
		n.Serve(t, 8310)
		d := n.StartDaemon("--default", "deny", "--fast-path-cgroup", "/nonexistent/latch-cgroup")
		fp := d.fastPath(t)
		if fp.On || !strings.Contains(fp.Reason, "/nonexistent/latch-cgroup") {
			t.Errorf("status fast_path %+v: want off, with the reason naming the cgroup", fp)
		}
		d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8310", "--action", "allow")
		for i, r := range results(t, n.MustExec(t, n.Client, helperBin, "connects", n.ServerIP+":8310", "2", "10s")) {
			if r.Outcome != "connected" {
				t.Errorf("connect %d: %+v", i, r)
			}
		}
		for _, c := range connsTo(t, d, 8310, 2) {
			if c["reason"] != "rule" {
				t.Errorf("row %v: want reason rule", c)
			}
		}
	})
	n := NewNet(t)
	n.Serve(t, 8309)
	d := n.StartDaemon("--default", "deny", "--fast-path=false")
	fp := d.fastPath(t)
	if fp.On || fp.Reason != "--fast-path=false" {
		t.Errorf("status fast_path %+v: want off, reason --fast-path=false", fp)
	}
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8309", "--action", "allow")
	n.MustExec(t, n.Client, helperBin, "connects", n.ServerIP+":8309", "3", "10s")
	for _, c := range connsTo(t, d, 8309, 3) {
		if c["reason"] != "rule" {
			t.Errorf("row %v: want reason rule", c)
		}
	}
	if out := d.MustCLI(t, "status"); !strings.Contains(out, "fast path:") || !strings.Contains(out, "off: --fast-path=false") {
		t.Errorf("latch status:\n%s", out)
	} else if !strings.Contains(out, "fast path socket pin") || !strings.Contains(out, "passes only from the socket it was allowed for") {
		// The socket pin is loaded alone: an allowed UDP flow still passes
		// only from the socket it was allowed for.
		t.Errorf("latch status does not say allowed UDP flows are pinned to their socket without the fast path:\n%s", out)
	} else if !strings.Contains(out, "fast path receive check:") || !strings.Contains(out, "reaches only the socket the flow was allowed for") {
		// The pin's receive check comes with it.
		t.Errorf("latch status does not say an allowed flow's datagrams reach only its socket without the fast path:\n%s", out)
	} else if !strings.Contains(out, "fast path sender stash:") || !strings.Contains(out, "attributed to the socket that sent it") {
		// The sender stash comes with it.
		t.Errorf("latch status does not say UDP datagrams are attributed to their sending socket without the fast path:\n%s", out)
	}
	var pin struct {
		FastPath struct {
			SocketPin        bool   `json:"socket_pin"`
			SocketPinMatch   string `json:"socket_pin_match"`
			SocketPinReceive bool   `json:"socket_pin_receive"`
			SenderStash      bool   `json:"sender_stash"`
			SenderStashMatch string `json:"sender_stash_match"`
		} `json:"fast_path"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &pin); err != nil {
		t.Fatal(err)
	}
	if !pin.FastPath.SocketPin || pin.FastPath.SocketPinMatch == "" {
		t.Errorf("status fast_path %+v: want the socket pin on, with its program's path, without the fast path", pin.FastPath)
	}
	if !pin.FastPath.SenderStash || pin.FastPath.SenderStashMatch == "" {
		t.Errorf("status fast_path %+v: want the sender stash on, with its program's path, without the fast path", pin.FastPath)
	}
	if !pin.FastPath.SocketPinReceive {
		t.Errorf("status fast_path %+v: want the socket pin's receive check on without the fast path", pin.FastPath)
	}
}

// MustExec is Exec that fails the test on error.
func (n *Net) MustExec(t *testing.T, ns, name string, args ...string) string {
	t.Helper()
	out, err := n.Exec(ns, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// TestFastPathSegmentRoutedConnect: a program may give its TCP socket an IPv6
// segment routing header (IPV6_RTHDR type 4 needs no privilege) whose next
// segment is any address: its packets' IPv6 destination is that address, and
// the connect's address only the header's last segment. The queue decides such
// a connection by the packet's destination, which no rule allows here (held,
// asked, denied); the kernel fast path must not allow it by the connect's
// address, which a rule allows.
func TestFastPathSegmentRoutedConnect(t *testing.T) {
	n := NewNet(t)
	xy := addIPv6s(t, n, 0x19, 2)
	x6, y6 := xy[0], xy[1]
	id := strings.TrimPrefix(n.Client, "latch-c")
	for _, args := range [][]string{
		{"netns", "exec", n.Server, "sysctl", "-qw", "net.ipv6.conf.all.seg6_enabled=1"},
		{"netns", "exec", n.Server, "sysctl", "-qw", "net.ipv6.conf.ls" + id + ".seg6_enabled=1"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	srv := n.Start(n.Server, helperBin, "serve", "["+x6+"]:8331")
	srv.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--remote", x6, "--port", "8331", "--action", "allow")
	x := "[" + x6 + "]:8331"
	// All from one process: the kernel's key has the mount the program was
	// executed through, and each `ip netns exec` makes a mount namespace of its
	// own, whose mounts may get other ids (then the last connect would miss
	// and be decided by the queue, and this test would pass without testing
	// the fast path).
	tk := startTalk(t, n, cgfd)
	// Through the queue: the packets go to y6, which no rule allows.
	if r := tk.say(t, "connect-srh "+x+" "+y6); r.Outcome == "connected" {
		t.Fatalf("through the queue, a connect routed via %s got through: %+v", y6, r)
	}
	if r := tk.say(t, "open "+x); r.Outcome != "connected" {
		t.Fatalf("the ruled connect: %+v", r)
	}
	connsTo(t, d, 8331, 2)
	d.waitFastPathOffers(t)
	hits := d.fastPath(t).HitsAllow
	r := tk.say(t, "connect-srh "+x+" "+y6)
	fp := d.fastPath(t)
	if r.Outcome == "connected" {
		t.Errorf("the kernel fast path let a connect whose packets go to %s (no rule allows it) through by its final segment %s: %+v (fast-path allow hits %d)", y6, x6, r, fp.HitsAllow-hits)
	}
	if fp.HitsAllow-hits != 1 {
		// The connect hook found no entry: the queue decided, and the
		// kernel fast path was not tested.
		t.Errorf("the routed connect was no fast-path hit (%d allow hits), so the kernel's part went untested: %+v", fp.HitsAllow-hits, fp)
	}
}

// TestFastPathSegmentRoutedFlow: an established connection the kernel fast path
// allowed (untracked, MarkFastFlow) whose program then gives its socket an IPv6
// segment routing header (IPV6_RTHDR type 4 needs no privilege) sends its next
// packets to the header's next segment, an address no rule allows: none of them
// may leave this host (the peer's namespace counts what arrives for that
// address).
func TestFastPathSegmentRoutedFlow(t *testing.T) {
	n := NewNet(t)
	xy := addIPv6s(t, n, 0x1a, 2)
	x6, y6 := xy[0], xy[1]
	id := strings.TrimPrefix(n.Client, "latch-c")
	for _, args := range [][]string{
		{"netns", "exec", n.Server, "sysctl", "-qw", "net.ipv6.conf.all.seg6_enabled=1"},
		{"netns", "exec", n.Server, "sysctl", "-qw", "net.ipv6.conf.ls" + id + ".seg6_enabled=1"},
		{"netns", "exec", n.Server, "ip6tables", "-w", "-t", "raw", "-A", "PREROUTING", "-d", y6 + "/128", "-p", "tcp"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	srv := n.Start(n.Server, helperBin, "serve-push", "["+x6+"]:8332")
	srv.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--remote", x6, "--port", "8332", "--action", "allow")
	tk := startTalk(t, n, cgfd)
	if r := tk.say(t, "open ["+x6+"]:8332"); r.Outcome != "connected" {
		t.Fatalf("the ruled connect: %+v", r)
	}
	d.waitFastPathEntries(t, 1)
	hits := d.fastPath(t).HitsAllow
	if r := tk.say(t, "open ["+x6+"]:8332"); r.Outcome != "connected" {
		t.Fatalf("the fast connect: %+v", r)
	}
	if fp := d.fastPath(t); fp.HitsAllow-hits != 1 {
		t.Fatalf("the connection was no fast-path hit: %+v", fp)
	}
	yPackets := func() string {
		out, err := n.Exec(n.Server, "ip6tables", "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-n", "-x")
		if err != nil {
			t.Fatalf("ip6tables -L: %v: %s", err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 2 && strings.Contains(l, y6) {
				return f[0]
			}
		}
		return "?"
	}
	// The connection the queue decided (conntrack's): its packets to y6 are
	// a new flow, held and denied.
	if r := tk.say(t, "srh 0 "+y6); r.Outcome != "set" {
		t.Fatalf("srh: %+v", r)
	}
	tk.say(t, "send 0 1000")
	time.Sleep(time.Second)
	if p := yPackets(); p != "0" {
		t.Fatalf("%s packets of the connection the queue decided reached %s", p, y6)
	}
	if r := tk.say(t, "srh 1 "+y6); r.Outcome != "set" {
		t.Fatalf("srh: %+v", r)
	}
	tk.say(t, "send 1 1000")
	time.Sleep(time.Second)
	if p := yPackets(); p != "0" {
		t.Errorf("%s packets of a fast connection to %s reached %s, which no rule allows", p, x6, y6)
	}
}
