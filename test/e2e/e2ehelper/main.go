// Command e2ehelper is the client and server that latch's end-to-end tests run inside
// their network namespaces. Its path is known to the tests, so they can check that
// latch attributes its connections to it.
//
//	e2ehelper serve ADDR            accept TCP connections and print "accepted N" for each
//	e2ehelper serve-udp ADDR        echo UDP datagrams and print "datagram N" for each
//	e2ehelper connect ADDR TIMEOUT  one TCP connect; prints a JSON result line
//	e2ehelper udp ADDR TIMEOUT      one UDP exchange; prints a JSON result line
//	e2ehelper udp-unconnected ADDR TIMEOUT  the same from an unconnected socket (sendto)
//	e2ehelper udp-on-line ADDR TIMEOUT  one UDP exchange (a new socket) per line read on stdin,
//	                                from an unconnected socket if the line is "unconnected",
//	                                10 datagrams of 1000 bytes (each answered) if it is "burst"
//	e2ehelper udp-flood-log ADDR N CONC DUR  N datagrams (or for DUR), each from a new socket,
//	                                from CONC workers; {"connected_at": UNIX_NS} for each answered, then a summary
//	e2ehelper udp-connect-exec ADDR PROG TIMEOUT  connect a UDP socket, then exec PROG send-fd-now
//	                                ADDR TIMEOUT with it as fd 3 (one exchange on it, at once)
//	e2ehelper flood ADDR N CONC TIMEOUT  N TCP connects from CONC workers; prints a JSON summary
//	e2ehelper flood-log-for ADDR CONC DUR  TCP connects for DUR; a line per connection through (its start time)
//	e2ehelper hold-many IP PORT N TIMEOUT  TCP connects to IP:PORT, IP:PORT+1, ... IP:PORT+N-1,
//	                                all at once, each given up after TIMEOUT; prints "started",
//	                                then a JSON summary (as flood) when all are done
//	e2ehelper latency ADDR N TIMEOUT  N sequential TCP connects; prints p50/p99 connect time (µs)
//	e2ehelper connects ADDR N TIMEOUT  N TCP connects one after another; prints a JSON result line for each
//	e2ehelper flood-log ADDR N CONC TIMEOUT  flood, and also print {"connected_at": UNIX_NS}
//	                                for each connect that got through, the time it began
//	e2ehelper talk -                print "ready", then per stdin line: "open ADDR" connect
//	                                (prints the result), "send I N" write N bytes on the
//	                                I-th connection (prints {"outcome":"sent"} or the error),
//	                                "wait I DUR" read it for up to DUR (prints the outcome:
//	                                "data N", "reset", "eof", "quiet" or "error"), "close I -"
//	                                close it and read until the server closes ("closed"),
//	                                "reopen I ADDR" disconnect it (AF_UNSPEC) and connect the
//	                                same socket to ADDR, "v6only ADDR" connect a new IPv6-only
//	                                socket to ADDR (an IPv4-mapped address fails before any
//	                                packet), then allow IPv4 on it and keep it as a
//	                                connection, whatever the outcome; "simopen I PORT ADDR"
//	                                disconnect it, bind it to PORT and connect it to ADDR;
//	                                "srh I VIA" route its next packets via VIA (IPv6 SRH);
//	                                "connect-srh ADDR VIA" as e2ehelper connect-srh, from
//	                                this process
//	e2ehelper connect-srh ADDR VIA  connect to ADDR (IPv6) with a segment routing header
//	                                whose next segment is VIA: the packets go to VIA first
//	e2ehelper simopen-peer LOCAL ADDR  connect from LOCAL to ADDR every 200 ms for up to
//	                                10 s until one connects (a simultaneous open's peer)
//	e2ehelper serve-push ADDR       accept TCP connections ("accepted N REMOTE"), print
//	                                "got REMOTE TOTAL" as each receives bytes, and per stdin
//	                                line "push N" write N bytes to every open connection
//	e2ehelper hold ADDR             connect, print the result, then keep sending one byte a
//	                                second until stdin closes (an established flow)
//	e2ehelper dns-serve ADDR NAME IP answer A queries for NAME with IP (and NXDOMAIN otherwise),
//	                                printing "asked NAME" for each question
//	e2ehelper dns-spoof ADDR NAME IP send ADDR, from port 53, an answer nobody asked for
//	e2ehelper udplite-serve ADDR    print "datagram N" for each UDP-Lite datagram received
//	e2ehelper udplite-send ADDR N   send N UDP-Lite datagrams, 100ms apart
//	e2ehelper send ADDR N TIMEOUT   connect, send N bytes, close and wait for the server to
//	                                close; print the result
//	e2ehelper send-reset ADDR N TIMEOUT
//	                                connect, send N bytes, wait 300 ms and close with a
//	                                reset (SO_LINGER 0)
//	e2ehelper send-slow ADDR N DURATION
//	                                connect, send N bytes spread evenly over DURATION (a
//	                                chunk every 100ms), close and wait for the server to
//	                                close; print the result
//	e2ehelper resolve-connect DNSADDR NAME PORT TIMEOUT
//	                                resolve NAME at the DNS server DNSADDR, connect to it
//	                                (DNSADDR "system": the servers of /etc/resolv.conf, in
//	                                its order, the next one when a server refuses)
//	e2ehelper dns-query DNSADDR NAME TIMEOUT
//	                                one A query for NAME from a fresh UDP socket, as a stub
//	                                resolver sends it; prints the first response with the
//	                                query's id as a JSON line (or a timeout)
//	e2ehelper udp-stream ADDR       from one UDP socket, send a datagram every 100ms and
//	                                print "reply N" or "noreply N" for each, until stdin closes
//	e2ehelper connect-after-line ADDR TIMEOUT
//	                                print "ready", wait for a line on stdin, then connect
//	e2ehelper share-udp ADDR FORGER TIMEOUT
//	                                connect a UDP socket to ADDR (sending nothing), start
//	                                this program (hold-fd) and then FORGER (send-fd), both
//	                                inheriting it, and exit: FORGER prints the result
//	e2ehelper hold-fd DURATION      keep the inherited fd 3 open for DURATION
//	e2ehelper say TEXT              print TEXT on stdout
//	e2ehelper udp-lend ADDR PROG TIMEOUT
//	                                run `PROG udp ADDR TIMEOUT` twice (PROG's own flows, which
//	                                teach the fast path), then connect a UDP socket to ADDR and
//	                                run `PROG say lent` with stdout on it (PROG's output is the
//	                                flow's first datagram), then print whether that datagram
//	                                was answered (within 1s) and make one exchange on the
//	                                socket itself: two result lines
//	e2ehelper send-fd ADDR TIMEOUT  once the parent has exited, one UDP exchange on the
//	                                inherited connected socket fd 3; prints a JSON result line
//	e2ehelper memfd-exec VERB ARGS...  copy this executable into a memfd named
//	                                "latch-e2e" and run VERB ARGS from there (fexecve)
package main

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is what connect and udp print.
type Result struct {
	Outcome string  `json:"outcome"` // connected, refused, timeout, error
	Error   string  `json:"error,omitempty"`
	Millis  float64 `json:"ms"`
	PID     int     `json:"pid"`
	Local   string  `json:"local,omitempty"`
}

