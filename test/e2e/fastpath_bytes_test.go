//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/test/nettest"
)

// fastPathRow waits (up to 10 s) for the history row of the connection to port
// that process pid made and that the fast path decided, and returns it; nil if
// there is none (that connection missed the map and the queue decided it: each
// `ip netns exec` can show the executable through a mount of its own, another key).
func fastPathRow(t *testing.T, d *Daemon, port, pid int) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var row, other map[string]any
		for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "1000")) {
			if int(num(c["remote_port"])) != port || int(num(c["pid"])) != pid {
				continue
			}
			if c["reason"] == "fast-path" {
				row = c
			} else {
				other = c
			}
		}
		if row != nil {
			return row
		}
		if other != nil || time.Now().After(deadline) {
			t.Logf("no fast-path row for pid %d to port %d; its row: %v", pid, port, other)
			return nil
		}
	}
}

// waitBytes polls the history row of the connection to port that process pid made
// (decided by the fast path) until its bytes_out reaches want, for at most wait
// after start, and returns it.
func waitBytes(t *testing.T, d *Daemon, port, pid int, want float64, start time.Time, wait time.Duration) map[string]any {
	t.Helper()
	for {
		row := fastPathRow(t, d, port, pid)
		if row != nil && num(row["bytes_out"]) >= want {
			t.Logf("row %v after %v", row, time.Since(start))
			return row
		}
		if time.Since(start) > wait {
			t.Fatalf("%v after the transfer the fast path's row is %v; want bytes_out >= %.0f", wait, row, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// localPort is the port of e2ehelper's "local" address.
func localPort(t *testing.T, local string) int {
	t.Helper()
	ap, err := netip.ParseAddrPort(local)
	if err != nil {
		t.Fatalf("e2ehelper's local address %q: %v", local, err)
	}
	return int(ap.Port())
}

// fastPathAllowTCP adds a rule allowing helperBin's TCP connections to port, and
// has the queue decide one, so that the fast path's map learns it.
func fastPathAllowTCP(t *testing.T, n *Net, d *Daemon, cgfd int, port string) {
	t.Helper()
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--port", port, "--action", "allow")
	results(t, n.inCgroup(t, cgfd, helperBin, "connects", n.ServerIP+":"+port, "1", "10s"))
	d.waitFastPathEntries(t, 1)
}

// TestFastPathBytesPerConnection: a connection the kernel's fast path decided has
// its bytes counted like one the queue decided. 1,000,000 bytes sent over it show
// as bytes_out >= 1,000,000 on its history row (reason fast-path, with the local
// port) within 2 s of the close, with the default --traffic-interval (10 s): the
// end of a connection shorter than the ring buffer's read delay counts too.
func TestFastPathBytesPerConnection(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8335)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg)
	if st := d.MustCLI(t, "status", "--json"); !strings.Contains(st, `"tcp_local":true`) {
		t.Fatalf("status does not say TCP decisions carry the local port:\n%s", st)
	}
	fastPathAllowTCP(t, n, d, cgfd, "8335")

	const size = 1_000_000
	var row map[string]any
	var r Result
	var closed time.Time
	// A connect can still miss (the map's entry is stored just after the queue's
	// verdict): the test needs one the kernel decided.
	for try := 0; try < 3 && row == nil; try++ {
		r = results(t, n.inCgroup(t, cgfd, helperBin, "send", n.ServerIP+":8335", fmt.Sprint(size), "10s"))[0]
		closed = time.Now()
		if r.Outcome != "connected" {
			t.Fatalf("send: %+v", r)
		}
		row = fastPathRow(t, d, 8335, r.PID)
	}
	if row == nil {
		t.Fatal("three connections in a row were not decided by the fast path")
	}
	row = waitBytes(t, d, 8335, r.PID, size, closed, 2*time.Second)
	if lp := localPort(t, r.Local); int(num(row["local_port"])) != lp || row["local_ip"] != n.ClientIP {
		t.Errorf("row %v: want local %s:%d", row, n.ClientIP, lp)
	}
	if num(row["bytes_in"]) <= 0 || row["exe"] != helperBin || row["verdict"] != "allow" {
		t.Errorf("row %v: want the bytes received, exe %s, verdict allow", row, helperBin)
	}
	// latch top counts them for the program (the queue's connection sent nothing).
	top := JSONLines(t, d.MustCLI(t, "top", "--json", "--range", "10m"))
	if len(top) == 0 || top[0]["exe"] != helperBin || num(top[0]["bytes_out"]) < size {
		t.Errorf("top --json: %v; want %s first with bytes_out >= %d", top, helperBin, size)
	}

}

// TestFastPathBytesAlongTheWay: a long transfer decided in the kernel: its row's
// bytes_out grows while it runs (--traffic-interval 1s), and has the whole at the
// end.
func TestFastPathBytesAlongTheWay(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8336)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg, "--traffic-interval", "1s")
	fastPathAllowTCP(t, n, d, cgfd, "8336")
	const slow, span = 4_000_000, 4 * time.Second
	type sent struct {
		out string
		err error
	}
	var seen []float64 // bytes_out of the fast path's row, each time it changed
	var closed time.Time
	var r Result
	// A connect can still miss (as in TestFastPathBytesPerConnection): the
	// test needs a transfer the kernel decided; a miss is logged with the
	// fast path's counters.
	for try := 0; ; try++ {
		done := make(chan sent, 1)
		cmd := nettest.Command(n.Client, helperBin, "send-slow", n.ServerIP+":8336", fmt.Sprint(slow), span.String())
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
		go func() {
			out, err := cmd.CombinedOutput()
			done <- sent{string(out), err}
		}()
		seen = seen[:0]
		var res sent
		deadline := time.After(span + 20*time.Second)
	poll:
		for {
			select {
			case res = <-done:
				break poll
			case <-deadline:
				t.Fatal("the transfer did not finish")
			case <-time.After(250 * time.Millisecond):
			}
			for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "100")) {
				if int(num(c["remote_port"])) == 8336 && c["reason"] == "fast-path" {
					if b := num(c["bytes_out"]); b > 0 && (len(seen) == 0 || b != seen[len(seen)-1]) {
						seen = append(seen, b)
					}
				}
			}
		}
		closed = time.Now()
		if res.err != nil {
			t.Fatalf("send-slow: %v\n%s", res.err, res.out)
		}
		r = results(t, res.out)[0]
		if r.Outcome != "connected" {
			t.Fatalf("send-slow: %+v", r)
		}
		if fastPathRow(t, d, 8336, r.PID) != nil {
			break
		}
		t.Logf("try %d: the long transfer's connection missed the fast path (the queue decided it), though the map had learned its verdict; fast path: %+v", try+1, d.fastPath(t))
		if try == 2 {
			t.Fatal("three transfers in a row were not decided by the fast path")
		}
	}
	t.Logf("bytes_out along the way: %v", seen)
	if len(seen) < 2 || seen[0] >= slow {
		t.Errorf("bytes_out of a %v transfer decided in the kernel, as it ran: %v; want at least 2 reports before the whole", span, seen)
	}
	waitBytes(t, d, 8336, r.PID, slow, closed, 2*time.Second)
}

