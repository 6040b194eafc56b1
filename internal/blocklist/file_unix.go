//go:build unix

package blocklist

import "syscall"

// O_NONBLOCK: opening a FIFO returns at once (and the file is then refused, not read);
// O_NOCTTY: a terminal device never becomes the daemon's controlling terminal.
const (
	noFollow        = syscall.O_NOFOLLOW
	clientOpenFlags = syscall.O_NONBLOCK | syscall.O_NOCTTY
	daemonOpenFlags = clientOpenFlags | noFollow
)
