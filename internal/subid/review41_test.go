package subid

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// Review 41, finding 3 (low, review 38's finding 5 comes back on a big host): an
// /etc/subuid larger than 1 MiB (maxFileSize) is taken as listing no range at all,
// so every user's subordinate uids count as users of their own again (65,536 shares
// each, for the pending queries, the TCP streams and the learned names) and nothing
// says so. useradd gives every new user a line of about 25 bytes: a host with some
// 40,000 accounts (a university or hosting login server) has a file that size. The
// bound should cost the lines past it, not the ones within it; or the fallback should
// fail closed (and be logged).
//
// Run: go test -count=1 -run TestReview41BigSubuidFileListsNoRange ./internal/subid/
func TestReview41BigSubuidFileListsNoRange(t *testing.T) {
	var b strings.Builder
	b.WriteString("1001:100000:65536\n")
	for i := 1; b.Len() <= maxFileSize; i++ {
		fmt.Fprintf(&b, "%d:%d:65536\n", 1001+i, 100000+i*65536)
	}
	f := t.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	SetFile(f)
	defer SetFile(DefaultFile)
	if got := Owner(100042); got != 1001 {
		t.Errorf("with a %d-byte /etc/subuid whose first line is 1001:100000:65536, Owner(100042) = %d, want 1001: "+
			"a file over %d bytes counts every subordinate uid as a user of its own", b.Len(), got, maxFileSize)
	}
}

// Review 41, finding 2 at its root: a line whose user name the lookup does not find
// is dropped, so its 65,536 uids count as as many users (see
// dnsname.TestReview41UnknownSubuidNameGivesManyShares for what that costs). The
// packaged daemon is static (CGO_ENABLED=0): os/user reads /etc/passwd only, and
// directory users (LDAP, SSSD, systemd-homed) are not in it. For sharing, whose range
// it is does not matter: all of a range's uids should count as one.
//
// Run: go test -count=1 -run TestReview41UnknownNameRangeIsOneOwner ./internal/subid/
func TestReview41UnknownNameRangeIsOneOwner(t *testing.T) {
	f := t.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte("ldap-user-review41:100000:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	SetFile(f)
	defer SetFile(DefaultFile)
	if a, b := Owner(100000), Owner(165535); a != b {
		t.Errorf("Owner(100000) = %d, Owner(165535) = %d: two uids of one /etc/subuid range (of a user /etc/passwd "+
			"does not list) count as different users", a, b)
	}
}

// Review 41, finding 4 (low): Owner decides whether to look at the file again from
// the wall clock (time.Now().UnixNano() carries no monotonic reading): after the
// clock steps back (NTP correcting a clock that ran ahead, an admin's `date -s`),
// now-checked is negative until the clock has caught up again, and the file is not
// looked at for that long. A range added in the meantime (useradd for a new user)
// then does not count: that user's subordinate uids are 65,536 users of their own
// for hours. Simulated here: the snapshot was checked at what is an hour ahead of the
// clock now.
//
// Run: go test -count=1 -run TestReview41ClockStepBackStopsRereads ./internal/subid/
func TestReview41ClockStepBackStopsRereads(t *testing.T) {
	f := t.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte("1001:100000:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	SetFile(f)
	defer SetFile(DefaultFile)
	if got := Owner(100042); got != 1001 {
		t.Fatalf("Owner(100042) = %d, want 1001", got)
	}
	// The wall clock steps back an hour: the last check now lies an hour ahead.
	s := *state.cur.Load()
	s.checked += int64(time.Hour)
	state.cur.Store(&s)
	// A new user's range is added (a new size, a new mtime).
	if err := os.WriteFile(f, []byte("1001:100000:65536\n1002:165536:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for Owner(170000) != 1002 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := Owner(170000); got != 1002 {
		t.Errorf("3 s after a line for user 1002 was added, Owner(170000) = %d, want 1002: after the wall clock stepped back "+
			"the file is not looked at again until the clock catches up", got)
	}
}