// TestFastPathBytesUDP: a UDP flow whose first datagram the kernel's fast path
// decided has its bytes counted: several datagrams of one flow show as bytes_out on
// its history row (reason fast-path, with the local port).
func TestFastPathBytesUDP(t *testing.T) {
	n := NewNet(t)
	n.ServeUDP(t, 8337)
	cg, cgfd := fastPathCgroup(t)
	d := startFastPathDaemon(t, n, cg, "--traffic-interval", "1s")
	if u := d.fastPathUDP(t); !u.UDP {
		t.Fatalf("the fast path does not serve UDP: %s", u.UDPWhy)
	}
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "udp", "--port", "8337", "--action", "allow")
	say := udpClientLines(t, n, cgfd, n.ServerIP+":8337")
	if r := say("connected"); r.Outcome != "connected" { // the queue decides; the map learns
		t.Fatalf("first exchange: %+v", r)
	}
	d.waitFastPathEntries(t, 1)
	// 10 datagrams of 1000 bytes of data, each with its IP and UDP headers.
	const want = 10 * 1000
	var r Result
	var row map[string]any
	var sentAt time.Time
	for try := 0; try < 3; try++ {
		if r = say("burst"); r.Outcome != "connected" {
			t.Fatalf("burst: %+v", r)
		}
		sentAt = time.Now()
		lp := localPort(t, r.Local)
		for deadline := time.Now().Add(10 * time.Second); row == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			var queued bool
			for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "1000")) {
				if int(num(c["remote_port"])) != 8337 || c["proto"] != "udp" {
					continue
				}
				switch {
				case c["reason"] == "fast-path" && int(num(c["local_port"])) == lp:
					row = c
				case c["reason"] != "fast-path" && int(num(c["local_port"])) == lp:
					queued = true // this flow missed the map
				}
			}
			if queued {
				break
			}
		}
		if row != nil {
			break
		}
	}
	if row == nil {
		t.Fatalf("no fast-path row with the burst's local port %s:\n%s", r.Local, d.MustCLI(t, "conns"))
	}
	// UDP has no close: the flow's bytes come with the periodic reads (every
	// --traffic-interval), the first within two intervals (and a margin for a
	// loaded machine).
	lp := int(num(row["local_port"]))
	for {
		row = nil
		for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "1000")) {
			if int(num(c["remote_port"])) == 8337 && c["reason"] == "fast-path" && int(num(c["local_port"])) == lp {
				row = c
			}
		}
		if row != nil && num(row["bytes_out"]) >= want && num(row["bytes_in"]) >= want {
			break
		}
		if time.Since(sentAt) > 5*time.Second {
			t.Fatalf("5 s after the burst its fast-path row is %v; want bytes_out and bytes_in >= %d", row, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("row %v after %v", row, time.Since(sentAt))
	if row["local_ip"] != n.ClientIP || row["exe"] != helperBin || int(num(row["pid"])) != r.PID {
		t.Errorf("row %v: want local ip %s, exe %s, pid %d", row, n.ClientIP, helperBin, r.PID)
	}
}

// TestFastPathBytesAtTheirEnd: with the fast path's hooks on every process (the
// root cgroup, the default), the kernel reports the end of each TCP socket, and
// byte accounting reads no conntrack update events (status says both). A
// connection decided in the kernel that closes with FIN, and one that closes with a
// reset, have their bytes on their history row within 2 s of the close (the table
// is read every 10 s).
func TestFastPathBytesAtTheirEnd(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8338)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "2s")
	st := d.MustCLI(t, "status", "--json")
	if !strings.Contains(st, `"tcp_ends":true`) || !strings.Contains(st, `"traffic_update_events":0`) || !strings.Contains(st, `"tcp_end_bytes":true`) {
		t.Fatalf("status does not say socket ends (with their bytes) are on and conntrack update events off:\n%s", st)
	}
	if text := d.MustCLI(t, "status"); !strings.Contains(text, "fast path ends") || !strings.Contains(text, "reads no conntrack update events") ||
		!strings.Contains(text, "fast path end bytes") || !strings.Contains(text, "sends them with its end") {
		t.Errorf("status text does not say where flow ends and their bytes come from:\n%s", text)
	}
	// The sockets' live counts, for flows conntrack does not list.
	if !strings.Contains(st, `"tcp_live_bytes":true`) || !strings.Contains(st, `"tcp_live_bytes_via":"`) {
		t.Errorf("status does not say live socket counts are on:\n%s", st)
	}
	if text := d.MustCLI(t, "status"); !strings.Contains(text, "fast path live bytes") || !strings.Contains(text, "reads the live counts") {
		t.Errorf("status text does not say live socket counts are on:\n%s", text)
	}
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--port", "8338", "--action", "allow")
	if out, err := n.Exec(n.Client, helperBin, "connects", n.ServerIP+":8338", "1", "10s"); err != nil {
		t.Fatalf("connects: %v\n%s", err, out)
	}
	d.waitFastPathEntries(t, 1)
	const size = 300_000
	for _, verb := range []string{"send", "send-reset"} {
		t.Run(verb, func(t *testing.T) {
			var row map[string]any
			var r Result
			var closed time.Time
			// A connect can miss (another mount of the executable: another key);
			// the test needs one the kernel decided.
			for try := 0; try < 3 && row == nil; try++ {
				out, err := n.Exec(n.Client, helperBin, verb, n.ServerIP+":8338", fmt.Sprint(size), "10s")
				closed = time.Now()
				if err != nil {
					t.Fatalf("%s: %v\n%s", verb, err, out)
				}
				r = results(t, out)[0]
				if r.Outcome != "connected" {
					t.Fatalf("%s: %+v", verb, r)
				}
				row = fastPathRow(t, d, 8338, r.PID)
			}
			if row == nil {
				t.Fatal("three connections in a row were not decided by the fast path")
			}
			row = waitBytes(t, d, 8338, r.PID, size, closed, 2*time.Second)
			if lp := localPort(t, r.Local); int(num(row["local_port"])) != lp {
				t.Errorf("row %v: want local port %d", row, lp)
			}
		})
	}
}
