package engine

import "testing"

// Review 38, finding 7 (medium): lists match names another program resolved. Host
// rules match only the program's own names ("shared" names are skipped unless
// --host-rules-match-shared: "one program's lookup ... never lets another program
// through"), and the README and `latch lists` help say a list matches "a listed
// hostname (as the program resolved it)"; but listVerdict reads req.Host whatever its
// HostSource. The machine-wide ("shared") name of an address is the latest answer
// anyone on the machine got for it, and any local user sets it for any address by
// asking a server of its own (README, Hostnames: "as a shared name ... for the
// others"). So one user labels 6.6.6.6 with a name on an `--action allow` list and
// every other user's program that connects to 6.6.6.6 without a name of its own (an
// address literal; programs that resolve through systemd-resolved's nss-resolve,
// whose names are all "shared") is allowed by the list; or labels another user's
// addresses with a name on a deny list and their connections are refused.
//
// Run: go test -count=1 -run TestReview38ListsMatchSharedNames ./internal/engine/
func TestReview38ListsMatchSharedNames(t *testing.T) {
	for _, action := range []Action{Allow, Deny} {
		// A rule naming no program decides what the list does not (so the test never waits
		// on a question).
		e := newEngine(t, Config{Default: Deny}, Rule{Port: PortRange{443, 443}, Action: Reject})
		e.SetLists([]BlockList{{Name: "corp", Action: action, List: testList{"listed.example": true}}})
		r := reqTo("/usr/bin/wget", "198.18.6.6:443")
		r.Host, r.HostSource = "listed.example", HostShared // another user's lookup
		if v := decideNow(t, e, r); v.Reason == ReasonList {
			t.Errorf("%v list: a name another program resolved (shared) decided the connection: %+v; "+
				"lists should match the program's own names, as host rules do", action, v)
		}
	}
}
