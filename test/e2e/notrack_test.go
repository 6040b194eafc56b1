//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/test/nettest"
)

// talker is e2ehelper talk: connections that stay open across rule changes,
// all of one process.
type talker struct {
	*Proc
	locals []string
}

// startTalk starts e2ehelper talk in the fast path's cgroup.
func startTalk(t *testing.T, n *Net, cgfd int) *talker {
	t.Helper()
	cmd := nettest.Command(n.Client, helperBin, "talk", "-")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	p := n.StartCmd(cmd)
	p.WaitLine(t, 10*time.Second, func(l string) bool { return l == "ready" })
	return &talker{Proc: p}
}

// say writes a line to the talker and returns its answer.
func (c *talker) say(t *testing.T, line string) Result {
	t.Helper()
	if _, err := c.stdin.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
	var r Result
	l := c.WaitLine(t, 30*time.Second, func(string) bool { return true })
	if err := json.Unmarshal([]byte(l), &r); err != nil {
		t.Fatalf("talk answer %q: %v", l, err)
	}
	return r
}

// open connects to the server's port and returns the connection's index.
func (c *talker) open(t *testing.T, n *Net, port int) int {
	t.Helper()
	r := c.say(t, fmt.Sprintf("open %s:%d", n.ServerIP, port))
	if r.Outcome != "connected" {
		t.Fatalf("talk: connect to port %d: %+v", port, r)
	}
	c.locals = append(c.locals, r.Local)
	return len(c.locals) - 1
}

// servePush starts e2ehelper serve-push on the server's port.
func servePush(t *testing.T, n *Net, port int) *Proc {
	t.Helper()
	p := n.Start(n.Server, helperBin, "serve-push", fmt.Sprintf("%s:%d", n.ServerIP, port))
	p.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	return p
}

// received is what the server got from the connection from local, by its "got" lines.
func received(p *Proc, local string) int {
	got := 0
	for _, l := range strings.Split(p.Output(), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "got" && f[1] == local {
			got, _ = strconv.Atoi(f[2])
		}
	}
	return got
}

func waitReceived(p *Proc, local string, want int) int {
	for deadline := time.Now().Add(5 * time.Second); received(p, local) < want && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	return received(p, local)
}

// conntrackEntries counts the client namespace's conntrack entries with the port of local.
func conntrackEntries(t *testing.T, n *Net, local string) int {
	t.Helper()
	_, port, _ := strings.Cut(local, ":")
	out, err := n.Exec(n.Client, "conntrack", "-L", "-p", "tcp")
	if err != nil {
		t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	c := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "sport="+port+" ") || strings.Contains(l, "dport="+port+" ") {
			c++
		}
	}
	return c
}

