package proto

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "write testdata/go/*.bin from the values in PROTOCOL.md")

// golden are the values PROTOCOL.md fixes for the golden files, by file name.
var golden = []struct {
	name string
	msg  Message
}{
	{"hello", &Hello{ServiceVersion: 2, DefaultAction: ActionBlock, PendingTimeoutMS: 30000}},
	{"hello_reply", &HelloReply{DriverVersion: 2, MaxPending: 4096, MaxPendingPerProcess: 256, Status: StatusSuccess}},
	{"connect_v4", &ConnectRequest{
		RequestID: 0x0102030405060708, Layer: LayerConnectV4, Direction: Outbound, IPVersion: 4, Protocol: 6,
		Local:     netip.MustParseAddrPort("198.18.0.1:49152"),
		Remote:    netip.MustParseAddrPort("198.19.0.2:443"),
		ProcessID: 4242, Timestamp: 133000000000000000,
		Path: EncodePath(`\Device\HarddiskVolume3\Windows\System32\curl.exe`),
	}},
	{"connect_v6", &ConnectRequest{
		RequestID: 9, Layer: LayerRecvAcceptV6, Direction: Inbound, IPVersion: 6, Protocol: 17,
		Local:     netip.MustParseAddrPort("[2001:2::1]:5353"),
		Remote:    netip.MustParseAddrPort("[2001:2::2]:40000"),
		ProcessID: 0, Timestamp: 133000000000000001,
	}},
	{"verdict", &Verdict{RequestID: 0x0102030405060708, Action: ActionPermit, CacheScope: CacheProcessRemotePort, CacheTTLMS: 60000,
		RuleTag: 0x1122334455667788}},
	{"flush", &Flush{Flags: FlushCache | FlushReauthorize}},
	{"stats_query", &StatsQuery{}},
	{"stats_reply", &StatsReply{Classified: 1, Pended: 2, Permitted: 3, Blocked: 4, TimedOut: 5,
		NoClientDefault: 6, CapExceeded: 7, CacheHits: 8, SendFailures: 9, MalformedMessages: 10,
		FlowContextsLive: 11, PendingNow: 12, VerdictsLate: 13, Reauthorized: 14, AllocFailures: 15, HitsLost: 16}},
	{"ack", &Ack{Status: StatusNotFound}},
	{"hit_batch", &HitBatch{Hits: []Hit{{
		RuleTag: 0x1122334455667788, ProcessID: 4242, Timestamp: 133000000000000000,
		Direction: Outbound, IPVersion: 4, Protocol: 6, Action: ActionPermit,
		Local:  netip.MustParseAddrPort("198.18.0.1:49152"),
		Remote: netip.MustParseAddrPort("198.19.0.2:443"),
	}, {
		RuleTag: 9, ProcessID: 7, Timestamp: 133000000000000001,
		Direction: Inbound, IPVersion: 6, Protocol: 17, Action: ActionBlock,
		Local:  netip.MustParseAddrPort("[2001:2::1]:5353"),
		Remote: netip.MustParseAddrPort("[2001:2::2]:40000"),
	}}}},
}

func goldenBytes(t *testing.T, name string) []byte {
	t.Helper()
	for _, g := range golden {
		if g.name == name {
			b, err := Encode(g.msg)
			if err != nil {
				t.Fatalf("encode %s: %v", name, err)
			}
			return b
		}
	}
	t.Fatalf("no golden value %q", name)
	return nil
}

