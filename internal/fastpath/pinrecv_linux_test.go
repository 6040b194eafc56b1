package fastpath

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// udpOn binds a UDP socket (SO_REUSEADDR) to addr (port 0: any), with a
// receive timeout of 300 ms; closed at the test's end. It returns the socket
// and its port.
func udpOn(t *testing.T, addr netip.AddrPort) (int, uint16) {
	t.Helper()
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	if addr.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval(int64(300 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return fd, uint16(a.Port)
	case *unix.SockaddrInet6:
		return fd, uint16(a.Port)
	}
	t.Fatalf("bound to %v", got)
	return 0, 0
}

// cookieOf is the socket's cookie (SO_COOKIE).
func cookieOf(t *testing.T, fd int) uint64 {
	t.Helper()
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pinKeyBytes is struct fp_pin_key of a flow this host sends from local to
// remote (UDP).
func pinKeyBytes(local, remote netip.AddrPort) []byte {
	k := make([]byte, 40)
	k[0], k[1] = 4, 17
	if local.Addr().Is6() {
		k[0] = 6
	}
	binary.BigEndian.PutUint16(k[2:], local.Port())
	binary.BigEndian.PutUint16(k[4:], remote.Port())
	if local.Addr().Is4() {
		a, b := local.Addr().As4(), remote.Addr().As4()
		copy(k[8:], a[:])
		copy(k[24:], b[:])
	} else {
		a, b := local.Addr().As16(), remote.Addr().As16()
		copy(k[8:], a[:])
		copy(k[24:], b[:])
	}
	return k
}

// TestReceiveCheck: the socket pin's receive check on real sockets
// (loopback, IPv4 and IPv6). Two sockets share a port (SO_REUSEADDR); the
// kernel gives a peer's datagram to the last bound. With the flow pinned to
// the first, the datagram is dropped (not received by the last bound) and
// reported (ReadPinMoves: the flow, the receiving and the pinned socket);
// pinned to the last bound, it is received; pinned to no socket yet
// (PIN_ANY) it is received and the receiving socket claims the flow. A flow
// without a pin passes. The counters in Stats follow.
func TestReceiveCheck(t *testing.T) {
	sp, err := OpenSocketPin(filepath.Join(t.TempDir(), "bpf"))
	if err != nil {
		t.Skipf("cannot load the socket pin: %v", err)
	}
	defer sp.Close()
	if st := sp.Stats(); !st.SocketPinReceive {
		t.Fatalf("the receive check is off: %s", st.SocketPinReceiveWhy)
	}
	ids, _ := func() ([]ebpf.MapID, bool) { info, _ := sp.prog.Info(); return info.MapIDs() }()
	if len(ids) != 1 {
		t.Fatalf("the pin program has %d maps, want 1", len(ids))
	}
	pins, err := ebpf.NewMapFromID(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer pins.Close()
	moves := make(chan PinMove, 16)
	go sp.ReadPinMoves(func(m PinMove) { moves <- m })
	for _, lo := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		t.Run(lo.String(), func(t *testing.T) {
			first, port := udpOn(t, netip.AddrPortFrom(lo, 0))
			last, _ := udpOn(t, netip.AddrPortFrom(lo, port))
			peer, peerPort := udpOn(t, netip.AddrPortFrom(lo, 0))
			local, remote := netip.AddrPortFrom(lo, port), netip.AddrPortFrom(lo, peerPort)
			var to unix.Sockaddr = &unix.SockaddrInet6{Port: int(port), Addr: lo.As16()}
			if lo.Is4() {
				to = &unix.SockaddrInet4{Port: int(port), Addr: lo.As4()}
			}
			send := func(msg string) {
				t.Helper()
				if err := unix.Sendto(peer, []byte(msg), 0, to); err != nil {
					t.Fatal(err)
				}
			}
			recv := func(fd int) string {
				buf := make([]byte, 64)
				n, _, err := unix.Recvfrom(fd, buf, 0)
				if err != nil {
					return ""
				}
				return string(buf[:n])
			}
			pin := func(c uint64) {
				t.Helper()
				if err := pins.Put(pinKeyBytes(local, remote), c); err != nil {
					t.Fatal(err)
				}
			}
			before := sp.Stats()
			send("unpinned")
			if got := recv(last); got != "unpinned" {
				t.Fatalf("a datagram of a flow without a pin: the last bound socket got %q", got)
			}
			pin(cookieOf(t, first))
			send("pinned-to-first")
			if got := recv(last); got != "" {
				t.Errorf("the last bound socket received %q of a flow pinned to the first", got)
			}
			select {
			case m := <-moves:
				want := PinMove{Protocol: 17, Local: local, Remote: remote, Cookie: cookieOf(t, last), Pinned: cookieOf(t, first)}
				if m != want {
					t.Errorf("reported %+v, want %+v", m, want)
				}
			case <-time.After(2 * time.Second):
				t.Errorf("the dropped datagram was not reported")
			}
			if st := sp.Stats(); st.SocketPinReceiveDropped != before.SocketPinReceiveDropped+1 {
				t.Errorf("dropped counter %d, want %d", st.SocketPinReceiveDropped, before.SocketPinReceiveDropped+1)
			}
			pin(cookieOf(t, last))
			send("pinned-to-last")
			if got := recv(last); got != "pinned-to-last" {
				t.Errorf("the socket the flow is pinned to got %q", got)
			}
			pin(^uint64(0))
			send("pinned-to-none")
			if got := recv(last); got != "pinned-to-none" {
				t.Errorf("the first socket to receive on a flow pinned to no socket yet got %q", got)
			}
			var c uint64
			if err := pins.Lookup(pinKeyBytes(local, remote), &c); err != nil || c != cookieOf(t, last) {
				t.Errorf("after the first receive the flow is pinned to %d (%v), want the receiving socket's %d", c, err, cookieOf(t, last))
			}
		})
	}
}

// BenchmarkReceiveCheck: what the receive check costs a datagram a local
// socket receives on a pinned flow (its own socket: the datagram passes), on
// loopback. ns/check is the program's own run time per run (the kernel's
// statistics, kernel.bpf_stats_enabled, turned on for the benchmark);
// ns/datagram is a send and a receive, with the check attached ("on") or
// not ("off": the baseline, measured in the same run, alternating).
func BenchmarkReceiveCheck(b *testing.B) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("enable BPF run time statistics: %v", err)
	}
	defer stats.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	for round := range 6 {
		for _, on := range []bool{false, true} {
			name := map[bool]string{false: "off", true: "on"}[on]
			b.Run(name+"/"+string(rune('0'+round)), func(b *testing.B) {
				var off []string
				if !on {
					off = append(off, "benchmark baseline")
				}
				sp, err := OpenSocketPin(filepath.Join(b.TempDir(), "bpf"), off...)
				if err != nil {
					b.Skipf("cannot load the socket pin: %v", err)
				}
				defer sp.Close()
				rx, port := udpOnB(b, netip.AddrPortFrom(lo, 0))
				tx, txPort := udpOnB(b, netip.AddrPortFrom(lo, 0))
				info, _ := sp.prog.Info()
				ids, _ := info.MapIDs()
				pins, err := ebpf.NewMapFromID(ids[0])
				if err != nil {
					b.Fatal(err)
				}
				defer pins.Close()
				c, _ := unix.GetsockoptUint64(rx, unix.SOL_SOCKET, unix.SO_COOKIE)
				if err := pins.Put(pinKeyBytes(netip.AddrPortFrom(lo, port), netip.AddrPortFrom(lo, txPort)), c); err != nil {
					b.Fatal(err)
				}
				to := &unix.SockaddrInet4{Port: int(port), Addr: lo.As4()}
				msg, buf := make([]byte, 64), make([]byte, 64)
				var before *ebpf.ProgramStats
				if on {
					if before, err = sp.ingress.Stats(); err != nil {
						b.Fatal(err)
					}
				}
				b.ResetTimer()
				for range b.N {
					if err := unix.Sendto(tx, msg, 0, to); err != nil {
						b.Fatal(err)
					}
					if _, _, err := unix.Recvfrom(rx, buf, 0); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/datagram")
				if on {
					after, err := sp.ingress.Stats()
					if err != nil {
						b.Fatal(err)
					}
					if n := after.RunCount - before.RunCount; n > 0 {
						b.ReportMetric(float64((after.Runtime-before.Runtime).Nanoseconds())/float64(n), "ns/check")
					}
				}
			})
		}
	}
}

// udpOnB is udpOn for a benchmark (no receive timeout).
func udpOnB(b *testing.B, addr netip.AddrPort) (int, uint16) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
		b.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		b.Fatal(err)
	}
	return fd, uint16(sa.(*unix.SockaddrInet4).Port)
}

