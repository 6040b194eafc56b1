package procattr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// modes are the ways the tests run a Resolver: each method alone, then combined.
var modes = []struct {
	name       string
	opts       Options
	wantMethod string // "" : either
}{
	{"ebpf", Options{DisableProcfs: true}, MethodEBPF},
	{"procfs", Options{DisableEBPF: true}, MethodProcfs},
	{"combined", Options{}, ""},
}

// newResolverIn makes a Resolver whose sock_diag sockets live in netns ns.
func newResolverIn(t testing.TB, ns string, opts Options) *Resolver {
	t.Helper()
	var r *Resolver
	var err error
	inNetns(t, ns, func() { r, err = NewResolver(opts) })
	if err != nil {
		t.Fatalf("NewResolver(%+v): %v", opts, err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if !opts.DisableEBPF && !slices.Contains(r.Methods(), MethodEBPF) {
		t.Fatalf("eBPF hooks refused on this kernel (CI needs them): %v", r.MethodErrors()[MethodEBPF])
	}
	return r
}

func wantProcess(t *testing.T, got Process, err error, pid int32, wantMethod string) {
	t.Helper()
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if got.PID != pid || got.Exe != clientExe {
		t.Fatalf("Resolve = pid %d exe %q, want pid %d exe %q", got.PID, got.Exe, pid, clientExe)
	}
	if wantMethod != "" && got.Method != wantMethod {
		t.Errorf("Method = %q, want %q", got.Method, wantMethod)
	}
	if got.UID != 0 || got.User != "root" {
		t.Errorf("UID, User = %d, %q; want 0, root", got.UID, got.User)
	}
	if got.Comm == "" || got.Cmdline == "" {
		t.Errorf("Comm %q, Cmdline %q: want both", got.Comm, got.Cmdline)
	}
}

func wantUnknown(t *testing.T, got Process, err error, want error) {
	t.Helper()
	if err == nil || got.PID != 0 || got.Exe != "" {
		t.Fatalf("Resolve = %+v, %v; want unknown (pid 0, exe \"\") and an error", got, err)
	}
	if !errors.Is(err, want) {
		t.Errorf("Resolve error %v, want one wrapping %v", err, want)
	}
}

// TestResolveTCPSynSent attributes a connection whose SYN is still unanswered, as it
// is while latch holds it in the queue.
func TestResolveTCPSynSent(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			remote := netip.MustParseAddrPort("198.18.0.2:9")
			c := startClient(t, ns, "tcp", remote)
			p, err := r.Resolve(engine.TCP, c.Local, remote, 0)
			wantProcess(t, p, err, c.pid(), m.wantMethod)
			if p.Cmdline != clientExe+" tcp 198.18.0.2:9" {
				t.Errorf("Cmdline = %q", p.Cmdline)
			}
		})
		t.Run(m.name+"/dual-stack", func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			remote := netip.MustParseAddrPort("198.18.0.2:9")
			c := startClient(t, ns, "tcp-dual", remote)
			p, err := r.Resolve(engine.TCP, c.Local, remote, 0)
			wantProcess(t, p, err, c.pid(), m.wantMethod)
		})
	}
}

// TestResolveTCPEstablished covers IPv4 and IPv6 connections that completed.
func TestResolveTCPEstablished(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	for _, listen := range []string{"127.0.0.1:0", "[::1]:0"} {
		remote := listenIn(t, ns, listen)
		for _, m := range modes {
			t.Run(m.name+"/"+remote.Addr().String(), func(t *testing.T) {
				r := newResolverIn(t, ns, m.opts)
				c := startClient(t, ns, "tcp", remote)
				p, err := r.Resolve(engine.TCP, c.Local, remote, 0)
				wantProcess(t, p, err, c.pid(), m.wantMethod)
			})
		}
	}
}

