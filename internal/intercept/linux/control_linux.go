package linux

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Control marks a socket as the daemon's own (SO_MARK OwnMark) so that its traffic is
// never held. Use it as net.Dialer.Control or net.ListenConfig.Control.
func Control(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(OwnMark))
	}); err != nil {
		return fmt.Errorf("mark %s socket to %s as latch's own: %w", network, address, err)
	}
	if serr != nil {
		return fmt.Errorf("mark %s socket to %s as latch's own (SO_MARK %#x): %w", network, address, OwnMark, serr)
	}
	return nil
}
