package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sendOnAllowedFlow sends, from one socket in A made by open, first to on F
// (allowed: the flow gets the allow conntrack mark) and then, after route(fd),
// each of msgs to X: the same 5-tuple in the packets' headers, whose IP
// destination is F. A send the output chain refuses (EPERM) is what the tests
// want, not an error.
func (n *routedNet) sendOnAllowedFlow(t *testing.T, open func() (int, error), toF, toX unix.Sockaddr, plain string, route func(fd int) error, msgs ...string) {
	t.Helper()
	err := inNS(n.tp.a, func() error {
		fd, err := open()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Sendto(fd, []byte(plain), 0, toF); err != nil {
			return fmt.Errorf("send %q to F: %w", plain, err)
		}
		time.Sleep(500 * time.Millisecond)
		if err := route(fd); err != nil {
			return err
		}
		for _, m := range msgs {
			if err := unix.Sendto(fd, []byte(m), 0, toX); err != nil && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("send %q to X: %w", m, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSourceRouteEchoOnAllowedFlow (review7) is TestSourceRouteUDPOnAllowedFlow
// for ICMP echo: a ping socket (no privilege where ping_group_range admits the
// user, as systemd sets it) sends an echo request to F, which a rule allows
// (conntrack's echo flow is addresses and identifier: the ping socket's port),
// then sets a loose source route via F and sends echo requests to X. By their
// header they are more of the allowed echo flow to F. X must see none.
func TestSourceRouteEchoOnAllowedFlow(t *testing.T) {
	for _, fw := range []string{FirewallNftables, nftNoQueue, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			n := newRoutedNet(t, fw)
			allowPingSockets(t, n.tp.a)
			atF := openRaw(t, n.tp.b, false, unix.IPPROTO_ICMP, "").capture()
			atX := openRaw(t, n.x, false, unix.IPPROTO_ICMP, "").capture()
			toF := &unix.SockaddrInet4{}
			copy(toF.Addr[:], net.ParseIP(addrB).To4())
			toX := &unix.SockaddrInet4{}
			copy(toX.Addr[:], net.ParseIP(addrX).To4())
			echo := func(marker string) string { return string(icmpMsg(8, 0, 0, []byte(marker), true)) }
			open := func() (int, error) {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)
				if err != nil {
					return -1, fmt.Errorf("ping socket: %w", err)
				}
				// The echo identifier.
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 0x4c77}); err != nil {
					unix.Close(fd)
					return -1, fmt.Errorf("bind ping socket: %w", err)
				}
				return fd, nil
			}
			n.sendOnAllowedFlow(t, open, toF, toX, echo("latch-echo-plain-to-F"), setLSRR,
				echo("latch-echo-routed-0"), echo("latch-echo-routed-1"), echo("latch-echo-routed-2"))
			if !atF.waitSaw("latch-echo-plain-to-F", 2*time.Second) {
				t.Fatal("F did not receive the plain echo request: the allowed flow this test rides is not there")
			}
			if atX.waitSaw("latch-echo-routed", 2*time.Second) {
				t.Errorf("X (%s, which no rule allows) received an echo request source-routed via F on the allowed echo flow to F", addrX)
				n.logDaemon(t)
			}
		})
	}
}

