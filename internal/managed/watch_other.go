//go:build !linux

package managed

import (
	"context"
	"errors"
)

// Watch is Linux only (inotify); elsewhere reload with `latch reload`.
func Watch(ctx context.Context, dir string, changed func()) error {
	return errors.New("watching managed rule files needs Linux (inotify); use 'latch reload'")
}