// TestFastPathNotrack: with the daemon's fast path, a ruled program's TCP
// connections decided in the kernel leave no conntrack entry and pass both ways;
// `latch status` says notrack is on. A deny rule added while such connections
// are open: this host's next segment after `rules add` returned is held and the
// connection reset, whether this host or the peer speaks first, and the server
// gets nothing more. A connection the change does not deny goes on, with at most
// one more history row.
func TestFastPathNotrack(t *testing.T) {
	n := NewNet(t)
	denied, kept := servePush(t, n, 8311), servePush(t, n, 8312)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	var st struct {
		FastPath struct {
			TCPNotrack    bool   `json:"tcp_notrack"`
			TCPNotrackWhy string `json:"tcp_notrack_why"`
		} `json:"fast_path"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if !st.FastPath.TCPNotrack {
		t.Fatalf("fast path notrack off: %s", st.FastPath.TCPNotrackWhy)
	}
	if text := d.MustCLI(t, "status"); !regexp.MustCompile(`(?m)^fast path notrack:\s+on$`).MatchString(text) {
		t.Errorf("status lacks the notrack line:\n%s", text)
	}
	for _, port := range []string{"8311", "8312"} {
		d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", port, "--action", "allow")
	}
	// One process (one mount namespace: the fast path's key has the mount the
	// program runs from): its first connections the queue decides, and the
	// map learns them.
	tk := startTalk(t, n, cgfd)
	tk.open(t, n, 8311)
	tk.open(t, n, 8312)
	d.waitFastPathEntries(t, 2)
	hits := d.fastPath(t).HitsAllow
	first, peer, other := tk.open(t, n, 8311), tk.open(t, n, 8311), tk.open(t, n, 8312)
	if fp := d.fastPath(t); fp.HitsAllow-hits != 3 {
		t.Fatalf("%d of the 3 connections were fast-path hits: %+v", fp.HitsAllow-hits, fp)
	}
	local := func(i int) string { return tk.locals[i] }
	for _, c := range []struct {
		i   int
		srv *Proc
	}{{first, denied}, {peer, denied}, {other, kept}} {
		if r := tk.say(t, fmt.Sprintf("send %d 100", c.i)); r.Outcome != "sent" {
			t.Fatalf("send: %+v", r)
		}
		if got := waitReceived(c.srv, local(c.i), 100); got != 100 {
			t.Fatalf("the server got %d bytes from %s, want 100", got, local(c.i))
		}
	}
	denied.stdin.WriteString("push 100\n")
	kept.stdin.WriteString("push 100\n")
	for _, i := range []int{first, peer, other} {
		if r := tk.say(t, fmt.Sprintf("wait %d 1s", i)); r.Outcome != "data 100" {
			t.Fatalf("%s: read what the server pushed: %+v", local(i), r)
		}
		if e := conntrackEntries(t, n, local(i)); e != 0 {
			t.Errorf("the fast connection from %s has %d conntrack entries, want none", local(i), e)
		}
	}
	rowsOther := len(connsTo(t, d, 8312, 2))

	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8311", "--action", "deny")
	// This host speaks first.
	tk.say(t, fmt.Sprintf("send %d 50", first))
	if r := tk.say(t, fmt.Sprintf("wait %d 3s", first)); r.Outcome != "reset" {
		t.Errorf("this host's segment after the deny rule: the connection %s, want reset", r.Outcome)
	}
	// The peer speaks first: this host's acknowledgement is held.
	denied.stdin.WriteString("push 50\n")
	if r := tk.say(t, fmt.Sprintf("wait %d 3s", peer)); r.Outcome != "reset" {
		t.Errorf("the peer spoke first after the deny rule: the connection %s, want reset", r.Outcome)
	}
	tk.say(t, fmt.Sprintf("send %d 50", peer))
	time.Sleep(300 * time.Millisecond)
	for _, i := range []int{first, peer} {
		if got := received(denied, local(i)); got != 100 {
			t.Errorf("the server got %d bytes from %s, want 100: a segment sent after the deny rule got through", got, local(i))
		}
		if e := conntrackEntries(t, n, local(i)); e != 0 {
			t.Errorf("the denied connection from %s has %d conntrack entries", local(i), e)
		}
	}
	// Not denied by the change: goes on.
	for range 3 {
		if r := tk.say(t, fmt.Sprintf("send %d 10", other)); r.Outcome != "sent" {
			t.Errorf("the connection the change did not deny: %+v", r)
		}
	}
	if got := waitReceived(kept, local(other), 130); got != 130 {
		t.Errorf("the server got %d bytes from %s, want 130", got, local(other))
	}
	if e := conntrackEntries(t, n, local(other)); e != 0 {
		t.Errorf("the connection the change did not deny has %d conntrack entries", e)
	}
	time.Sleep(time.Second) // history rows are written in batches
	if rows := len(connsTo(t, d, 8312, rowsOther)); rows > rowsOther+1 {
		t.Errorf("the connection the change did not deny made %d more history rows, want at most 1", rows-rowsOther)
	}
}

// nftCounters reads the byte counters of the client namespace's table inet
// latchtest, in rule order.
func nftCounters(t *testing.T, n *Net) []int {
	t.Helper()
	out, err := n.Exec(n.Client, "nft", "list", "table", "inet", "latchtest")
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	var bytes []int
	for _, m := range regexp.MustCompile(`counter packets \d+ bytes (\d+)`).FindAllStringSubmatch(out, -1) {
		b, _ := strconv.Atoi(m[1])
		bytes = append(bytes, b)
	}
	return bytes
}

// TestFastPathNotrackEndBytes: a connection the fast path decided, kept out of
// conntrack, ends with its history row's bytes exactly what went over it (as
// counted by nftables counters of the client namespace, L3 lengths as conntrack
// counts them), though the accountant never saw it in conntrack.
func TestFastPathNotrackEndBytes(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	n := NewNet(t)
	srv := servePush(t, n, 8313)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8313", "--action", "allow")
	tk := startTalk(t, n, cgfd)
	warm := tk.open(t, n, 8313) // the queue decides, the map learns
	d.waitFastPathEntries(t, 1)
	if r := tk.say(t, fmt.Sprintf("close %d -", warm)); r.Outcome != "closed" {
		t.Fatalf("close: %+v", r)
	}
	time.Sleep(200 * time.Millisecond)
	for _, cmd := range []string{
		"add table inet latchtest",
		"add chain inet latchtest out { type filter hook output priority 10; }",
		"add chain inet latchtest in { type filter hook input priority 10; }",
		"add rule inet latchtest out tcp dport 8313 counter",
		"add rule inet latchtest in tcp sport 8313 counter",
	} {
		if out, err := n.Exec(n.Client, "nft", cmd); err != nil {
			t.Fatalf("nft %s: %v\n%s", cmd, err, out)
		}
	}
	hits := d.fastPath(t).HitsAllow
	c := tk.open(t, n, 8313)
	if d.fastPath(t).HitsAllow != hits+1 {
		t.Fatal("the connection was not decided by the fast path")
	}
	if r := tk.say(t, fmt.Sprintf("send %d 100000", c)); r.Outcome != "sent" {
		t.Fatalf("send: %+v", r)
	}
	if got := waitReceived(srv, tk.locals[c], 100000); got != 100000 {
		t.Fatalf("the server got %d bytes", got)
	}
	srv.stdin.WriteString("push 50000\n")
	if r := tk.say(t, fmt.Sprintf("wait %d 1s", c)); r.Outcome != "data 50000" {
		t.Fatalf("read: %+v", r)
	}
	if e := conntrackEntries(t, n, tk.locals[c]); e != 0 {
		t.Errorf("the fast connection has %d conntrack entries", e)
	}
	if r := tk.say(t, fmt.Sprintf("close %d -", c)); r.Outcome != "closed" {
		t.Fatalf("close: %+v", r)
	}
	time.Sleep(300 * time.Millisecond)
	want := nftCounters(t, n)
	if len(want) != 2 || want[0] < 100000 || want[1] < 50000 {
		t.Fatalf("nft counters %v", want)
	}
	lp := localPort(t, tk.locals[c])
	var row map[string]any
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		row = nil
		for _, r := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "100")) {
			if int(num(r["local_port"])) == lp && int(num(r["remote_port"])) == 8313 {
				row = r
			}
		}
		if row != nil && int(num(row["bytes_out"])) == want[0] && int(num(row["bytes_in"])) == want[1] {
			break
		}
	}
	if row == nil || row["reason"] != "fast-path" {
		t.Fatalf("history row of the connection: %v", row)
	}
	if int(num(row["bytes_out"])) != want[0] || int(num(row["bytes_in"])) != want[1] {
		t.Errorf("history row bytes out %v in %v, want %d and %d (nftables' counts)", row["bytes_out"], row["bytes_in"], want[0], want[1])
	}
}

// TestFastMarkAfterDaemonDeathFailsClosed: a socket the fast path marked
// MarkFastAllow keeps that SO_MARK after its connection ends
// (connect(AF_UNSPEC), any program may), and may connect again. While the
// daemon runs, its connect hook clears the mark at that next connect (an
// unruled destination is held and denied). A daemon killed (SIGKILL, fail-closed)
// leaves its ruleset, notrack's rules included, but takes its connect hooks
// with it: the same socket's next connect, to a destination no rule allows,
// must still be dropped, as every new connection is.
func TestFastMarkAfterDaemonDeathFailsClosed(t *testing.T) {
	n := NewNet(t)
	servePush(t, n, 8315)
	srv := n.Serve(t, 8316)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg, "--fail", "closed")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8315", "--action", "allow")
	tk := startTalk(t, n, cgfd)
	tk.open(t, n, 8315) // the queue decides, the map learns
	d.waitFastPathEntries(t, 1)
	hits := d.fastPath(t).HitsAllow
	alive, dead := tk.open(t, n, 8315), tk.open(t, n, 8315)
	if fp := d.fastPath(t); fp.HitsAllow-hits != 2 {
		t.Fatalf("%d of the 2 connections were fast-path hits: %+v", fp.HitsAllow-hits, fp)
	}
	other := fmt.Sprintf("%s:%d", n.ServerIP, 8316)
	// The daemon up: the unruled destination is denied (--default deny).
	if r := tk.say(t, fmt.Sprintf("reopen %d %s", alive, other)); r.Outcome == "connected" {
		t.Fatalf("with the daemon up, a fast socket connected again to an unruled destination: %+v", r)
	}
	killDaemon(t, n, d)
	notConnected(t, tk, srv, fmt.Sprintf("reopen %d %s", dead, other), "fail-closed, daemon killed: a socket the fast path had marked connected to an unruled destination")
}

// TestFastMarkAfterRestartWithoutFastPath: a socket the fast path marked
// MarkFastAllow keeps that SO_MARK after its connection ends
// (connect(AF_UNSPEC)). A daemon started next without the fast path
// (--fast-path=false, or one whose fast path cannot load) has no connect hook
// to clear it: the same socket's next connect, to a destination no rule allows,
// must be held and denied like any other.
func TestFastMarkAfterRestartWithoutFastPath(t *testing.T) {
	n := NewNet(t)
	servePush(t, n, 8317)
	srv := n.Serve(t, 8318)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8317", "--action", "allow")
	tk := startTalk(t, n, cgfd)
	tk.open(t, n, 8317) // the queue decides, the map learns
	d.waitFastPathEntries(t, 1)
	hits := d.fastPath(t).HitsAllow
	c := tk.open(t, n, 8317)
	if fp := d.fastPath(t); fp.HitsAllow-hits != 1 {
		t.Fatalf("the connection was no fast-path hit: %+v", fp)
	}
	if err := d.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatalf("daemon stop: %v", err)
	}
	d2 := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s", "--fast-path=false")
	if fp := d2.fastPath(t); fp.On {
		t.Fatalf("the second daemon's fast path is on")
	}
	notConnected(t, tk, srv, fmt.Sprintf("reopen %d %s:%d", c, n.ServerIP, 8318), "a daemon without the fast path let a socket the earlier one's fast path had marked connect to an unruled destination")
}

// TestFastMarkAfterRefusedConnectFailsClosed: a socket whose connect the fast
// path allowed and the peer refused (a reset: nothing listens on the ruled
// port) keeps no mark that lets a SYN pass. It used to keep MarkFastAllow, so
// that once the daemon was killed (fail-closed: its ruleset stays, its connect
// hooks go) the same socket could connect again anywhere, to a destination no
// rule allows.
func TestFastMarkAfterRefusedConnectFailsClosed(t *testing.T) {
	n := NewNet(t)
	servePush(t, n, 8319)
	srv := n.Serve(t, 8321)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg, "--fail", "closed")
	for _, port := range []string{"8319", "8320"} {
		d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", port, "--action", "allow")
	}
	tk := startTalk(t, n, cgfd)
	c := tk.open(t, n, 8319)
	closed := fmt.Sprintf("%s:%d", n.ServerIP, 8320) // nothing listens
	if r := tk.say(t, "open "+closed); r.Outcome != "refused" {
		t.Fatalf("connect to the closed port %s: %+v, want refused", closed, r)
	}
	d.waitFastPathEntries(t, 2)
	hits := d.fastPath(t).HitsAllow
	// The same socket, to the closed port: a fast-path hit, refused.
	if r := tk.say(t, fmt.Sprintf("reopen %d %s", c, closed)); r.Outcome != "refused" {
		t.Fatalf("reopen to the closed port %s: %+v, want refused", closed, r)
	}
	if fp := d.fastPath(t); fp.HitsAllow-hits != 1 {
		t.Fatalf("the refused connect was no fast-path hit: %+v", fp)
	}
	killDaemon(t, n, d)
	notConnected(t, tk, srv, fmt.Sprintf("reopen %d %s:%d", c, n.ServerIP, 8321), "fail-closed, daemon killed: a socket whose fast connect was refused connected to an unruled destination")
}

// TestFastMarkAfterFailedConnectFailsClosed: a connect the fast path decided
// that fails before any packet leaves (here an IPv4-mapped destination on an
// IPv6-only socket: ENETUNREACH; so fails one with no route) leaves no mark
// that lets a SYN pass. The connect hook used to give the socket MarkFastAllow
// itself, before the kernel's own checks, and the socket, which never left
// TCP_CLOSE, kept it: once the daemon was killed (fail-closed) it could
// connect again anywhere.
func TestFastMarkAfterFailedConnectFailsClosed(t *testing.T) {
	n := NewNet(t)
	servePush(t, n, 8322)
	srv := n.Serve(t, 8323)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg, "--fail", "closed")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8322", "--action", "allow")
	tk := startTalk(t, n, cgfd)
	tk.open(t, n, 8322) // the queue decides, the map learns
	d.waitFastPathEntries(t, 1)
	hits := d.fastPath(t).HitsAllow
	r := tk.say(t, fmt.Sprintf("v6only [::ffff:%s]:8322", n.ServerIP))
	if r.Outcome == "connected" {
		t.Fatalf("an IPv6-only socket connected to an IPv4-mapped address: %+v", r)
	}
	if fp := d.fastPath(t); fp.HitsAllow-hits != 1 {
		t.Fatalf("the failed connect was no fast-path hit: %+v", fp)
	}
	failed := len(tk.locals) // the index talk gave the socket
	tk.locals = append(tk.locals, "")
	killDaemon(t, n, d)
	notConnected(t, tk, srv, fmt.Sprintf("reopen %d [::ffff:%s]:8323", failed, n.ServerIP), "fail-closed, daemon killed: a socket whose fast connect failed before its SYN connected to an unruled destination")
}

// TestFastFlowSimultaneousOpenAfterDaemonDeathFailsClosed: with --inbound, a
// socket the fast path allowed, established (MarkFastFlow) when the daemon is
// killed (fail-closed: its ruleset stays, its sock_ops program goes, so nothing
// clears the mark at TCP_CLOSE), is disconnected (connect(AF_UNSPEC)), bound to
// a port and connected to a destination no rule allows. Its SYN is held (a SYN
// with MarkFastFlow), but a peer that sends its own SYN to that port (a
// simultaneous open) must not get a connection either: LATCH-IN used to return
// every untracked TCP packet whose local socket carries a fast mark, the peer's
// SYN included, and LATCH-OUT every untracked MarkFastFlow packet but a bare
// SYN, this host's SYN-ACK included.
func TestFastFlowSimultaneousOpenAfterDaemonDeathFailsClosed(t *testing.T) {
	n := NewNet(t)
	servePush(t, n, 8324)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg, "--fail", "closed", "--inbound")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8324", "--action", "allow")
	tk := startTalk(t, n, cgfd)
	tk.open(t, n, 8324) // the queue decides, the map learns
	d.waitFastPathEntries(t, 1)
	hits := d.fastPath(t).HitsAllow
	c := tk.open(t, n, 8324)
	if fp := d.fastPath(t); fp.HitsAllow-hits != 1 {
		t.Fatalf("the connection was no fast-path hit: %+v", fp)
	}
	killDaemon(t, n, d)
	peer := n.Start(n.Server, helperBin, "simopen-peer", fmt.Sprintf("%s:8326", n.ServerIP), fmt.Sprintf("%s:8325", n.ClientIP))
	r := tk.say(t, fmt.Sprintf("simopen %d 8325 %s:8326", c, n.ServerIP))
	if r.Outcome == "connected" {
		t.Errorf("fail-closed, --inbound, daemon killed: a socket the fast path had marked connected to an unruled destination by a simultaneous open: %+v (peer: %s)", r, peer.Output())
	}
}

// killDaemon kills d (SIGKILL: fail-closed, its ruleset stays, its hooks go) and
// has latch cleanup remove the ruleset when the test ends.
func killDaemon(t *testing.T, n *Net, d *Daemon) {
	t.Helper()
	d.Signal(syscall.SIGKILL, 10*time.Second)
	t.Cleanup(func() { n.Exec(n.Client, latchBin, "cleanup") })
}

// notConnected has talk run cmd (a reopen to a destination no rule allows) and
// fails the test (what happened) if it connected or srv accepted a connection.
func notConnected(t *testing.T, tk *talker, srv *Proc, cmd, what string) {
	t.Helper()
	r := tk.say(t, cmd)
	t.Logf("%s: %+v", cmd, r)
	time.Sleep(300 * time.Millisecond) // the server's "accepted" line
	if r.Outcome == "connected" || Accepted(srv) != 0 {
		t.Errorf("%s: %+v (server accepted %d)", what, r, Accepted(srv))
	}
}
