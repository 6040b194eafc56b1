package procattr

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// TestDNSQueriesSegmentedNotCredited: a program that takes the port of another
// program's socket (closed) and sends one datagram as UDP segments (UDP_SEGMENT,
// unprivileged) must not have a segment credited to the other program through the
// record the other's datagram left (the resolver dropped that datagram unanswered,
// as dnsproxy does when it is at its limit). The egress program sees a segmented
// datagram once, before it is cut: only the first segment's id was recorded, so the
// later segments are datagrams it never saw, and one with the other's id took its
// record.
func TestDNSQueriesSegmentedNotCredited(t *testing.T) {
	requireRoot(t)
	ns, srv, q := dnsQueryNetns(t)
	port := freeUDPPort(t, ns)
	victim := startClient(t, ns, "udp-connect", srv.addr, bindPortEnv+"="+strconv.Itoa(port))
	from := srv.read(t)
	p, err := q.Resolve(from, srv.addr, helperID)
	wantProcess(t, p, err, victim.pid(), MethodEBPF) // the victim is known now
	// Its next query is read and dropped unanswered (the resolver was busy): the
	// record stays; the victim gives up and closes its socket.
	victim.say(t, "send", "SENT")
	srv.read(t)
	victim.closeSocket(t)

	// Another program takes the port and sends two segments, the second with the
	// victim's id.
	var fd int
	inNetns(t, ns, func() { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0) })
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(srv.addr.Port()), Addr: srv.addr.Addr().As4()}); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, 8); err != nil {
		t.Skipf("UDP_SEGMENT: %v", err)
	}
	if _, err := unix.Write(fd, []byte("zzzzzzzzlatch")); err != nil {
		// Refused at egress: nothing reaches the resolver to be misattributed.
		t.Logf("segmented send: %v", err)
		return
	}
	srv.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	for i := 0; i < 2; i++ {
		n, src, err := srv.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("segment %d: %v", i+1, err)
		}
		from = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		id := uint16(buf[0])<<8 | uint16(buf[1])
		p, err := q.Resolve(from, srv.addr, id)
		t.Logf("segment %d %q from %v: pid %d, %v", i+1, buf[:n], from, p.PID, err)
		if p.PID == victim.pid() {
			t.Errorf("segment %q sent by pid %d from the port the victim closed is credited to the victim (pid %d)",
				buf[:n], unix.Getpid(), victim.pid())
		}
	}
}

// TestDNSQueryProgramClashNewerRecord: two sockets sharing an address and port send
// one key at once on two CPUs; the second to read the clock inserts first, so the
// one whose insert failed finds a record a little newer than its own reading. That
// is a clash (the record must keep the first sender and count another), not a
// record more than 5 s old to replace: v.sent_ns - old->sent_ns wrapped around.
func TestDNSQueryProgramClashNewerRecord(t *testing.T) {
	requireRoot(t)
	conns, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 8, ValueSize: connRecordSize, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer conns.Close()
	d, err := newSockDiag(1)
	if err != nil {
		t.Fatal(err)
	}
	netns, err := d.netnsCookie()
	d.close()
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("127.0.0.53:53")
	objs, err := loadDNSQueryObjects(server, netns, conns)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	pkt := []byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 53,
		0xa0, 0x00, 0, 53, 0, 20, 0, 0, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	key := dnsqueryDqKey{Client: netip.MustParseAddr("::ffff:127.0.0.1").As16(), Server: netip.MustParseAddr("::ffff:127.0.0.53").As16(),
		ClientPort: 0xa000, ServerPort: 53, Id: 0x1234}
	const otherCookie = 1 << 40
	other := dnsqueryDqSender{Cookie: otherCookie, SentNs: monoNow() + uint64(50*time.Millisecond)}
	if err := objs.Senders.Put(&key, &other); err != nil {
		t.Fatal(err)
	}
	data := append(append(make([]byte, 12, 14+len(pkt)), 0x08, 0x00), pkt...)
	if ret, err := objs.LatchDnsquery.Run(&ebpf.RunOptions{Data: data}); err != nil || ret != 1 {
		t.Fatalf("run: %d, %v", ret, err)
	}
	var got dnsqueryDqSender
	if err := objs.Senders.Lookup(&key, &got); err != nil {
		t.Fatal(err)
	}
	if got.Cookie != otherCookie || got.Others != 1 {
		t.Errorf("after a second socket's datagram with the key: record of cookie %d with %d others; want the first socket's (%d) with 1 other",
			got.Cookie, got.Others, uint64(otherCookie))
	}
}