// TestResolveUDP covers an unconnected socket that only used sendto (bound to the
// wildcard address: the packet's local address is not the socket's) and a
// connected one, over IPv4 and IPv6.
func TestResolveUDP(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	cases := []struct {
		mode, remote, localAddr string
	}{
		{"udp-sendto", "198.18.0.2:53", "198.18.0.1"},
		{"udp-sendto", "[::1]:53", "::1"},
		{"udp-connect", "198.18.0.2:53", "198.18.0.1"},
		{"udp-connect", "[::1]:5353", "::1"},
		{"udp-sendto-dual", "198.18.0.2:53", "198.18.0.1"},
		{"udp-connect-dual", "198.18.0.2:53", "198.18.0.1"},
	}
	for _, tc := range cases {
		for _, m := range modes {
			t.Run(tc.mode+"/"+tc.remote+"/"+m.name, func(t *testing.T) {
				r := newResolverIn(t, ns, m.opts)
				remote := netip.MustParseAddrPort(tc.remote)
				c := startClient(t, ns, tc.mode, remote)
				local := netip.AddrPortFrom(netip.MustParseAddr(tc.localAddr), c.Local.Port())
				p, err := r.Resolve(engine.UDP, local, remote, 0)
				wantProcess(t, p, err, c.pid(), m.wantMethod)
			})
		}
	}
}

// TestResolveClosedSocket: once the client closed its socket, the 5-tuple is
// unknown even though the process that had it is still alive.
func TestResolveClosedSocket(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			remote := netip.MustParseAddrPort("198.18.0.2:9")
			c := startClient(t, ns, "tcp", remote)
			p, err := r.Resolve(engine.TCP, c.Local, remote, -1)
			wantProcess(t, p, err, c.pid(), m.wantMethod)
			c.closeSocket(t)
			p, err = r.Resolve(engine.TCP, c.Local, remote, -1)
			wantUnknown(t, p, err, ErrNoSocket)
		})
	}
}

// TestResolveHandedOff: the process that connected exits after handing the socket
// to a child. The eBPF record names a dead pid, which must not be reported; the fd
// scan finds the child, which holds the socket now.
func TestResolveHandedOff(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			c := startClient(t, ns, "tcp-handoff", remote)
			c.wait(t) // reaped: its pid is gone
			p, err := r.Resolve(engine.TCP, c.Local, remote, 0)
			if m.opts.DisableProcfs {
				wantUnknown(t, p, err, ErrNoProcess)
				return
			}
			wantProcess(t, p, err, int32(c.Child), MethodProcfs)
		})
	}
}

// TestResolveWrongUID: a packet whose uid differs from the socket owner's is not that
// socket's.
func TestResolveWrongUID(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{})
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	c := startClient(t, ns, "tcp", remote)
	p, err := r.Resolve(engine.TCP, c.Local, remote, 4242)
	wantUnknown(t, p, err, ErrNoSocket)
	// A uid of 2^31 or above (a subordinate range up there) is a user too, not
	// "any user": only (uid_t)-1 is (review 45's note).
	high := uint32(3_000_000_000)
	p, err = r.Resolve(engine.TCP, c.Local, remote, int32(high))
	wantUnknown(t, p, err, ErrNoSocket)
}

// TestResolveNoSuchSocket: tuples nobody uses, a listener's port with the wrong peer,
// and protocols sock_diag cannot look up.
func TestResolveNoSuchSocket(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{})
	ln := listenIn(t, ns, "127.0.0.1:0")
	for _, tc := range []struct {
		proto         engine.Protocol
		local, remote string
		want          error
	}{
		{engine.TCP, "198.18.0.1:1", "198.18.0.2:9", ErrNoSocket},
		{engine.UDP, "198.18.0.1:1", "198.18.0.2:9", ErrNoSocket},
		{engine.TCP, ln.String(), "127.0.0.1:40000", ErrNoSocket}, // only the listener has this port
		{engine.TCP, "[::1]:1", "[::1]:2", ErrNoSocket},
		{engine.ICMP, "198.18.0.1:0", "198.18.0.2:0", ErrUnsupported},
	} {
		p, err := r.Resolve(tc.proto, netip.MustParseAddrPort(tc.local), netip.MustParseAddrPort(tc.remote), -1)
		wantUnknown(t, p, err, tc.want)
	}
	if _, err := r.Resolve(engine.TCP, netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("[::1]:2"), -1); err == nil {
		t.Error("mixed families: no error")
	}
}

