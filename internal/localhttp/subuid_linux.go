package localhttp

import (
	"bufio"
	"bytes"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"
)

// subuidFile lists each user's subordinate uids (shadow-utils' format), which
// newuidmap lets that user map into a user namespace: a socket made there belongs to
// one of them.
const subuidFile = "/etc/subuid"

// subuidRange is the uids [start, start+count) that owner may map.
type subuidRange struct {
	start, count uint64
	owner        uint32
}

var subuids = struct {
	mu      sync.Mutex
	file    string
	mtime   time.Time
	size    int64
	checked time.Time
	ranges  []subuidRange
}{file: subuidFile}

// setSubuidFile makes ownerUID read file from now on (tests).
func setSubuidFile(file string) {
	subuids.mu.Lock()
	subuids.file, subuids.checked = file, time.Time{}
	subuids.mu.Unlock()
}

// parseSubuid reads subuid lines "USER:START:COUNT" (USER a name or a uid); lines it
// cannot read, or whose user lookup does not know, are skipped.
func parseSubuid(data []byte, lookup func(string) (uint32, bool)) []subuidRange {
	var out []subuidRange
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 {
			continue
		}
		owner, ok := uint32(0), false
		if n, err := strconv.ParseUint(f[0], 10, 32); err == nil {
			owner, ok = uint32(n), true
		} else {
			owner, ok = lookup(f[0])
		}
		if ok {
			out = append(out, subuidRange{start: start, count: count, owner: owner})
		}
	}
	return out
}

func lookupUser(name string) (uint32, bool) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(n), err == nil
}

// ownerUID is the user whose subordinate uid uid is (in /etc/subuid, read again when
// it changes, looked at once a second at most), else uid itself.
func ownerUID(uid uint32) uint32 {
	s := &subuids
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); now.Sub(s.checked) >= time.Second {
		s.checked = now
		fi, err := os.Stat(s.file)
		switch {
		case err != nil:
			s.ranges, s.mtime, s.size = nil, time.Time{}, 0
		case !fi.ModTime().Equal(s.mtime) || fi.Size() != s.size:
			s.mtime, s.size, s.ranges = fi.ModTime(), fi.Size(), nil
			if data, err := os.ReadFile(s.file); err == nil && len(data) <= 1<<20 {
				s.ranges = parseSubuid(data, lookupUser)
			}
		}
	}
	for _, r := range s.ranges {
		if uint64(uid) >= r.start && uint64(uid) < r.start+r.count {
			return r.owner
		}
	}
	return uid
}
