package dnsproxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// Upstream exchanges are shared among the local users whose programs ask (review 38:
// one user's queries for a zone whose servers never answer held every one of the
// maxInflight slots, each for the whole timeout, and every other user's DNS waited).
//
// A query takes one of maxInflight/2 unclaimed slots (fastLane) if one is free: it is
// sent at once and its program identified while the answer is on its way, as before;
// it counts against its user from then on. Otherwise its program is identified first
// and the query goes out only while its user has fewer than perUserInflight exchanges
// under way; else it waits for one of its user's own to end (at most perUserWaiting
// of a user's queries wait, each at most the exchange timeout; more are dropped, and
// their clients ask again). So one user holds at most about maxInflight/2 slots, and
// another user's query finds one free at once unless three users' queries fill them.
// The user is the uid of the socket that sent the query, as Config.Identify gives it;
// queries whose sender is unknown (UID -1) share one user's share.
const (
	fastLane        = maxInflight / 2
	perUserInflight = maxInflight / 4
	perUserWaiting  = maxInflight / 4
)

// userShares counts the exchanges under way and the queries waiting, per user.
type userShares struct {
	fast    atomic.Int32 // fast-lane tickets taken
	mu      sync.Mutex
	held    map[int32]int
	waiting map[int32]int
	nwait   int           // all users' waiting queries
	freed   chan struct{} // closed (and replaced) when a share ends while queries wait
}

func newUserShares() *userShares {
	return &userShares{held: map[int32]int{}, waiting: map[int32]int{}, freed: make(chan struct{})}
}

// tryFast takes a fast-lane ticket, if one is free (give it back with endFast).
func (s *userShares) tryFast() bool {
	if s.fast.Add(1) <= fastLane {
		return true
	}
	s.fast.Add(-1)
	return false
}

func (s *userShares) endFast() { s.fast.Add(-1) }

// charge counts an exchange already under way against uid (end it with release).
func (s *userShares) charge(uid int32) {
	s.mu.Lock()
	s.held[uid]++
	s.mu.Unlock()
}

// acquire waits until uid has fewer than perUserInflight exchanges under way, then
// counts one more (end it with release). It returns false, counting nothing, when
// perUserWaiting of uid's queries wait already or none of its exchanges ended within
// wait.
func (s *userShares) acquire(uid int32, wait time.Duration) bool {
	s.mu.Lock()
	if s.held[uid] < perUserInflight {
		s.held[uid]++
		s.mu.Unlock()
		return true
	}
	if s.waiting[uid] >= perUserWaiting {
		s.mu.Unlock()
		return false
	}
	s.waiting[uid]++
	s.nwait++
	var timer *time.Timer
	ok := false
	for {
		if s.held[uid] < perUserInflight {
			s.held[uid]++
			ok = true
			break
		}
		ch := s.freed
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		}
		expired := false
		select {
		case <-ch:
		case <-timer.C:
			expired = true
		}
		s.mu.Lock()
		if expired {
			break
		}
	}
	if s.waiting[uid]--; s.waiting[uid] == 0 {
		delete(s.waiting, uid)
	}
	s.nwait--
	s.mu.Unlock()
	return ok
}

// release ends one of uid's exchanges.
func (s *userShares) release(uid int32) {
	s.mu.Lock()
	if s.held[uid]--; s.held[uid] <= 0 {
		delete(s.held, uid)
	}
	if s.nwait > 0 {
		close(s.freed)
		s.freed = make(chan struct{})
	}
	s.mu.Unlock()
}
