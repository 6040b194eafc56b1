//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestFastMarkInFlightAtDaemonDeathFailsClosed: a socket whose connect the fast
// path allowed still carries MarkFastAllow while its SYN is on its way, and
// keeps it if the daemon dies then (SIGKILL, fail-closed: the sock_ops program
// that would move the mark on goes with it). A program can hold that state on
// purpose: a connect to an allowed address that drops SYNs, with TCP_SYNCNT
// 127, stays in SYN_SENT for hours. Once the daemon is gone the socket is
// disconnected (connect(AF_UNSPEC)) and connected to a destination no rule
// allows: its SYN passed by its mark (the ruleset stays, and no connect hook
// runs to clear it). The lease lets a SYN pass by that mark only while the
// daemon lives. A daemon started next takes a lease of its own: its fast
// connects pass.
func TestFastMarkInFlightAtDaemonDeathFailsClosed(t *testing.T) { fastMarkInFlight(t, false) }

// TestFastMarkInFlightAtDaemonDeathFailsClosedIPv6 is
// TestFastMarkInFlightAtDaemonDeathFailsClosed over IPv6.
func TestFastMarkInFlightAtDaemonDeathFailsClosedIPv6(t *testing.T) { fastMarkInFlight(t, true) }

// fastMarkInFlight is TestFastMarkInFlightAtDaemonDeathFailsClosed, over IPv6
// if v6.
func fastMarkInFlight(t *testing.T, v6 bool) {
	n := NewNet(t)
	server, ipt := n.ServerIP, "iptables"
	if v6 {
		server, ipt = "["+addIPv6s(t, n, 0x1b, 1)[0]+"]", "ip6tables"
	}
	// The allowed address drops SYNs: a connect to it stays on its way.
	w := fastConnectOnItsWay(t, n, server, ipt, 8327)
	d, tk, srv, cg, in := w.d, w.tk, w.srv, w.cg, w.in
	// Its SYN left with MarkFastAllow (0x30000000), and stays in SYN_SENT.
	time.Sleep(300 * time.Millisecond)
	if out, _ := n.Exec(n.Client, "ss", "-Htn", "state", "syn-sent", "dport", "= :8327"); strings.Count(out, ":8327") != 2 {
		t.Fatalf("want 2 sockets in SYN_SENT towards port 8327, ss says:\n%s", out)
	}
	killDaemon(t, n, d)
	time.Sleep(500 * time.Millisecond) // the lease lapses at once; a margin
	notConnected(t, tk, srv, fmt.Sprintf("reopen %d %s:8328", in, server), "fail-closed, daemon killed: a socket whose fast connect was on its way connected to an unruled destination")

	// A daemon started next: its lease lets its own fast connects pass.
	d2 := startFastPathDaemon(t, n, cg, "--fail", "closed")
	d2.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8328", "--action", "allow")
	// The reopened socket is still on its way to port 8328, its SYN sent again
	// 7 and 15 s after its connect. Its mark was moved at the new daemon's
	// Open (MarkFastRedecide), so that SYN is held and decided (allowed now):
	// wait for it, lest it count below as one of this daemon's own connects
	// held.
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, _ := n.Exec(n.Client, "ss", "-Htn", "state", "syn-sent", "dport", "= :8328")
		if !strings.Contains(out, ":8328") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reopened socket is still on its way to port 8328, undecided by the new daemon:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	open := func() {
		t.Helper()
		if r := tk.say(t, fmt.Sprintf("open %s:8328", server)); r.Outcome != "connected" {
			t.Fatalf("talk: connect to port 8328: %+v", r)
		}
		tk.locals = append(tk.locals, "")
	}
	open() // the queue decides, the map learns
	d2.waitFastPathEntries(t, 1)
	hits, held := d2.fastPath(t).HitsAllow, d2.held(t)
	open()
	fp := d2.fastPath(t)
	if fp.HitsAllow-hits != 1 {
		t.Fatalf("the restarted daemon's connect was no fast-path hit: %+v", fp)
	}
	// Passed by the new lease, not held (the queue would decide it the same).
	if h := d2.held(t); h != held {
		t.Errorf("the restarted daemon's fast connect was held too (%d held, was %d): its ruleset does not run its own lease", h, held)
	}
	if !fp.Lease {
		t.Errorf("the restarted daemon's ruleset does not check the lease: %s", fp.LeaseWhy)
	}
	if text := d2.MustCLI(t, "status"); !regexp.MustCompile(`(?m)^fast path lease:\s+on: `).MatchString(text) {
		t.Errorf("latch status does not say the lease is on:\n%s", text)
	}
}

