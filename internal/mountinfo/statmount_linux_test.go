package mountinfo

import (
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStatmountTypeAsMountinfo: statmount names each mount of the daemon's
// namespace as its mountinfo line does (subtype included), and FSType agrees.
func TestStatmountTypeAsMountinfo(t *testing.T) {
	if !uniqueIDs() {
		t.Skip("no unique mount ids (Linux before 6.8)")
	}
	table, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || strings.Contains(f[4], `\`) {
			continue
		}
		fd, err := unix.Open(f[4], unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var stx unix.Statx_t
		errU := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID_UNIQUE, &stx)
		uniq := stx.Mnt_id
		errO := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &stx)
		if errU != nil || errO != nil {
			unix.Close(fd)
			continue
		}
		want, ok := TypeOf(table, stx.Mnt_id)
		if !ok {
			unix.Close(fd) // another mount over it since the table was read
			continue
		}
		got, err := StatmountType(uniq, 0)
		if errors.Is(err, ErrNoStatmount) {
			t.Skip(err)
		}
		if err != nil || got != want {
			t.Errorf("StatmountType of %s (mount %d) = %q, %v; mountinfo says %q", f[4], uniq, got, err, want)
		}
		if got, err := FSType(fd); err != nil || got != want {
			t.Errorf("FSType of %s = %q, %v; mountinfo says %q", f[4], got, err, want)
		}
		unix.Close(fd)
		checked++
	}
	if checked == 0 {
		t.Fatal("no mount checked")
	}
	if _, err := StatmountType(1<<62, 0); !errors.Is(err, unix.ENOENT) {
		t.Errorf("StatmountType of no mount: %v, want ENOENT", err)
	}
}