// TestRoutingHeaderUDPOnAllowedFlow (review7) is TestSourceRouteUDPOnAllowedFlow
// for IPv6: a UDP socket sends a datagram to [F]:9002 (allowed), then sets a
// segment routing header via F (IPV6_RTHDR type 4, no privilege needed) and
// sends to [X]:9002: IP destination F, the allowed flow's 5-tuple; F (SRv6
// on) sends it on to X. X must receive none.
func TestRoutingHeaderUDPOnAllowedFlow(t *testing.T) {
	for _, fw := range []string{FirewallNftables, nftNoQueue, FirewallIptablesNft, FirewallIptablesLegacy} {
		t.Run(fw, func(t *testing.T) {
			n := newRoutedNet(t, fw)
			atF := openRaw(t, n.tp.b, true, unix.IPPROTO_UDP, "").capture()
			time.Sleep(300 * time.Millisecond) // IPv6 neighbours settle
			toF := &unix.SockaddrInet6{Port: 9002}
			copy(toF.Addr[:], net.ParseIP(addr6B).To16())
			toX := &unix.SockaddrInet6{Port: 9002}
			copy(toX.Addr[:], net.ParseIP(addr6X).To16())
			open := func() (int, error) {
				fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
				if err != nil {
					return -1, err
				}
				if err := unix.Bind(fd, &unix.SockaddrInet6{Port: 40124}); err != nil {
					unix.Close(fd)
					return -1, err
				}
				return fd, nil
			}
			srh := func(fd int) error {
				if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srhVia(addr6X, addr6B))); err != nil {
					return fmt.Errorf("IPV6_RTHDR: %w", err)
				}
				return nil
			}
			n.sendOnAllowedFlow(t, open, toF, toX, "latch-plain6-to-F", srh, "latch-routed6-0", "latch-routed6-1", "latch-routed6-2")
			if !atF.waitSaw("latch-plain6-to-F", 2*time.Second) {
				t.Fatal("F did not receive the plain datagram: the allowed flow this test rides is not there")
			}
			n.xGetsNothing(t)
		})
	}
}

// seqs returns the next sequence number c sends and the next it expects
// (TCP_REPAIR: needs CAP_NET_ADMIN, which a container's root has in its own
// namespace; a sniffer would do as well).
func seqs(t *testing.T, c net.Conn) (snd, rcv uint32) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) {
		get := func(queue int) uint32 {
			if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, queue); err != nil {
				serr = errors.Join(serr, err)
			}
			v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
			serr = errors.Join(serr, err)
			return uint32(v)
		}
		if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR, 1); serr != nil {
			return
		}
		snd, rcv = get(2 /* TCP_SEND_QUEUE */), get(1 /* TCP_RECV_QUEUE */)
		serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF_NO_WP))
	})
	if serr != nil {
		t.Fatalf("TCP_REPAIR: %v", serr)
	}
	return snd, rcv
}

// segmentAt is a TCP segment (ACK|PSH, no options) at sequence number seq
// acknowledging ack, its checksum over src and dst. A host that writes a
// source-routed segment puts the route's end in the checksum's pseudo-header;
// conntrack checks it, where it is forwarded, against the IP header's
// destination (nf_conntrack_proto_tcp.c: "FIXME: Source route IP option
// packets"): one forged with that destination passes conntrack, and the end
// host's packet socket still receives it.
func segmentAt(src, dst netip.Addr, sport, dport uint16, seq, ack uint32, payload string) []byte {
	b := tcpSegment(src, dst, sport, dport, 0x18, payload)
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], ack)
	binary.BigEndian.PutUint16(b[16:], 0)
	var pseudo []byte
	if src.Is4() {
		pseudo = append(append(src.AsSlice(), dst.AsSlice()...), 0, unix.IPPROTO_TCP, byte(len(b)>>8), byte(len(b)))
	} else {
		pseudo = append(append(src.AsSlice(), dst.AsSlice()...), 0, 0, byte(len(b)>>8), byte(len(b)), 0, 0, 0, unix.IPPROTO_TCP)
	}
	binary.BigEndian.PutUint16(b[16:], checksum(append(pseudo, b...)))
	return b
}

