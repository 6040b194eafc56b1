package linux

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sinkTCP listens in tp.b on port and reads every connection to its end, sending
// the byte count it read on got.
func sinkTCP(t *testing.T, tp *topo, port int) (got chan int64) {
	t.Helper()
	var ln net.Listener
	if err := inNS(tp.b, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", addrB, port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = make(chan int64, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				got <- n
			}()
		}
	}()
	return got
}

// dialFromA opens a TCP connection from tp.a to addrB:port.
func dialFromA(t *testing.T, tp *topo, port int) net.Conn {
	t.Helper()
	var c net.Conn
	if err := inNS(tp.a, func() (err error) {
		c, err = net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", addrB, port), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s:%d: %v", addrB, port, err)
	}
	return c
}

type trafficLine struct {
	local, remote string
	in, out       uint64
	ended         bool
}

func parseTrafficLine(t *testing.T, l string) trafficLine {
	t.Helper()
	var tl trafficLine
	f := strings.Fields(l)
	if len(f) != 6 || f[0] != "traffic" {
		t.Fatalf("traffic line %q: want 6 fields", l)
	}
	tl.local, tl.remote = f[1], f[2]
	var err error
	if tl.in, err = strconv.ParseUint(strings.TrimPrefix(f[3], "in="), 10, 64); err != nil {
		t.Fatalf("traffic line %q: %v", l, err)
	}
	if tl.out, err = strconv.ParseUint(strings.TrimPrefix(f[4], "out="), 10, 64); err != nil {
		t.Fatalf("traffic line %q: %v", l, err)
	}
	tl.ended = f[5] == "ended=true"
	return tl
}

// waitTraffic waits for a report about the flow from local.
func waitTraffic(t *testing.T, d *daemon, local string, timeout time.Duration) (trafficLine, bool) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return trafficLine{}, false
		}
		l, ok := d.waitLine("traffic ", left)
		if !ok {
			return trafficLine{}, false
		}
		if tl := parseTrafficLine(t, l); tl.local == local {
			return tl, true
		}
	}
}

// TestBytesOfAClosedFlow: a megabyte sent over an allowed connection is reported,
// with the flow's end, within 2 s of the close.
func TestBytesOfAClosedFlow(t *testing.T) {
	tp := newTopo(t)
	got := sinkTCP(t, tp, 9001)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=10s")
	defer d.stop()
	tl := closeAndReport(t, tp, d, got, 1_000_000, false)
	if tl.in == 0 || tl.in > tl.out/4 {
		t.Errorf("bytes in %d: want the ACKs' bytes, well below bytes out %d", tl.in, tl.out)
	}
}

// TestBytesOfALongFlowAlongTheWay: a transfer of ~6 s is reported every interval
// (1 s here) with growing totals, then once more at its end.
func TestBytesOfALongFlowAlongTheWay(t *testing.T) {
	tp := newTopo(t)
	got := sinkTCP(t, tp, 9001)
	d := startDaemon(t, tp, "*=allow", "LATCH_TEST_QUIET=1", "LATCH_TEST_TRAFFIC_INTERVAL=1s")
	defer d.stop()

	c := dialFromA(t, tp, 9001)
	local := c.LocalAddr().String()
	const chunk, chunks = 64 << 10, 60 // 60 x 100 ms: 6 s
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, chunk)
		for range chunks {
			if _, err := c.Write(buf); err != nil {
				done <- err
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		done <- c.Close()
	}()
	var along []trafficLine
	var last trafficLine
	for {
		tl, ok := waitTraffic(t, d, local, 5*time.Second)
		if !ok {
			t.Fatalf("no report for 5 s (got %d along the way); stderr:\n%s", len(along), d.errors())
		}
		if tl.out < last.out || tl.in < last.in {
			t.Errorf("totals went down: %+v after %+v", tl, last)
		}
		last = tl
		if tl.ended {
			break
		}
		along = append(along, tl)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if n := <-got; n != chunk*chunks {
		t.Fatalf("server read %d bytes, want %d", n, chunk*chunks)
	}
	t.Logf("%d reports along the way: %+v; at the end %+v", len(along), along, last)
	if len(along) < 3 {
		t.Errorf("%d reports along a 6 s transfer with a 1 s interval, want at least 3", len(along))
	}
	if len(along) > 0 && along[0].out >= chunk*chunks {
		t.Errorf("first report %+v already has the whole transfer", along[0])
	}
	if last.out < chunk*chunks {
		t.Errorf("final bytes out %d, want >= %d", last.out, chunk*chunks)
	}
}
