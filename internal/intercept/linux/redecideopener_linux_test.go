package linux

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestRedecideClosedSocketCreditedToOpener: a TCP connection this host's program
// opened and closed, a rule change that decides it again, and then the peer's
// FIN: the kernel's ACK of it (the socket in TIME_WAIT, no program's) is held,
// and is decided as the program's flow, with its pid and executable, not as a
// packet of no program (which the daemon asked about as an unknown program: the
// web UI's browser test saw that question once its answer's rule came after
// the connection closed).
func TestRedecideClosedSocketCreditedToOpener(t *testing.T) {
	tp := newTopo(t)
	const port = 9106
	var ln net.Listener
	if err := inNS(tp.b, func() error {
		var err error
		ln, err = net.Listen("tcp4", net.JoinHostPort(addrB, strconv.Itoa(port)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_ATTRIBUTE=procfs", "LATCH_TEST_REDECIDE_PORT="+strconv.Itoa(port))
	defer d.stop()
	var c net.Conn
	if err := inNS(tp.a, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", net.JoinHostPort(addrB, strconv.Itoa(port)), 3*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	held := fmt.Sprintf("held out tcp %s %s:%d ", c.LocalAddr(), addrB, port)
	l, ok := d.waitLine(held, 3*time.Second)
	if !ok {
		t.Fatal("the SYN was not held")
	}
	opener := fmt.Sprintf(" pid=%d exe=%s", os.Getpid(), exe)
	if !strings.HasSuffix(l, opener) {
		t.Fatalf("the SYN was held as %q, want it attributed to this test (%q)", l, opener)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The program closes its end: its socket has no owner from now on.
	c.Close()
	s.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := s.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("the server read %d, %v; want the client's FIN", n, err)
	}
	d.drain()
	if err := d.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if l, ok := d.waitLine("redecided ", 5*time.Second); !ok || !strings.HasPrefix(l, "redecided 1 ") {
		t.Fatalf("Redecide: %q, want 1 conntrack entry marked", l)
	}
	// The peer's FIN: the closed socket's ACK is the flow's next packet.
	s.Close()
	l, ok = d.waitLine(held, 3*time.Second)
	if !ok {
		t.Fatal("the ACK of the closed socket was not held after the rule change")
	}
	if !strings.HasSuffix(l, opener) {
		t.Errorf("the closed socket's ACK was held as %q; want it credited to the program that opened the flow (%q)", l, opener)
	}
}

// TestOpenerForgottenWhenTupleAllowedAgain: once a new flow on a redecided
// flow's tuple is allowed (another program's connection from the same port),
// what Backend.redecided knew of the tuple is gone: a later packet of the tuple
// with no program is not credited to the earlier flow's program.
func TestOpenerForgottenWhenTupleAllowedAgain(t *testing.T) {
	b := &Backend{flows: newFlowTable(100, time.Hour), redecided: newFlowTable(100, redecidedTTL)}
	local, remote := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:443")
	x := &engine.Request{ID: 1, Direction: engine.Outbound, Protocol: engine.TCP, Local: local, Remote: remote, PID: 100, Exe: "/usr/bin/x", UID: 1000}
	now := time.Now()
	b.rememberFlow(x, now, false)
	for _, req := range b.flows.take(func(*engine.Request) bool { return true }, now) {
		b.redecided.add(req, now)
	}
	b.redecidedUntil.Store(now.Add(redecidedTTL).UnixNano())
	known := func() *engine.Request {
		req, _ := b.redecided.getEnd(keyOf(x))
		return req
	}
	if known() != x {
		t.Fatal("the redecided flow is not remembered")
	}
	m := &engine.Request{ID: 2, Direction: engine.Outbound, Protocol: engine.TCP, Local: local, Remote: remote, PID: 200, Exe: "/usr/bin/m", UID: 1001}
	b.rememberFlow(m, now.Add(time.Second), false)
	if r := known(); r != nil {
		t.Errorf("after m's flow on the tuple was allowed, the redecided flow of %q is still remembered", r.Exe)
	}
}