func TestMethods(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	for _, tc := range []struct {
		opts Options
		want []string
	}{
		{Options{}, []string{MethodEBPF, MethodSockDiag, MethodProcfs}},
		{Options{DisableEBPF: true}, []string{MethodSockDiag, MethodProcfs}},
		{Options{DisableProcfs: true}, []string{MethodEBPF, MethodSockDiag}},
	} {
		r := newResolverIn(t, ns, tc.opts)
		if got := r.Methods(); !slices.Equal(got, tc.want) {
			t.Errorf("Methods() with %+v = %v, want %v", tc.opts, got, tc.want)
		}
	}
	// A cgroup path that is not a cgroup: the hooks fail, the Resolver still works.
	var bad *Resolver
	var err error
	inNetns(t, ns, func() { bad, err = NewResolver(Options{CgroupPath: t.TempDir()}) })
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if slices.Contains(bad.Methods(), MethodEBPF) || bad.MethodErrors()[MethodEBPF] == nil {
		t.Errorf("a plain directory accepted as cgroup: Methods %v", bad.Methods())
	}
	t.Logf("eBPF refused as expected: %v", bad.MethodErrors()[MethodEBPF])
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	c := startClient(t, ns, "tcp", remote)
	p, err := bad.Resolve(engine.TCP, c.Local, remote, 0)
	wantProcess(t, p, err, c.pid(), MethodProcfs)
}

// TestResolveLongRunningProcess covers the eBPF fast path: a process that started
// long before it connected is recognised by its start time, and a second lookup is
// answered from the process cache.
func TestResolveLongRunningProcess(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	ln := listenIn(t, ns, "127.0.0.1:0")
	self, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			var c net.Conn
			inNetns(t, ns, func() { c, err = net.Dial("tcp", ln.String()) })
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			for range 2 {
				p, err := r.Resolve(engine.TCP, local, ln, int32(os.Getuid()))
				if err != nil || p.PID != int32(os.Getpid()) || p.Exe != self {
					t.Fatalf("Resolve = %+v, %v; want pid %d exe %s", p, err, os.Getpid(), self)
				}
				if m.wantMethod != "" && p.Method != m.wantMethod {
					t.Errorf("Method %q, want %q", p.Method, m.wantMethod)
				}
			}
			st := r.Stats()
			if st.EBPF+st.Procfs != 2 || st.NoSocket+st.NoProcess != 0 {
				t.Errorf("Stats = %+v, want 2 attributed", st)
			}
			if m.wantMethod == MethodProcfs && (st.Procfs != 2 || st.FullScans != 1) {
				t.Errorf("Stats = %+v, want 2 by procfs after one full scan", st)
			}
		})
	}
}

// TestResolveBoundToDevice: a socket bound to an interface is found when the
// packet's interface is given, and only then.
func TestResolveBoundToDevice(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	var ifindex int
	inNetns(t, ns, func() {
		ifi, err := net.InterfaceByName("pa0")
		if err != nil {
			t.Fatal(err)
		}
		ifindex = ifi.Index
	})
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	for _, proto := range []engine.Protocol{engine.TCP, engine.UDP} {
		for _, m := range modes {
			t.Run(proto.String()+"/"+m.name, func(t *testing.T) {
				r := newResolverIn(t, ns, m.opts)
				mode := "tcp"
				if proto == engine.UDP {
					mode = "udp-sendto"
				}
				c := startClient(t, ns, mode, remote, bindDevEnv+"=pa0")
				local := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), c.Local.Port())
				p, err := r.ResolveDev(proto, local, remote, 0, ifindex)
				wantProcess(t, p, err, c.pid(), m.wantMethod)
				p, err = r.Resolve(proto, local, remote, 0)
				wantUnknown(t, p, err, ErrNoSocket)
			})
		}
	}
}

