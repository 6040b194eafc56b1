package localhttp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// holdAsNobody has user nobody open n connections to addr (or listen on it, with
// n == 0) and keep them until the test ends.
func holdAsNobody(t *testing.T, addr string, n int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as nobody")
	}
	perl, err := exec.LookPath("perl")
	if err != nil {
		t.Skip("needs perl")
	}
	host, port, _ := strings.Cut(addr, ":")
	script := `my @s; for (1..$ARGV[2]) { push @s, IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1]) } $| = 1; print "ok\n"; sleep 60;`
	if n == 0 {
		script = `my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], LocalPort => $ARGV[1], Listen => 5) or die "bind: $!"; $| = 1; print "ok\n"; sleep 60;`
	}
	cmd := exec.Command(perl, "-MIO::Socket::INET", "-e", script, host, port, fmt.Sprint(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("nobody's connections to %s: %q %v", addr, line, err)
	}
}

func serveLimited(t *testing.T, lim Limit) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })}
	Timeouts(hs)
	go hs.Serve(LimitListener(l, "test", lim, t.Logf))
	t.Cleanup(func() { hs.Close() })
	return l.Addr().String()
}

// TestOneUserCannotLockOthersOut: a local user who holds connections to a limited
// listener gets PerPeer of them; root's request is still answered at once.
func TestOneUserCannotLockOthersOut(t *testing.T) {
	addr := serveLimited(t, Limit{Total: 8, PerPeer: 2})
	holdAsNobody(t, addr, 40)
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("root's request while nobody holds 40 connections: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello" {
		t.Fatalf("root's request: %q", b)
	}
}

// TestTotalBound: a connection beyond Total of a peer that holds them all is
// refused (it may not close its own others), and served once one of them closes.
func TestTotalBound(t *testing.T) {
	addr := serveLimited(t, Limit{Total: 2, PerPeer: 2})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond) // both accepted
	c := &http.Client{Timeout: 700 * time.Millisecond}
	if _, err := c.Get("http://" + addr + "/"); err == nil {
		t.Fatal("a third connection was served while two were held with Total 2")
	}
	held[0].Close()
	var err error
	for range 30 { // the server sees the close when it reads EOF
		time.Sleep(100 * time.Millisecond)
		if _, err = c.Get("http://" + addr + "/"); err == nil {
			return
		}
	}
	t.Fatalf("after one of two held connections closed: %v", err)
}

