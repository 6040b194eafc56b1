//go:build !windows

package winsvc

import (
	"context"
	"io"
	"os"
)

var (
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)

func commandTo(args []string, out, errOut io.Writer) error {
	c, err := parse(args, errOut)
	if err != nil {
		return err
	}
	if c.verb == "help" {
		_, err := io.WriteString(out, Usage)
		return err
	}
	return ErrNotWindows
}

// DataDir returns where latch keeps its state by default: /var/lib/latch here,
// %ProgramData%\latch on Windows.
func DataDir() string { return "/var/lib/latch" }

// RunIfService runs run as a Windows service if the service control manager started
// this process. Elsewhere no process is, so it returns false and does nothing.
func RunIfService(run func(ctx context.Context) error) (isService bool, err error) {
	return false, nil
}
