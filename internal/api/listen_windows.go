package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/Microsoft/go-winio"
)

// DefaultPath is the API's named pipe when neither --api nor LATCH_API says otherwise.
const DefaultPath = `\\.\pipe\latch`

// PipeSDDL admits SYSTEM and the Administrators group only, with full access.
const PipeSDDL = "D:P(A;;GA;;;SY)(A;;GA;;;BA)"

// Listen creates the API's named pipe at path, open to SYSTEM and Administrators only.
// If another process already serves the pipe it is an error.
func Listen(path string) (net.Listener, error) {
	l, err := winio.ListenPipe(path, &winio.PipeConfig{
		SecurityDescriptor: PipeSDDL,
		InputBufferSize:    64 << 10,
		OutputBufferSize:   64 << 10,
	})
	if err != nil {
		return nil, fmt.Errorf("API pipe %s: %w (is another latch service running?)", path, err)
	}
	return l, nil
}

// dial connects to the API pipe at path.
func dial(ctx context.Context, path string) (net.Conn, error) {
	c, err := winio.DialPipeContext(ctx, path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrPermission):
			return nil, fmt.Errorf("latch API at %s: permission denied: the API is for Administrators only", path)
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("latch API at %s: the latch service is not running", path)
		}
		return nil, fmt.Errorf("latch API at %s: %w", path, err)
	}
	return c, nil
}

// connContext has nothing to record on Windows: the pipe's security descriptor
// already admitted only SYSTEM and Administrators.
func connContext(ctx context.Context, c net.Conn) context.Context { return ctx }

func peerAllowed(ctx context.Context, g *Group) error { return nil }

// ShareWithGroup is Linux only: the pipe admits SYSTEM and Administrators.
func ShareWithGroup(path string, g *Group) error {
	return fmt.Errorf("API pipe %s: --api-group is not supported on Windows (the pipe admits SYSTEM and Administrators)", path)
}
