package procattr

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	// A comm with spaces and parentheses, as a process may name itself.
	line := "4242 (we ird) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.Comm != "we ird) (x" || st.StartTime != 987654 {
		t.Errorf("parseStat = %+v, want comm %q starttime 987654", st, "we ird) (x")
	}
	for _, bad := range []string{"", "4242 comm S 1", "4242 (c) S 1 2 3", "4242 (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 x 1"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q): no error", bad)
		}
	}
}

func TestParseSocketLink(t *testing.T) {
	for in, want := range map[string]uint32{"socket:[12345]": 12345, "socket:[0]": 0} {
		if got, ok := parseSocketLink([]byte(in)); !ok || got != want {
			t.Errorf("parseSocketLink(%q) = %d, %v", in, got, ok)
		}
	}
	for _, bad := range []string{"", "socket:[]", "pipe:[12]", "socket:[12", "socket:[99999999999]", "socket:[-1]", "/dev/null"} {
		if _, ok := parseSocketLink([]byte(bad)); ok {
			t.Errorf("parseSocketLink(%q) accepted", bad)
		}
	}
}

// diagReply builds a netlink datagram holding one inet_diag_msg.
func diagReply(seq uint32, family uint8, src, dst netip.AddrPort, cookie uint64, uid, inode uint32) []byte {
	b := make([]byte, nlmsgHdrLen+inetDiagMsgLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], sockDiagByFamily)
	ne.PutUint32(b[8:], seq)
	m := b[nlmsgHdrLen:]
	m[0] = family
	m[1] = 2 // TCP_SYN_SENT
	putSockID(m[msgSockIDOffset:], src, dst)
	ne.PutUint32(m[msgSockIDOffset+sockIDCookieOff:], uint32(cookie))
	ne.PutUint32(m[msgSockIDOffset+sockIDCookieOff+4:], uint32(cookie>>32))
	ne.PutUint32(m[msgUIDOffset:], uid)
	ne.PutUint32(m[msgInodeOffset:], inode)
	return b
}

func errReply(seq uint32, errno unix.Errno) []byte {
	b := make([]byte, nlmsgHdrLen+4+nlmsgHdrLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.NLMSG_ERROR)
	ne.PutUint32(b[8:], seq)
	ne.PutUint32(b[nlmsgHdrLen:], uint32(-int32(errno)))
	return b
}

func TestParseDiagReply(t *testing.T) {
	src := netip.MustParseAddrPort("198.18.0.1:40000")
	dst := netip.MustParseAddrPort("198.18.0.2:443")
	si, done, err := parseDiagReply(diagReply(7, unix.AF_INET, src, dst, 1<<40|5, 1000, 777), 7)
	if err != nil || !done {
		t.Fatalf("parseDiagReply: done %v, %v", done, err)
	}
	want := socketInfo{Inode: 777, UID: 1000, Cookie: 1<<40 | 5, State: 2, Local: src, Remote: dst}
	if si != want {
		t.Errorf("parseDiagReply = %+v, want %+v", si, want)
	}

	// IPv4-mapped addresses of a dual-stack socket come back unmapped.
	m4 := netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
	si, _, err = parseDiagReply(diagReply(8, unix.AF_INET6, m4, netip.MustParseAddrPort("[::1]:53"), 1, 0, 1), 8)
	if err != nil || si.Local != src {
		t.Errorf("mapped: %+v, %v", si, err)
	}

	// A late reply to an earlier request is skipped, not taken for the answer.
	if _, done, _ := parseDiagReply(diagReply(6, unix.AF_INET, src, dst, 1, 0, 1), 7); done {
		t.Error("reply with another seq taken as the answer")
	}
	if _, done, err := parseDiagReply(errReply(9, unix.ENOENT), 9); !done || !errors.Is(err, ErrNoSocket) {
		t.Errorf("ENOENT: done %v, %v", done, err)
	}
	if _, done, err := parseDiagReply(errReply(9, unix.EPERM), 9); !done || !errors.Is(err, unix.EPERM) {
		t.Errorf("EPERM: done %v, %v", done, err)
	}
	for name, b := range map[string][]byte{
		"length past end": func() []byte {
			b := diagReply(1, unix.AF_INET, src, dst, 1, 0, 1)
			binary.NativeEndian.PutUint32(b, 500)
			return b
		}(),
		"short body": diagReply(1, unix.AF_INET, src, dst, 1, 0, 1)[:nlmsgHdrLen+10],
		"bad family": func() []byte { b := diagReply(1, 99, src, dst, 1, 0, 1); return b }(),
	} {
		if name == "short body" {
			binary.NativeEndian.PutUint32(b, uint32(len(b)))
		}
		if _, done, err := parseDiagReply(b, 1); !done || err == nil {
			t.Errorf("%s: done %v, err %v; want an error", name, done, err)
		}
	}
}

func TestUDPMatches(t *testing.T) {
	local := netip.MustParseAddrPort("198.18.0.1:5000")
	remote := netip.MustParseAddrPort("198.18.0.2:53")
	any4 := netip.MustParseAddrPort("0.0.0.0:0")
	for _, tc := range []struct {
		sockLocal, sockRemote netip.AddrPort
		want                  bool
	}{
		{netip.MustParseAddrPort("0.0.0.0:5000"), any4, true}, // unconnected, wildcard bound
		{local, remote, true}, // connected
		{local, any4, true},   // bound, unconnected
		{netip.MustParseAddrPort("0.0.0.0:5001"), any4, false},
		{netip.MustParseAddrPort("198.18.0.3:5000"), any4, false},
		{local, netip.MustParseAddrPort("198.18.0.2:54"), false},
	} {
		if got := udpMatches(socketInfo{Local: tc.sockLocal, Remote: tc.sockRemote}, local, remote); got != tc.want {
			t.Errorf("udpMatches(socket %v -> %v) = %v, want %v", tc.sockLocal, tc.sockRemote, got, tc.want)
		}
	}
}

// FuzzParseDiagReply: any datagram decodes or fails cleanly, never panics, and a
// decoded socket's addresses are valid.
func FuzzParseDiagReply(f *testing.F) {
	src := netip.MustParseAddrPort("198.18.0.1:40000")
	dst := netip.MustParseAddrPort("198.18.0.2:443")
	f.Add(diagReply(1, unix.AF_INET, src, dst, 1, 0, 1))
	f.Add(diagReply(1, unix.AF_INET6, netip.MustParseAddrPort("[::1]:1"), netip.MustParseAddrPort("[::1]:2"), 1, 0, 1))
	f.Add(errReply(1, unix.ENOENT))
	f.Fuzz(func(t *testing.T, b []byte) {
		si, done, err := parseDiagReply(b, 1)
		if done && err == nil && (!si.Local.IsValid() || !si.Remote.IsValid()) {
			t.Errorf("decoded invalid addresses %+v", si)
		}
	})
}

// FuzzParseStat: never panics; a parsed comm lies within the line.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 12 1000 10 0"))
	f.Add([]byte("2 ((x)) R"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStat(b)
		if err == nil && len(st.Comm) > len(b) {
			t.Errorf("comm %q longer than input", st.Comm)
		}
	})
}