// FloodResult is what flood prints.
type FloodResult struct {
	Attempts  int     `json:"attempts"`
	Connected int64   `json:"connected"`
	Refused   int64   `json:"refused"`
	Timeout   int64   `json:"timeout"`
	Other     int64   `json:"other"`
	Seconds   float64 `json:"seconds"`
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: e2ehelper VERB ADDR ... (verbs in the package doc)")
		os.Exit(2)
	}
	addr := os.Args[2]
	switch os.Args[1] {
	case "serve":
		serve(addr)
	case "serve-udp":
		serveUDP(addr)
	case "connect":
		emit(connect(addr, duration(3)))
	case "connect-srh":
		if len(os.Args) < 4 {
			fatal(errors.New("connect-srh ADDR VIA"))
		}
		emit(connectSRH(addr, os.Args[3], 3*time.Second))
	case "simopen-peer":
		if len(os.Args) < 4 {
			fatal(errors.New("simopen-peer LOCAL ADDR"))
		}
		emit(simopenPeer(addr, os.Args[3], 10*time.Second))
	case "connect-after-line":
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
		emit(connect(addr, duration(3)))
	case "memfd-exec":
		memfdExec(os.Args[2:])
	case "share-udp":
		shareUDP(addr, arg(3), duration(4))
	case "hold-fd":
		time.Sleep(duration(2)) // bounded; fd 3 stays open meanwhile
	case "send-fd":
		emit(sendFD(duration(3)))
	case "udp":
		emit(udp(addr, duration(3)))
	case "udp-on-line":
		// One exchange (a new flow) per line read on stdin, until EOF: from an
		// unconnected socket if the line says "unconnected"; "kept": from one
		// unconnected socket made at the first such line and kept (a new
		// flow only if conntrack forgot the last one).
		var kept *net.UDPConn
		for sc := bufio.NewScanner(os.Stdin); sc.Scan(); {
			switch sc.Text() {
			case "kept":
				if kept == nil {
					var err error
					if kept, err = net.ListenUDP("udp4", nil); err != nil {
						fatal(err)
					}
				}
				emit(udpFrom(kept, addr, duration(3)))
			case "unconnected":
				emit(udpUnconnected(addr, duration(3)))
			case "burst":
				// One flow of udpBurstCount datagrams of udpBurstSize bytes,
				// each answered.
				emit(udpBurst(addr, duration(3)))
			default:
				emit(udp(addr, duration(3)))
			}
		}
	case "udp-unconnected":
		emit(udpUnconnected(addr, duration(3)))
	case "udp-flood-log":
		udpFloodLog(addr, atoi(3), atoi(4), duration(5))
	case "say":
		fmt.Println(addr)
	case "udp-lend":
		udpLend(addr, arg(3), duration(4))
	case "udp-connect-exec":
		udpConnectExec(addr, arg(3), arg(4))
	case "send-fd-now":
		emit(udpExchange(func() (net.Conn, error) { return net.FileConn(os.NewFile(3, "socket")) }, duration(3)))
	case "flood":
		flood(addr, atoi(3), atoi(4), duration(5))
	case "latency":
		latency(addr, atoi(3), duration(4))
	case "connects":
		for i, n := 0, atoi(3); i < n; i++ {
			emit(connect(addr, duration(4)))
		}
	case "flood-log":
		floodLog(addr, atoi(3), atoi(4), duration(5))
	case "flood-log-for":
		floodLogFor(addr, atoi(3), duration(4))
	case "hold":
		hold(addr)
	case "hold-many":
		holdMany(addr, atoi(3), atoi(4), duration(5))
	case "udp-stream":
		udpStream(addr)
	case "resolve-connect-tcp":
		emit(resolveConnectNet("tcp", addr, arg(3), arg(4), duration(5)))
	case "dns-serve":
		dnsServe(addr, arg(3), arg(4))
	case "dns-spoof":
		dnsSpoof(addr, arg(3), arg(4))
	case "udplite-serve":
		udpliteServe(addr)
	case "udplite-send":
		udpliteSend(addr, atoi(3))
	case "resolve-connect":
		emit(resolveConnect(addr, arg(3), arg(4), duration(5)))
	case "dns-query":
		emit(dnsQuery(addr, arg(3), duration(4)))
	case "talk":
		talk()
	case "serve-push":
		servePush(addr)
	case "send":
		emit(send(addr, atoi(3), duration(4), false))
	case "send-reset":
		emit(send(addr, atoi(3), duration(4), true))
	case "send-slow":
		emit(sendSlow(addr, atoi(3), duration(4)))
	default:
		fmt.Fprintf(os.Stderr, "e2ehelper: unknown verb %q\n", os.Args[1])
		os.Exit(2)
	}
}

