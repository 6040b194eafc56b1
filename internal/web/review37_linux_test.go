package web

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/localhttp"
	"golang.org/x/sys/unix"
)

// dialAs opens a TCP connection to addr whose socket belongs to uid (its file's
// credentials are the creating thread's fsuid), as if that user had opened it.
func dialAs(uid int, addr string) (net.Conn, error) {
	runtime.LockOSThread() // setfsuid is per thread: undo it before unlocking
	defer runtime.UnlockOSThread()
	unix.Setfsuid(uid)
	defer unix.Setfsuid(0)
	return net.DialTimeout("tcp", addr, 2*time.Second)
}

// TestReview37FewUidsLockEveryoneOut (review 37, medium-low, availability of the web
// UI and metrics to other users): ConnLimit (64 in all, 16 per uid) is filled by
// just 4 uids, and a local user has many: every user useradd made on Debian, Ubuntu
// or Fedora has 65536 subordinate uids in /etc/subuid, which newuidmap (package
// uidmap, installed with rootless podman) maps into a user namespace; a socket
// made there by uid N of the namespace is owned by the host uid subuid_base+N, and
// sock_diag shows that uid. Four such uids hold 16 connections each, sending a
// request on each every 3 s: the timeouts do not end a kept-alive connection that
// is used (IdleTimeout is 60 s between requests), so the four hold all of Total
// for as long as they like, and the other users' connections (root's here) wait
// in the accept queue unanswered. Here the uids are made by setfsuid (what the
// kernel records for the socket is the same). Decisions go on; the web UI and
// metrics (ConnLimit 16/4: 4 uids too) are lost to everyone else.
//
// Fails on main: root's request times out after 12 s.
//
// Fix: do not let a set of uids the size of Total/PerPeer fill Total: when Total is
// reached, close the oldest connection that has not yet sent a whole request
// (before login nothing is lost) of the peer holding the most; or count uids of
// one /etc/subuid range (and uids with no passwd entry) as their owner's; and make
// Total several times larger than PerPeer * the users expected.
func TestReview37FewUidsLockEveryoneOut(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for setfsuid")
	}
	l, err := Listen("127.0.0.1:0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })}
	localhttp.Timeouts(hs)
	go hs.Serve(l)
	addr := l.Addr().String()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); hs.Close(); wg.Wait() }()
	uids := ConnLimit.Total / ConnLimit.PerPeer
	for u := 0; u < uids; u++ {
		uid := 100000 + u // one user's subordinate uids
		for i := 0; i < ConnLimit.PerPeer+4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; n < 50; n++ { // bounded: each round lasts ~10 s (ReadHeaderTimeout)
					select {
					case <-stop:
						return
					default:
					}
					c, err := dialAs(uid, addr)
					if err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					go func() { <-stop; c.Close() }()
					// A request every 3 s keeps the connection alive past every
					// timeout (IdleTimeout is 60 s between requests).
					br := bufio.NewReader(c)
					for {
						c.SetDeadline(time.Now().Add(30 * time.Second))
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
						case <-time.After(3 * time.Second):
							continue
						}
						break
					}
					c.Close()
				}
			}()
		}
	}
	time.Sleep(time.Second)
	c := &http.Client{Timeout: 12 * time.Second}
	began := time.Now()
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("root's request while %d uids (one user's subordinate uids) hold %d connections each: %v after %v",
			uids, ConnLimit.PerPeer, err, time.Since(began).Round(time.Millisecond))
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello" {
		t.Fatalf("root's request: %q", b)
	}
}
