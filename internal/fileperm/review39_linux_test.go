package fileperm

import (
	"os"
	"testing"
)

// TestReview39OpenTrustedOpensDevices (review 39, finding 4, low: legacy lists
// only): OpenTrusted, which the lists migration calls at every start for an older
// lists.json entry without a copy (a refused entry never gets one: it is tried
// again at each start), opens the path's last component whatever it is, with
// root's rights, and leaves it to the caller to see that it is no regular file.
// Opening a device node is an action, not a read: /dev/watchdog starts the
// hardware watchdog, and closing it without the magic 'V' leaves it running (the
// machine resets a minute later unless something feeds it); a tape device rewinds;
// /dev/ptmx allocates a terminal; a serial port raises DTR. A member who named
// such a path as a list with an older latch has root open it at every start.
//
// Fails on the current code: OpenTrusted("/dev/ptmx") returns an open file (a new
// pseudo-terminal was allocated).
//
// Suggested: open the last component with O_PATH first (no open of the device),
// fstat it, and reopen through /proc/self/fd only a regular file; or fstatat
// AT_SYMLINK_NOFOLLOW before the open and refuse anything but S_IFREG.
//
// Run: go test -count=1 -run TestReview39OpenTrustedOpensDevices ./internal/fileperm/ (as root)
func TestReview39OpenTrustedOpensDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the devices are root's: run as root, as the daemon")
	}
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		t.Skip(err)
	}
	f, err := OpenTrusted("/dev/ptmx")
	if err == nil {
		st, _ := f.Stat()
		f.Close()
		t.Fatalf("OpenTrusted opened /dev/ptmx (%v) with root's rights: opening a device node acts (a watchdog starts, a tape rewinds, a terminal is allocated) before the caller sees it is no list file", st.Mode())
	}
}
