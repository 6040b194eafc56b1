package procattr

import (
	"os/user"
	"strconv"
	"sync"
)

// userCache maps uids to account names. Lookups that find nothing are cached too, so
// an unknown uid costs one passwd lookup, not one per connection.
type userCache struct {
	mu    sync.RWMutex
	names map[uint32]string
}

// maxCachedUsers bounds the cache; a host has far fewer accounts in use.
const maxCachedUsers = 4096

func (c *userCache) name(uid uint32) string {
	c.mu.RLock()
	n, ok := c.names[uid]
	c.mu.RUnlock()
	if ok {
		return n
	}
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		n = u.Username
	}
	c.mu.Lock()
	if c.names == nil || len(c.names) >= maxCachedUsers {
		c.names = make(map[uint32]string)
	}
	c.names[uid] = n
	c.mu.Unlock()
	return n
}