func duration(i int) time.Duration {
	d, err := time.ParseDuration(arg(i))
	if err != nil {
		fatal(err)
	}
	return d
}

func atoi(i int) int {
	n, err := strconv.Atoi(arg(i))
	if err != nil {
		fatal(err)
	}
	return n
}

func arg(i int) string {
	if i >= len(os.Args) {
		fatal(fmt.Errorf("missing argument %d", i))
	}
	return os.Args[i]
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "e2ehelper:", err)
	os.Exit(1)
}

func emit(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func serve(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatal(err)
	}
	fmt.Println("listening")
	var n int64
	for {
		c, err := ln.Accept()
		if err != nil {
			fatal(err)
		}
		fmt.Printf("accepted %d %s\n", atomic.AddInt64(&n, 1), c.RemoteAddr())
		go func() {
			defer c.Close()
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
	}
}

// send connects, sends n bytes, closes its side and waits for the server to close
// (serve reads to the end, then closes): when it returns the connection is over.
// With reset it closes with a reset (SO_LINGER 0) instead, once the bytes had 300
// ms to be delivered.
func send(addr string, n int, timeout time.Duration, reset bool) Result {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, timeout)
	r := Result{Outcome: classify(err), PID: os.Getpid()}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer c.Close()
	r.Local = c.LocalAddr().String()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(make([]byte, n)); err != nil {
		r.Outcome, r.Error = "error", err.Error()
		if !reset {
			return r
		}
	}
	if reset {
		time.Sleep(300 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
	} else {
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, c); err != nil {
			r.Outcome, r.Error = "error", err.Error()
		}
	}
	r.Millis = ms(time.Since(start))
	return r
}

// sendSlow is send with the bytes spread over d: a chunk every 100 ms.
func sendSlow(addr string, n int, d time.Duration) Result {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	r := Result{Outcome: classify(err), PID: os.Getpid()}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer c.Close()
	r.Local = c.LocalAddr().String()
	c.SetDeadline(time.Now().Add(d + 20*time.Second))
	ticks := max(int(d/(100*time.Millisecond)), 1)
	chunk := make([]byte, n/ticks+1)
	for sent, i := 0, 0; sent < n; i++ {
		// Paced by the clock, not by the writes: a slow write does not stretch it.
		time.Sleep(time.Until(start.Add(time.Duration(i) * d / time.Duration(ticks))))
		k := min(len(chunk), n-sent)
		if _, err := c.Write(chunk[:k]); err != nil {
			r.Outcome, r.Error = "error", err.Error()
			return r
		}
		sent += k
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil {
		r.Outcome, r.Error = "error", err.Error()
	}
	r.Millis = ms(time.Since(start))
	return r
}

func serveUDP(addr string) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		fatal(err)
	}
	fmt.Println("listening")
	buf := make([]byte, 2048)
	for n := 1; ; n++ {
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			fatal(err)
		}
		fmt.Printf("datagram %d %s\n", n, from)
		pc.WriteTo(buf[:k], from)
	}
}

func classify(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "connected"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "error"
}

func connect(addr string, timeout time.Duration) Result {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, timeout)
	r := Result{Outcome: classify(err), Millis: ms(time.Since(start)), PID: os.Getpid()}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Local = c.LocalAddr().String()
	c.Close()
	return r
}

func udp(addr string, timeout time.Duration) Result {
	return udpExchange(func() (net.Conn, error) { return net.Dial("udp", addr) }, timeout)
}

// udpExchange sends "ping" on the socket open returns and waits for an answer.
func udpExchange(open func() (net.Conn, error), timeout time.Duration) Result {
	return udpExchanges(open, timeout, 1, []byte("ping"))
}

// A burst (udp-on-line's "burst" line): this many datagrams of this size.
const udpBurstCount, udpBurstSize = 10, 1000

// udpBurst sends udpBurstCount datagrams of udpBurstSize bytes from one connected
// socket (one flow), each after the answer to the one before.
func udpBurst(addr string, timeout time.Duration) Result {
	return udpExchanges(func() (net.Conn, error) { return net.Dial("udp", addr) }, timeout, udpBurstCount, make([]byte, udpBurstSize))
}

