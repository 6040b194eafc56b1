package winsvc

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// The service's life as the service control manager sees it, without the Windows
// types, so that it is tested on every platform; winsvc_windows.go maps it onto
// golang.org/x/sys/windows/svc.

type svcState int

const (
	stateStartPending svcState = iota
	stateRunning
	stateStopPending
)

// eventLogger is the Windows event log (svc/eventlog.Log) as serve uses it.
type eventLogger interface {
	Info(eid uint32, msg string) error
	Warning(eid uint32, msg string) error
	Error(eid uint32, msg string) error
}

// Event ids of latch's event log entries.
const (
	eventInfo    = 1
	eventWarning = 2
	eventError   = 3
)

// serve runs run until it returns by itself or stop is closed (Stop or Shutdown from
// the service control manager), reporting the service's state on the way. Asked to
// stop, it cancels run's context and waits at most stopTimeout for it to return.
// failed says the service should exit with a failure code (so that the recovery
// actions restart it): run returned an error on its own.
func serve(name string, run func(ctx context.Context) error, stop <-chan struct{}, report func(svcState),
	elog eventLogger, stopTimeout time.Duration) (err error, failed bool) {
	report(stateStartPending)
	if elog != nil {
		elog.Info(eventInfo, fmt.Sprintf("latch service %s starting", name))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	report(stateRunning)
	select {
	case err = <-done:
		if err != nil {
			if elog != nil {
				elog.Error(eventError, fmt.Sprintf("latch service %s failed: %v", name, err))
			}
			return err, true
		}
		if elog != nil {
			elog.Info(eventInfo, fmt.Sprintf("latch service %s ended", name))
		}
		return nil, false
	case <-stop:
	}
	report(stateStopPending)
	cancel()
	select {
	case err = <-done:
	case <-time.After(stopTimeout):
		err = fmt.Errorf("the daemon did not stop within %v", stopTimeout)
	}
	if elog != nil {
		if err != nil {
			elog.Error(eventError, fmt.Sprintf("latch service %s stopped with an error: %v", name, err))
		} else {
			elog.Info(eventInfo, fmt.Sprintf("latch service %s stopped", name))
		}
	}
	return err, false
}

// eventWriter turns the standard logger's lines into event log entries: lines about
// errors, failures and losses as warnings, the rest as information.
type eventWriter struct {
	mu   sync.Mutex
	elog eventLogger
}

func (w *eventWriter) Write(p []byte) (int, error) {
	msg := strings.TrimRight(string(p), "\r\n")
	lower := strings.ToLower(msg)
	w.mu.Lock()
	defer w.mu.Unlock()
	var err error
	if strings.Contains(lower, "error") || strings.Contains(lower, "fail") || strings.Contains(lower, "lost") {
		err = w.elog.Warning(eventWarning, msg)
	} else {
		err = w.elog.Info(eventInfo, msg)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}
