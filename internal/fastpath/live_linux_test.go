package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func encodeLive(r fastpathFpLive) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.NativeEndian, r)
	return b.Bytes()
}

// liveRec is one socket SocketCounts listed.
type liveRec struct {
	local, remote netip.AddrPort
	bytes         Counts
}

func collectLives(b []byte) ([]liveRec, error) {
	var out []liveRec
	err := decodeLives(b, func(l, r netip.AddrPort, c Counts) { out = append(out, liveRec{l, r, c}) })
	return out, err
}

func TestDecodeLive(t *testing.T) {
	if n := binary.Size(fastpathFpLive{}); n != liveSize {
		t.Fatalf("struct fp_live is %d bytes, the decoder reads %d", n, liveSize)
	}
	good4 := fastpathFpLive{Kind: liveKind, Family: 4, Local: [16]byte{198, 18, 0, 1}, Remote: [16]byte{198, 18, 0, 2}, LocalPort: 40003, RemotePort: 443,
		BytesOut: 1200, BytesIn: 900, PacketsOut: 10, PacketsIn: 12}
	good6 := fastpathFpLive{Kind: liveKind, Family: 6, Local: [16]byte{0xfd, 15: 1}, Remote: [16]byte{0xfd, 15: 2}, LocalPort: 40002, RemotePort: 80}
	var b []byte
	b = append(b, encodeLive(good4)...)
	b = append(b, encodeLive(good6)...)
	got, err := collectLives(b)
	want := []liveRec{
		{netip.MustParseAddrPort("198.18.0.1:40003"), netip.MustParseAddrPort("198.18.0.2:443"), Counts{Out: 1200, In: 900}},
		{netip.MustParseAddrPort("[fd00::1]:40002"), netip.MustParseAddrPort("[fd00::2]:80"), Counts{}},
	}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("decoded %v (%v), want %v", got, err, want)
	}
	for name, r := range map[string]fastpathFpLive{
		"bytes out":   {Kind: liveKind, Family: 4, LocalPort: 1, RemotePort: 1, BytesOut: 39, PacketsOut: 2},
		"bytes in":    {Kind: liveKind, Family: 4, LocalPort: 1, RemotePort: 1, BytesOut: 40, PacketsOut: 2, PacketsIn: 1},
		"wrapping":    {Kind: liveKind, Family: 4, LocalPort: 1, RemotePort: 1, BytesOut: 0, PacketsOut: 1 << 62},
		"family":      {Kind: liveKind, Family: 5, LocalPort: 1, RemotePort: 1},
		"kind":        {Kind: endKind, Family: 4, LocalPort: 1, RemotePort: 1},
		"local port":  {Kind: liveKind, Family: 4, RemotePort: 1},
		"remote port": {Kind: liveKind, Family: 4, LocalPort: 1},
	} {
		// A bad record between two good ones: the good ones are listed, the
		// error says which record was bad.
		var b []byte
		b = append(b, encodeLive(good4)...)
		b = append(b, encodeLive(r)...)
		b = append(b, encodeLive(good6)...)
		got, err := collectLives(b)
		if err == nil || !strings.Contains(err.Error(), "1 of 3") || !strings.Contains(err.Error(), "record 1") || len(got) != 2 {
			t.Errorf("%s: decoded %v (%v), want the two good records and an error naming record 1", name, got, err)
		}
	}
	// A record cut short.
	got, err = collectLives(append(encodeLive(good4), make([]byte, liveSize-1)...))
	if err == nil || !strings.Contains(err.Error(), "79 bytes") || len(got) != 1 {
		t.Errorf("a record cut short: decoded %v (%v), want the whole one and an error", got, err)
	}
}

// FuzzDecodeLive: whatever the kernel's iterator gives, the decoder never panics,
// lists only sockets with both ports and a known family, and says when it skipped
// a record or a part of one.
func FuzzDecodeLive(f *testing.F) {
	f.Add(encodeLive(fastpathFpLive{Kind: liveKind, Family: 4, Local: [16]byte{198, 18, 0, 1}, Remote: [16]byte{198, 18, 0, 2}, LocalPort: 40003, RemotePort: 443, BytesOut: 1200, BytesIn: 900, PacketsOut: 10, PacketsIn: 12}))
	f.Add(append(encodeLive(fastpathFpLive{Kind: liveKind, Family: 6, LocalPort: 1, RemotePort: 2}), 1, 2, 3))
	f.Add([]byte{})
	f.Add(make([]byte, 2*liveSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		err := decodeLives(b, func(l, r netip.AddrPort, c Counts) {
			n++
			if !l.IsValid() || !r.IsValid() || l.Port() == 0 || r.Port() == 0 || l.Addr().Is4() != r.Addr().Is4() {
				t.Fatalf("listed %v -> %v", l, r)
			}
		})
		if whole := len(b) / liveSize; (err == nil) != (n == whole && len(b)%liveSize == 0) {
			t.Fatalf("%d of %d records listed, %d bytes left over, error %v", n, whole, len(b)%liveSize, err)
		}
	})
}

// countsOf returns the counts SocketCounts lists for local → remote, and
// whether it lists them.
func countsOf(t *testing.T, fp *FastPath, local, remote netip.AddrPort) (Counts, bool) {
	t.Helper()
	var c Counts
	found := false
	if err := fp.SocketCounts(func(l, r netip.AddrPort, b Counts) {
		if l == local && r == remote {
			if found {
				t.Errorf("%v -> %v listed twice", local, remote)
			}
			c, found = b, true
		}
	}); err != nil {
		t.Fatalf("SocketCounts: %v", err)
	}
	return c, found
}

