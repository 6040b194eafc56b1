//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// TestContainerNamesShownAndMatched: the name docker or podman gives a container is
// shown after its id in text (escaped: a hostile name cannot rewrite the line) and
// exact in JSON; `rules add --container NAME` lets a system container of that name
// through, and explain says it matched by name; a user's own container of the same
// name is marked as its user's name and not matched by that rule.
func TestContainerNamesShownAndMatched(t *testing.T) {
	f := newFixture(t)
	idA := strings.Repeat("0123456789abcdef", 4)
	idB := strings.Repeat("fedcba9876543210", 4)
	hostile := "web\x1b[2K\rfirefox"
	req := func(port uint16, container, name string) *engine.Request {
		return &engine.Request{
			Time: time.Now(), Direction: engine.Outbound, Protocol: engine.TCP,
			Local:  netip.MustParseAddrPort("198.18.0.1:40000"),
			Remote: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), port),
			PID:    4242, Exe: "/usr/sbin/nginx", UID: 1000, User: "alice",
			Identity: engine.IdentityContainer, Container: container, ContainerName: name,
		}
	}
	decide := func(r *engine.Request) chan engine.Verdict {
		ch := make(chan engine.Verdict, 1)
		f.eng.Decide(r, func(v engine.Verdict) { ch <- v })
		return ch
	}
	f.must(t, "rules", "add", "--container", "web-1", "--port", "80", "--action", "allow")

	sys := req(80, "docker:"+idA, "web-1")
	if v := waitVerdict(t, decide(sys)); v.Action != engine.Allow || v.Reason != engine.ReasonRule {
		t.Errorf("docker container web-1 with a --container web-1 rule: %+v; want allowed by the rule", v)
	}
	decide(req(80, "podman@1000:"+idB, "web-1")) // a user's own container of that name: asked
	decide(req(81, "podman:"+idB, hostile))
	table := f.must(t, "prompts")
	for _, want := range []string{
		"/usr/sbin/nginx [container podman@1000:fedcba987654 web-1 (its user's name)]",
		`/usr/sbin/nginx [container podman:fedcba987654 web\x1b[2K\x0dfirefox]`,
	} {
		if !strings.Contains(table, want) {
			t.Errorf("prompts table lacks %q:\n%s", want, table)
		}
	}
	if strings.ContainsAny(table, "\x1b\r") {
		t.Errorf("prompts table holds raw control characters:\n%q", table)
	}
	ps := jsonLines(t, f.must(t, "prompts", "--json"))
	if len(ps) != 2 || ps[0]["container_name"] != "web-1" || ps[1]["container_name"] != hostile {
		t.Errorf("prompts --json: %v; want container_name web-1 and the exact hostile name", ps)
	}

	// History and explain of the allowed connection.
	if err := f.hist.Record(store.Conn{Time: time.Now(), Request: *sys,
		Verdict: engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule, RuleID: 1}}); err != nil {
		t.Fatal(err)
	}
	f.hist.Flush()
	if table := f.must(t, "conns"); !strings.Contains(table, "[container docker:0123456789ab web-1]") {
		t.Errorf("conns table does not name the container:\n%s", table)
	}
	cs := jsonLines(t, f.must(t, "conns", "--json"))
	if len(cs) != 1 || cs[0]["container_name"] != "web-1" {
		t.Fatalf("conns --json: %v", cs)
	}
	ex := f.must(t, "explain", "--conn", fmt.Sprint(int64(cs[0]["id"].(float64))))
	for _, want := range []string{"container:  docker:" + idA + " web-1", "container=web-1", "matched by the name"} {
		if !strings.Contains(ex, want) {
			t.Errorf("explain lacks %q:\n%s", want, ex)
		}
	}
}
