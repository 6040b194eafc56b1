package managed

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// settle is how long the directory must be quiet after a change before changed is
// called: configuration management writes several files in a row.
const settle = 200 * time.Millisecond

// Watch calls changed (from one goroutine) each time files in dir are written,
// created, moved or removed, once the directory has been quiet for a moment, until ctx
// is done. It returns an error if dir cannot be watched (it does not exist, say).
func Watch(ctx context.Context, dir string, changed func()) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watch %s: inotify: %w", dir, err)
	}
	mask := uint32(unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CREATE | unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ATTRIB)
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), "inotify:"+dir)
	events := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			if _, err := f.Read(buf); err != nil {
				close(events)
				return
			}
			select {
			case events <- struct{}{}:
			default:
			}
		}
	}()
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go func() {
		var timer <-chan time.Time
		for {
			select {
			case _, ok := <-events:
				if !ok {
					return
				}
				timer = time.After(settle)
			case <-timer:
				timer = nil
				changed()
			}
		}
	}()
	return nil
}
