// Package subid tells whose subordinate user id a uid is. /etc/subuid (shadow-utils'
// format) lists the uids each user may map into a user namespace with newuidmap: a
// socket made there belongs to one of them, so anything shared out per user (the
// local HTTP servers' connections, the DNS learner's tables) counts those uids as
// their owner's, or one user with 65,536 subordinate uids would hold 65,537 shares.
package subid

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultFile is the file Owner reads unless SetFile says otherwise.
const DefaultFile = "/etc/subuid"

// maxFileSize bounds what is read of the file: the lines past it are ignored (and
// logged once a version of the file).
const maxFileSize = 1 << 20

// maxLine bounds a line: a longer one is skipped (no user name is that long).
const maxLine = 4096

// Range is the uids [Start, Start+Count) that Owner maps to Owner: the uid of the user
// the line names, or Unknown(Start) when its name is not found.
type Range struct {
	Start, Count uint64
	Owner        uint64
	Unresolved   bool // the line's user name was not found (Owner is Unknown(Start))
}

// Unknown is the owner of the range starting at start whose user name is not found:
// above every uid (uids are 32 bits), so all of that range's uids count as one user
// that no other uid, nor another such range, counts as.
func Unknown(start uint64) uint64 { return 1<<32 | start }

// retryUnresolved is how often a file with a user name not found is parsed again
// though it did not change (the name may be found later: sssd starting, a directory
// reachable again).
const retryUnresolved = 10 * time.Second

// snapshot is what Owner reads without a lock: replaced whole when the file is looked
// at again.
type snapshot struct {
	ranges     []Range
	checked    int64 // monotonic ns (monoNow)
	parsed     int64 // monotonic ns of the last parse
	unresolved bool  // a range's user name was not found
}

// start anchors monoNow: time.Since reads the monotonic clock, which a step of the
// wall clock (NTP, date -s) does not move.
var start = time.Now()

// monoNow is the monotonic time in ns since the package was loaded.
func monoNow() int64 { return int64(time.Since(start)) }

// stale tells whether a snapshot checked at checked is to be looked at again at now:
// a second later, or if checked lies ahead (it cannot on a monotonic clock; be safe).
func stale(now, checked int64) bool {
	d := now - checked
	return d >= int64(time.Second) || d < 0
}

var state = struct {
	mu    sync.Mutex // held to look at the file again
	file  string
	mtime time.Time
	size  int64
	cur   atomic.Pointer[snapshot]
}{file: DefaultFile}

// SetFile makes Owner read file from now on (tests).
func SetFile(file string) {
	state.mu.Lock()
	state.file, state.mtime, state.size = file, time.Time{}, -1
	state.cur.Store(nil)
	state.mu.Unlock()
}

// Parse reads subuid lines "USER:START:COUNT" (USER a name or a uid); lines it cannot
// read are skipped, and a range whose user name lookup does not find is owned by
// Unknown(START). lookup is asked once a name.
func Parse(data []byte, lookup func(string) (uint32, bool)) []Range {
	var out []Range
	names := map[string]uint64{}
	for len(data) > 0 {
		var raw []byte
		raw, data, _ = bytes.Cut(data, []byte{'\n'})
		if len(raw) > maxLine {
			continue
		}
		line := strings.TrimSpace(string(raw))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 || f[0] == "" {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 {
			continue
		}
		r := Range{Start: start, Count: count}
		if n, err := strconv.ParseUint(f[0], 10, 32); err == nil {
			r.Owner = n
		} else if uid, seen := names[f[0]]; seen {
			r.Owner = uid
		} else {
			r.Owner = 1 << 63 // not found
			if n, ok := lookup(f[0]); ok {
				r.Owner = uint64(n)
			}
			names[f[0]] = r.Owner
		}
		if r.Owner == 1<<63 {
			r.Owner, r.Unresolved = Unknown(start), true
		}
		out = append(out, r)
	}
	return out
}

// LookupUser is Parse's lookup of a user name in the system's user database.
func LookupUser(name string) (uint32, bool) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(n), err == nil
}

// lookupName is refresh's lookup of a user name (tests replace it).
var lookupName = LookupUser

// Owner is whom uid counts as: the user whose subordinate uid it is (in /etc/subuid,
// read again when it changes, looked at once a second at most), Unknown(start) if that
// range's user name is not found (values above 32 bits), else uid itself. It takes no
// lock except to look at the file again.
func Owner(uid uint32) uint64 {
	now := monoNow()
	s := state.cur.Load()
	if s == nil || stale(now, s.checked) {
		s = refresh(now)
	}
	for _, r := range s.ranges {
		if uint64(uid) >= r.Start && uint64(uid) < r.Start+r.Count {
			return r.Owner
		}
	}
	return uint64(uid)
}

// refresh looks at the file again if no other caller did within the last second.
func refresh(now int64) *snapshot {
	state.mu.Lock()
	defer state.mu.Unlock()
	s := state.cur.Load()
	if s != nil && !stale(now, s.checked) {
		return s
	}
	next := &snapshot{checked: now}
	if s != nil {
		*next = *s
		next.checked = now
	}
	fi, err := os.Stat(state.file)
	switch {
	case err != nil:
		next.ranges, next.unresolved, state.mtime, state.size = nil, false, time.Time{}, -1
	case !fi.ModTime().Equal(state.mtime) || fi.Size() != state.size ||
		next.unresolved && now-next.parsed >= int64(retryUnresolved):
		state.mtime, state.size, next.ranges, next.unresolved, next.parsed = fi.ModTime(), fi.Size(), nil, false, now
		if data, err := readCapped(state.file, maxFileSize); err == nil {
			next.ranges = Parse(data, lookupName)
			for _, r := range next.ranges {
				next.unresolved = next.unresolved || r.Unresolved
			}
		}
	}
	state.cur.Store(next)
	return next
}

// readCapped reads file up to max bytes; a longer file is cut after its last whole
// line within them, and that is logged.
func readCapped(file string, max int) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	if len(data) > max {
		data = data[:max]
		if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
			data = data[:i+1]
		}
		slog.Warn("subid: file larger than the bound: the lines past it are ignored (their uids count as users of their own)",
			"file", file, "bound_bytes", max)
	}
	return data, nil
}
