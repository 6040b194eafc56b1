package lifetime

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/engine"
)

// Watcher removes rules bound to a process (Rule.ExitPID) when the process exits. It
// holds a pidfd per watched process in one epoll set; a pidfd becomes readable when
// its process exits, so one goroutine sleeps in epoll_wait until then.
type Watcher struct {
	eng  *engine.Engine
	logf func(string, ...any)
	ep   int
	wake int // eventfd: Close wakes the loop

	mu     sync.Mutex
	byPID  map[int32]*watch
	byFD   map[int32]*watch
	closed bool
	done   chan struct{}
}

type watch struct {
	pid   int32
	fd    int
	rules map[engine.RuleID]bool
}

// NewWatcher starts watching: call Sync with the rule set at start and on every
// change (engine.OnRulesChanged), and Close at the end.
func NewWatcher(eng *engine.Engine, logf func(string, ...any)) (*Watcher, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	w := &Watcher{eng: eng, logf: logf, ep: ep, wake: wake, byPID: map[int32]*watch{}, byFD: map[int32]*watch{}, done: make(chan struct{})}
	go w.loop()
	return w, nil
}

// Sync watches the processes of rules (those with ExitPID) and stops watching those
// no rule names any more. A rule whose process is already gone is removed at once.
func (w *Watcher) Sync(rules []engine.Rule) {
	want := map[int32]map[engine.RuleID]bool{}
	for _, r := range rules {
		if r.ExitPID > 0 {
			if want[r.ExitPID] == nil {
				want[r.ExitPID] = map[engine.RuleID]bool{}
			}
			want[r.ExitPID][r.ID] = true
		}
	}
	var gone []engine.RuleID
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	for pid, x := range w.byPID {
		if want[pid] == nil {
			w.forgetLocked(x)
		}
	}
	for pid, ids := range want {
		if x := w.byPID[pid]; x != nil {
			x.rules = ids
			continue
		}
		fd, err := unix.PidfdOpen(int(pid), unix.PIDFD_NONBLOCK)
		if err != nil {
			// The process has exited (ESRCH) or cannot be watched: its rules end now.
			if !errors.Is(err, unix.ESRCH) {
				w.logf("rules until pid %d exits: pidfd_open: %v; removing them", pid, err)
			}
			for id := range ids {
				gone = append(gone, id)
			}
			continue
		}
		if err := unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			unix.Close(fd)
			w.logf("rules until pid %d exits: epoll_ctl: %v; removing them", pid, err)
			for id := range ids {
				gone = append(gone, id)
			}
			continue
		}
		x := &watch{pid: pid, fd: fd, rules: ids}
		w.byPID[pid], w.byFD[int32(fd)] = x, x
	}
	w.mu.Unlock()
	w.remove(gone)
}

func (w *Watcher) forgetLocked(x *watch) {
	unix.EpollCtl(w.ep, unix.EPOLL_CTL_DEL, x.fd, nil)
	unix.Close(x.fd)
	delete(w.byPID, x.pid)
	delete(w.byFD, int32(x.fd))
}

func (w *Watcher) remove(ids []engine.RuleID) {
	for _, id := range ids {
		if _, err := w.eng.RemoveRule(id); err == nil {
			w.logf("rule %d removed: its process exited", id)
		}
	}
}

func (w *Watcher) loop() {
	defer close(w.done)
	events := make([]unix.EpollEvent, 16)
	for {
		n, err := unix.EpollWait(w.ep, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.logf("watching processes of until-exit rules: epoll_wait: %v", err)
			return
		}
		var gone []engine.RuleID
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return
		}
		for _, ev := range events[:n] {
			if x := w.byFD[ev.Fd]; x != nil {
				for id := range x.rules {
					gone = append(gone, id)
				}
				w.forgetLocked(x)
			}
		}
		w.mu.Unlock()
		w.remove(gone)
	}
}

// Close stops watching; rules stay as they are.
func (w *Watcher) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	for _, x := range w.byPID {
		w.forgetLocked(x)
	}
	w.mu.Unlock()
	unix.Write(w.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-w.done
	unix.Close(w.wake)
	unix.Close(w.ep)
}