func TestGoldenGo(t *testing.T) {
	if *update {
		if err := os.MkdirAll(filepath.Join("testdata", "go"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range golden {
		t.Run(g.name, func(t *testing.T) {
			b, err := Encode(g.msg)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			path := filepath.Join("testdata", "go", g.name+".bin")
			if *update {
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/proto -update to write it)", err)
			}
			if !bytes.Equal(b, want) {
				t.Fatalf("encoding differs from %s:\n got %x\nwant %x", path, b, want)
			}
			checkDecodes(t, path, want, g.msg)
		})
	}
}

// TestGoldenC decodes the files the C driver's tests wrote and checks that they are
// byte-identical to the Go side's.
func TestGoldenC(t *testing.T) {
	for _, g := range golden {
		t.Run(g.name, func(t *testing.T) {
			path := filepath.Join("testdata", "c", g.name+".bin")
			b, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				t.Skipf("%s not written yet by the C side (make -C driver test writes it)", path)
			}
			if err != nil {
				t.Fatal(err)
			}
			checkDecodes(t, path, b, g.msg)
			goPath := filepath.Join("testdata", "go", g.name+".bin")
			gb, err := os.ReadFile(goPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, gb) {
				t.Fatalf("%s and %s differ:\n   c %x\n  go %x", path, goPath, b, gb)
			}
		})
	}
}

func checkDecodes(t *testing.T, path string, b []byte, want Message) {
	t.Helper()
	got, err := Decode(b)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decode %s:\n got %+v\nwant %+v", path, got, want)
	}
	again, err := Encode(got)
	if err != nil || !bytes.Equal(again, b) {
		t.Fatalf("re-encode %s: %x, %v; want %x", path, again, err, b)
	}
}

func TestConnectRequestFields(t *testing.T) {
	m, err := Decode(goldenBytes(t, "connect_v4"))
	if err != nil {
		t.Fatal(err)
	}
	cr := m.(*ConnectRequest)
	if got, want := cr.PathString(), `\Device\HarddiskVolume3\Windows\System32\curl.exe`; got != want {
		t.Errorf("PathString = %q, want %q", got, want)
	}
	if got, want := cr.Time(), time.Date(2022, 6, 18, 4, 26, 40, 0, time.UTC); !got.Equal(want) {
		t.Errorf("Time = %v, want %v", got, want)
	}
	if got := TimeToFileTime(cr.Time()); got != cr.Timestamp {
		t.Errorf("TimeToFileTime(Time()) = %d, want %d", got, cr.Timestamp)
	}
	if cr.Size() != ConnectRequestBaseSize+2*len(cr.Path) {
		t.Errorf("Size = %d", cr.Size())
	}
	// An unpaired surrogate survives decode and re-encode, and reads as U+FFFD.
	cr.Path = []uint16{'C', 0xD800, 'x'}
	b, err := Encode(cr)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.(*ConnectRequest).PathString(); got != "C\uFFFDx" {
		t.Errorf("PathString with lone surrogate = %q", got)
	}
}

// mutate returns a copy of the golden message name with f applied.
func mutate(t *testing.T, name string, f func(b []byte) []byte) []byte {
	b := append([]byte(nil), goldenBytes(t, name)...)
	return f(b)
}

func put16(b []byte, off int, v uint16) []byte { le.PutUint16(b[off:], v); return b }
func put32(b []byte, off int, v uint32) []byte { le.PutUint32(b[off:], v); return b }