// udpExchanges sends msg n times on the socket open returns, each after the answer
// to the one before.
func udpExchanges(open func() (net.Conn, error), timeout time.Duration, n int, msg []byte) Result {
	start := time.Now()
	r := Result{PID: os.Getpid()}
	c, err := open()
	if err != nil {
		r.Outcome, r.Error = "error", err.Error()
		return r
	}
	defer c.Close()
	r.Local = c.LocalAddr().String()
	c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2*len(msg)+64)
	for i := 0; i < n && err == nil; i++ {
		if _, err = c.Write(msg); err == nil {
			_, err = c.Read(buf)
		}
	}
	r.Outcome, r.Millis = classify(err), ms(time.Since(start))
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// udpUnconnected makes one UDP exchange from an unconnected socket (sendto).
func udpUnconnected(addr string, timeout time.Duration) Result {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		fatal(err)
	}
	network := "udp4"
	if to.IP.To4() == nil {
		network = "udp6"
	}
	pc, err := net.ListenUDP(network, nil)
	if err != nil {
		return Result{PID: os.Getpid(), Outcome: "error", Error: err.Error()}
	}
	defer pc.Close()
	return udpFrom(pc, addr, timeout)
}

// udpFrom sends one datagram from the unconnected socket pc to addr and waits
// for an answer.
func udpFrom(pc *net.UDPConn, addr string, timeout time.Duration) Result {
	start := time.Now()
	r := Result{PID: os.Getpid()}
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		fatal(err)
	}
	r.Local = pc.LocalAddr().String()
	pc.SetDeadline(time.Now().Add(timeout))
	if _, err = pc.WriteTo([]byte("ping"), to); err == nil {
		_, _, err = pc.ReadFrom(make([]byte, 64))
	}
	r.Outcome, r.Millis = classify(err), ms(time.Since(start))
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// udpFloodLog sends datagrams, each from a new socket (a new flow), from conc
// workers until n were sent or dur passed; for each one answered (within 300ms) it
// prints {"connected_at": UNIX_NS} with the time just before its send, then a JSON
// summary.
func udpFloodLog(addr string, n, conc int, dur time.Duration) {
	var res FloodResult
	var next int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for atomic.AddInt64(&next, 1) <= int64(n) && time.Since(start) < dur {
				c, err := net.Dial("udp", addr)
				if err != nil {
					mu.Lock()
					res.Other++
					mu.Unlock()
					continue
				}
				c.SetDeadline(time.Now().Add(300 * time.Millisecond))
				began := time.Now().UnixNano()
				_, err = c.Write([]byte("ping"))
				if err == nil {
					_, err = c.Read(buf)
				}
				c.Close()
				mu.Lock()
				res.Attempts++
				switch classify(err) {
				case "connected":
					res.Connected++
					fmt.Printf("{\"connected_at\":%d}\n", began)
				case "refused":
					res.Refused++
				case "timeout":
					res.Timeout++
				default:
					res.Other++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	emit(res)
}

// connectedUDP4 returns a UDP socket connected to addr, an IPv4 address and port
// (verb names the mode in the error).
func connectedUDP4(verb, addr string) *os.File {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		fatal(fmt.Errorf("%s: want an IPv4 ADDR, got %q", verb, addr))
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		fatal(err)
	}
	if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		fatal(err)
	}
	return os.NewFile(uintptr(fd), "socket")
}

// shareUDP makes a connected UDP socket that two children inherit: this program,
// which only holds it, and forger, which sends on it once this process is gone.
func shareUDP(addr, forger string, timeout time.Duration) {
	sock := connectedUDP4("share-udp", addr)
	holder := exec.Command("/proc/self/exe", "hold-fd", (timeout + 5*time.Second).String())
	holder.ExtraFiles = []*os.File{sock}
	if err := holder.Start(); err != nil {
		fatal(err)
	}
	sender := exec.Command(forger, "send-fd", addr, timeout.String())
	sender.ExtraFiles = []*os.File{sock}
	sender.Stdout, sender.Stderr = os.Stdout, os.Stderr
	if err := sender.Start(); err != nil {
		fatal(err)
	}
}

// sendFD waits (up to 5s) for its parent to exit, then makes one UDP exchange on the
// connected socket it inherited as fd 3.
func sendFD(timeout time.Duration) Result {
	for ppid, deadline := os.Getppid(), time.Now().Add(5*time.Second); os.Getppid() == ppid && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	return udpExchange(func() (net.Conn, error) { return net.FileConn(os.NewFile(3, "socket")) }, timeout)
}

func flood(addr string, n, conc int, timeout time.Duration) {
	var res FloodResult
	res.Attempts = n
	var next int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for atomic.AddInt64(&next, 1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, timeout)
				switch classify(err) {
				case "connected":
					atomic.AddInt64(&res.Connected, 1)
					c.Close()
				case "refused":
					atomic.AddInt64(&res.Refused, 1)
				case "timeout":
					atomic.AddInt64(&res.Timeout, 1)
				default:
					atomic.AddInt64(&res.Other, 1)
				}
			}
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	emit(res)
}

