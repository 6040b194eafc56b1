package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPath is the API's unix socket when neither --api nor LATCH_API says otherwise.
const DefaultPath = "/run/latch/latch.sock"

// Listen creates the API's unix socket at path: its directory is created (mode 0755)
// if needed, the socket itself is mode 0600. A socket file left by a daemon that died
// is replaced; one a live daemon answers on is an error.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("API socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("API socket %s: exists and is not a socket; not removing it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("API socket %s: another latch daemon is serving it", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("API socket %s: removing stale socket: %w", path, err)
		}
	}
	// Create the socket with no access for others from the start, not only after chmod.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("API socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("API socket %s: %w", path, err)
	}
	return l, nil
}

// ShareWithGroup lets members of group g use the API socket at path: it becomes owned
// by root:g, mode 0660. The server admits them too (Config.Group).
func ShareWithGroup(path string, g *Group) error {
	if err := os.Chown(path, 0, g.GID); err != nil {
		return fmt.Errorf("API socket %s: giving it to group %s: %w", path, g.Name, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		return fmt.Errorf("API socket %s: %w", path, err)
	}
	return nil
}

// dial connects to the API socket at path.
func dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("latch API at %s: permission denied: the API is for root and the daemon's --api-group only", path)
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ECONNREFUSED):
			return nil, fmt.Errorf("latch API at %s: no daemon is running (start one with `latch daemon`)", path)
		}
		return nil, fmt.Errorf("latch API at %s: %w", path, err)
	}
	return c, nil
}