func TestDecodeRejects(t *testing.T) {
	longPath := func(n int) []byte {
		b := goldenBytes(t, "connect_v6")
		b = append(b, make([]byte, 2*n)...)
		put32(b, 8, uint32(len(b)))
		return put16(b, 88, uint16(n))
	}
	cases := []struct {
		name   string
		b      []byte
		field  string
		offset int
	}{
		{"empty", nil, "length", 0},
		{"short header", goldenBytes(t, "ack")[:15], "length", 0},
		{"wrong magic", mutate(t, "ack", func(b []byte) []byte { return put32(b, 0, 0x4c544348) }), "magic", 0},
		{"version 1", mutate(t, "ack", func(b []byte) []byte { return put16(b, 4, 1) }), "version", 4},
		{"version 3", mutate(t, "ack", func(b []byte) []byte { return put16(b, 4, 3) }), "version", 4},
		{"version 0", mutate(t, "ack", func(b []byte) []byte { return put16(b, 4, 0) }), "version", 4},
		{"unknown type", mutate(t, "ack", func(b []byte) []byte { return put16(b, 6, 0x99) }), "type", 6},
		{"type 0", mutate(t, "ack", func(b []byte) []byte { return put16(b, 6, 0) }), "type", 6},
		{"length too big", mutate(t, "ack", func(b []byte) []byte { return put32(b, 8, 25) }), "length", 8},
		{"length too small", mutate(t, "ack", func(b []byte) []byte { return put32(b, 8, 16) }), "length", 8},
		{"truncated", goldenBytes(t, "verdict")[:47], "length", 8},
		{"oversized", append(mutate(t, "verdict", func(b []byte) []byte { return put32(b, 8, 49) }), 0), "length", 8},
		{"header reserved", mutate(t, "ack", func(b []byte) []byte { b[15] = 1; return b }), "reserved", 12},
		{"hello action 0", mutate(t, "hello", func(b []byte) []byte { return put32(b, 20, 0) }), "default_action", 20},
		{"hello action reject", mutate(t, "hello", func(b []byte) []byte { return put32(b, 20, 3) }), "default_action", 20},
		{"hello timeout 99", mutate(t, "hello", func(b []byte) []byte { return put32(b, 24, 99) }), "pending_timeout_ms", 24},
		{"hello timeout 600001", mutate(t, "hello", func(b []byte) []byte { return put32(b, 24, 600001) }), "pending_timeout_ms", 24},
		{"hello reserved", mutate(t, "hello", func(b []byte) []byte { b[30] = 1; return b }), "reserved", 30},
		{"connect id 0", mutate(t, "connect_v4", func(b []byte) []byte { return put32(put32(b, 16, 0), 20, 0) }), "request_id", 16},
		{"connect layer 0", mutate(t, "connect_v4", func(b []byte) []byte { return put16(b, 24, 0) }), "layer", 24},
		{"connect layer 5", mutate(t, "connect_v4", func(b []byte) []byte { return put16(b, 24, 5) }), "layer", 24},
		{"connect direction vs layer", mutate(t, "connect_v4", func(b []byte) []byte { b[26] = 2; return b }), "direction", 26},
		{"connect direction 3", mutate(t, "connect_v4", func(b []byte) []byte { b[26] = 3; return b }), "direction", 26},
		{"connect ip_version vs layer", mutate(t, "connect_v4", func(b []byte) []byte { b[27] = 6; return b }), "ip_version", 27},
		{"connect v6 layer ip_version 4", mutate(t, "connect_v6", func(b []byte) []byte { b[27] = 4; return b }), "ip_version", 27},
		{"connect reserved 29", mutate(t, "connect_v4", func(b []byte) []byte { b[31] = 1; return b }), "reserved", 31},
		{"connect v4 local tail", mutate(t, "connect_v4", func(b []byte) []byte { b[40] = 1; return b }), "local_addr", 40},
		{"connect v4 remote tail", mutate(t, "connect_v4", func(b []byte) []byte { b[63] = 1; return b }), "remote_addr", 63},
		{"connect reserved 68", mutate(t, "connect_v4", func(b []byte) []byte { b[70] = 1; return b }), "reserved", 70},
		{"connect reserved 90", mutate(t, "connect_v4", func(b []byte) []byte { b[95] = 1; return b }), "reserved", 95},
		{"connect path_len too long for length", mutate(t, "connect_v4", func(b []byte) []byte { return put16(b, 88, 50) }), "path_len", 88},
		{"connect path_len too short for length", mutate(t, "connect_v4", func(b []byte) []byte { return put16(b, 88, 48) }), "path_len", 88},
		{"connect path_len 4097", longPath(4097), "path_len", 88},
		{"connect shorter than fixed part", mutate(t, "connect_v6", func(b []byte) []byte { return put32(b, 8, 95)[:95] }), "length", 8},
		{"verdict id 0", mutate(t, "verdict", func(b []byte) []byte { return put32(put32(b, 16, 0), 20, 0) }), "request_id", 16},
		{"verdict action 0", mutate(t, "verdict", func(b []byte) []byte { return put32(b, 24, 0) }), "action", 24},
		{"verdict action 4", mutate(t, "verdict", func(b []byte) []byte { return put32(b, 24, 4) }), "action", 24},
		{"verdict scope 3", mutate(t, "verdict", func(b []byte) []byte { return put32(b, 28, 3) }), "cache_scope", 28},
		{"verdict ttl with scope 0", mutate(t, "verdict", func(b []byte) []byte { return put32(b, 28, 0) }), "cache_ttl_ms", 32},
		{"verdict ttl 0 with scope 1", mutate(t, "verdict", func(b []byte) []byte { return put32(b, 32, 0) }), "cache_ttl_ms", 32},
		{"verdict ttl too long", mutate(t, "verdict", func(b []byte) []byte { return put32(b, 32, MaxCacheTTLMS+1) }), "cache_ttl_ms", 32},
		{"verdict reserved", mutate(t, "verdict", func(b []byte) []byte { b[39] = 1; return b }), "reserved", 39},
		{"flush unknown flag", mutate(t, "flush", func(b []byte) []byte { return put32(b, 16, 4) }), "flags", 16},
		{"flush reserved", mutate(t, "flush", func(b []byte) []byte { b[20] = 1; return b }), "reserved", 20},
		{"verdict rule_tag with scope 0", mutate(t, "verdict", func(b []byte) []byte { return put32(put32(b, 28, 0), 32, 0) }), "rule_tag", 40},
		{"hit_batch no records", mutate(t, "hit_batch", func(b []byte) []byte { return put32(put32(b, 8, 24), 16, 0)[:24] }), "length", 8},
		{"hit_batch 65 records", func() []byte {
			b := append(goldenBytes(t, "hit_batch"), make([]byte, 63*HitRecordSize)...)
			return put32(put32(b, 8, uint32(len(b))), 16, 65)
		}(), "length", 8},
		{"hit_batch partial record", append(mutate(t, "hit_batch", func(b []byte) []byte { return put32(b, 8, 152+8) }), make([]byte, 8)...), "length", 8},
		{"hit_batch count vs length", mutate(t, "hit_batch", func(b []byte) []byte { return put32(b, 16, 1) }), "count", 16},
		{"hit_batch count 0", mutate(t, "hit_batch", func(b []byte) []byte { return put32(b, 16, 0) }), "count", 16},
		{"hit_batch reserved", mutate(t, "hit_batch", func(b []byte) []byte { b[21] = 1; return b }), "reserved", 21},
		{"hit_batch direction 0", mutate(t, "hit_batch", func(b []byte) []byte { b[24+60] = 0; return b }), "direction", 84},
		{"hit_batch direction 3", mutate(t, "hit_batch", func(b []byte) []byte { b[88+60] = 3; return b }), "direction", 148},
		{"hit_batch ip_version 5", mutate(t, "hit_batch", func(b []byte) []byte { b[24+61] = 5; return b }), "ip_version", 85},
		{"hit_batch v4 local tail", mutate(t, "hit_batch", func(b []byte) []byte { b[24+30] = 1; return b }), "local_addr", 54},
		{"hit_batch v4 remote tail", mutate(t, "hit_batch", func(b []byte) []byte { b[24+50] = 1; return b }), "remote_addr", 74},
		{"hit_batch action reject", mutate(t, "hit_batch", func(b []byte) []byte { b[24+63] = 3; return b }), "action", 87},
		{"hit_batch action 0", mutate(t, "hit_batch", func(b []byte) []byte { b[88+63] = 0; return b }), "action", 151},
		{"ack reserved", mutate(t, "ack", func(b []byte) []byte { b[22] = 1; return b }), "reserved", 22},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := Decode(c.b)
			if err == nil {
				t.Fatalf("Decode(%x) = %+v, want an error", c.b, m)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is %T, want *DecodeError", err, err)
			}
			if de.Field != c.field || de.Offset != c.offset {
				t.Fatalf("error %q names field %q at %d, want %q at %d", err, de.Field, de.Offset, c.field, c.offset)
			}
			if !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), fmt.Sprint(c.offset)) {
				t.Fatalf("error text %q does not name field %q and offset %d", err, c.field, c.offset)
			}
		})
	}
}