// LatencyResult is what latency prints: connect() times of sequential connects.
type LatencyResult struct {
	N         int     `json:"n"`
	Connected int     `json:"connected"`
	P50       float64 `json:"p50_us"`
	P99       float64 `json:"p99_us"`
}

// latency makes n sequential TCP connects and prints the median and p99 connect time.
func latency(addr string, n int, timeout time.Duration) {
	var ds []float64
	for range n {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			continue
		}
		ds = append(ds, float64(time.Since(start).Nanoseconds())/1000)
		c.Close()
	}
	r := LatencyResult{N: n, Connected: len(ds)}
	if len(ds) > 0 {
		sort.Float64s(ds)
		r.P50, r.P99 = ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)]
	}
	emit(r)
}

// floodLogFor connects to addr from conc workers, one connection after another, for d
// (at most 50,000 attempts), printing for each connection that got through
// {"connected_start_ns": N} (when its dial began, Unix ns), then a FloodResult.
func floodLogFor(addr string, conc int, d time.Duration) {
	var res FloodResult
	var next int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && atomic.AddInt64(&next, 1) <= 50000 {
				began := time.Now()
				c, err := net.DialTimeout("tcp", addr, time.Second)
				switch classify(err) {
				case "connected":
					atomic.AddInt64(&res.Connected, 1)
					c.Close()
					mu.Lock()
					fmt.Printf("{\"connected_start_ns\":%d}\n", began.UnixNano())
					mu.Unlock()
				case "refused":
					atomic.AddInt64(&res.Refused, 1)
				case "timeout":
					atomic.AddInt64(&res.Timeout, 1)
				default:
					atomic.AddInt64(&res.Other, 1)
				}
			}
		}()
	}
	wg.Wait()
	res.Attempts = int(min(next, 50000))
	res.Seconds = time.Since(start).Seconds()
	mu.Lock()
	emit(res)
	mu.Unlock()
}

func hold(addr string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	r := Result{Outcome: classify(err), PID: os.Getpid()}
	if err != nil {
		r.Error = err.Error()
		emit(r)
		os.Exit(1)
	}
	r.Local = c.LocalAddr().String()
	emit(r)
	done := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		close(done)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			if _, err := c.Write([]byte{1}); err != nil {
				fmt.Println(`{"outcome":"broken"}`)
				return
			}
		}
	}
}

func holdMany(ip string, port, n int, timeout time.Duration) {
	if n < 1 || n > 10000 || port < 1 || port+n-1 > 65535 {
		fatal(fmt.Errorf("hold-many: %d connections from port %d: want 1-10000 ports within 1-65535", n, port))
	}
	res := FloodResult{Attempts: n}
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(port+i)), timeout)
			switch classify(err) {
			case "connected":
				atomic.AddInt64(&res.Connected, 1)
				c.Close()
			case "refused":
				atomic.AddInt64(&res.Refused, 1)
			case "timeout":
				atomic.AddInt64(&res.Timeout, 1)
			default:
				atomic.AddInt64(&res.Other, 1)
			}
		}()
	}
	fmt.Println("started")
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	emit(res)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func udpStream(addr string) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		fatal(err)
	}
	defer c.Close()
	fmt.Printf("local %s\n", c.LocalAddr())
	done := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		close(done)
	}()
	buf := make([]byte, 64)
	for n := 1; n <= 3000; n++ {
		select {
		case <-done:
			return
		default:
		}
		c.SetDeadline(time.Now().Add(100 * time.Millisecond))
		c.Write([]byte("ping"))
		if _, err := c.Read(buf); err == nil {
			fmt.Printf("reply %d\n", n)
			time.Sleep(100 * time.Millisecond)
		} else {
			fmt.Printf("noreply %d\n", n)
		}
	}
}

// servesName reports whether the comma-separated list names holds name.
func servesName(names, name string) bool {
	for _, n := range strings.Split(names, ",") {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// dnsServe is a minimal authoritative DNS server: one A record, for each of the
// comma-separated names.
func dnsServe(addr, name, ip string) {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		fatal(fmt.Errorf("dns-serve: %q is not an IPv4 address", ip))
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		fatal(err)
	}
	// The same answers over TCP (length-prefixed messages, RFC 7766).
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				for {
					var l [2]byte
					if _, err := io.ReadFull(c, l[:]); err != nil {
						return
					}
					q := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(c, q); err != nil {
						return
					}
					if resp := dnsAnswer(q, name, a); resp != nil {
						c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...))
					}
				}
			}()
		}
	}()
	fmt.Println("listening")
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			fatal(err)
		}
		if resp := dnsAnswer(buf[:n], name, a); resp != nil {
			pc.WriteTo(resp, from)
		}
	}
}

