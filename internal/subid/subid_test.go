package subid

import (
	"os"
	"strings"
	"time"
	"testing"
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
	found := false
	lookupName = func(name string) (uint32, bool) { return 5005, found && name == "ldap-user-x" }
	defer func() { lookupName = LookupUser }()
	SetFile(f)
	defer SetFile(DefaultFile)
	if got := Owner(100001); got != Unknown(100000) {
		t.Fatalf("while the name is not found Owner(100001) = %d, want %d", got, Unknown(100000))
	}
	found = true
	s := *state.cur.Load()
	s.checked -= int64(2 * time.Second)
	s.parsed -= int64(retryUnresolved)
	state.cur.Store(&s)
	if got := Owner(100001); got != 5005 {
		t.Fatalf("once the name is found Owner(100001) = %d, want 5005 (the file did not change)", got)
	}
}