// TestFewPeersCannotFillTotal: when peers holding most of Total fill it, a peer
// holding none gets in at once, by the place of the least recently active
// connection of the peer holding the most, not of its own kept-alive one. Fails on
// the old code (the second connection waits for a slot until the client gives up).
func TestFewPeersCannotFillTotal(t *testing.T) {
	addr := serveLimited(t, Limit{Total: 4, PerPeer: 4})
	holdAsNobody(t, addr, 3) // nobody (uid 65534): 3 silent connections, oldest first
	// root: one kept-alive connection, used
	mine, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	br := bufio.NewReader(mine)
	get := func() error {
		mine.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.WriteString(mine, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	// Total is reached (3 + 1); a second root connection: root holds 1, nobody 3: in.
	c := &http.Client{Timeout: 3 * time.Second}
	began := time.Now()
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("root's second connection while nobody holds 3 of Total 4: %v", err)
	}
	resp.Body.Close()
	if d := time.Since(began); d > time.Second {
		t.Fatalf("root's second connection served after %v", d)
	}
	c.CloseIdleConnections()
	// root's kept-alive connection was not the one closed
	if err := get(); err != nil {
		t.Fatalf("root's first connection after its second got in: %v", err)
	}
}

// TestServiceRetriesTakenAddress: a Service whose address another program holds is
// down with the bind's error, and comes up by itself once the address is free.
func TestServiceRetriesTakenAddress(t *testing.T) {
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := hold.Addr().String()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "latch") })}
	s := NewService("test", addr, func() (net.Listener, error) { return net.Listen("tcp", addr) }, hs.Serve, nil, t.Logf)
	if s.Start() {
		t.Fatal("Start says bound while another listener holds the address")
	}
	defer s.Stop(func() { hs.Close() })
	st := s.Status()
	if st.Up || !strings.Contains(st.Error, "address already in use") {
		t.Fatalf("status while taken: %+v", st)
	}
	hold.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !s.Status().Up {
		if time.Now().After(deadline) {
			t.Fatalf("not up 5s after the address was freed: %+v", s.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "latch" {
		t.Fatalf("after rebinding: %q", b)
	}
	if errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:9184": true, "localhost:9184": true, "LocalHost:19184": true, "[::1]:9184": true, "[::1]": true,
		"127.0.0.2:9184": true, "127.0.0.1": true, "localhost": true, "evil.example:9184": false, "evil.example": false,
		"10.0.0.1:9184": false, "[::ffff:127.0.0.1]:9184": true, "localhost.evil.example:9184": false, "": false,
		"127.0.0.1.evil.example:9184": false, "[fe80::1%lo]:9184": false,
	} {
		if got := LoopbackHost(host); got != want {
			t.Errorf("LoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// dialAs opens a TCP connection to addr whose socket belongs to uid (its file's
// credentials are the creating thread's fsuid), as if that user had opened it.
func dialAs(uid int, addr string) (net.Conn, error) {
	runtime.LockOSThread() // setfsuid is per thread: undo it before unlocking
	defer runtime.UnlockOSThread()
	unix.Setfsuid(uid)
	defer unix.Setfsuid(0)
	return net.DialTimeout("tcp", addr, time.Second)
}

// TestManyUidsChurnStillServeOthers: 40 uids (a user's subordinate uids) with one
// connection each, against Total 8, reconnect at once whenever closed and send a
// request every 200 ms, so each newcomer closes someone's connection: root's request
// (an HTTP client retrying a failed connection, as a browser does) is still answered
// within a few seconds.
func TestManyUidsChurnStillServeOthers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for setfsuid")
	}
	addr := serveLimited(t, Limit{Total: 8, PerPeer: 2})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	var dials atomic.Int64
	for u := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 2000; n++ { // bounded
				select {
				case <-stop:
					return
				default:
				}
				c, err := dialAs(200000+u, addr)
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				dials.Add(1)
				br := bufio.NewReader(c)
				for {
					c.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
						break
					}
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						break
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					select {
					case <-stop:
					case <-time.After(200 * time.Millisecond):
						continue
					}
					break
				}
				c.Close()
			}
		}()
	}
	time.Sleep(time.Second)
	c := &http.Client{Timeout: time.Second}
	began := time.Now()
	var err error
	for try := 0; time.Since(began) < 5*time.Second; try++ {
		var resp *http.Response
		if resp, err = c.Get("http://" + addr + "/"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) == "hello" {
				t.Logf("root served after %d tries, %v; the 40 uids dialled %d times", try+1, time.Since(began).Round(time.Millisecond), dials.Load())
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("root's request not answered within 5 s while 40 uids churn (%d dials): %v", dials.Load(), err)
}

// TestSubuidsCountAsTheirOwner: the subordinate uids /etc/subuid gives a user count
// as that user: 6 of them get PerPeer connections in all, not one each.
func TestSubuidsCountAsTheirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for setfsuid")
	}
	f := t.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte("# test\nnobody:300000:65536\n1234:400000:10\nbad line\nghost-user-x:500000:10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	setSubuidFile(f)
	defer setSubuidFile(subuidFile)
	for uid, want := range map[uint32]uint64{300000: 65534, 365535: 65534, 365536: 365536, 400009: 1234, 400010: 400010, 500001: 1<<32 | 500000, 500010: 500010, 1000: 1000} {
		if got := ownerUID(uid); got != want {
			t.Errorf("ownerUID(%d) = %d, want %d", uid, got, want)
		}
	}
	addr := serveLimited(t, Limit{Total: 8, PerPeer: 2})
	var open []net.Conn
	for i := range 6 {
		c, err := dialAs(300000+i, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		open = append(open, c)
	}
	served := 0
	for _, c := range open {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			resp.Body.Close()
			served++
		}
	}
	if served != 2 {
		t.Fatalf("%d of 6 connections of one user's subordinate uids served, want PerPeer 2", served)
	}
}
