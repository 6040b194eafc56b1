// Package sdnotify tells systemd about the daemon's state (sd_notify(3)): a datagram
// such as "READY=1" sent to the unix socket named by $NOTIFY_SOCKET. It is the
// standard library only, no libsystemd.
package sdnotify

import (
	"fmt"
	"net"
	"os"
)

// Messages a service sends.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Notify sends state to the socket in $NOTIFY_SOCKET. It returns false, nil when the
// variable is unset (not started by systemd with Type=notify). A name starting with
// '@' is an abstract socket.
func Notify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	if path[0] == '@' {
		addr.Name = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return false, fmt.Errorf("sd_notify %q to %s: %w", state, path, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sd_notify %q to %s: %w", state, path, err)
	}
	return true, nil
}
