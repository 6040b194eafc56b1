package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// watchClockSteps calls stepped each time the wall clock is set (a step by
// clock_settime or settimeofday, as NTP's step or an administrator's date do;
// not a slew), until ctx ends: a CLOCK_REALTIME timerfd, armed at an absolute
// time it never reaches with TFD_TIMER_CANCEL_ON_SET, reads ECANCELED at a step.
func watchClockSteps(ctx context.Context, stepped func()) error {
	fd, err := unix.TimerfdCreate(unix.CLOCK_REALTIME, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watch the wall clock for steps: timerfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "clock-step timerfd")
	defer f.Close()
	raw, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("watch the wall clock for steps: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	arm := func() error {
		// Ten years ahead, never reached (if it were, the loop arms it again).
		never := unix.ItimerSpec{Value: unix.NsecToTimespec(time.Now().AddDate(10, 0, 0).UnixNano())}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.TimerfdSettime(int(fd), unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET, &never, nil)
		}); err != nil || serr != nil {
			return fmt.Errorf("watch the wall clock for steps: timerfd_settime: %w", errors.Join(err, serr))
		}
		return nil
	}
	if err := arm(); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	buf := make([]byte, 8)
	for {
		_, err := f.Read(buf)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil || errors.Is(err, unix.ECANCELED):
			// Armed again before stepped runs, so that a step while it runs is
			// reported too (after it returns) rather than lost (review29).
			if err := arm(); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if err != nil {
				stepped()
			}
		default:
			return fmt.Errorf("watch the wall clock for steps: read the timerfd: %w", err)
		}
	}
}
