package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestLoopbackRedecideReplyOpenerDecides (review16): with Config.Inbound and
// loopback held (--exempt-loopback=false), a TCP connection over loopback is
// opened by a local client, decided as its outbound connection. A rule
// change now denies that (the client's outbound connections to the port)
// while the server on the port may still take inbound ones. The server
// pushes first: on the ruleset of e731c6b its segment (conntrack direction
// reply in LATCH-OUT, as every answer over loopback is) was held as an
// inbound connection of the server's program and allowed by the server's
// inbound rules, which marked the whole flow allowed: the client's next
// segment then passed unheld, and the connection its rules deny went on.
// Over loopback the opener is always a local socket, whose next packet is
// held (6) and decided by its own outbound rules; so the server's side is
// not held as it leaves, and the client's data never reaches the server.
// The server's push is held as it arrives (LATCH-IN, review16's
// TestOutboundRedecidePeerPushes) and decided as the client's connection:
// denied, it never reaches the client (before, it passed until the
// client's next segment was decided).
func TestLoopbackRedecideReplyOpenerDecides(t *testing.T) {
	for i, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		port := 9160 + i
		t.Run(fw, func(t *testing.T) { testLoopbackRedecideReply(t, fw, port) })
	}
}

func testLoopbackRedecideReply(t *testing.T, fw string, port int) {
	needFirewall(t, fw)
	tp := newTopo(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var ln net.Listener
	if err := inNS(tp.a, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := startDaemon(t, tp, fmt.Sprintf("%d=allow,*=deny", port), "LATCH_TEST_FIREWALL="+fw,
		"LATCH_TEST_INBOUND=1", "LATCH_TEST_HOLD_LOOPBACK=1",
		fmt.Sprintf("LATCH_TEST_POLICY_AFTER=in:%d=allow,*=deny", port), "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
	defer d.stop()
	var c net.Conn
	if err := inNS(tp.a, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if l, ok := d.waitLine("held out tcp "+c.LocalAddr().String()+" "+addr, 3*time.Second); !ok {
		t.Fatalf("the loopback connect was not held as the client's outbound connection (last %q)", l)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	read := func(c net.Conn, within time.Duration) (string, error) {
		c.SetReadDeadline(time.Now().Add(within))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	if _, err := s.Write([]byte("latch-before")); err != nil {
		t.Fatal(err)
	}
	if m, err := read(c, 3*time.Second); m != "latch-before" {
		t.Fatalf("before the rule change the client read %q, %v", m, err)
	}
	redecideAfterChange(t, d, 1)
	// The server pushes first.
	if _, err := s.Write([]byte("latch-push")); err != nil {
		t.Fatal(err)
	}
	if m, _ := read(c, 1500*time.Millisecond); m != "" {
		t.Errorf("after a rule change denied the client's loopback connection, the server's push reached the client: %q", m)
	}
	lines := d.linesFor(200 * time.Millisecond)
	for _, l := range lines {
		if strings.HasPrefix(l, "held in tcp ") {
			t.Errorf("the server's segment on the client's loopback connection was held as an inbound connection: %q", l)
		}
	}
	// Held as it arrives (LATCH-IN), as the client's connection.
	if n := strings.Count(strings.Join(lines, "\n"), "held out tcp "+c.LocalAddr().String()+" "+addr); n < 1 {
		t.Errorf("the server's push after the rule change was not held as the client's outbound connection: %q", lines)
	}
	if _, err := c.Write([]byte("latch-client-after")); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("client write: %v", err)
	}
	if m, _ := read(s, 1500*time.Millisecond); strings.Contains(m, "latch-client-after") {
		t.Errorf("after a rule change denied the client's loopback connection, its data reached the server (the server's inbound allow reopened it): %q", m)
	}
	if n := strings.Count(strings.Join(d.linesFor(200*time.Millisecond), "\n"), "held out tcp "+c.LocalAddr().String()); n < 1 {
		t.Errorf("the client's segment after the rule change was not held as its outbound connection")
	}
}

// TestForwardRedecideReply (review16, the forwarded neighbour of review15):
// with Config.Forward, B opens a UDP flow to a namespace C that this host
// routes to (allowed as B's forwarded connection). A rule change denies it.
// What C sends on the flow next (conntrack direction reply in LATCH-FWD) was
// passed undecided until B's next datagram was decided, and for ever once
// that was denied (the mark stays MarkRedecide and C's datagrams keep the
// entry alive): C talked on to B over a flow the rules deny. Now it is held
// and decided as the flow it belongs to (B's forwarded connection to C: the
// same request B's next datagram makes), so a deny drops it; an allow marks
// the flow allowed again and B's next datagram passes unheld.
func TestForwardRedecideReply(t *testing.T) {
	i := 0
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		for _, deny := range []bool{true, false} {
			name := fw + "/allowed"
			if deny {
				name = fw + "/denied"
			}
			port := 9170 + i
			i++
			t.Run(name, func(t *testing.T) { testForwardRedecideReply(t, fw, deny, port) })
		}
	}
}

func testForwardRedecideReply(t *testing.T, fw string, deny bool, port int) {
	needFirewall(t, fw)
	tp := newTopo(t)
	c := addContainer(t, tp)
	after := fmt.Sprintf("%d=allow,*=deny", port)
	if deny {
		after = "*=deny"
	}
	d := startDaemonOn(t, tp, fw, fmt.Sprintf("%d=allow,*=deny", port), "LATCH_TEST_FORWARD=1",
		"LATCH_TEST_POLICY_AFTER="+after, "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
	defer d.stop()
	server := netip.AddrPortFrom(netip.MustParseAddr(addrC), uint16(port))
	client := netip.AddrPortFrom(netip.MustParseAddr(addrB), uint16(port-9170+9180))
	srv := listenUDPIn(t, c, server)
	peer := listenUDPIn(t, tp.b, client)
	held := func(lines []string) int {
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, fmt.Sprintf("held out udp %s %s ", client, server)) {
				n++
			}
		}
		return n
	}
	peer.send(t, server, "latch-hello")
	if !srv.receives("latch-hello", 3*time.Second) {
		t.Fatal("B's datagram (forwarded, allowed) did not reach C")
	}
	srv.send(t, client, "latch-answer")
	if !peer.receives("latch-answer", 2*time.Second) {
		t.Fatal("C's answer on the allowed flow did not reach B")
	}
	redecideAfterChange(t, d, 1)
	srv.send(t, client, "latch-answer-after")
	got := peer.receives("latch-answer-after", 1500*time.Millisecond)
	if n := held(d.linesFor(200 * time.Millisecond)); n != 1 {
		t.Errorf("C's answer after the rule change was held %d times as B's forwarded flow; want 1", n)
	}
	if deny {
		if got {
			t.Fatal("after a rule change denied the forwarded flow B opened, C's answer on it reached B")
		}
		peer.send(t, server, "latch-peer-denied")
		if srv.receives("latch-peer-denied", 1500*time.Millisecond) {
			t.Error("after the rule change B's datagram reached C")
		}
		srv.send(t, client, "latch-answer-again")
		if peer.receives("latch-answer-again", 1500*time.Millisecond) {
			t.Error("C's second answer after the rule change (B's datagram denied in between) reached B")
		}
		return
	}
	if !got {
		t.Fatal("after a rule change that still allows the forwarded flow, C's answer did not reach B")
	}
	peer.send(t, server, "latch-peer-after")
	if !srv.receives("latch-peer-after", 2*time.Second) {
		t.Fatal("B's datagram after the flow was allowed again did not reach C")
	}
	if n := held(d.linesFor(200 * time.Millisecond)); n != 0 {
		t.Errorf("B's datagram after the flow was allowed again was held %d times; want 0", n)
	}
}

// TestOutboundRedecidePeerPushes (review16): with Config.Inbound, a local
// program opens a UDP flow to B (allowed), then only listens; a rule change
// marks the flow. B's datagrams on it (conntrack direction reply in
// LATCH-IN) passed until the program's next datagram was held and decided,
// which a program that only receives never sends: B pushed into a flow the
// rules deny for as long as it kept the conntrack entry alive. Now LATCH-IN
// holds them too and the reader decides each as the flow (the program's
// outbound request, the tuple reversed, for the socket that receives it):
//
//   - denied: B's pushes never reach the program, each is held as the
//     program's outbound flow, and the program's own next datagram is still
//     held and denied (the flow stays marked);
//   - allowed (a rule change that still allows it): B's first push after the
//     change is held once and passes, the ones after it pass unheld (a
//     stream the rules still allow does not stall), and so does the
//     program's next datagram;
//   - denied, then allowed by a second rule change: the first push is
//     dropped, the next one, decided under the second rules, passes, and
//     the flow is allowed again.
//
// Each held packet is attributed to the program (B's by the socket that
// receives it). IPv4 and IPv6, with each firewall mechanism (iptables-nft,
// iptables-legacy, native nftables), and with the socket pin (the allow pins the flow to the
// receiving socket, whose answer then passes unheld).
func TestOutboundRedecidePeerPushes(t *testing.T) {
	type tc struct {
		fw      string
		v6, pin bool
		mode    string // "denied", "allowed", "denied-then-allowed"
	}
	var cases []tc
	for _, fw := range []string{FirewallIptablesNft, FirewallIptablesLegacy, FirewallNftables} {
		for _, v6 := range []bool{false, true} {
			for _, mode := range []string{"denied", "allowed"} {
				cases = append(cases, tc{fw: fw, v6: v6, mode: mode})
			}
		}
		cases = append(cases, tc{fw: fw, mode: "denied-then-allowed"})
	}
	cases = append(cases, tc{fw: FirewallIptablesNft, pin: true, mode: "denied"}, tc{fw: FirewallIptablesNft, pin: true, mode: "allowed"},
		tc{fw: FirewallNftables, v6: true, pin: true, mode: "allowed"})
	for i, c := range cases {
		name := fmt.Sprintf("%s/v6=%v/%s", c.fw, c.v6, c.mode)
		if c.pin {
			name += "/pin"
		}
		port := uint16(9200 + i)
		t.Run(name, func(t *testing.T) { testOutboundRedecidePeerPushes(t, c.fw, c.v6, c.pin, c.mode, port) })
	}
}

func testOutboundRedecidePeerPushes(t *testing.T, fw string, v6, pin bool, mode string, port uint16) {
	needFirewall(t, fw)
	tp := newTopo(t)
	a, bAddr := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
	if v6 {
		addSecondAddresses(t, tp)
		a, bAddr = netip.MustParseAddr(addr6A), netip.MustParseAddr(addr6B)
		time.Sleep(200 * time.Millisecond) // nodad: usable at once, but let the links settle
	}
	allow := fmt.Sprintf("%d=allow,*=deny", port)
	env := []string{"LATCH_TEST_FIREWALL=" + fw, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=procfs", "LATCH_TEST_POLICY=" + allow,
		"LATCH_TEST_REDECIDE_PORT=" + strconv.Itoa(int(port))}
	switch mode {
	case "denied":
		env = append(env, "LATCH_TEST_POLICY_AFTER=*=deny")
	case "allowed":
		env = append(env, "LATCH_TEST_POLICY_AFTER="+allow)
	case "denied-then-allowed":
		env = append(env, "LATCH_TEST_POLICY_AFTER=*=deny", "LATCH_TEST_POLICY_AFTER2="+allow)
	}
	var d *daemon
	if pin {
		d = startPinned(t, tp, 5*time.Second, env...)
	} else {
		d = startDaemonOn(t, tp, fw, allow, env...)
	}
	defer d.stop()
	server := netip.AddrPortFrom(bAddr, port)
	client := netip.AddrPortFrom(a, port+100)
	peer := listenUDPIn(t, tp.b, server)
	prog := listenUDPIn(t, tp.a, client)
	// held counts the daemon's lines deciding the program's outbound flow
	// (what either side sends on it is decided as that flow).
	heldLine := fmt.Sprintf("held out udp %s %s ", client, server)
	// Each is attributed to the program (this process: the socket that
	// sends, or that receives B's datagram).
	pid := fmt.Sprintf(" pid=%d ", os.Getpid())
	held := func() int {
		n := 0
		for _, l := range d.linesFor(200 * time.Millisecond) {
			if strings.HasPrefix(l, heldLine) {
				n++
				if !strings.Contains(l, pid) {
					t.Errorf("held as %q, want it attributed to the program (%s)", l, pid)
				}
			}
		}
		return n
	}
	prog.send(t, server, "latch-subscribe")
	if !peer.receives("latch-subscribe", 3*time.Second) {
		t.Fatal("the program's allowed datagram did not reach B")
	}
	peer.send(t, client, "latch-push-before")
	if !prog.receives("latch-push-before", 2*time.Second) {
		t.Fatal("B's answer on the allowed flow did not reach the program")
	}
	redecideAfterChange(t, d, 1)
	if mode == "allowed" {
		peer.send(t, client, "latch-push-after-0")
		if !prog.receives("latch-push-after-0", 2*time.Second) {
			t.Fatal("after a rule change that still allows the program's flow, B's push did not reach it")
		}
		if n := held(); n != 1 {
			t.Errorf("B's first push after the rule change was held %d times as the program's outbound flow; want 1", n)
		}
		for i := 1; i < 4; i++ {
			msg := fmt.Sprintf("latch-push-after-%d", i)
			peer.send(t, client, msg)
			if !prog.receives(msg, 2*time.Second) {
				t.Fatalf("B's push %d after the flow was allowed again did not reach the program", i)
			}
		}
		prog.send(t, server, "latch-answer-after")
		if !peer.receives("latch-answer-after", 2*time.Second) {
			t.Fatal("the program's datagram after the flow was allowed again did not reach B")
		}
		if n := held(); n != 0 {
			t.Errorf("after the flow was allowed again, B's pushes and the program's answer were held %d times; want 0", n)
		}
		return
	}
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("latch-push-denied-%d", i)
		peer.send(t, client, msg)
		if prog.receives(msg, time.Second) {
			t.Fatalf("after a rule change denied the program's flow to B, B's datagram %d on it reached the program (the program sent nothing since)", i)
		}
		if n := held(); n != 1 {
			t.Errorf("B's datagram %d after the rule change was held %d times as the program's outbound flow; want 1", i, n)
		}
	}
	if mode == "denied" {
		prog.send(t, server, "latch-answer-denied")
		if peer.receives("latch-answer-denied", 1500*time.Millisecond) {
			t.Error("after the rule change denied the flow, the program's datagram reached B")
		}
		if n := held(); n != 1 {
			t.Errorf("the program's datagram after the rule change was held %d times; want 1", n)
		}
		peer.send(t, client, "latch-push-denied-again")
		if prog.receives("latch-push-denied-again", time.Second) {
			t.Error("B's datagram after the program's was denied reached the program")
		}
		return
	}
	// A second rule change allows the flow again: it is not in the daemon's
	// flow table any more (the first change took it, and no allow put it
	// back), so it marks nothing; the entry is still marked.
	redecideAfterChange(t, d, 0)
	peer.send(t, client, "latch-push-allowed")
	if !prog.receives("latch-push-allowed", 2*time.Second) {
		t.Fatal("after a second rule change allowed the flow again, B's push did not reach the program")
	}
	if n := held(); n != 1 {
		t.Errorf("B's push after the second rule change was held %d times; want 1", n)
	}
	peer.send(t, client, "latch-push-allowed-2")
	if !prog.receives("latch-push-allowed-2", 2*time.Second) {
		t.Fatal("B's next push after the flow was allowed again did not reach the program")
	}
	prog.send(t, server, "latch-answer-allowed")
	if !peer.receives("latch-answer-allowed", 2*time.Second) {
		t.Fatal("the program's datagram after the flow was allowed again did not reach B")
	}
	if n := held(); n != 0 {
		t.Errorf("after the flow was allowed again, B's push and the program's datagram were held %d times; want 0", n)
	}
}

// TestForwardTCPRedecideReply is TestForwardRedecideReply for TCP: B
// connects to C through this host (allowed); a rule change marks the
// connection. C's next segment (its data) is held and decided as B's
// forwarded connection: denied, it never reaches B and C's socket is reset
// (the ruleset's reset goes to the segment's sender); allowed, it passes,
// and B's answer passes unheld.
func TestForwardTCPRedecideReply(t *testing.T) {
	for i, deny := range []bool{true, false} {
		name := "allowed"
		if deny {
			name = "denied"
		}
		port := 9185 + i
		t.Run(name, func(t *testing.T) {
			tp := newTopo(t)
			c := addContainer(t, tp)
			after := fmt.Sprintf("%d=allow,*=deny", port)
			if deny {
				after = "*=deny"
			}
			server := net.JoinHostPort(addrC, strconv.Itoa(port))
			ln := listenTCPIn(t, c, server)
			d := startDaemonOn(t, tp, FirewallIptablesNft, fmt.Sprintf("%d=allow,*=deny", port), "LATCH_TEST_FORWARD=1",
				"LATCH_TEST_POLICY_AFTER="+after, "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
			defer d.stop()
			cl, s := dialTCPFrom(t, tp.b, ln, server)
			if _, err := s.Write([]byte("latch-before")); err != nil {
				t.Fatal(err)
			}
			if m, err := readWithin(cl, 3*time.Second); m != "latch-before" {
				t.Fatalf("before the rule change B read %q, %v", m, err)
			}
			redecideAfterChange(t, d, 1)
			if _, err := s.Write([]byte("latch-after")); err != nil {
				t.Fatal(err)
			}
			m, err := readWithin(cl, 1500*time.Millisecond)
			heldLine := fmt.Sprintf("held out tcp %s %s ", cl.LocalAddr(), server)
			held := strings.Count(strings.Join(d.linesFor(200*time.Millisecond), "\n"), heldLine)
			if deny {
				if m != "" {
					t.Fatalf("after a rule change denied the forwarded connection B opened, C's data reached B: %q", m)
				}
				if held < 1 {
					t.Error("C's segment after the rule change was not held as B's forwarded connection")
				}
				if _, err := readWithin(s, 3*time.Second); !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("C's socket after its segment was denied: read error %v, want a reset", err)
				}
				return
			}
			if m != "latch-after" {
				t.Fatalf("after a rule change that still allows the connection B read %q, %v", m, err)
			}
			if held != 1 {
				t.Errorf("C's segment after the rule change was held %d times as B's forwarded connection; want 1", held)
			}
			if _, err := cl.Write([]byte("latch-peer")); err != nil {
				t.Fatal(err)
			}
			if m, err := readWithin(s, 3*time.Second); m != "latch-peer" {
				t.Fatalf("B's data after the connection was allowed again: C read %q, %v", m, err)
			}
			if n := strings.Count(strings.Join(d.linesFor(200*time.Millisecond), "\n"), heldLine); n != 0 {
				t.Errorf("B's segment after the connection was allowed again was held %d times; want 0", n)
			}
		})
	}
}

// TestOutboundTCPRedecidePeerPushes is TestOutboundRedecidePeerPushes for
// TCP (review16's neighbour): a local program connects to B (allowed) and
// only reads; a rule change marks the connection. Before, B's next segments
// (direction reply in LATCH-IN) reached the program's socket undecided and
// only the program's ACK of them was held (rule 6): denied, the ruleset's
// reset ended the socket, but what B had pushed (up to a window) was in its
// receive queue already, and the program read it. Now B's segment is held
// and decided as the program's connection, for the socket that receives it:
// denied, nothing B pushes reaches the program and B's socket is reset (the
// ruleset's reset goes to the held segment's sender); the program's own next
// segment is held and denied too (its socket is reset then). Allowed, B's
// segment is held once and passes, and the program's answer passes unheld.
func TestOutboundTCPRedecidePeerPushes(t *testing.T) {
	for i, c := range []struct {
		fw   string
		deny bool
	}{{FirewallIptablesNft, true}, {FirewallIptablesNft, false}, {FirewallIptablesLegacy, true}, {FirewallNftables, true}} {
		name := c.fw + "/allowed"
		if c.deny {
			name = c.fw + "/denied"
		}
		port := 9240 + i
		t.Run(name, func(t *testing.T) { testOutboundTCPRedecidePeerPushes(t, c.fw, c.deny, port) })
	}
}

func testOutboundTCPRedecidePeerPushes(t *testing.T, fw string, deny bool, port int) {
	needFirewall(t, fw)
	tp := newTopo(t)
	allow := fmt.Sprintf("%d=allow,*=deny", port)
	after := allow
	if deny {
		after = "*=deny"
	}
	server := net.JoinHostPort(addrB, strconv.Itoa(port))
	ln := listenTCPIn(t, tp.b, server)
	d := startDaemonOn(t, tp, fw, allow, "LATCH_TEST_INBOUND=1",
		"LATCH_TEST_POLICY_AFTER="+after, "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
	defer d.stop()
	c, s := dialTCPFrom(t, tp.a, ln, server)
	if _, err := s.Write([]byte("latch-before")); err != nil {
		t.Fatal(err)
	}
	if m, err := readWithin(c, 3*time.Second); m != "latch-before" {
		t.Fatalf("before the rule change the program read %q, %v", m, err)
	}
	redecideAfterChange(t, d, 1)
	if _, err := s.Write([]byte("latch-push")); err != nil {
		t.Fatal(err)
	}
	m, err := readWithin(c, 1500*time.Millisecond)
	heldLine := fmt.Sprintf("held out tcp %s %s ", c.LocalAddr(), server)
	held := strings.Count(strings.Join(d.linesFor(200*time.Millisecond), "\n"), heldLine)
	if deny {
		if m != "" {
			t.Fatalf("after a rule change denied the program's connection to B, B's data reached the program: %q", m)
		}
		if held < 1 {
			t.Error("B's segment after the rule change was not held as the program's connection")
		}
		if _, err := readWithin(s, 3*time.Second); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("B's socket after its segment was denied: read error %v, want a reset", err)
		}
		c.Write([]byte("latch-program-after"))
		if m, err := readWithin(c, 3*time.Second); m != "" || !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the program's socket after its own segment was denied: read %q, %v; want nothing and a reset", m, err)
		}
		return
	}
	if m != "latch-push" {
		t.Fatalf("after a rule change that still allows the connection the program read %q, %v", m, err)
	}
	if held != 1 {
		t.Errorf("B's segment after the rule change was held %d times as the program's connection; want 1", held)
	}
	if _, err := c.Write([]byte("latch-program")); err != nil {
		t.Fatal(err)
	}
	if m, err := readWithin(s, 3*time.Second); m != "latch-program" {
		t.Fatalf("the program's data after the connection was allowed again: B read %q, %v", m, err)
	}
	if n := strings.Count(strings.Join(d.linesFor(200*time.Millisecond), "\n"), heldLine); n != 0 {
		t.Errorf("after the connection was allowed again its segments were held %d times; want 0", n)
	}
}

// TestOutboundRedecidePeerPushesClosedSocket (the closed-socket neighbour
// of TestOutboundRedecidePeerPushes, as TestRedecideClosedSocketCreditedToOpener
// is for TCP): a program opens a UDP flow to B (allowed), a rule change
// marks it, and the program closes its socket. B's next datagram is held
// (LATCH-IN) and no local socket receives it: it is decided as the flow of
// the program it was allowed for (its pid in the request), not as a request
// of no program, which would ask about an unknown program for a datagram
// no program gets.
func TestOutboundRedecidePeerPushesClosedSocket(t *testing.T) {
	for i, v6 := range []bool{false, true} {
		port := uint16(9250 + i)
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			tp := newTopo(t)
			a, bAddr := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
			if v6 {
				addSecondAddresses(t, tp)
				a, bAddr = netip.MustParseAddr(addr6A), netip.MustParseAddr(addr6B)
				time.Sleep(200 * time.Millisecond)
			}
			allow := fmt.Sprintf("%d=allow,*=deny", port)
			d := startDaemon(t, tp, allow, "LATCH_TEST_INBOUND=1", "LATCH_TEST_ATTRIBUTE=procfs", "LATCH_TEST_POLICY_AFTER="+allow,
				"LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(int(port)))
			defer d.stop()
			server := netip.AddrPortFrom(bAddr, port)
			client := netip.AddrPortFrom(a, port+100)
			peer := listenUDPIn(t, tp.b, server)
			prog := listenUDPIn(t, tp.a, client)
			heldLine := fmt.Sprintf("held out udp %s %s ", client, server)
			prog.send(t, server, "latch-subscribe")
			if !peer.receives("latch-subscribe", 3*time.Second) {
				t.Fatal("the program's allowed datagram did not reach B")
			}
			first := ""
			for _, l := range d.linesFor(200 * time.Millisecond) {
				if strings.HasPrefix(l, heldLine) {
					first = l
				}
			}
			pid := fmt.Sprintf(" pid=%d ", os.Getpid())
			if !strings.Contains(first, pid) {
				t.Fatalf("the program's first datagram was held as %q, want it attributed to this process (%s)", first, pid)
			}
			redecideAfterChange(t, d, 1)
			prog.c.Close()
			peer.send(t, client, "latch-push-closed")
			var held []string
			for _, l := range d.linesFor(time.Second) {
				if strings.HasPrefix(l, heldLine) {
					held = append(held, l)
				}
			}
			if len(held) != 1 {
				t.Fatalf("B's datagram to the closed socket was held %d times as the program's flow: %q; want 1", len(held), held)
			}
			if !strings.Contains(held[0], pid) {
				t.Errorf("B's datagram to the closed socket was held as %q; want it decided as the flow of the program it was allowed for (%s)", held[0], pid)
			}
		})
	}
}