// TestSocketCounts: while an actively opened TCP socket lives, SocketCounts lists
// it with the bytes it sent and received so far (at least the payloads, each
// packet's headers on top), growing as it sends more; the accepted socket is not
// listed; at its end the end's counts are at least the last listed ones, and
// the socket is no longer listed. IPv4, IPv6 and IPv4-mapped (listed as IPv4);
// through the iterator the kernel lets the fast path use, and through the one
// over TCP sockets (where the kernel refuses the one over socket storage maps).
func TestSocketCounts(t *testing.T) {
	for name, cfg := range map[string]Config{"best": {}, "tcp iterator": {noLiveMap: true}} {
		t.Run(name, func(t *testing.T) { testSocketCounts(t, cfg) })
	}
}

func testSocketCounts(t *testing.T, cfg Config) {
	enter := ownNetns(t)
	cg, _ := testCgroup(t)
	fp := openTest(t, cg, cfg)
	st := fp.Stats()
	if !st.TCPLiveBytes || st.TCPLiveBytesWhy != "" || st.TCPLiveBytesVia == "" || cfg.noLiveMap && st.TCPLiveBytesVia != liveTCP.String() {
		t.Fatalf("TCPLiveBytes %v (%q, via %q), want on", st.TCPLiveBytes, st.TCPLiveBytesWhy, st.TCPLiveBytesVia)
	}
	t.Logf("via the %s", st.TCPLiveBytesVia)
	ends := runEnds(t, fp)
	for _, c := range []struct{ name, network, listen, dial string }{
		{"v4", "tcp4", "127.0.0.1:0", "127.0.0.1"},
		{"v6", "tcp6", "[::1]:0", "::1"},
		{"mapped", "tcp", "[::]:0", "::ffff:127.0.0.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			enter(t)
			ln, err := net.Listen(c.network, c.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			// The server reads everything and answers each 1000 bytes with 100.
			go func() {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				defer s.Close()
				s.SetDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 1000)
				for {
					if _, err := io.ReadFull(s, buf); err != nil {
						return
					}
					s.Write(buf[:100])
				}
			}()
			port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
			remote := netip.AddrPortFrom(netip.MustParseAddr(c.dial), port)
			conn, err := net.Dial("tcp", remote.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
			local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
			remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
			var last Counts
			for round := 1; round <= 3; round++ {
				if _, err := conn.Write(make([]byte, 50_000)); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(conn, make([]byte, 5_000)); err != nil {
					t.Fatal(err)
				}
				got, ok := countsOf(t, fp, local, remote)
				if !ok {
					t.Fatalf("round %d: %v -> %v not listed", round, local, remote)
				}
				if got.Out < uint64(round)*50_000 || got.In < uint64(round)*5_000 || got.Out <= last.Out || got.In <= last.In {
					t.Fatalf("round %d: %v -> %v counted %+v (before %+v), want at least %d out and %d in", round, local, remote, got, last, round*50_000, round*5_000)
				}
				last = got
				if _, ok := countsOf(t, fp, remote, local); ok {
					t.Fatalf("the accepted socket %v -> %v is listed", remote, local)
				}
			}
			conn.Close()
			e := endOf(t, ends, local, remote)
			if !e.Counted || e.Bytes.Out < last.Out || e.Bytes.In < last.In {
				t.Errorf("end %+v, want counted with at least the last listed %+v", e, last)
			}
			if got, ok := countsOf(t, fp, local, remote); ok {
				t.Errorf("%v -> %v still listed after its end: %+v", local, remote, got)
			}
		})
	}
}

// TestSocketCountsOff: on a kernel without the iterator over socket storage maps
// (the object loads with a placeholder in its place), or without the socket
// counters the iterator would read, SocketCounts says so (ErrNoLiveBytes) and
// Stats says why; the rest of the fast path works (ends still carry counts
// where the counters are on). A kernel that refuses the iterator program when the
// object is loaded (after the probe allowed it) gets the object loaded again
// without it.
func TestSocketCountsOff(t *testing.T) {
	for name, cfg := range map[string]Config{"no iterator": {noLiveBytes: true}, "iterator refused": {liveRefused: true}, "no counters": {noEndBytes: true}, "no ends": {NoTCPEnds: "test"}} {
		t.Run(name, func(t *testing.T) {
			ownNetns(t)
			cg, _ := testCgroup(t)
			fp := openTest(t, cg, cfg)
			st := fp.Stats()
			if st.TCPLiveBytes || st.TCPLiveBytesWhy == "" {
				t.Fatalf("TCPLiveBytes %v (%q), want off with a reason", st.TCPLiveBytes, st.TCPLiveBytesWhy)
			}
			t.Logf("why: %s", st.TCPLiveBytesWhy)
			if err := fp.SocketCounts(func(netip.AddrPort, netip.AddrPort, Counts) { t.Error("a socket listed") }); !errors.Is(err, ErrNoLiveBytes) || !strings.Contains(err.Error(), st.TCPLiveBytesWhy) {
				t.Errorf("SocketCounts: %v, want ErrNoLiveBytes with the reason", err)
			}
			if !cfg.noLiveBytes && !cfg.liveRefused {
				return
			}
			if !st.TCPEndBytes {
				t.Fatalf("TCPEndBytes off (%q) without the iterator", st.TCPEndBytesWhy)
			}
			ends := runEnds(t, fp)
			srv := acceptAll(t, "tcp4", "127.0.0.1:0")
			conn, err := net.Dial("tcp4", srv.String())
			if err != nil {
				t.Fatal(err)
			}
			local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
			conn.Close()
			if e := endOf(t, ends, local, srv); !e.Counted {
				t.Errorf("end %+v carries no counters", e)
			}
		})
	}
}