// dnsAnswer answers the query q: an A record a for each of the comma-separated names,
// NXDOMAIN for others; nil for what is not a query.
func dnsAnswer(q []byte, name string, a netip.Addr) []byte {
	n := len(q)
	if n < 12 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil
	}
	// The question: labels up to a zero byte, then type and class.
	end := 12
	var labels []string
	for end < n && q[end] != 0 {
		l := int(q[end])
		if end+1+l > n {
			break
		}
		labels = append(labels, string(q[end+1:end+1+l]))
		end += 1 + l
	}
	end += 5
	if end > n {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end-4 : end-2])
	fmt.Printf("asked %s\n", strings.Join(labels, ".")) // tests check what reached the server
	resp := append([]byte(nil), q[:end]...)
	resp[2] = 0x84 | (q[2] & 0x01) // response, authoritative, keep RD
	resp[3] = 0
	binary.BigEndian.PutUint16(resp[8:10], 0)
	binary.BigEndian.PutUint16(resp[10:12], 0)
	switch {
	case !servesName(name, strings.Join(labels, ".")):
		resp[3] = 3 // NXDOMAIN
		binary.BigEndian.PutUint16(resp[6:8], 0)
	case qtype == 1:
		binary.BigEndian.PutUint16(resp[6:8], 1)
		ip4 := a.As4()
		resp = append(resp, 0xC0, 12, 0, 1, 0, 1, 0, 0, 1, 0x2C, 0, 4)
		resp = append(resp, ip4[:]...)
	default:
		binary.BigEndian.PutUint16(resp[6:8], 0) // no AAAA: NODATA
	}
	return resp
}

// resolveConnect looks NAME up at the DNS server dnsAddr, as a program with that
// resolver would, and connects to the first address.
func resolveConnect(dnsAddr, name, port string, timeout time.Duration) Result {
	return resolveConnectNet("udp", dnsAddr, name, port, timeout)
}

// resolveConnectNet is resolveConnect with DNS over network ("udp" or "tcp").
//
// The DNS sockets stay open until the connection is made (as a resolver that keeps
// its socket does): latch attributes a query to its program from the socket, and a
// socket closed before latch reads the query's copy leaves the name "shared" (host
// rules then ask rather than allow; see the README's Hostnames).
func resolveConnectNet(network, dnsAddr, name, port string, timeout time.Duration) Result {
	var dnsConns []net.Conn
	var mu sync.Mutex
	defer func() {
		mu.Lock()
		for _, c := range dnsConns {
			c.Close()
		}
		mu.Unlock()
	}()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, server string) (net.Conn, error) {
		if dnsAddr != "system" {
			server = dnsAddr
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, server)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		dnsConns = append(dnsConns, c)
		mu.Unlock()
		if u, ok := c.(*net.UDPConn); ok {
			return keepOpenUDP{u}, nil // still a PacketConn: the resolver reads datagrams
		}
		return keepOpen{c}, nil
	}}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip4", name)
	if err != nil || len(addrs) == 0 {
		return Result{Outcome: "error", Error: fmt.Sprintf("resolve %s: %v", name, err), PID: os.Getpid()}
	}
	return connect(net.JoinHostPort(addrs[0].String(), port), timeout)
}

// keepOpen is a connection whose Close leaves it open (resolveConnectNet closes it).
type keepOpen struct{ net.Conn }

// Close does nothing.
func (keepOpen) Close() error { return nil }

// keepOpenUDP is keepOpen for a UDP socket (a net.PacketConn, as the resolver wants).
type keepOpenUDP struct{ *net.UDPConn }

// Close does nothing.
func (keepOpenUDP) Close() error { return nil }

// dnsSpoof sends an unsolicited DNS response claiming NAME is IP, from port 53.
func dnsSpoof(addr, name, ip string) {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		fatal(fmt.Errorf("dns-spoof: %q is not an IPv4 address", ip))
	}
	msg := []byte{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0}
	for _, l := range strings.Split(name, ".") {
		msg = append(msg, byte(len(l)))
		msg = append(msg, l...)
	}
	msg = append(msg, 0, 0, 1, 0, 1)
	ip4 := a.As4()
	msg = append(msg, 0xC0, 12, 0, 1, 0, 1, 0, 0, 1, 0x2C, 0, 4)
	msg = append(msg, ip4[:]...)
	c, err := net.ListenPacket("udp", ":53")
	if err != nil {
		fatal(err)
	}
	defer c.Close()
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.WriteTo(msg, to); err != nil {
			fatal(err)
		}
	}
	fmt.Println("sent")
}

const protoUDPLite = 136

func udpliteSockaddr(addr string) *syscall.SockaddrInet4 {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		fatal(fmt.Errorf("%q: want IPv4:port", addr))
	}
	return &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}

// udpliteServe counts UDP-Lite datagrams: a protocol few firewalls think of.
func udpliteServe(addr string) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, protoUDPLite)
	if err != nil {
		fatal(fmt.Errorf("udplite socket: %w", err))
	}
	if err := syscall.Bind(fd, udpliteSockaddr(addr)); err != nil {
		fatal(err)
	}
	fmt.Println("listening")
	buf := make([]byte, 512)
	for n := 1; ; n++ {
		if _, _, err := syscall.Recvfrom(fd, buf, 0); err != nil {
			fatal(err)
		}
		fmt.Printf("datagram %d\n", n)
	}
}

func udpliteSend(addr string, n int) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, protoUDPLite)
	if err != nil {
		fatal(fmt.Errorf("udplite socket: %w", err))
	}
	to := udpliteSockaddr(addr)
	for i := 0; i < n; i++ {
		syscall.Sendto(fd, []byte("ping"), 0, to)
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Println("sent")
}

// QueryResult is what dns-query prints.
type QueryResult struct {
	Outcome string   `json:"outcome"` // answer, timeout, error
	Error   string   `json:"error,omitempty"`
	ID      uint16   `json:"id"`
	Local   string   `json:"local,omitempty"`
	Addrs   []string `json:"addrs,omitempty"` // the A records of the answer, in order
}

