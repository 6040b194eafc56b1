package procattr

import (
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
)

// fuzzServers are the resolver addresses FuzzDNSQueryParse loads the program for.
var fuzzServers = [2]netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("[fd00::53]:53")}

var (
	fuzzOnce  sync.Once
	fuzzObjs  [2]dnsqueryObjects
	fuzzConns *ebpf.Map
	fuzzErr   error
)

// refQueryKey is the key bpf/dnsquery.c records for the IP packet pkt (IPv4 unless
// v6) sent to server, or false if it records none: the program's parsing, written
// again in Go for the fuzzer to compare with.
func refQueryKey(v6 bool, pkt []byte, server netip.AddrPort) (dnsqueryDqKey, bool) {
	var k dnsqueryDqKey
	var off int
	if !v6 {
		if !server.Addr().Is4() || len(pkt) < 20 {
			return k, false
		}
		h := pkt[:20]
		if h[0]>>4 != 4 || h[0]&0xf < 5 || h[9] != 17 || (h[6]&0x1f)|h[7] != 0 {
			return k, false
		}
		if [4]byte(h[16:20]) != server.Addr().As4() {
			return k, false
		}
		k.Client = netip.AddrFrom4([4]byte(h[12:16])).As16()
		k.Server = server.Addr().As16()
		off = int(h[0]&0xf) * 4
	} else {
		if server.Addr().Is4() || len(pkt) < 40 {
			return k, false
		}
		h := pkt[:40]
		if [16]byte(h[24:40]) != server.Addr().As16() {
			return k, false
		}
		next := h[6]
		off = 40
		for i := 0; i < 6 && next != 17; i++ {
			if off+4 > len(pkt) {
				return k, false
			}
			e := pkt[off : off+4]
			switch next {
			case 0, 43, 60:
				off += (int(e[1]) + 1) * 8
			case 44:
				if binary.BigEndian.Uint16(e[2:4])&0xfff8 != 0 {
					return k, false
				}
				off += 8
			default:
				return k, false
			}
			next = e[0]
		}
		if next != 17 {
			return k, false
		}
		k.Client = [16]byte(h[8:24])
		k.Server = [16]byte(h[24:40])
	}
	if off+10 > len(pkt) {
		return k, false
	}
	u := pkt[off : off+10]
	if binary.BigEndian.Uint16(u[2:4]) != server.Port() {
		return k, false
	}
	k.ClientPort = binary.BigEndian.Uint16(u[0:2])
	k.ServerPort = server.Port()
	k.Id = binary.BigEndian.Uint16(u[8:10])
	return k, true
}

// FuzzDNSQueryParse runs the query-recording program (BPF_PROG_TEST_RUN) on
// arbitrary IPv4 and IPv6 packets: it always lets the packet pass, and records a
// sender under exactly the key refQueryKey finds, or none when it finds none.
func FuzzDNSQueryParse(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("loading eBPF programs needs root")
	}
	udp4 := []byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 53,
		0xa0, 0x00, 0, 53, 0, 20, 0, 0, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	f.Add(false, udp4)
	opts := append([]byte{0x46}, udp4[1:20]...)
	opts = append(append(opts, 1, 1, 1, 0), udp4[20:]...)
	f.Add(false, opts)
	frag := append([]byte{}, udp4...)
	frag[6], frag[7] = 0, 8
	f.Add(false, frag)
	udp6 := make([]byte, 40, 60)
	udp6[0], udp6[6], udp6[7] = 0x60, 17, 64
	udp6[23] = 1
	copy(udp6[24:], fuzzServers[1].Addr().AsSlice())
	udp6 = append(udp6, 0xa0, 0, 0, 53, 0, 20, 0, 0, 0x56, 0x78, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0)
	f.Add(true, udp6)
	ext := append([]byte{}, udp6[:40]...)
	ext[6] = 0 // hop-by-hop, then a fragment header (first fragment), then UDP
	ext = append(ext, 44, 0, 1, 4, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 1)
	ext = append(ext, udp6[40:]...)
	f.Add(true, ext)
	f.Fuzz(func(t *testing.T, v6 bool, pkt []byte) {
		fuzzOnce.Do(func() {
			fuzzConns, fuzzErr = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 8, ValueSize: connRecordSize, MaxEntries: 16})
			if fuzzErr != nil {
				return
			}
			var netns uint64
			var d *sockDiag
			if d, fuzzErr = newSockDiag(1); fuzzErr != nil {
				return
			}
			netns, fuzzErr = d.netnsCookie()
			d.close()
			for i, s := range fuzzServers {
				if fuzzErr == nil {
					fuzzObjs[i], fuzzErr = loadDNSQueryObjects(s, netns, fuzzConns)
				}
			}
		})
		if fuzzErr != nil {
			t.Fatal(fuzzErr)
		}
		i, ethType, minLen := 0, []byte{0x08, 0x00}, 20
		if v6 {
			i, ethType, minLen = 1, []byte{0x86, 0xdd}, 40
		}
		if len(pkt) < minLen || len(pkt) > 3000 {
			// BPF_PROG_TEST_RUN refuses a packet shorter than its IP header or
			// longer than a page less room (the stack never sends such a one).
			return
		}
		objs := &fuzzObjs[i]
		data := append(append(make([]byte, 12, 14+len(pkt)), ethType...), pkt...)
		ret, err := objs.LatchDnsquery.Run(&ebpf.RunOptions{Data: data})
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		if ret != 1 {
			t.Fatalf("the program returned %d: it must let every packet pass", ret)
		}
		var keys []dnsqueryDqKey
		var k dnsqueryDqKey
		var v dnsqueryDqSender
		for it := objs.Senders.Iterate(); it.Next(&k, &v); {
			keys = append(keys, k)
		}
		for _, k := range keys {
			objs.Senders.Delete(&k)
		}
		want, ok := refQueryKey(v6, pkt, fuzzServers[i])
		switch {
		case ok && (len(keys) != 1 || keys[0] != want):
			t.Fatalf("packet %x: records %+v, want %+v", pkt, keys, want)
		case !ok && len(keys) != 0:
			t.Fatalf("packet %x: records %+v, want none", pkt, keys)
		}
	})
}
