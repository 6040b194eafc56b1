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