// dnsQuery sends one A query for name to dnsAddr from a fresh UDP socket (random id,
// ephemeral port) and waits for the first response carrying the query's id, as a stub
// resolver does. It reads A records anywhere in the answer section.
func dnsQuery(dnsAddr, name string, timeout time.Duration) QueryResult {
	var idb [2]byte
	if _, err := crand.Read(idb[:]); err != nil {
		return QueryResult{Outcome: "error", Error: err.Error()}
	}
	id := binary.BigEndian.Uint16(idb[:])
	msg := binary.BigEndian.AppendUint16(nil, id)
	msg = append(msg, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD, one question
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		msg = append(msg, byte(len(l)))
		msg = append(msg, l...)
	}
	msg = append(msg, 0, 0, 1, 0, 1) // A, IN
	c, err := net.Dial("udp", dnsAddr)
	if err != nil {
		return QueryResult{Outcome: "error", Error: err.Error(), ID: id}
	}
	defer c.Close()
	res := QueryResult{ID: id, Local: c.LocalAddr().String()}
	if _, err := c.Write(msg); err != nil {
		res.Outcome, res.Error = "error", err.Error()
		return res
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				res.Outcome = "timeout"
			} else {
				res.Outcome, res.Error = "error", err.Error()
			}
			return res
		}
		if n < 12 || binary.BigEndian.Uint16(buf) != id || buf[2]&0x80 == 0 {
			continue
		}
		res.Outcome = "answer"
		res.Addrs = answerAddrs(buf[:n])
		return res
	}
}

// answerAddrs returns the A records of a response's answer section (names are skipped,
// not checked).
func answerAddrs(m []byte) []string {
	skipName := func(off int) int {
		for off < len(m) {
			l := int(m[off])
			if l&0xc0 == 0xc0 {
				return off + 2
			}
			if l == 0 {
				return off + 1
			}
			off += 1 + l
		}
		return len(m)
	}
	off := 12
	for i := 0; i < int(binary.BigEndian.Uint16(m[4:])); i++ {
		off = skipName(off) + 4
	}
	var addrs []string
	for i := 0; i < int(binary.BigEndian.Uint16(m[6:])) && off < len(m); i++ {
		off = skipName(off)
		if off+10 > len(m) {
			break
		}
		typ, rdlen := binary.BigEndian.Uint16(m[off:]), int(binary.BigEndian.Uint16(m[off+8:]))
		off += 10
		if off+rdlen > len(m) {
			break
		}
		if typ == 1 && rdlen == 4 {
			addrs = append(addrs, netip.AddrFrom4([4]byte(m[off:off+4])).String())
		}
		off += rdlen
	}
	return addrs
}