// fragmentsV6 is an IPv6 packet from src to dst whose payload, the routing
// header rh (its next header TCP) and then the segment seg, is cut into two
// fragments after the routing header and 24 bytes of the segment (the first
// fragment must hold the whole TCP header, RFC 8200 4.5): the routing header
// after the fragment header, where only a walk past it finds it.
func fragmentsV6(src, dst netip.Addr, rh, seg []byte) [][]byte {
	rh = append([]byte{unix.IPPROTO_TCP}, rh[1:]...)
	payload := append(rh, seg...)
	cut := len(rh) + 24
	frag := func(off int, more bool, data []byte) []byte {
		b := make([]byte, 48, 48+len(data))
		b[0] = 6 << 4
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(data)))
		b[6], b[7] = 44, 64 // fragment header; hop limit
		copy(b[8:], src.AsSlice())
		copy(b[24:], dst.AsSlice())
		b[40] = 43 // routing header
		fo := uint16(off/8) << 3
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(b[42:], fo)
		binary.BigEndian.PutUint32(b[44:], 0x4c617437)
		return append(b, data...)
	}
	return [][]byte{frag(0, true, payload[:cut]), frag(cut, false, payload[cut:])}
}

// fragmentsV4 is an IPv4 packet from src to dst (IP_HDRINCL: the kernel
// fills in the total length and checksum) carrying seg, cut into two
// fragments after 24 bytes of it; only the first carries opts (padded to
// words), as a raw socket may write them although a source route belongs in
// every fragment.
func fragmentsV4(src, dst netip.Addr, opts, seg []byte) [][]byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0) // end of options
	}
	frag := func(opts []byte, off int, more bool, data []byte) []byte {
		h := make([]byte, 20, 20+len(opts)+len(data))
		h[0] = 4<<4 | byte(5+len(opts)/4)
		fo := uint16(off / 8)
		if more {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[4:], 0x4c37)
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8], h[9] = 64, unix.IPPROTO_TCP
		copy(h[12:], src.AsSlice())
		copy(h[16:], dst.AsSlice())
		return append(append(h, opts...), data...)
	}
	return [][]byte{frag(opts, 0, true, seg[:24]), frag(nil, 24, false, seg[24:])}
}