// TestReceiveCheckReuseportSteered: a reuseport group's BPF program (here a
// classic one that any member may attach, SO_ATTACH_REUSEPORT_CBPF, steering
// every datagram to the group's first socket) chooses the receiving socket
// by the packet, which a lookup of the tuple (the daemon's) does not see.
// The receive check compares the socket actually chosen: a datagram of a
// flow pinned to the group's second socket, steered to the first, is
// dropped and reported; pinned to the first, it is received.
func TestReceiveCheckReuseportSteered(t *testing.T) {
	sp, err := OpenSocketPin(filepath.Join(t.TempDir(), "bpf"))
	if err != nil {
		t.Skipf("cannot load the socket pin: %v", err)
	}
	defer sp.Close()
	if st := sp.Stats(); !st.SocketPinReceive {
		t.Fatalf("the receive check is off: %s", st.SocketPinReceiveWhy)
	}
	info, err := sp.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	pins, err := ebpf.NewMapFromID(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer pins.Close()
	moves := make(chan PinMove, 16)
	go sp.ReadPinMoves(func(m PinMove) { moves <- m })
	lo := netip.MustParseAddr("127.0.0.1")
	group := func(port int) (int, uint16) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		tv := unix.NsecToTimeval(int64(300 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: lo.As4()}); err != nil {
			t.Fatal(err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			t.Fatal(err)
		}
		return fd, uint16(sa.(*unix.SockaddrInet4).Port)
	}
	first, port := group(0)
	second, _ := group(int(port))
	// ret #0: the group's socket 0, the first bound.
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	if err := unix.SetsockoptSockFprog(second, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &unix.SockFprog{Len: 1, Filter: &prog[0]}); err != nil {
		t.Skipf("attach a reuseport program: %v", err)
	}
	peer, peerPort := udpOn(t, netip.AddrPortFrom(lo, 0))
	local, remote := netip.AddrPortFrom(lo, port), netip.AddrPortFrom(lo, peerPort)
	to := &unix.SockaddrInet4{Port: int(port), Addr: lo.As4()}
	recv := func(fd int) string {
		buf := make([]byte, 64)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	if err := pins.Put(pinKeyBytes(local, remote), cookieOf(t, second)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendto(peer, []byte("steered"), 0, to); err != nil {
		t.Fatal(err)
	}
	if got := recv(first); got != "" {
		t.Errorf("the socket the reuseport program steered to received %q of a flow pinned to the other", got)
	}
	select {
	case m := <-moves:
		if m.Cookie != cookieOf(t, first) || m.Pinned != cookieOf(t, second) {
			t.Errorf("reported %+v, want the steered-to socket %d and the pinned %d", m, cookieOf(t, first), cookieOf(t, second))
		}
	case <-time.After(2 * time.Second):
		t.Errorf("the dropped datagram was not reported")
	}
	if err := pins.Put(pinKeyBytes(local, remote), cookieOf(t, first)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendto(peer, []byte("steered-pinned"), 0, to); err != nil {
		t.Fatal(err)
	}
	if got := recv(first); got != "steered-pinned" {
		t.Errorf("the steered-to socket, which the flow is pinned to, got %q", got)
	}
}

// TestReceiveCheckReportsOncePerFlow (review19): the receive check reports a
// flow's drops at most once a second per flow, whichever socket received
// them. Its rate limit was per flow and socket, and remembered one socket
// per flow: a reuseport group's classic program (which any member may
// attach) steering a peer's datagrams to two sockets in turn (by a payload
// byte the peer chooses) made every datagram a report, and so a conntrack
// update (or read) by the daemon per datagram. 20 datagrams in turn to two
// sockets of a flow pinned to a third: at most 2 reports (a second may turn).
func TestReceiveCheckReportsOncePerFlow(t *testing.T) {
	sp, err := OpenSocketPin(filepath.Join(t.TempDir(), "bpf"))
	if err != nil {
		t.Skipf("cannot load the socket pin: %v", err)
	}
	defer sp.Close()
	if st := sp.Stats(); !st.SocketPinReceive {
		t.Fatalf("the receive check is off: %s", st.SocketPinReceiveWhy)
	}
	info, err := sp.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	pins, err := ebpf.NewMapFromID(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer pins.Close()
	moves := make(chan PinMove, 64)
	go sp.ReadPinMoves(func(m PinMove) { moves <- m })
	lo := netip.MustParseAddr("127.0.0.1")
	group := func(port int) (int, uint16) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: lo.As4()}); err != nil {
			t.Fatal(err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			t.Fatal(err)
		}
		return fd, uint16(sa.(*unix.SockaddrInet4).Port)
	}
	j0, port := group(0)
	j1, _ := group(int(port))
	pinned, _ := group(int(port))
	// The group's socket by the payload's first byte's low bit (the
	// program sees the datagram from its payload on): 0 or 1.
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 0},
		{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 1},
		{Code: unix.BPF_RET | unix.BPF_A},
	}
	if err := unix.SetsockoptSockFprog(j1, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		t.Skipf("attach a reuseport program: %v", err)
	}
	peer, peerPort := udpOn(t, netip.AddrPortFrom(lo, 0))
	local, remote := netip.AddrPortFrom(lo, port), netip.AddrPortFrom(lo, peerPort)
	if err := pins.Put(pinKeyBytes(local, remote), cookieOf(t, pinned)); err != nil {
		t.Fatal(err)
	}
	before := sp.Stats()
	to := &unix.SockaddrInet4{Port: int(port), Addr: lo.As4()}
	for i := range 20 {
		if err := unix.Sendto(peer, []byte{'a' + byte(i%2)}, 0, to); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if st := sp.Stats(); st.SocketPinReceiveDropped != before.SocketPinReceiveDropped+20 {
		t.Fatalf("dropped %d of the 20 datagrams, want all (steered to %d and %d, not the pinned socket)", st.SocketPinReceiveDropped-before.SocketPinReceiveDropped, cookieOf(t, j0), cookieOf(t, j1))
	}
	n := len(moves)
	if n > 2 {
		t.Errorf("the receive check reported %d of the 20 datagrams it dropped within a second, steered in turn to two sockets; want at most 2", n)
	}
	if n == 0 {
		t.Errorf("the receive check reported none of the 20 datagrams it dropped")
	}
}

// FuzzParsePinMove: whatever the ring hands over, parsePinMove never panics,
// accepts only a whole record (56 bytes or more) of family 4 or 6, and gives
// addresses of that family on both ends with the record's cookies.
func FuzzParsePinMove(f *testing.F) {
	rec := make([]byte, 56)
	rec[0], rec[1] = 4, 17
	copy(rec[8:], []byte{198, 18, 0, 1})
	copy(rec[24:], []byte{198, 18, 0, 2})
	f.Add(rec)
	rec6 := append([]byte{}, rec...)
	rec6[0] = 6
	f.Add(rec6)
	f.Add(rec[:55])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := parsePinMove(b)
		if !ok {
			if m != (PinMove{}) {
				t.Fatalf("rejected %x but gave %+v", b, m)
			}
			return
		}
		if len(b) < 56 || (b[0] != 4 && b[0] != 6) {
			t.Fatalf("accepted %x (%d bytes, family %d)", b, len(b), b[0])
		}
		if m.Local.Addr().Is4() != (b[0] == 4) || m.Remote.Addr().Is4() != (b[0] == 4) || !m.Local.IsValid() || !m.Remote.IsValid() {
			t.Fatalf("record %x of family %d gave %v -> %v", b, b[0], m.Local, m.Remote)
		}
		if m.Protocol != b[1] || m.Cookie != binary.NativeEndian.Uint64(b[40:]) || m.Pinned != binary.NativeEndian.Uint64(b[48:]) {
			t.Fatalf("record %x gave %+v", b, m)
		}
	})
}
