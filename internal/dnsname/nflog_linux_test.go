package dnsname

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The kernel tests: two network namespaces joined by a veth pair.
//
//	client ns: 198.18.7.1/24, fd00:7::1/64, NFLOG rules (OUTPUT udp dport 53, INPUT udp
//	           sport 53 on a flow the client opened), ListenNFLOG, resolver
//	server ns: 198.18.7.2 and .3/24, fd00:7::2 and ::3/64, DNS responders on port 53

const testGroup = 4243

// zone is what the test responder answers: name -> records, by query type.
var zone = map[string]map[uint16][]testRR{
	"www.latch.test": {
		typeA:    {rrCNAME("www.latch.test", "e1.cdn.latch.test", 300), rrA("e1.cdn.latch.test", "198.18.5.5", 20)},
		typeAAAA: {rrCNAME("www.latch.test", "e1.cdn.latch.test", 300), rrA("e1.cdn.latch.test", "fd00:5::5", 20)},
	},
	"v6only.latch.test": {
		typeA:    {rrA("v6only.latch.test", "198.18.6.7", 300)},
		typeAAAA: {rrA("v6only.latch.test", "fd00:6::7", 300)},
	},
}

// dnsNet is the two namespaces with a Learner reading the client's copies.
type dnsNet struct {
	cli, srv string
	learner  *Learner
	cache    *Cache
}

var netCounter int

func newDNSNet(t *testing.T) *dnsNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and netfilter rules")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	netCounter++
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, netCounter)
	n := &dnsNet{cli: "latch-dns" + id + "-c", srv: "latch-dns" + id + "-s"}
	vc, vs := "ldc"+id, "lds"+id
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{n.cli, n.srv} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	run("ip", "link", "add", vc, "netns", n.cli, "type", "veth", "peer", "name", vs, "netns", n.srv)
	run("ip", "-n", n.cli, "addr", "add", "198.18.7.1/24", "dev", vc)
	run("ip", "-n", n.cli, "-6", "addr", "add", "fd00:7::1/64", "dev", vc, "nodad")
	for _, a := range []string{"198.18.7.2/24", "198.18.7.3/24"} {
		run("ip", "-n", n.srv, "addr", "add", a, "dev", vs)
	}
	for _, a := range []string{"fd00:7::2/64", "fd00:7::3/64"} {
		run("ip", "-n", n.srv, "-6", "addr", "add", a, "dev", vs, "nodad")
	}
	for _, l := range [][2]string{{n.cli, vc}, {n.srv, vs}, {n.cli, "lo"}, {n.srv, "lo"}} {
		run("ip", "-n", l[0], "link", "set", l[1], "up")
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		run("ip", "netns", "exec", n.cli, tool, "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-m", "conntrack", "--ctdir", "ORIGINAL", "-j", "NFLOG", "--nflog-group", fmt.Sprint(testGroup))
		run("ip", "netns", "exec", n.cli, tool, "-A", "INPUT", "-p", "udp", "--sport", "53", "-m", "conntrack", "--ctstate", "ESTABLISHED", "--ctdir", "REPLY", "-j", "NFLOG", "--nflog-group", fmt.Sprint(testGroup))
	}

	n.cache = NewCache(0)
	n.learner = NewLearner(n.cache)
	ctx, cancel := context.WithCancel(context.Background())
	listenErr := make(chan error, 1)
	go func() {
		listenErr <- inNetns(n.cli, func() error { return ListenNFLOG(ctx, testGroup, n.learner) })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-listenErr:
			if err != nil {
				t.Errorf("ListenNFLOG: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("ListenNFLOG did not return within 5s of cancel")
		}
	})
	// The listener feeds the cache once it has bound the group: copies sent before
	// that are lost.
	for deadline := time.Now().Add(5 * time.Second); n.cache.feed.Load() == nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("ListenNFLOG did not bind its group within 5s")
		}
	}
	return n
}

