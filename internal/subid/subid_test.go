package subid

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestOwner(t *testing.T) {
	f := t.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte("# test\nnobody:300000:65536\n1234:400000:10\nbad line\nghost-user-x:500000:10\n5:1:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	SetFile(f)
	defer SetFile(DefaultFile)
	nobody, ok := LookupUser("nobody")
	if !ok {
		nobody = 300000
	}
	for uid, want := range map[uint32]uint64{300000: uint64(nobody), 365535: uint64(nobody), 365536: 365536, 400009: 1234, 400010: 400010, 500001: Unknown(500000), 500010: 500010, 1000: 1000, 1: 1} {
		if got := Owner(uid); got != want {
			t.Errorf("Owner(%d) = %d, want %d", uid, got, want)
		}
	}
	SetFile(t.TempDir() + "/none")
	if got := Owner(300000); got != 300000 {
		t.Errorf("with no file Owner(300000) = %d, want 300000", got)
	}
}

func BenchmarkOwner(b *testing.B) {
	for i := 0; i < b.N; i++ {
		Owner(uint32(i))
	}
}

// TestLongLineSkipped: a line longer than bufio.Scanner's 64 KiB does not stop the
// lines after it from being read.
func TestLongLineSkipped(t *testing.T) {
	data := "1001:" + strings.Repeat("9", 70000) + ":1\n1002:200000:65536\n"
	if got := Parse([]byte(data), LookupUser); len(got) != 1 || got[0].Start != 200000 || got[0].Owner != 1002 {
		t.Fatalf("Parse of a 70,000-byte line then 1002:200000:65536 = %+v, want the second line's range", got)
	}
}

// TestUnresolvedNameRetried: a user name not found is looked up again later though
// the file did not change (sssd starting, a directory unreachable a while), and then
// its range counts as that user.
func TestUnresolvedNameRetried(t *testing.T) {
	f := t.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte("ldap-user-x:100000:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	SetFile(f)
	defer SetFile(DefaultFile)
	var found atomic.Bool
	saved := nssLookup
	nssLookup = func(name string) (uint32, bool) { return 5005, found.Load() && name == "ldap-user-x" }
	defer func() { SetFile(DefaultFile); nssLookup = saved }()
	if got := Owner(100001); got != Unknown(100000) {
		t.Fatalf("while the name is not found Owner(100001) = %d, want %d", got, Unknown(100000))
	}
	found.Store(true)
	s := *state.cur.Load()
	s.checked -= int64(2 * time.Second)
	s.parsed -= int64(retryUnresolved)
	state.cur.Store(&s)
	deadline := time.Now().Add(2 * time.Second)
	for Owner(100001) != 5005 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := Owner(100001); got != 5005 {
		t.Fatalf("once the name is found Owner(100001) = %d, want 5005 (the file did not change)", got)
	}
}

// TestLoginUIDsInRangeAreOwnUsers: a uid /etc/passwd lists is a user of its own even
// inside a range (Incus's root:1000000:1000000000 over directory users' uids); the
// range's other uids count as its owner, and overlapping ranges as the earlier line's.
func TestLoginUIDsInRangeAreOwnUsers(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/passwd", []byte("root:x:0:0::/root:/bin/sh\nalice:x:900000001:100::/home/alice:/bin/sh\n+nis\nbob:x:900000002:100::/home/bob:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/subuid", []byte("root:1000000:1000000000\nalice:2000000:65536\nbob:1001000000:65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	SetPasswdFile(dir + "/passwd")
	defer SetPasswdFile(DefaultPasswdFile)
	SetFile(dir + "/subuid")
	defer SetFile(DefaultFile)
	for uid, want := range map[uint32]uint64{
		900000001: 900000001, 900000002: 900000002, 900000003: 0, 1000000: 0, 999999: 999999,
		2000000:    0, // inside root's earlier range
		1000999999: 0, 1001000000: 900000002, 1001065535: 900000002, 1001065536: 1001065536,
	} {
		if got := Owner(uid); got != want {
			t.Errorf("Owner(%d) = %d, want %d", uid, got, want)
		}
	}
}

func BenchmarkOwnerManyRanges(b *testing.B) {
	var sb strings.Builder
	for i := 0; i < 40000; i++ {
		fmt.Fprintf(&sb, "%d:%d:65536\n", 1001+i, 100000+i*65536)
	}
	f := b.TempDir() + "/subuid"
	if err := os.WriteFile(f, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	SetFile(f)
	defer SetFile(DefaultFile)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		Owner(uint32(i * 7919))
	}
}

// TestUnknownNameLinesAreOneOwner: two lines of one user name not found count as one
// owner, another such name as another.
func TestUnknownNameLinesAreOneOwner(t *testing.T) {
	got := Parse([]byte("ghost-a:100000:10\nghost-b:200000:10\nghost-a:300000:10\n"), func(string) (uint32, bool) { return 0, false })
	if len(got) != 3 || got[0].Owner != Unknown(100000) || got[2].Owner != Unknown(100000) || got[1].Owner != Unknown(200000) {
		t.Fatalf("Parse = %+v, want owners Unknown(100000), Unknown(200000), Unknown(100000)", got)
	}
}
