// Package subid tells whose subordinate user id a uid is. /etc/subuid (shadow-utils'
// format) lists the uids each user may map into a user namespace with newuidmap: a
// socket made there belongs to one of them, so anything shared out per user (the
// local HTTP servers' connections, the DNS learner's tables) counts those uids as
// their owner's, or one user with 65,536 subordinate uids would hold 65,537 shares.
// A uid /etc/passwd lists is a login uid, a user of its own, even inside a range
// (container tools' docs put root:1000000:1000000000 over directory users' uids); a
// directory user the build's user lookup cannot see (without cgo: all of those) counts
// as the owner of a range its uid lies in. Both files are read into one snapshot,
// again when either changes, so Owner is a binary search and a map lookup.
package subid

import (
	"bytes"
	"container/heap"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"sort"
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
// the line names, or Unknown(START of that name's first line) when its name is not found.
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

// maxNSSLookups bounds the user names looked up through NSS (cgo builds only: names
// /etc/passwd lacks) a parse: those past it count as not found until the next retry.
const maxNSSLookups = 64

// seg is the uids [start, end) that count as owner: the ranges of the file flattened
// (where they overlap, the earlier line's), sorted and disjoint.
type seg struct{ start, end, owner uint64 }

// snapshot is what Owner reads without a lock: replaced whole when the files are
// looked at again.
type snapshot struct {
	segs       []seg
	login      map[uint32]struct{} // the uids of /etc/passwd: never counted as a range's
	checked    int64               // monotonic ns (monoNow)
	parsed     int64               // monotonic ns of the last parse
	unresolved bool                // a range's user name was not found
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

// fileVersion is what tells that a file changed.
type fileVersion struct {
	mtime time.Time
	size  int64
}

func versionOf(file string) (fileVersion, bool) {
	fi, err := os.Stat(file)
	if err != nil {
		return fileVersion{size: -1}, false
	}
	return fileVersion{fi.ModTime(), fi.Size()}, true
}

var state = struct {
	mu             sync.Mutex // held to look at the files again
	file, passwd   string
	fileV, passwdV fileVersion
	names          map[string]uint32   // of the passwd file as of passwdV
	login          map[uint32]struct{} // its uids
	cur            atomic.Pointer[snapshot]
}{file: DefaultFile, passwd: DefaultPasswdFile}

// DefaultPasswdFile is the user database whose uids are login uids of their own.
const DefaultPasswdFile = "/etc/passwd"

// SetFile makes Owner read file from now on (tests).
func SetFile(file string) {
	state.mu.Lock()
	state.file = file
	reset()
	state.mu.Unlock()
}

// SetPasswdFile makes Owner read file for the login uids and user names from now on
// (tests).
func SetPasswdFile(file string) {
	state.mu.Lock()
	state.passwd = file
	reset()
	state.mu.Unlock()
}

// reset makes the next Owner read the files; state.mu held.
func reset() {
	state.fileV, state.passwdV = fileVersion{size: -2}, fileVersion{size: -2}
	state.cur.Store(nil)
}

// Parse reads subuid lines "USER:START:COUNT" (USER a name or a uid); lines it cannot
// read are skipped, and the ranges of a user name lookup does not find are owned by
// Unknown(START of its first line). lookup is asked once a name.
func Parse(data []byte, lookup func(string) (uint32, bool)) []Range {
	var out []Range
	names := map[string]Range{} // by user name: its first line's (the owner)
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
		} else if seen, ok := names[f[0]]; ok {
			r = Range{Start: start, Count: count, Owner: seen.Owner, Unresolved: seen.Unresolved}
		} else {
			if n, ok := lookup(f[0]); ok {
				r.Owner = uint64(n)
			} else {
				r.Owner, r.Unresolved = Unknown(start), true
			}
			names[f[0]] = r
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

// nssLookup looks up a user name /etc/passwd lacks (nil: the build's user lookup
// reads /etc/passwd only, as without cgo).
var nssLookup func(string) (uint32, bool)

// Owner is whom uid counts as: the user whose subordinate uid it is (in /etc/subuid,
// read again when it or /etc/passwd changes, looked at once a second at most),
// Unknown(start) if that range's user name is not found (values above 32 bits), else
// uid itself. A uid /etc/passwd lists is a user of its own even inside a range. It
// takes no lock and does not wait for the files to be read, except the first time.
func Owner(uid uint32) uint64 {
	now := monoNow()
	s := state.cur.Load()
	if s == nil {
		s = refreshNow(now)
	} else if stale(now, s.checked) && state.mu.TryLock() {
		go func() {
			defer state.mu.Unlock()
			refresh(now)
		}()
	}
	u := uint64(uid)
	segs := s.segs
	lo, hi := 0, len(segs)
	for lo < hi { // the first seg ending after u
		m := int(uint(lo+hi) >> 1)
		if segs[m].end <= u {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(segs) || segs[lo].start > u {
		return u
	}
	if _, login := s.login[uid]; login {
		return u
	}
	return segs[lo].owner
}

// refreshNow reads the files for the first Owner after SetFile.
func refreshNow(now int64) *snapshot {
	state.mu.Lock()
	defer state.mu.Unlock()
	if s := state.cur.Load(); s != nil {
		return s
	}
	return refresh(now)
}

// refresh looks at the files again; state.mu held. The snapshot Owner reads is
// replaced whole, so Owner never waits for the reading and the lookups.
func refresh(now int64) *snapshot {
	s := state.cur.Load()
	if s != nil && !stale(now, s.checked) {
		return s
	}
	fv, _ := versionOf(state.file)
	pv, _ := versionOf(state.passwd)
	next := &snapshot{checked: now}
	if s != nil {
		*next = *s
		next.checked = now
	}
	if s == nil || fv != state.fileV || pv != state.passwdV ||
		next.unresolved && now-next.parsed >= int64(retryUnresolved) {
		if s == nil || pv != state.passwdV {
			state.names, state.login = readPasswd(state.passwd)
		}
		logCut := s == nil || fv != state.fileV
		state.fileV, state.passwdV = fv, pv
		next.parsed, next.segs, next.unresolved, next.login = now, nil, false, state.login
		names := state.names
		left := maxNSSLookups
		lookup := func(name string) (uint32, bool) {
			if uid, ok := names[name]; ok {
				return uid, true
			}
			if nssLookup == nil || left == 0 {
				return 0, false
			}
			left--
			return nssLookup(name)
		}
		if data, err := readCapped(state.file, maxFileSize, logCut); err == nil {
			ranges := Parse(data, lookup)
			for _, r := range ranges {
				next.unresolved = next.unresolved || r.Unresolved
			}
			next.segs = segments(ranges)
		}
	}
	state.cur.Store(next)
	return next
}

// maxPasswdSize bounds what is read of /etc/passwd (some 200,000 users).
const maxPasswdSize = 16 << 20

// readPasswd reads the user names and uids of a passwd file ("NAME:PW:UID:..."); none
// if it cannot be read.
func readPasswd(file string) (names map[string]uint32, uids map[uint32]struct{}) {
	names, uids = map[string]uint32{}, map[uint32]struct{}{}
	data, err := readCapped(file, maxPasswdSize, true)
	if err != nil {
		return names, uids
	}
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		f := bytes.SplitN(line, []byte{':'}, 4)
		if len(f) < 4 || len(f[0]) == 0 || f[0][0] == '+' || f[0][0] == '-' || f[0][0] == '#' {
			continue
		}
		uid, err := strconv.ParseUint(string(f[2]), 10, 32)
		if err != nil {
			continue
		}
		if _, dup := names[string(f[0])]; !dup {
			names[string(f[0])] = uint32(uid)
		}
		uids[uint32(uid)] = struct{}{}
	}
	return names, uids
}

// segments flattens ranges (in file order) into sorted disjoint segs: where ranges
// overlap, the uids count as the earliest line's owner (as a scan in file order would).
func segments(ranges []Range) []seg {
	if len(ranges) == 0 {
		return nil
	}
	order := make([]int, len(ranges))
	var points []uint64
	for i, r := range ranges {
		order[i] = i
		points = append(points, r.Start, r.Start+r.Count)
	}
	sort.Slice(order, func(a, b int) bool { return ranges[order[a]].Start < ranges[order[b]].Start })
	sort.Slice(points, func(a, b int) bool { return points[a] < points[b] })
	var out []seg
	active := &indexHeap{}
	next := 0
	for k := 0; k+1 < len(points); k++ {
		p, q := points[k], points[k+1]
		if p == q {
			continue
		}
		for next < len(order) && ranges[order[next]].Start <= p {
			heap.Push(active, order[next])
			next++
		}
		for active.Len() > 0 {
			r := ranges[(*active)[0]]
			if r.Start+r.Count > p {
				break
			}
			heap.Pop(active)
		}
		if active.Len() == 0 {
			continue
		}
		owner := ranges[(*active)[0]].Owner
		if n := len(out); n > 0 && out[n-1].end == p && out[n-1].owner == owner {
			out[n-1].end = q
		} else {
			out = append(out, seg{p, q, owner})
		}
	}
	return out
}

// indexHeap is a min-heap of line indexes (the earliest line on top).
type indexHeap []int

func (h indexHeap) Len() int           { return len(h) }
func (h indexHeap) Less(a, b int) bool { return h[a] < h[b] }
func (h indexHeap) Swap(a, b int)      { h[a], h[b] = h[b], h[a] }
func (h *indexHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *indexHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// readCapped reads file up to max bytes; a longer file is cut after its last whole
// line within them, and that is logged if logCut.
func readCapped(file string, max int, logCut bool) ([]byte, error) {
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
		if logCut {
			slog.Warn("subid: file larger than the bound: the lines past it are ignored",
				"file", file, "bound_bytes", max)
		}
		data = data[:max]
		if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
			data = data[:i+1]
		}
	}
	return data, nil
}