func TestNFLOGLabelsResolvedAddresses(t *testing.T) {
	n := newDNSNet(t)
	cli, srv := n.cli, n.srv
	for _, addr := range []string{"198.18.7.2:53", "[fd00:7::2]:53"} {
		var pc net.PacketConn
		if err := inNetns(srv, func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
			t.Fatalf("responder on %s: %v", addr, err)
		}
		t.Cleanup(func() { pc.Close() })
		go serveDNS(pc)
	}
	cache := n.cache

	resolve := func(server, name string) []string {
		t.Helper()
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var c net.Conn
			err := inNetns(cli, func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, "udp", server)
				return err
			})
			return c, err
		}}
		qctx, qcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer qcancel()
		addrs, err := r.LookupHost(qctx, name+".")
		if err != nil {
			t.Fatalf("resolve %s via %s: %v", name, server, err)
		}
		return addrs
	}
	// waitLabel resolves until the cache labels addr: the listener may still be binding
	// when the first answer arrives. Bounded: 20 tries, 250ms each.
	waitLabel := func(server, name string, addrs ...string) {
		t.Helper()
		for try := 0; try < 20; try++ {
			got := resolve(server, name)
			deadline := time.Now().Add(250 * time.Millisecond)
			for time.Now().Before(deadline) {
				missing := ""
				for _, a := range addrs {
					if n, ok := cache.Lookup(netip.MustParseAddr(a)); !ok || n != name {
						missing = a
					}
				}
				if missing == "" {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			if try == 19 {
				t.Fatalf("resolver got %v for %s via %s, but the cache does not label all of %v (stats: %+v)",
					got, name, server, addrs, n.learner.Stats())
			}
		}
	}

	// Over IPv4: the CNAME chain is followed back to the name the program asked for.
	waitLabel("198.18.7.2:53", "www.latch.test", "198.18.5.5", "fd00:5::5")
	// Over IPv6.
	waitLabel("[fd00:7::2]:53", "v6only.latch.test", "198.18.6.7", "fd00:6::7")
	if _, ok := cache.Lookup(netip.MustParseAddr("198.18.7.2")); ok {
		t.Errorf("the DNS server's own address got a label")
	}

	// A program connects the moment its answer arrives, often before the reader has
	// applied the copy: Lookup alone misses (logged: it depends on scheduling), and
	// LookupWait, which waits while a response is queued or being applied, must not.
	immediate, waited := 0, 0
	var slowest time.Duration
	const rounds = 50
	for i := 0; i < rounds; i++ {
		name := fmt.Sprintf("n%d.latch.test", i)
		resolve("198.18.7.2:53", name)
		addr := netip.AddrFrom4([4]byte{198, 18, 10, byte(i)})
		if got, ok := cache.Lookup(addr); ok && got == name {
			immediate++
		}
		start := time.Now()
		if got, ok := cache.LookupWait(addr, time.Second); ok && got == name {
			waited++
		}
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("labelled when the resolver returned: Lookup %d of %d, LookupWait %d of %d (slowest wait %v)", immediate, rounds, waited, rounds, slowest)
	if waited != rounds {
		t.Errorf("LookupWait labelled %d of %d addresses right after their DNS answers", waited, rounds)
	}
	// No backlog, no wait: an address nobody resolved misses at once.
	start := time.Now()
	if name, ok := cache.LookupWait(netip.MustParseAddr("198.18.99.99"), time.Second); ok {
		t.Errorf("unresolved address labelled %q", name)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("LookupWait waited %v for an address no DNS answer is pending for", d)
	}
}

// serveDNS answers A and AAAA queries from zone until pc is closed.
func serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		q := buf[:n]
		if n < 12 {
			continue
		}
		// The question: labels up to the root, then type and class.
		off := 12
		var labels []string
		for off < n && q[off] != 0 && off+1+int(q[off]) < n {
			labels = append(labels, string(q[off+1:off+1+int(q[off])]))
			off += 1 + int(q[off])
		}
		if off+5 > n {
			continue
		}
		qtype := binary.BigEndian.Uint16(q[off+1:])
		question := q[12 : off+5]
		name := strings.ToLower(strings.Join(labels, "."))
		answers := zone[name][qtype]
		var seq int
		if _, err := fmt.Sscanf(name, "n%d.latch.test", &seq); err == nil && qtype == typeA {
			answers = []testRR{rrA(name, fmt.Sprintf("198.18.10.%d", seq%256), 60)}
		}
		rcode := uint16(0)
		if answers == nil && zone[name] == nil && !strings.HasSuffix(name, ".latch.test") {
			rcode = 3
		}
		resp := buildResponse(binary.BigEndian.Uint16(q), rcode, question, answers)
		pc.WriteTo(resp, from)
	}
}

// inNetns runs fn on a thread in the named network namespace. Sockets fn creates stay
// in that namespace.
func inNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it ends with the goroutine instead of serving others
		// in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// FuzzNFLOGCopy checks that no kernel message crashes copyOf, and that what it reads
// lies inside the message.
func FuzzNFLOGCopy(f *testing.F) {
	pkt := udpPacket(netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:53"), buildQuery(1, "www.example.com", typeA))
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nfulaPacketHdr, Data: []byte{0x08, 0x00, hookLocalOut, 0}},
		{Type: nfulaUID, Data: binary.BigEndian.AppendUint32(nil, 1000)},
		{Type: nfulaPayload, Data: pkt},
	})
	if err != nil {
		f.Fatal(err)
	}
	msg := append([]byte{unix.AF_INET, 0, 0x10, 0x93}, attrs...)
	f.Add(msg)
	f.Add(msg[:len(msg)-3])
	f.Add([]byte{2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, ok := copyOf(data)
		if !ok {
			return
		}
		if len(c.payload) > len(data) || c.hook < -1 || c.hook > 255 || c.uid < -1 || c.uid > 1<<32-1 {
			t.Fatalf("copy %+v from %d bytes", c, len(data))
		}
	})
}

func TestCopyOf(t *testing.T) {
	pkt := []byte{0x45, 1, 2, 3}
	attrs, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nfulaPacketHdr, Data: []byte{0x08, 0x00, hookLocalIn, 0}},
		{Type: nfulaPayload, Data: pkt},
	})
	c, ok := copyOf(append([]byte{unix.AF_INET, 0, 0, 1}, attrs...))
	if !ok || c.hook != hookLocalIn || c.uid != -1 || string(c.payload) != string(pkt) {
		t.Errorf("copyOf: %+v %v", c, ok)
	}
	if _, ok := copyOf(append([]byte{unix.AF_INET, 0, 0, 1}, attrs[:8]...)); ok {
		t.Error("a message without its payload attribute was read")
	}
}