func TestVersionMismatch(t *testing.T) {
	_, err := Decode(mutate(t, "hello_reply", func(b []byte) []byte { return put16(b, 4, 1) }))
	if got, ok := VersionMismatch(err); !ok || got != 1 {
		t.Fatalf("VersionMismatch(%v) = %d, %v; want 1, true", err, got, ok)
	}
	_, err = Decode(mutate(t, "hello_reply", func(b []byte) []byte { b[0] = 0; return b }))
	if _, ok := VersionMismatch(err); ok {
		t.Fatalf("VersionMismatch(%v) = true for a magic error", err)
	}
}

func TestEncodeRejects(t *testing.T) {
	cases := []struct {
		name  string
		m     Message
		field string
	}{
		{"hello timeout 0", &Hello{ServiceVersion: 2, DefaultAction: ActionBlock}, "pending_timeout_ms"},
		{"verdict no id", &Verdict{Action: ActionPermit}, "request_id"},
		{"verdict ttl without scope", &Verdict{RequestID: 1, Action: ActionBlock, CacheTTLMS: 5}, "cache_ttl_ms"},
		{"verdict tag without scope", &Verdict{RequestID: 1, Action: ActionBlock, RuleTag: 3}, "rule_tag"},
		{"hit_batch empty", &HitBatch{}, "count"},
		{"hit_batch too many", &HitBatch{Hits: make([]Hit, MaxHitsPerBatch+1)}, "count"},
		{"hit_batch v6 addr in v4 record", &HitBatch{Hits: []Hit{{Direction: Outbound, IPVersion: 4, Action: ActionPermit,
			Local: netip.MustParseAddrPort("[2001:2::1]:1"), Remote: netip.MustParseAddrPort("198.18.0.1:2")}}}, "local_addr"},
		{"hit_batch action reject", &HitBatch{Hits: []Hit{{Direction: Outbound, IPVersion: 4, Action: ActionReject,
			Local: netip.MustParseAddrPort("198.18.0.1:1"), Remote: netip.MustParseAddrPort("198.18.0.2:2")}}}, "action"},
		{"connect v6 addr in v4 layer", &ConnectRequest{RequestID: 1, Layer: LayerConnectV4, Direction: Outbound, IPVersion: 4,
			Local: netip.MustParseAddrPort("[2001:2::1]:1"), Remote: netip.MustParseAddrPort("198.18.0.1:2")}, "local_addr"},
		{"connect zero addr", &ConnectRequest{RequestID: 1, Layer: LayerConnectV6, Direction: Outbound, IPVersion: 6,
			Local: netip.MustParseAddrPort("[2001:2::1]:1")}, "remote_addr"},
		{"connect path too long", &ConnectRequest{RequestID: 1, Layer: LayerConnectV4, Direction: Outbound, IPVersion: 4,
			Local: netip.MustParseAddrPort("198.18.0.1:1"), Remote: netip.MustParseAddrPort("198.18.0.2:2"),
			Path: make([]uint16, MaxPathLen+1)}, "path_len"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			prefix := []byte("keep")
			b, err := c.m.AppendBinary(prefix)
			var de *DecodeError
			if !errors.As(err, &de) || de.Field != c.field {
				t.Fatalf("AppendBinary error = %v, want one naming %q", err, c.field)
			}
			if string(b) != "keep" {
				t.Fatalf("AppendBinary changed the buffer on error: %q", b)
			}
		})
	}
}