// TestResolveInbound attributes a held inbound connection to the server that will
// accept it: the listening TCP socket's or bound UDP socket's owner.
func TestResolveInbound(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:40000")
	for _, tc := range []struct {
		proto      engine.Protocol
		mode, addr string
	}{
		{engine.TCP, "tcp-listen", "0.0.0.0:8080"},
		{engine.TCP, "tcp-listen", "198.18.0.1:8081"},
		{engine.TCP, "tcp-listen", "[::]:8082"}, // dual-stack: not v6only
		{engine.UDP, "udp-bind", "0.0.0.0:5353"},
	} {
		for _, m := range modes {
			t.Run(tc.mode+"/"+tc.addr+"/"+m.name, func(t *testing.T) {
				r := newResolverIn(t, ns, m.opts)
				c := startClient(t, ns, tc.mode, netip.MustParseAddrPort(tc.addr))
				local := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), c.Local.Port())
				p, err := r.ResolveInbound(tc.proto, local, remote, 0)
				wantProcess(t, p, err, c.pid(), m.wantMethod)
				// Outbound, the same tuple has no socket: a listener is no connection.
				if tc.proto == engine.TCP {
					p, err = r.Resolve(tc.proto, local, remote, -1)
					wantUnknown(t, p, err, ErrNoSocket)
				}
			})
		}
	}
}