// TestDNSQueriesSegmentsRecorded: every segment of a datagram sent as UDP segments,
// up to the most the kernel allows, has a record of its own (none is a datagram
// with no record, attributed the old way).
func TestDNSQueriesSegmentsRecorded(t *testing.T) {
	requireRoot(t)
	ns, srv, q := dnsQueryNetns(t)
	var fd int
	var err error
	inNetns(t, ns, func() { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0) })
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(srv.addr.Port()), Addr: srv.addr.Addr().As4()}); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, 12); err != nil {
		t.Skipf("UDP_SEGMENT: %v", err)
	}
	// As many segments as the kernel takes: UDP_MAX_SEGMENTS, 128 (64 before 6.9).
	segs := 128
	for {
		msg := make([]byte, 0, 12*segs)
		for i := range segs {
			msg = append(msg, byte(i), 0x77, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0)
		}
		_, err := unix.Write(fd, msg)
		if err == unix.EINVAL && segs == 128 {
			segs = 64
			continue
		}
		if err != nil {
			t.Fatalf("send %d segments: %v", segs, err)
		}
		break
	}
	srv.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	for i := range segs {
		n, src, err := srv.pc.ReadFromUDPAddrPort(buf)
		if err != nil || n != 12 {
			t.Fatalf("segment %d: %d bytes, %v", i+1, n, err)
		}
		from := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		p, err := q.Resolve(from, srv.addr, uint16(buf[0])<<8|uint16(buf[1]))
		if err != nil || p.PID != int32(unix.Getpid()) {
			t.Errorf("segment %d = pid %d, %v; want this process (%d)", i+1, p.PID, err, unix.Getpid())
		}
	}
	if st := q.Stats(); st.Missing != 0 || st.Fast+st.Slow != uint64(segs) {
		t.Errorf("stats %+v: want a record for each of %d segments", st, segs)
	}
}

// TestDNSQueriesStaleRecordPortTakenLater: as TestDNSQueriesPortTakenLater, but the
// resolver reads the query only after its record is too old to be used alone (the
// resolver stalled: a flood of queries does that). The record still names the
// socket that sent the datagram: the program that bound the port afterwards is not
// credited with the query.
func TestDNSQueriesStaleRecordPortTakenLater(t *testing.T) {
	requireRoot(t)
	ns, srv, q := dnsQueryNetns(t)
	port := freeUDPPort(t, ns)
	first := startClient(t, ns, "udp-connect", srv.addr, bindPortEnv+"="+strconv.Itoa(port))
	from := srv.read(t)
	first.closeSocket(t)
	later := startClient(t, ns, "udp-bind", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)))
	time.Sleep(dnsQueryFresh + 100*time.Millisecond)
	p, err := q.Resolve(from, srv.addr, helperID)
	if p.PID == later.pid() {
		t.Fatalf("the query was credited to pid %d, which bound the port after the sender (pid %d) closed it", p.PID, first.pid())
	}
	if p.PID != 0 || err == nil {
		t.Errorf("query of a closed socket, read late = pid %d, %v; want none", p.PID, err)
	}
}

// watchDNSHelper is the helper's watch-dns mode: it attaches the DNS query program
// for server as the daemon does, says its program id, and waits to be killed.
func watchDNSHelper(server string) int {
	r, err := NewResolver(Options{DisableProcfs: true})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	q, err := r.WatchDNSQueries(netip.MustParseAddrPort(server), "")
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	info, err := q.prog.Info()
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	id, _ := info.ID()
	fmt.Println("PROG", id)
	time.Sleep(time.Minute) // bounded: the test kills this process
	return 0
}

// egressProgs lists the ids of the cgroup/skb egress programs linked to the root
// of the cgroup2 hierarchy (cgroup id 1), from the kernel's list of links: a
// mount of cgroup2 found in mountinfo may be another test's (a private mount
// gone a moment later), and other tests attach egress programs too.
func egressProgs(t *testing.T) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		l := it.Take()
		info, err := l.Info()
		l.Close()
		if err != nil {
			continue // gone since
		}
		if c := info.Cgroup(); info.Type == link.CgroupType && c != nil && c.CgroupId == 1 &&
			ebpf.AttachType(c.AttachType) == ebpf.AttachCGroupInetEgress {
			ids = append(ids, info.Program)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("list the kernel's BPF links: %v", err)
	}
	return ids
}

// TestDNSQueriesProgramGoneWithDaemon: the program the resolver attaches to the root
// cgroup (every packet of every process passes it) goes with the process that
// attached it, even killed (SIGKILL): nothing is pinned, and no `latch cleanup`
// is needed for it.
func TestDNSQueriesProgramGoneWithDaemon(t *testing.T) {
	requireRoot(t)
	makeClientExe(t)
	ns := newNetns(t)
	cmd := exec.Command("ip", "netns", "exec", ns, clientExe, "watch-dns", "127.0.0.1:53")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	line, _ := bufio.NewReader(out).ReadString('\n')
	var id ebpf.ProgramID
	if _, err := fmt.Sscanf(line, "PROG %d", &id); err != nil {
		t.Fatalf("helper said %q", line)
	}
	if !slices.Contains(egressProgs(t), id) {
		t.Fatalf("program %d not on the root cgroup while its process runs: %v", id, egressProgs(t))
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	killed = true
	deadline := time.Now().Add(5 * time.Second)
	for slices.Contains(egressProgs(t), id) {
		if time.Now().After(deadline) {
			t.Fatalf("program %d still attached to the root cgroup 5 s after its process was killed", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
