//go:build linux

package api

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestReview34EventStreamSaysWhenItMissed (review 34, low-medium): the engine drops
// an event a subscriber has no room for (256 queued), and GET /v1/events goes on as
// if nothing was lost. Local users' programs can raise a few hundred questions at
// once (--max-questions-per-user each; one user has many uids through its
// subordinate ids: rootless containers, newuidmap), each with a 4 KB command line of
// control bytes (24 KB of JSON), while `latch notify` or `latch watch` is busy with
// the first ones: the question about another user's program that comes next is
// dropped from the stream, never shown, and gets --default when it times out. A
// client that missed events must learn it (a "gap" event, as the web UI's
// connection feed has) so that it can list the open questions again.
func TestReview34EventStreamSaysWhenItMissed(t *testing.T) {
	f := newFixture(t)
	c, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := f.client.Events(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ev, err := s.Next(); err != nil || ev.Kind != EventHello {
		t.Fatalf("first event %+v, %v; want hello", ev, err)
	}
	// The client is busy (it reads nothing meanwhile); local users' programs raise
	// a few hundred questions, within every cap: a first wave, and once the
	// daemon's writer waits on the client, a second.
	cmdline := strings.Repeat("\x01", 4000)
	n := 0
	flood := func(uids []int32, exes int) {
		for _, uid := range uids {
			for e := range exes {
				for p := range 28 {
					f.eng.Decide(&engine.Request{
						Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
						Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
						Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.3"), uint16(1000+p)),
						PID:    int32(5000 + n), Exe: fmt.Sprintf("/home/u%d/flood%d", uid, e), Identity: engine.IdentityVerified,
						UID: uid, User: fmt.Sprint(uid), Cmdline: cmdline,
					}, func(engine.Verdict) {})
					n++
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	flood([]int32{1000, 1001}, 5)
	flood([]int32{1002}, 1)
	f.request("/usr/bin/firefox", 443) // root's question
	if st := f.eng.Stats(); st.Open != n+1 {
		t.Fatalf("open questions %d, want %d (a cap applied)", st.Open, n+1)
	}
	// Now the client reads everything that came.
	type got struct {
		ev  Event
		err error
	}
	evs := make(chan got, 1024)
	go func() {
		for {
			ev, err := s.Next()
			evs <- got{ev, err}
			if err != nil {
				return
			}
		}
	}()
	prompts, other := 0, []EventKind{}
	for {
		select {
		case g := <-evs:
			if g.err != nil {
				t.Fatalf("stream: %v", g.err)
			}
			switch {
			case g.ev.Kind == EventPrompt && g.ev.Prompt != nil && g.ev.Prompt.Exe == "/usr/bin/firefox":
				t.Logf("came after %d flood prompts; engine dropped %d", prompts, f.eng.Stats().Dropped)
				return // it came
			case g.ev.Kind == EventPrompt:
				prompts++
			default:
				other = append(other, g.ev.Kind)
				if g.ev.Kind != EventAnswered && g.ev.Kind != EventRules {
					return // the stream says something else, e.g. that events were lost
				}
			}
		case <-time.After(5 * time.Second): // quiet
			t.Fatalf("after %d prompt events of the flood (%d raised) the stream went quiet: root's question was dropped and the stream never said so (other events: %v; engine dropped %d)",
				prompts, n, other, f.eng.Stats().Dropped)
		}
	}
}
