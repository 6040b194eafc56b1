//go:build linux

package api

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// TestTopEndpoint: /v1/top sums the traffic reports per program over the range,
// and refuses bad parameters with 400 and a message naming them.
func TestTopEndpoint(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	top, err := f.client.Top(ctx, "", false, 0)
	if err != nil || len(top.Programs) != 0 {
		t.Fatalf("top with nothing counted: %+v, %v", top, err)
	}
	req := engine.Request{ID: 7, Exe: "/usr/bin/bulk", UID: 1000, User: "bob"}
	f.hist.Record(store.Conn{Time: time.Now(), Request: req, Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule}})
	f.hist.RecordTraffic(store.Traffic{Time: time.Now(), Request: req, BytesIn: 10, BytesOut: 5000, DeltaIn: 10, DeltaOut: 5000, Ended: true})
	top, err = f.client.Top(ctx, "10m", true, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Programs) != 1 || top.Programs[0].Exe != "/usr/bin/bulk" || top.Programs[0].BytesOut != 5000 || top.Programs[0].RateOut <= 0 {
		t.Errorf("top: %+v", top.Programs)
	}
	conns, err := f.client.Conns(ctx, 0, 10)
	if err != nil || len(conns) != 1 || conns[0].BytesOut != 5000 || conns[0].BytesIn != 10 {
		t.Errorf("conns after a traffic report: %+v, %v", conns, err)
	}
	for q, want := range map[string]string{
		"range=forever": `\"range\"`,
		"range=0s":      `\"range\"`,
		"range=400d":    `\"range\"`,
		"by=speed":      `\"by\"`,
		"n=0":           `\"n\"`,
		"n=x":           `\"n\"`,
		"since=1h":      `\"since\"`,
	} {
		code, body := f.raw(t, "GET", "/v1/top?"+q, "")
		if code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET /v1/top?%s: %d %s; want 400 naming %s", q, code, body, want)
		}
	}
}
