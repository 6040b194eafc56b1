package linux

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
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
// not held there (it passes until then, as on any flow this host opened),
// and the client's data never reaches the server.
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
	read(c, 1500*time.Millisecond)
	lines := d.linesFor(200 * time.Millisecond)
	for _, l := range lines {
		if strings.HasPrefix(l, "held in tcp ") {
			t.Errorf("the server's segment on the client's loopback connection was held as an inbound connection: %q", l)
		}
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
