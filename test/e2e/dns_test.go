//go:build linux

package e2e

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestForgedDNSAnswersTeachNoName is issue 14's second finding: a name may be learned
// only from the first answer that matches a query the host sent (client and server
// address and port, transaction id, question name and type) within a few seconds. A
// hostile DNS server (or anyone who can put packets on the client's flow) answers
// every way it can around one real query each time, claiming bank.test is one of its
// own addresses; a host rule for bank.test must allow the real address and none of
// those.
func TestForgedDNSAnswersTeachNoName(t *testing.T) {
	n := NewNet(t)
	prefix := strings.TrimSuffix(n.ServerIP, ".2")
	forged := func(last int) string { return fmt.Sprintf("%s.%d", prefix, last) }
	// The forger's addresses: on the server's loopback (Linux answers ARP for them on
	// the veth), one TCP server behind all of them.
	for i := 60; i <= 72; i++ {
		if out, err := n.Exec(n.Server, "ip", "addr", "add", forged(i)+"/32", "dev", "lo"); err != nil {
			t.Fatalf("ip addr add %s: %v\n%s", forged(i), err, out)
		}
	}
	srv := n.Start(n.Server, helperBin, "serve", "0.0.0.0:8095")
	srv.WaitLine(t, 10*time.Second, func(l string) bool { return l == "listening" })
	dns := startScriptedDNS(t, n.Server, n.ServerIP+":53")

	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--proto", "udp", "--port", "53", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--host", "bank.test", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--host", "*.flood.test", "--action", "allow")
	// Everything else in the server's /24 is refused at once; a name is more specific
	// than an address range, so only a learned name can let a connection through.
	d.MustCLI(t, "rules", "add", "--proto", "tcp", "--remote", prefix+".0/24", "--action", "deny")

	query := func(name string, timeout time.Duration) <-chan string {
		out := make(chan string, 1)
		go func() {
			o, _ := n.Exec(n.Client, helperBin, "dns-query", n.ServerIP+":53", name, timeout.String())
			out <- o
		}()
		return out
	}
	connect := func(addr string) Result {
		t.Helper()
		out, err := n.Exec(n.Client, helperBin, "connect", addr+":8095", "5s")
		if err != nil {
			t.Fatalf("connect %s: %v\n%s", addr, err, out)
		}
		var r Result
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
			t.Fatalf("connect output %q: %v", out, err)
		}
		return r
	}
	bankA := func(last int) rr { return rrA("bank.test", forged(last)) }

	// (a) Late: the server withholds the answer to a real query for bank.test and sends
	// it (right id, right question) 6 s later, when the client has given up.
	lateDone := query("bank.test", time.Second)
	late := dns.next(t)
	lateAt := time.Now().Add(6 * time.Second)

	// The real answer: the host rule allows the real address, and history names it.
	res := make(chan string, 1)
	go func() {
		o, _ := n.Exec(n.Client, helperBin, "resolve-connect", n.ServerIP+":53", "bank.test", "8095", "10s")
		res <- o
	}()
	realQ := dns.next(t)
	dns.send(t, realQ, realQ.response(0, rrA("bank.test", n.ServerIP)))
	// (d) A second answer after the first, same id and question.
	dns.send(t, realQ, realQ.response(0, bankA(61)))
	if out := <-res; !strings.Contains(out, `"outcome":"connected"`) {
		t.Fatalf("resolve-connect bank.test with a host rule for it: %s", out)
	}
	if c := findConn(t, d, 8095, 0); c["host"] != "bank.test" || c["verdict"] != "allow" {
		t.Errorf("history %v: want host bank.test, allowed by the host rule", c)
	}

	// (b) A wrong transaction id first, then the real answer.
	done := query("bank.test", 5*time.Second)
	q := dns.next(t)
	wrongID := q
	wrongID.id ^= 0x5a5a
	dns.send(t, q, wrongID.response(0, bankA(62)))
	dns.send(t, q, q.response(0, rrA("bank.test", n.ServerIP)))
	<-done

	// (c) The right id with another question, then the real answer to the real one.
	done = query("www.test", 5*time.Second)
	q = dns.next(t)
	other := q
	other.question = dnsQuestion("bank.test", 1)
	dns.send(t, q, other.response(0, bankA(63)))
	dns.send(t, q, q.response(3))
	<-done

	// The same question in other letter case (0x20): not the question that was sent.
	done = query("bank.test", 5*time.Second)
	q = dns.next(t)
	upper := q
	upper.question = dnsQuestion("BANK.test", 1)
	dns.send(t, q, upper.response(0, rrA("BANK.test", forged(64))))
	dns.send(t, q, q.response(0, rrA("bank.test", n.ServerIP)))
	<-done

	// Truncated (TC): the client goes to TCP; the UDP answer teaches nothing.
	done = query("bank.test", 5*time.Second)
	q = dns.next(t)
	dns.send(t, q, q.response(0x200, bankA(65)))
	<-done

	// A real-looking answer for evil.test that also claims bank.test, in the answer and
	// in the additional section: only records reached from the question count.
	done = query("evil.test", 5*time.Second)
	q = dns.next(t)
	dns.send(t, q, q.responseWithAdditional([]rr{rrA("evil.test", forged(66)), bankA(67)}, []rr{bankA(68)}))
	<-done

	// An AAAA query answered with an A record for bank.test: a question for IPv6
	// addresses teaches none of another type.
	done = query("bank.test", 5*time.Second)
	q = dns.next(t)
	aaaa := q
	aaaa.question = dnsQuestion("bank.test", 28)
	// The client asked for A: answering its id with an AAAA question is a mismatch too.
	dns.send(t, q, aaaa.response(0, bankA(69)))
	dns.send(t, q, q.response(3))
	<-done

	// A flood: after one real query, 4,096 answers with every id and other names.
	done = query("flood.test", 5*time.Second)
	q = dns.next(t)
	dns.send(t, q, q.response(3))
	<-done
	for i := 0; i < 4096; i++ {
		f := q
		f.id = uint16(i * 16)
		f.question = dnsQuestion(fmt.Sprintf("n%d.flood.test", i), 1)
		dns.send(t, q, f.response(0, rrA(fmt.Sprintf("n%d.flood.test", i), forged(70))))
		if i%64 == 63 {
			time.Sleep(5 * time.Millisecond) // keep the copies within the socket buffer
		}
	}
	for i := 0; i < 256; i++ {
		f := q
		f.id = uint16(i)
		f.question = dnsQuestion("bank.test", 1)
		dns.send(t, q, f.response(0, bankA(71)))
	}

	time.Sleep(time.Until(lateAt))
	dns.send(t, late, late.response(0, bankA(60)))
	if out := <-lateDone; !strings.Contains(out, `"outcome":"timeout"`) {
		t.Errorf("the withheld query was answered: %s", out)
	}
	time.Sleep(200 * time.Millisecond) // the copies reach the daemon

	for _, last := range []int{60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71} {
		if r := connect(forged(last)); r.Outcome == "connected" {
			t.Errorf("connection to the forged address %s allowed (a forged answer taught bank.test or *.flood.test)", forged(last))
		}
	}
	if r := connect(n.ServerIP); r.Outcome != "connected" {
		t.Errorf("connection to bank.test's real address %s: %+v", n.ServerIP, r)
	}

	var st struct {
		DNS *struct {
			Queries   uint64            `json:"queries"`
			Learned   uint64            `json:"learned"`
			Overflows uint64            `json:"overflows"`
			Ignored   map[string]uint64 `json:"ignored"`
		} `json:"dns"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.DNS == nil {
		t.Fatalf("status has no dns block")
	}
	t.Logf("status dns: %+v", *st.DNS)
	for reason, least := range map[string]uint64{"late": 1, "duplicate": 1, "mismatched_question": 3, "truncated": 1} {
		if st.DNS.Ignored[reason] < least {
			t.Errorf("dns ignored %s = %d, want at least %d", reason, st.DNS.Ignored[reason], least)
		}
	}
	// The flood: every copy was counted, unless the socket overflowed (copies lost to
	// a full buffer are never learned; the overflow is counted instead).
	if got := st.DNS.Ignored["unmatched"]; got < 4000 && st.DNS.Overflows == 0 {
		t.Errorf("dns ignored unmatched %d, want the flood of 4,352 counted", got)
	}
	text := d.MustCLI(t, "status")
	t.Logf("status:\n%s", text)
	if !strings.Contains(text, "mismatched_question") {
		t.Errorf("status text does not show DNS answers ignored by reason:\n%s", text)
	}
}

// scriptedDNS is a DNS server in the server namespace that the test drives: each query
// is handed to the test, which sends whatever responses it likes.
type scriptedDNS struct {
	pc      net.PacketConn
	queries chan dnsMsg
}

// dnsMsg is a query as received: its id, question section and sender.
type dnsMsg struct {
	id       uint16
	flags    uint16
	question []byte // name, type, class as sent
	from     net.Addr
}

type rr struct {
	name string
	typ  uint16
	data []byte
}

func rrA(name, ip string) rr {
	a := netip.MustParseAddr(ip).As4()
	return rr{name, 1, a[:]}
}

func dnsQuestion(name string, qtype uint16) []byte {
	var b []byte
	for _, l := range strings.Split(name, ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, qtype)
	return binary.BigEndian.AppendUint16(b, 1)
}

// response builds a response to m with extra flags (rcode, TC) and answers.
func (m dnsMsg) response(flags uint16, answers ...rr) []byte {
	return m.responseWithAdditional(answers, nil, flags)
}

func (m dnsMsg) responseWithAdditional(answers, additional []rr, extra ...uint16) []byte {
	flags := uint16(0x8180)
	for _, f := range extra {
		flags |= f
	}
	b := binary.BigEndian.AppendUint16(nil, m.id)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, 1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(answers)))
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(additional)))
	b = append(b, m.question...)
	for _, r := range append(append([]rr(nil), answers...), additional...) {
		q := dnsQuestion(r.name, r.typ)
		b = append(b, q[:len(q)-4]...)
		b = binary.BigEndian.AppendUint16(b, r.typ)
		b = binary.BigEndian.AppendUint16(b, 1)
		b = binary.BigEndian.AppendUint32(b, 300)
		b = binary.BigEndian.AppendUint16(b, uint16(len(r.data)))
		b = append(b, r.data...)
	}
	return b
}

func startScriptedDNS(t *testing.T, ns, addr string) *scriptedDNS {
	t.Helper()
	var pc net.PacketConn
	if err := inNetns(ns, func() (err error) { pc, err = net.ListenPacket("udp4", addr); return err }); err != nil {
		t.Fatalf("DNS server on %s in %s: %v", addr, ns, err)
	}
	s := &scriptedDNS{pc: pc, queries: make(chan dnsMsg, 16)}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				close(s.queries)
				return
			}
			m := buf[:n]
			if n < 17 || m[2]&0x80 != 0 {
				continue
			}
			end := 12
			for end < n && m[end] != 0 {
				end += 1 + int(m[end])
			}
			if end+5 > n {
				continue
			}
			s.queries <- dnsMsg{binary.BigEndian.Uint16(m), binary.BigEndian.Uint16(m[2:]), append([]byte(nil), m[12:end+5]...), from}
		}
	}()
	return s
}

// next returns the next query the server received.
func (s *scriptedDNS) next(t *testing.T) dnsMsg {
	t.Helper()
	select {
	case q, ok := <-s.queries:
		if !ok {
			t.Fatal("DNS server closed")
		}
		return q
	case <-time.After(10 * time.Second):
		t.Fatal("no DNS query within 10s")
	}
	return dnsMsg{}
}

func (s *scriptedDNS) send(t *testing.T, to dnsMsg, msg []byte) {
	t.Helper()
	if _, err := s.pc.WriteTo(msg, to.from); err != nil {
		t.Fatalf("send DNS response to %v: %v", to.from, err)
	}
}

// inNetns runs fn on a thread in the named network namespace; sockets fn opens stay in
// that namespace.
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
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err)) // the thread stays locked and dies
	}
	runtime.UnlockOSThread()
	return ferr
}

// TestDNSQueryHeldByAQuestionStillTeaches: a program's first DNS query is itself a
// connection that may wait on a question longer than the answer window. The window
// runs from when the query leaves, not from when it was held, so its answer still
// labels the address.
func TestDNSQueryHeldByAQuestionStillTeaches(t *testing.T) {
	n := NewNet(t)
	srv := n.Serve(t, 8096)
	dns := startScriptedDNS(t, n.Server, n.ServerIP+":53")
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--host", "slow.test", "--port", "8096", "--action", "allow")

	out := make(chan string, 1)
	go func() {
		o, _ := n.Exec(n.Client, helperBin, "dns-query", n.ServerIP+":53", "slow.test", "20s")
		out <- o
	}()
	p := waitPrompt(t, d, 53)
	time.Sleep(6 * time.Second) // the user takes a while
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "allow", "--for", "once")
	q := dns.next(t)
	dns.send(t, q, q.response(0, rrA("slow.test", n.ServerIP)))
	if o := <-out; !strings.Contains(o, n.ServerIP) {
		t.Fatalf("dns-query slow.test: %s", o)
	}
	if r := n.Connect(t, 8096, 10*time.Second); r.Outcome != "connected" {
		t.Errorf("connection to slow.test after its held query was answered: %+v", r)
	}
	srv.WaitLine(t, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "accepted") })
	if c := findConn(t, d, 8096, 0); c["host"] != "slow.test" {
		t.Errorf("history %v: want host slow.test", c)
	}
}
