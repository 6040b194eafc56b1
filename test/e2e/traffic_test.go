//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestBytesPerConnectionAndProgram: a megabyte sent over an allowed connection shows
// in `latch conns --json` as bytes_out >= 1,000,000 on that connection's row within
// 2 s of the close, and `latch top` counts it for the program.
func TestBytesPerConnectionAndProgram(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8090)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "20s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--port", "8090", "--action", "allow")
	const size = 1_000_000
	out, err := n.Exec(n.Client, helperBin, "send", fmt.Sprintf("%s:%d", n.ServerIP, 8090), fmt.Sprint(size), "10s")
	closed := time.Now()
	if err != nil || !strings.Contains(out, `"outcome":"connected"`) {
		t.Fatalf("send: %v\n%s", err, out)
	}
	var row map[string]any
	for {
		for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "50")) {
			if int(num(c["remote_port"])) == 8090 {
				row = c
			}
		}
		if row != nil && num(row["bytes_out"]) >= size {
			break
		}
		if time.Since(closed) > 2*time.Second {
			t.Fatalf("2 s after the close the connection's row is %v; want bytes_out >= %d", row, size)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("row %v after %v", row, time.Since(closed))
	if row["exe"] != helperBin || num(row["bytes_in"]) <= 0 {
		t.Errorf("row %v: want exe %s and the bytes received", row, helperBin)
	}

	top := JSONLines(t, d.MustCLI(t, "top", "--json", "--range", "10m"))
	if len(top) == 0 || top[0]["exe"] != helperBin || num(top[0]["bytes_out"]) < size {
		t.Fatalf("top --json: %v; want %s first with bytes_out >= %d", top, helperBin, size)
	}
	text := d.MustCLI(t, "top", "--by", "rate")
	if !strings.Contains(text, helperBin) || !strings.Contains(text, "PROGRAM") {
		t.Errorf("top:\n%s", text)
	}
	if _, err := d.CLI("top", "--range", "forever"); err == nil {
		t.Error("top --range forever: no error")
	}
}

// TestBytesOfALongTransferAlongTheWay: a long transfer is reported while it runs,
// not only at its end: its `conns --json` row's bytes_out grows during the transfer
// and `latch top --by rate` shows the program moving bytes. The case is a
// 30 s transfer with the default 10 s --traffic-interval; here the interval is 1 s
// (the flag's minimum) and the transfer 6 s, the same ratio and more reports.
func TestBytesOfALongTransferAlongTheWay(t *testing.T) {
	n := NewNet(t)
	n.Serve(t, 8091)
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "20s", "--traffic-interval", "1s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--port", "8091", "--action", "allow")
	const size, span = 6_000_000, 6 * time.Second
	done := make(chan string, 1)
	go func() {
		out, _ := n.Exec(n.Client, helperBin, "send-slow", fmt.Sprintf("%s:%d", n.ServerIP, 8091), fmt.Sprint(size), span.String())
		done <- out
	}()
	var seen []float64 // bytes_out of the row, each time it changed, before the close
	var rateSeen float64
	var out string
	deadline := time.After(span + 20*time.Second)
poll:
	for {
		select {
		case out = <-done:
			break poll
		case <-deadline:
			t.Fatal("the transfer did not finish")
		case <-time.After(250 * time.Millisecond):
		}
		for _, c := range JSONLines(t, d.MustCLI(t, "conns", "--json", "-n", "20")) {
			if int(num(c["remote_port"])) == 8091 {
				if b := num(c["bytes_out"]); b > 0 && (len(seen) == 0 || b != seen[len(seen)-1]) {
					seen = append(seen, b)
				}
			}
		}
		for _, p := range JSONLines(t, d.MustCLI(t, "top", "--json", "--by", "rate", "--range", "10m")) {
			if p["exe"] == helperBin {
				rateSeen = max(rateSeen, num(p["rate_out"]))
			}
		}
	}
	if !strings.Contains(out, `"outcome":"connected"`) {
		t.Fatalf("send-slow: %s", out)
	}
	t.Logf("bytes_out along the way: %v; highest rate_out seen %.0f B/s", seen, rateSeen)
	if len(seen) < 3 {
		t.Errorf("bytes_out changed %d times during a %v transfer with --traffic-interval 1s, want at least 3: %v", len(seen), span, seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] < seen[i-1] {
			t.Errorf("bytes_out went down: %v", seen)
		}
	}
	if len(seen) > 0 && seen[0] >= size {
		t.Errorf("the first report (%v) already had the whole transfer", seen[0])
	}
	if rateSeen <= 0 {
		t.Error("top --by rate never showed the program sending during the transfer")
	}
	// And at the end, its total.
	closed := time.Now()
	for {
		row := findConn(t, d, 8091, 0)
		if num(row["bytes_out"]) >= size {
			break
		}
		if time.Since(closed) > 2*time.Second {
			t.Fatalf("2 s after the close the row is %v; want bytes_out >= %d", row, size)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