// TestNftOutboundRedecidePeerPushRuleMatches runs the native nftables
// ruleset's input chain rule of TestOutboundRedecidePeerPushes on the real
// kernel, where it cannot queue from nftables: each queue statement becomes
// "counter drop" (held and never answered). A helper chain before latch's
// gives the program's datagrams to B the conntrack mark MarkAllow (as an
// allow verdict would); B's answer passes. With the flow's mark MarkRedecide
// (a rule change), B's next datagram is taken by the rule (counted) and
// never reaches the program; with MarkAllow again it passes. IPv4 and IPv6.
func TestNftOutboundRedecidePeerPushRuleMatches(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	for i, v6 := range []bool{false, true} {
		port := uint16(9260 + i)
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			tp := newTopo(t)
			a, bAddr := netip.MustParseAddr(addrA), netip.MustParseAddr(addrB)
			fam := netlink.InetFamily(unix.AF_INET)
			if v6 {
				addSecondAddresses(t, tp)
				a, bAddr = netip.MustParseAddr(addr6A), netip.MustParseAddr(addr6B)
				fam = unix.AF_INET6
				time.Sleep(200 * time.Millisecond)
			}
			spec := ruleSpec{queue: testQueue, exemptLoopback: true, inbound: true}
			rules := regexp.MustCompile(`queue num \d+( bypass)?`).ReplaceAllString(spec.nftRules(), "counter drop")
			rules += "add table inet latchtest\n" +
				"add chain inet latchtest out { type filter hook output priority filter - 2; policy accept; }\n" +
				fmt.Sprintf("add rule inet latchtest out udp dport %d ct mark set %#x\n", port, MarkAllow)
			load := exec.Command("ip", "netns", "exec", tp.a, "nft", "-f", "-")
			load.Stdin = strings.NewReader(rules)
			if out, err := load.CombinedOutput(); err != nil {
				t.Fatalf("nft -f: %v: %s\n%s", err, out, rules)
			}
			server := netip.AddrPortFrom(bAddr, port)
			client := netip.AddrPortFrom(a, port+100)
			peer := listenUDPIn(t, tp.b, server)
			prog := listenUDPIn(t, tp.a, client)
			prog.send(t, server, "latch-subscribe")
			if !peer.receives("latch-subscribe", 3*time.Second) {
				t.Fatal("the program's datagram (its flow marked allowed) did not reach B")
			}
			peer.send(t, client, "latch-push-before")
			if !prog.receives("latch-push-before", 2*time.Second) {
				t.Fatal("B's answer on the allowed flow did not reach the program")
			}
			mark := func(m uint32) {
				t.Helper()
				tuple := netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: a.AsSlice(), DstIP: bAddr.AsSlice(), SrcPort: client.Port(), DstPort: server.Port()}
				if err := inNS(tp.a, func() error { return setConntrackMark(fam, tuple, m, MarkMask) }); err != nil {
					t.Fatalf("mark the flow %#x: %v", m, err)
				}
			}
			counted := func() bool {
				out, err := exec.Command("ip", "netns", "exec", tp.a, "nft", "list", "chain", "inet", nftTable, "input").CombinedOutput()
				if err != nil {
					t.Fatalf("nft list: %v: %s", err, out)
				}
				return regexp.MustCompile(`ct direction reply ct mark & 0x50000000 == 0x10000000 meta mark set [^\n]* counter packets [1-9]`).Match(out)
			}
			mark(MarkRedecide)
			peer.send(t, client, "latch-push-marked")
			if prog.receives("latch-push-marked", time.Second) {
				t.Error("nftables: B's datagram on the program's flow marked MarkRedecide passed the input chain")
			}
			if !counted() {
				out, _ := exec.Command("ip", "netns", "exec", tp.a, "nft", "list", "chain", "inet", nftTable, "input").CombinedOutput()
				t.Errorf("the input chain's rule for the peer's side of a marked flow did not take B's datagram:\n%s", out)
			}
			mark(MarkAllow)
			peer.send(t, client, "latch-push-allowed")
			if !prog.receives("latch-push-allowed", 2*time.Second) {
				t.Error("nftables: B's datagram on the flow marked allowed again did not reach the program")
			}
		})
	}
}

// listenTCPIn listens on server (IPv4) in namespace ns, until the test ends.
func listenTCPIn(t *testing.T, ns, server string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := inNS(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", server)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialTCPFrom connects from namespace ns to ln at server and returns both
// ends, the client's and the accepted one, closed when the test ends.
func dialTCPFrom(t *testing.T, ns string, ln net.Listener, server string) (client, accepted net.Conn) {
	t.Helper()
	if err := inNS(ns, func() error {
		var err error
		client, err = net.DialTimeout("tcp4", server, 3*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return client, accepted
}

// readWithin is what c receives within d (one read of up to 64 bytes).
func readWithin(c net.Conn, d time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}
