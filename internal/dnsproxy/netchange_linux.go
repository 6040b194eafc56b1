package dnsproxy

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// watchNetwork calls changed after every address or route change the kernel announces
// (rtnetlink), and after announcements were lost (the socket's buffer overflowed),
// until the returned stop is called. A pooled upstream socket was given its source
// address when it was connected, by the routes of that moment.
func watchNetwork(changed func()) (stop func(), err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	groups := uint32(unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("rtnetlink: join the address and route groups: %w", err)
	}
	f := os.NewFile(uintptr(fd), "rtnetlink") // non-blocking: read through Go's poller
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 16<<10)
		for {
			_, err := f.Read(buf)
			if err != nil && !errorIsNoBufs(err) {
				return // closed
			}
			changed()
		}
	}()
	return func() { f.Close(); <-done }, nil
}

func errorIsNoBufs(err error) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == unix.ENOBUFS
}