// floodLog is flood that also prints when each connect that got through began.
func floodLog(addr string, n, conc int, timeout time.Duration) {
	var res FloodResult
	res.Attempts = n
	var next int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for atomic.AddInt64(&next, 1) <= int64(n) {
				began := time.Now().UnixNano()
				c, err := net.DialTimeout("tcp", addr, timeout)
				mu.Lock()
				switch classify(err) {
				case "connected":
					res.Connected++
					c.Close()
					fmt.Printf("{\"connected_at\":%d}\n", began)
				case "refused":
					res.Refused++
				case "timeout":
					res.Timeout++
				default:
					res.Other++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	emit(res)
}

// udpLend: a program lends its connected UDP socket, as stdout, to PROG, whose
// output is the flow's first datagram; then it sends on the socket itself.
func udpLend(addr, prog string, timeout time.Duration) {
	for i := 0; i < 2; i++ {
		warm := exec.Command(prog, "udp", addr, timeout.String())
		warm.Stdout, warm.Stderr = os.Stderr, os.Stderr
		if err := warm.Run(); err != nil {
			fatal(fmt.Errorf("udp-lend: %s udp: %w", prog, err))
		}
	}
	time.Sleep(300 * time.Millisecond) // the verdict reaches the fast path's map
	f := connectedUDP4("udp-lend", addr)
	start := time.Now()
	lent := exec.Command(prog, "say", "lent")
	lent.Stdout, lent.Stderr = f, os.Stderr
	if err := lent.Run(); err != nil {
		fatal(fmt.Errorf("udp-lend: %s say: %w", prog, err))
	}
	c, err := net.FileConn(f) // a non-blocking copy, for deadlines
	if err != nil {
		fatal(err)
	}
	f.Close()
	r := Result{PID: lent.ProcessState.Pid(), Local: c.LocalAddr().String()}
	c.SetDeadline(time.Now().Add(time.Second))
	_, err = c.Read(make([]byte, 64))
	r.Outcome, r.Millis = classify(err), ms(time.Since(start))
	if err != nil {
		r.Error = err.Error()
	}
	emit(r)
	emit(udpExchange(func() (net.Conn, error) { return c, nil }, timeout))
}

// talk opens connections and sends and reads on them as stdin says (see the
// package doc): connections that stay open while the test changes the rules,
// all of one process (of one mount namespace: the fast path's key has it).
func talk() {
	fmt.Println("ready")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	buf := make([]byte, 65536)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "v6only" {
			c, r := v6only(f[1])
			conns = append(conns, c)
			emit(r)
			continue
		}
		if len(f) == 4 && f[0] == "simopen" {
			// "simopen I PORT ADDR": connect(AF_UNSPEC) ends the I-th
			// connection, then the same socket, bound to PORT, connects to
			// ADDR (5 s at most; the peer may answer with its own SYN).
			i, err := strconv.Atoi(f[1])
			port, perr := strconv.Atoi(f[2])
			if err != nil || i < 0 || i >= len(conns) || perr != nil || port <= 0 || port > 65535 {
				fatal(fmt.Errorf("talk: line %q: want \"simopen I PORT ADDR\"", sc.Text()))
			}
			emit(reopen(conns[i].(*net.TCPConn), port, f[3], 5*time.Second))
			continue
		}
		if len(f) == 3 && f[0] == "connect-srh" {
			// "connect-srh ADDR VIA": as e2ehelper connect-srh, from this
			// process (of this mount namespace: the fast path's key has it).
			emit(connectSRH(f[1], f[2], 3*time.Second))
			continue
		}
		if len(f) == 2 && f[0] == "pending" {
			// "pending ADDR": a socket whose connect to ADDR stays on its
			// way (TCP_SYNCNT 127: SYN_SENT for as long as ADDR drops
			// its SYNs); its mark is in the error field.
			c, r := pending(f[1])
			conns = append(conns, c)
			emit(r)
			continue
		}
		if len(f) == 2 && f[0] == "open" {
			c, err := net.DialTimeout("tcp", f[1], 5*time.Second)
			r := Result{Outcome: classify(err), PID: os.Getpid()}
			if err != nil {
				r.Error = err.Error()
			} else {
				r.Local = c.LocalAddr().String()
				conns = append(conns, c)
			}
			emit(r)
			continue
		}
		var i int
		var err error
		if len(f) == 3 {
			i, err = strconv.Atoi(f[1])
		}
		if len(f) != 3 || err != nil || i < 0 || i >= len(conns) {
			fatal(fmt.Errorf("talk: line %q: want \"open ADDR\", \"send I N\" or \"wait I DUR\" with I an open connection", sc.Text()))
		}
		c := conns[i]
		switch f[0] {
		case "close":
			// "close I -": close, then read to the server's close (the
			// connection is over when this answers).
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, c)
			c.Close()
			out := "closed"
			if err != nil {
				out = readOutcome(err)
			}
			emit(Result{Outcome: out})
		case "send":
			n, err := strconv.Atoi(f[2])
			if err != nil || n < 0 || n > 1<<20 {
				fatal(fmt.Errorf("talk: send %q: want 0 to 1048576 bytes", f[2]))
			}
			if _, err := c.Write(make([]byte, n)); err != nil {
				emit(Result{Outcome: readOutcome(err), Error: err.Error()})
				continue
			}
			emit(Result{Outcome: "sent"})
		case "reopen":
			// "reopen I ADDR": connect(AF_UNSPEC) ends the I-th connection
			// (tcp_disconnect: the socket is closed and unconnected again,
			// its SO_MARK untouched), then the same socket connects to ADDR
			// (3 s at most). Prints the outcome, and the socket's mark before
			// the second connect in the error field.
			emit(reopen(c.(*net.TCPConn), 0, f[2], 3*time.Second))
		case "srh":
			// "srh I VIA": the I-th connection's next packets go to VIA
			// first (an IPv6 segment routing header).
			emit(setSRH(c.(*net.TCPConn), f[2]))
		case "wait":
			d, err := time.ParseDuration(f[2])
			if err != nil || d <= 0 || d > time.Minute {
				fatal(fmt.Errorf("talk: wait %q: want a duration up to 1m", f[2]))
			}
			c.SetReadDeadline(time.Now().Add(d))
			total := 0
			for {
				n, err := c.Read(buf)
				total += n
				if err != nil {
					out := readOutcome(err)
					if out == "quiet" && total > 0 {
						out = fmt.Sprintf("data %d", total)
					}
					emit(Result{Outcome: out})
					break
				}
			}
		default:
			fatal(fmt.Errorf("talk: line %q: want \"open ADDR\", \"send I N\" or \"wait I DUR\"", sc.Text()))
		}
	}
}

// readOutcome names how a read or write on a connection ended.
func readOutcome(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF):
		return "eof"
	case errors.As(err, &ne) && ne.Timeout():
		return "quiet"
	}
	return "error"
}

// servePush is serve that reports what each connection receives and writes to
// them all when stdin says (see the package doc).
func servePush(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatal(err)
	}
	fmt.Println("listening")
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			n := 0
			if len(f) == 2 && f[0] == "push" {
				n, err = strconv.Atoi(f[1])
			}
			if len(f) != 2 || f[0] != "push" || err != nil || n < 0 || n > 1<<20 {
				fatal(fmt.Errorf("serve-push: line %q: want \"push N\" (up to 1048576)", sc.Text()))
			}
			mu.Lock()
			for c := range conns {
				c.Write(make([]byte, n))
			}
			mu.Unlock()
			fmt.Println("pushed")
		}
	}()
	var accepted int64
	for {
		c, err := ln.Accept()
		if err != nil {
			fatal(err)
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		fmt.Printf("accepted %d %s\n", atomic.AddInt64(&accepted, 1), c.RemoteAddr())
		go func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			buf := make([]byte, 65536)
			total := 0
			for {
				n, err := c.Read(buf)
				if n > 0 {
					total += n
					fmt.Printf("got %s %d\n", c.RemoteAddr(), total)
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