func TestMaxPathRoundTrip(t *testing.T) {
	m := &ConnectRequest{RequestID: 7, Layer: LayerConnectV6, Direction: Outbound, IPVersion: 6, Protocol: 6,
		Local: netip.MustParseAddrPort("[2001:2::1]:1"), Remote: netip.MustParseAddrPort("[::ffff:198.18.0.1]:2"),
		Path: EncodePath(strings.Repeat("é", MaxPathLen))}
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != MaxMessageSize {
		t.Fatalf("len = %d, want %d", len(b), MaxMessageSize)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip differs")
	}
}

func TestStatsMap(t *testing.T) {
	m := golden[7].msg.(*StatsReply)
	mp := m.Map()
	if len(mp) != 16 || mp["classified"] != 1 || mp["alloc_failures"] != 15 || mp["malformed_messages"] != 10 || mp["hits_lost"] != 16 {
		t.Fatalf("Map = %v", mp)
	}
}

// FuzzDecode checks that Decode never panics and that whatever it accepts re-encodes
// to exactly the bytes it was given.
func FuzzDecode(f *testing.F) {
	for _, g := range golden {
		b, err := Encode(g.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if m != nil {
				t.Fatalf("Decode returned %+v with error %v", m, err)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is %T, want *DecodeError", err, err)
			}
			return
		}
		again, err := Encode(m)
		if err != nil {
			t.Fatalf("decoded %+v does not re-encode: %v", m, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n  in %x\n out %x", b, again)
		}
	})
}