// TestResolveConcurrent: lookups from several goroutines (more than there are
// sock_diag sockets) all get their own answer.
func TestResolveConcurrent(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{})
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	var clients []*client
	for range 4 {
		clients = append(clients, startClient(t, ns, "tcp", remote))
	}
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 200 {
				c := clients[(g+i)%len(clients)]
				p, err := r.Resolve(engine.TCP, c.Local, remote, 0)
				if err == nil && p.PID != c.pid() {
					err = fmt.Errorf("Resolve(%v) = pid %d, want %d", c.Local, p.PID, c.pid())
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestResolveAfterClose(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	var r *Resolver
	var err error
	inNetns(t, ns, func() { r, err = NewResolver(Options{}) })
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	p, err := r.Resolve(engine.TCP, netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("198.18.0.2:2"), -1)
	if err == nil || p.PID != 0 {
		t.Errorf("Resolve after Close = %+v, %v; want an error", p, err)
	}
}

// TestResolveReusedPID: an eBPF record whose pid now belongs to a process that
// started after the record was made (the recorded process exited and its pid was
// given to another) must not name that other process.
func TestResolveReusedPID(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	for _, m := range []struct {
		name string
		opts Options
	}{{"ebpf", Options{DisableProcfs: true}}, {"combined", Options{}}} {
		t.Run(m.name, func(t *testing.T) {
			r := newResolverIn(t, ns, m.opts)
			c := startClient(t, ns, "tcp", remote)
			other := exec.Command("sleep", "30")
			if err := other.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { other.Process.Kill(); other.Wait() })
			si, err := r.diag.lookup(engine.TCP, c.Local, remote, 0, false)
			if err != nil {
				t.Fatal(err)
			}
			pid := uint64(other.Process.Pid)
			forged := connRecord{PidTgid: pid<<32 | pid, BootNs: 1} // made at boot
			if err := r.hooks.conns.Put(si.Cookie, forged); err != nil {
				t.Fatal(err)
			}
			p, err := r.Resolve(engine.TCP, c.Local, remote, 0)
			if m.opts.DisableProcfs {
				wantUnknown(t, p, err, ErrNoProcess)
				return
			}
			wantProcess(t, p, err, c.pid(), MethodProcfs)
		})
	}
}

// TestResolveTimeWait: a connection closed by this side lingers in TIME_WAIT, a
// socket without a file that no process owns.
func TestResolveTimeWait(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{})
	var ln net.Listener
	var c net.Conn
	var err error
	inNetns(t, ns, func() {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err == nil {
			c, err = net.Dial("tcp", ln.Addr().String())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	remote := netip.MustParseAddrPort(c.RemoteAddr().String())
	c.Close() // active close: this end goes to TIME_WAIT once the peer closes too
	srv.Close()
	state := func() uint8 {
		conn := <-r.diag.pool
		defer func() { r.diag.pool <- conn }()
		si, err := r.diag.requestOnce(conn, unix.IPPROTO_TCP, local, remote, 0)
		if err != nil {
			return 0
		}
		return si.State
	}
	const tcpTimeWait = 6
	for i := 0; state() != tcpTimeWait; i++ {
		if i == 100 {
			t.Fatal("no TIME_WAIT socket after 1s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p, err := r.Resolve(engine.TCP, local, remote, -1)
	wantUnknown(t, p, err, ErrNoSocket)
}

// TestResolveByRecordIdentity: once a process has been attributed, an eBPF record
// carrying its exact identity (pid, start time, exec id) names it without checking
// /proc again; a record that differs in start time (another process that got the
// pid) or exec id (another image) never does.
//
// It runs with the hooks reading the task through bpf_get_current_task_btf's
// pointers (plain loads, where the kernel allows them) and through
// bpf_probe_read_kernel: both records must carry the same identity and
// executable.
//
// oldMountIDs: as on a kernel without unique mount ids (before Linux 6.8), the
// hooks record, and Resolve compares, the old mount id (review33's fallback).
func TestResolveByRecordIdentity(t *testing.T) {
	for _, noBTF := range []bool{false, true} {
		for _, oldIDs := range []bool{false, true} {
			t.Run(fmt.Sprintf("noTaskBTF=%v/oldMountIDs=%v", noBTF, oldIDs), func(t *testing.T) {
				noTaskBTF = noBTF
				defer func() { noTaskBTF = false }()
				if oldIDs {
					saved := uniqueMountIDs
					uniqueMountIDs = func() bool { return false }
					defer func() { uniqueMountIDs = saved }()
				}
				testResolveByRecordIdentity(t, noBTF, oldIDs)
			})
		}
	}
}

func testResolveByRecordIdentity(t *testing.T, noBTF, oldIDs bool) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{DisableProcfs: true})
	if !r.hooks.identifies || !r.hooks.knowsExe {
		t.Fatal("the eBPF hooks do not record process identities on this kernel (CI needs them)")
	}
	if !noBTF && !r.hooks.btfTask {
		t.Skip("the kernel refuses bpf_get_current_task_btf in cgroup sock_addr programs")
	}
	if noBTF && r.hooks.btfTask {
		t.Fatal("the hooks read the task through BTF although told not to")
	}
	c := startClient(t, ns, "tcp", netip.MustParseAddrPort("198.18.0.2:9"))
	other := startClient(t, ns, "tcp", netip.MustParseAddrPort("198.18.0.2:10"))
	p, err := r.Resolve(engine.TCP, c.Local, netip.MustParseAddrPort("198.18.0.2:9"), 0)
	wantProcess(t, p, err, c.pid(), MethodEBPF)

	si, err := r.diag.lookup(engine.TCP, c.Local, netip.MustParseAddrPort("198.18.0.2:9"), 0, false)
	if err != nil {
		t.Fatal(err)
	}
	rec, ok := r.hooks.lookup(si.Cookie)
	if !ok {
		t.Fatal("no eBPF record of the client's socket")
	}
	d, err := openProcDir(c.pid())
	if err != nil {
		t.Fatal(err)
	}
	st, err := d.stat()
	d.close()
	if err != nil {
		t.Fatal(err)
	}
	if tick := uint64(time.Second) / clockTicks(); rec.StartNs == 0 || rec.StartNs/tick != st.StartTime || rec.ExecID == 0 {
		t.Fatalf("record StartNs %d ExecID %d; want the client's start time (%d ticks) and a non-zero exec id", rec.StartNs, rec.ExecID, st.StartTime)
	}
	var exe unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/exe", c.pid()), &exe); err != nil {
		t.Fatal(err)
	}
	if rec.ExeIno != exe.Ino {
		t.Fatalf("record ExeIno %d; want the client's executable's inode %d", rec.ExeIno, exe.Ino)
	}
	// And the mount it was reached through (review32: the inode number alone
	// matches a file on another file system), as statx shows /proc/PID/exe:
	// its unique id where the kernel has one (review33: the old one is
	// reused), which this kernel must.
	var stx unix.Statx_t
	mntMask := uint32(unix.STATX_MNT_ID)
	if uniqueMountIDs() {
		mntMask = unix.STATX_MNT_ID_UNIQUE
	} else if !oldIDs && statxUniqueMountID() {
		t.Fatal("statx gives unique mount ids, and the hooks do not read them (kernel BTF: no mount.mnt_id_unique)")
	}
	if err := unix.Statx(unix.AT_FDCWD, fmt.Sprintf("/proc/%d/exe", c.pid()), 0, int(mntMask), &stx); err != nil {
		t.Fatal(err)
	}
	if stx.Mask&mntMask == 0 || rec.ExeMnt == 0 || rec.ExeMnt != stx.Mnt_id {
		t.Fatalf("record ExeMnt %d; want the client's executable's mount id %d (statx mask %#x)", rec.ExeMnt, stx.Mnt_id, stx.Mask)
	}
	// The process's ExeFile keeps the old id either way: the fast path's
	// kernel program reads that one (fp_key.mnt_id).
	if err := unix.Statx(unix.AT_FDCWD, fmt.Sprintf("/proc/%d/exe", c.pid()), 0, unix.STATX_MNT_ID, &stx); err != nil {
		t.Fatal(err)
	}
	if p.ExeFile.Ino != exe.Ino || p.ExeFile.Mnt == 0 || p.ExeFile.Mnt != stx.Mnt_id {
		t.Fatalf("ExeFile %+v; want inode %d, mount id %d (STATX_MNT_ID)", p.ExeFile, exe.Ino, stx.Mnt_id)
	}
	// An executed program's file was opened by execve (review28's neighbour:
	// a file prctl(PR_SET_MM) named lacks the bit, and is not verified).
	if rec.ExeFlags&fmodeExec == 0 || rec.exeNotExecuted(true) != "" {
		t.Fatalf("record ExeFlags %#x; want __FMODE_EXEC (%#x) for an executed program", rec.ExeFlags, fmodeExec)
	}
	if p.Identity != engine.IdentityVerified {
		t.Fatalf("the executed client: identity %v (%s); want verified", p.Identity, p.IdentityNote)
	}

	// Records forged on the other client's socket, dated at boot: the checks in
	// /proc would refuse every one of them (the recorded pid started later and holds
	// no such socket), so only the identity can name the process.
	otherRemote := netip.MustParseAddrPort("198.18.0.2:10")
	osi, err := r.diag.lookup(engine.TCP, other.Local, otherRemote, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("client pid %d: StartNs %d, ExecID %d", c.pid(), rec.StartNs, rec.ExecID)
	pid := uint64(c.pid())
	for _, tc := range []struct {
		name            string
		startNs, execID uint64
		want            bool
	}{
		{"same process and image", rec.StartNs, rec.ExecID, true},
		{"another process with the pid", rec.StartNs + 1, rec.ExecID, false},
		{"another image after execve", rec.StartNs, rec.ExecID + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forged := connRecord{PidTgid: pid<<32 | pid, BootNs: 1, StartNs: tc.startNs, ExecID: tc.execID}
			if err := r.hooks.conns.Put(osi.Cookie, forged); err != nil {
				t.Fatal(err)
			}
			p, err := r.Resolve(engine.TCP, other.Local, otherRemote, 0)
			if tc.want {
				wantProcess(t, p, err, c.pid(), MethodEBPF)
			} else {
				wantUnknown(t, p, err, ErrNoProcess)
			}
		})
	}
}

// TestHooksLookup: the direct bpf(2) lookup reads back exactly the record the map
// holds for a cookie, every field in place (the same as ebpf.Map.Lookup), and finds
// nothing for a cookie the map does not hold.
func TestHooksLookup(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	r := newResolverIn(t, ns, Options{DisableProcfs: true})
	const cookie = uint64(0xfeed_0000_0000_0001)
	want := connRecord{PidTgid: 7<<32 | 8, UIDGid: 9<<32 | 10, BootNs: 11, Comm: [16]byte{'c', 'o', 'm', 'm', 15: 'x'},
		StartNs: 12, ExecID: 13, ExeIno: 14}
	if err := r.hooks.conns.Put(cookie, want); err != nil {
		t.Fatal(err)
	}
	got, ok := r.hooks.lookup(cookie)
	if !ok || got != want {
		t.Fatalf("lookup(%#x) = %+v, %v; want %+v", cookie, got, ok, want)
	}
	var viaLib connRecord
	if err := r.hooks.conns.Lookup(cookie, &viaLib); err != nil || viaLib != got {
		t.Fatalf("ebpf.Map.Lookup = %+v, %v; lookup gave %+v", viaLib, err, got)
	}
	if got, ok := r.hooks.lookup(cookie + 1); ok {
		t.Fatalf("lookup of a cookie not in the map = %+v, true", got)
	}
}