// TestForwardTCPSourceRouteOnAllowedFlow (review7): with --forward, a
// container (CAP_NET_RAW, Docker's default) has a connection to F:9003 that
// a rule allows. It writes, with a raw socket, a segment of that connection
// (its ports, in its window) with a source route via F (IPv4 LSRR; IPv6 a
// segment routing header, alone, after hop-by-hop and destination options, or
// after a fragment header in a packet cut in two) to X: by its header one more
// segment of the allowed flow to F, and F sends it on to X. IPv4 also with the
// route in the first of two fragments only. LATCH-FWD dropped
// only non-TCP packets with a source route; this one passed by the allowed
// flow's RETURN. Control: the same segment without the route reaches F (the
// forging is right: in the window, checksum good).
func TestForwardTCPSourceRouteOnAllowedFlow(t *testing.T) {
	type variant struct {
		name string
		v6   bool
	}
	variants := []variant{{"lsrr", false}, {"frag-lsrr", false}, {"srh", true}, {"hbh-dst-srh", true}, {"frag-srh", true}}
	for _, fw := range []string{FirewallNftables, nftNoQueue, FirewallIptablesNft, FirewallIptablesLegacy} {
		for _, vt := range variants {
			v6 := vt.v6
			t.Run(fw+" "+vt.name, func(t *testing.T) {
				tp := newTopo(t)
				c := addContainer(t, tp)
				n := routedNetFor(t, tp, fw, true)
				if !v6 {
					// Linux drops every IPv4 packet with a source route it
					// receives, forwarded ones too (ip_rcv_options), unless
					// the router accepts them (all and the device).
					if out, err := exec.Command("ip", "netns", "exec", tp.a, "sysctl", "-w", "net.ipv4.conf.all.accept_source_route=1").CombinedOutput(); err != nil {
						t.Fatalf("sysctl in %s: %v: %s", tp.a, err, out)
					}
				}
				src, f, x := netip.MustParseAddr(addrC), netip.MustParseAddr(addrB), netip.MustParseAddr(addrX)
				if v6 {
					src, f, x = netip.MustParseAddr(addr6C), netip.MustParseAddr(addr6B), netip.MustParseAddr(addr6X)
				}
				srv := listenPush(t, tp, f.String(), 9003)
				atF := openRaw(t, tp.b, v6, unix.IPPROTO_TCP, "").capture()
				atX := openRaw(t, n.x, v6, unix.IPPROTO_TCP, "").capture()
				time.Sleep(300 * time.Millisecond) // IPv6 neighbours settle
				var conn net.Conn
				if err := inNS(c, func() (err error) {
					conn, err = net.DialTimeout("tcp", net.JoinHostPort(f.String(), "9003"), 3*time.Second)
					return err
				}); err != nil {
					t.Fatalf("the container's connection to F (allowed): %v", err)
				}
				sc := srv.conn(t, conn)
				conn.Write([]byte("hello"))
				for end := time.Now().Add(2 * time.Second); sc.got.Load() < 5 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				}
				snd, rcv := seqs(t, conn)
				sport := uint16(conn.LocalAddr().(*net.TCPAddr).Port)
				raw := openRaw(t, c, v6, unix.IPPROTO_TCP, src.String())
				// F's socket must be gone: one for the segment's ports would
				// take it at F (early demux), and a packet with a socket is
				// not forwarded. The container aborts the connection (a
				// reset, which the allowed flow passes); conntrack keeps the
				// flow, marked allowed, for 10 s (CLOSE).
				if err := conn.(*net.TCPConn).SetLinger(0); err != nil {
					t.Fatal(err)
				}
				conn.Close()
				time.Sleep(200 * time.Millisecond)
				const control = "latch-fwd-control"
				raw.send(t, f.String(), segmentAt(src, f, sport, 9003, snd, rcv, control), 0)
				if !atF.waitSaw(control, 2*time.Second) {
					t.Fatal("the forged segment of the allowed connection did not reach F: the test's forging is wrong")
				}
				const routed = "latch-fwd-routed"
				seg := func(i int) []byte {
					return segmentAt(src, f, sport, 9003, snd+uint32(len(control)+i*len(routed)), rcv, routed)
				}
				if vt.name == "frag-lsrr" {
					hdrincl := openRaw(t, c, false, unix.IPPROTO_RAW, "")
					for i := range 3 {
						for _, p := range fragmentsV4(src, f, lsrrVia(x.String()), seg(i)) {
							hdrincl.send(t, f.String(), p, 0)
						}
					}
				} else if vt.name == "frag-srh" {
					var hdrincl *rawSock
					hdrincl = openRaw(t, c, true, unix.IPPROTO_RAW, "")
					for i := range 3 {
						for _, p := range fragmentsV6(src, f, srhVia(x.String(), f.String()), seg(i)) {
							hdrincl.send(t, f.String(), p, 0)
						}
					}
				} else {
					var err error
					switch vt.name {
					case "lsrr":
						err = unix.SetsockoptString(raw.fd, unix.IPPROTO_IP, unix.IP_OPTIONS, string(lsrrVia(f.String())))
					case "hbh-dst-srh":
						padN := string([]byte{0, 0, 1, 4, 0, 0, 0, 0}) // PadN of 4: 8 bytes
						err = errors.Join(
							unix.SetsockoptString(raw.fd, unix.IPPROTO_IPV6, unix.IPV6_HOPOPTS, padN),
							unix.SetsockoptString(raw.fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDRDSTOPTS, padN))
						fallthrough
					case "srh":
						err = errors.Join(err, unix.SetsockoptString(raw.fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srhVia(x.String(), f.String()))))
					}
					if err != nil {
						t.Fatalf("source route on the raw socket: %v", err)
					}
					for i := range 3 {
						raw.send(t, x.String(), seg(i), 0)
					}
				}
				if atX.waitSaw(routed, 2*time.Second) {
					t.Errorf("X (%v, which no rule allows) received a container's TCP segment source-routed via F on its allowed connection to F:9003", x)
				}
			})
		}
	}
}