// held returns the connections the daemon's backend handed to be decided
// (latch status --json: kernel.held).
func (d *Daemon) held(t *testing.T) uint64 {
	t.Helper()
	var st struct {
		Kernel struct {
			Held uint64 `json:"held"`
		} `json:"kernel"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	return st.Kernel.Held
}

// TestFastMarkInFlightNotPassedByTheNextDaemon: a socket that kept a dead
// daemon's MarkFastAllow (its SYN was on its way when the daemon was killed)
// and connected meanwhile to a destination no rule allows keeps sending its
// SYN there (TCP_SYNCNT 127). The daemon started next installs a ruleset whose
// lease holds again: that SYN must not pass by the old mark. Open moves such
// sockets to MarkFastRedecide, so the queue decides it (here: no rule, the
// default deny).
func TestFastMarkInFlightNotPassedByTheNextDaemon(t *testing.T) {
	n := NewNet(t)
	server := n.ServerIP
	w := fastConnectOnItsWay(t, n, server, "iptables", 8327)
	d, tk, srv, cg, in := w.d, w.tk, w.srv, w.cg, w.in
	killDaemon(t, n, d)
	time.Sleep(500 * time.Millisecond)
	// While no daemon runs: held by the dead daemon's ruleset (its lease lapsed).
	// The socket stays on its way to port 8328, its SYN sent again and again.
	notConnected(t, tk, srv, fmt.Sprintf("reopen %d %s:8328", in, server), "fail-closed, daemon killed: a socket whose fast connect was on its way connected to an unruled destination")

	// The next daemon, with no rule for port 8328, started once the SYN that
	// goes out again 7 seconds after the connect was dropped (an earlier
	// start would hold it while its ruleset is being installed, and refuse
	// the connection): its lease holds when the next one goes out, 15 seconds
	// after the connect.
	time.Sleep(5 * time.Second)
	d2 := startFastPathDaemon(t, n, cg, "--fail", "closed")
	if !d2.fastPath(t).Lease {
		t.Fatalf("the next daemon's ruleset does not check the lease: %+v", d2.fastPath(t))
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if a := Accepted(srv); a != 0 {
			t.Fatalf("the server accepted %d connections: the dead daemon's MarkFastAllow let a SYN to an unruled destination pass under the next daemon's lease", a)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Not by chance: the SYN went out, and the next daemon refused it.
	if out, _ := n.Exec(n.Client, "ss", "-Htn", "state", "syn-sent", "dport", "= :8328"); strings.Contains(out, ":8328") {
		t.Errorf("the socket is still on its way to port 8328, its SYN neither passed nor refused:\n%s", out)
	}
}

// onItsWay is a fast connect whose SYN is on its way (fastConnectOnItsWay).
type onItsWay struct {
	d    *Daemon
	tk   *talker
	srv  *Proc // serving port+1
	cg   string
	cgfd int
	in   int // the socket's index in tk.locals
}

// fastConnectOnItsWay drops SYNs to port in the server's namespace (ipt:
// iptables or ip6tables), serves port+1 at server there, starts a fast-path
// daemon (fail-closed) with a rule allowing helperBin to port, and has a
// socket's connect to port decided by the fast path (a hit; the queue decided
// an earlier one): it stays on its way, in SYN_SENT, its SYN sent with
// MarkFastAllow.
func fastConnectOnItsWay(t *testing.T, n *Net, server, ipt string, port int) onItsWay {
	t.Helper()
	if out, err := n.Exec(n.Server, ipt, "-w", "-A", "INPUT", "-p", "tcp", "--dport", fmt.Sprint(port), "-j", "DROP"); err != nil {
		t.Fatalf("drop SYNs to port %d in the server's namespace: %v: %s", port, err, out)
	}
	w := onItsWay{srv: n.Start(n.Server, helperBin, "serve", fmt.Sprintf("%s:%d", server, port+1))}
	w.srv.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	w.cg, w.cgfd = fastPathCgroup(t)
	w.d = startFastPathDaemon(t, n, w.cg, "--fail", "closed")
	w.d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", fmt.Sprint(port), "--action", "allow")
	w.tk = startTalk(t, n, w.cgfd)
	pend := func() int {
		t.Helper()
		r := w.tk.say(t, fmt.Sprintf("pending %s:%d", server, port))
		if r.Outcome != "pending" {
			t.Fatalf("talk: a connect to port %d that stays on its way: %+v", port, r)
		}
		w.tk.locals = append(w.tk.locals, r.Local)
		return len(w.tk.locals) - 1
	}
	pend() // the queue decides, the map learns
	w.d.waitFastPathEntries(t, 1)
	hits := w.d.fastPath(t).HitsAllow
	w.in = pend()
	if fp := w.d.fastPath(t); fp.HitsAllow-hits != 1 {
		t.Fatalf("the connect was no fast-path hit: %+v", fp)
	}
	return w
}
